"""Why a job refused or stopped, as exceptions and exit statuses (standard library only).

``ConfigError`` (bad input) ends a job with one ``error:`` line and exit status 2, before
anything is written; ``RunFailed`` (a NaN loss, a collapsed representation) with exit status
3; ``RunInterrupted`` (SIGINT, SIGTERM, after a checkpoint) with 128 + the signal number.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional


EXIT_OK = 0
EXIT_CRASHED = 1  # an unexpected error (a trial's traceback goes to its log)
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3  # the run ran but its result is meaningless (NaN loss, collapse)


def one_line(err: BaseException | str) -> str:
    """An error's text with its whitespace folded, so a message is always one line."""
    return " ".join(str(err).split())


class ConfigError(ValueError):
    """A config that cannot run; the message is one line meant for the user.

    Whitespace is collapsed, so a value or key that carries a newline cannot split it.
    """

    def __init__(self, message: object = ""):
        super().__init__(one_line(message))


class RunFailed(RuntimeError):
    """The run stopped because its result would be meaningless; the message is one line."""


class NonFiniteLoss(RunFailed):
    pass


class RepresentationCollapsed(RunFailed):
    pass


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a batch; a checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Optional[Path] = None):
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(self.describe())

    def describe(self) -> str:
        name = signal.Signals(self.signum).name
        where = f"; checkpoint saved to {self.checkpoint}" if self.checkpoint else ""
        return f"interrupted by {name}{where}; run the same command again to resume"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
