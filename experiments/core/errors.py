"""Why a job refused or stopped, as exceptions and exit statuses (standard library only).

``ConfigError`` (bad input) ends a job with one ``error:`` line and exit status 2, before
anything is written; ``RunFailed`` (a NaN loss, a collapsed representation) with exit status
3; ``RunInterrupted`` (SIGINT, SIGTERM, after a checkpoint) with 128 + the signal number;
``OutputUnwritable`` (the disk filled up, the directory turned read-only mid-run) with 1.
"""
from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Optional


EXIT_OK = 0
EXIT_CRASHED = 1  # an unexpected error (a trial's traceback goes to its log), or the disk failed the run
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


def existing_file(path, what: str) -> Path:
    """``path`` as a Path when it names a file; else ConfigError: empty, a directory, or missing."""
    if not str(path).strip():
        raise ConfigError(f"{what}: an empty path was given")
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a directory, not a file")
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    return p


class RunFailed(RuntimeError):
    """The run stopped because its result would be meaningless; the message is one line."""


class NonFiniteLoss(RunFailed):
    pass


class RepresentationCollapsed(RunFailed):
    pass


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a batch; a checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Optional[Path] = None, saved_now: bool = True):
        self.signum = signum
        self.checkpoint = checkpoint
        self.saved_now = saved_now  # false: ``checkpoint`` is the last epoch's (DDP saves none mid-epoch)
        super().__init__(self.describe())

    def describe(self) -> str:
        name = signal.Signals(self.signum).name
        where = "" if not self.checkpoint else f"; checkpoint saved to {self.checkpoint}" if self.saved_now else \
            f"; the last epoch's checkpoint {self.checkpoint} is kept"
        return f"interrupted by {name}{where}; run the same command again to resume"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunStoppedAtOnce(RunInterrupted):
    """A second SIGINT or SIGTERM: the run stops now, without a checkpoint of the current batch."""

    def describe(self) -> str:
        name = signal.Signals(self.signum).name
        return (f"stopped at once by a second {name}, without saving; run the same command again to resume from "
                f"the last epoch's checkpoint")


class OutputUnwritable(RuntimeError):
    """Writing into the output directory failed mid-run (disk full, read-only, quota); one line, exit status 1."""

    exit_code = EXIT_CRASHED


#: what a failing disk or directory raises; other OSErrors (a socket closed by the NNI manager) are no disk's fault
FILESYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                               errno.EFBIG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


def is_filesystem_error(err: BaseException) -> bool:
    """An OSError about a file: it names one, or it carries a file system's errno."""
    return isinstance(err, OSError) and (err.filename is not None or err.errno in FILESYSTEM_ERRNOS)


def describe_os_error(err: OSError, out: Path) -> str:
    """An OSError as what happened and where, e.g. "no space left on device under runs/x (writing ...)"."""
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}.get(err.errno or -1)
    what = what or (err.strerror or type(err).__name__).lower()
    if err.filename and not str(err.filename).startswith(str(out)):
        return f"{what}: {err.filename}"
    return f"{what} under {out}" + (f" ({err.filename})" if err.filename else "")
