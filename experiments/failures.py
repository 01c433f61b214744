"""Why a run stopped, as exceptions (standard library only, so the CLI can catch them cheaply).

``RunFailed`` (a NaN loss, a collapsed representation) ends a run with exit status 3;
``RunInterrupted`` (SIGINT, SIGTERM, after a checkpoint) with 128 + the signal number.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional


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
