"""Chatter a user cannot act on goes to the run's ``logs/run.log``, not to the terminal.

NNI and Lightning print INFO lines (NNI's ``training_service will be ignored`` 17 times, its
internal checkpoint path, warnings it says to ignore, Lightning's device lines and ``litlogger``
advertisement) and a few deprecation warnings from inside their own code. The terminal keeps what
the user can act on: the job's start line, one line per epoch, the result and where it is.
Nothing is lost: until a run claims its directory the records wait in memory; a process that
never claims one (a bad config, a job without a run directory) prints them to stderr at exit.
"""
from __future__ import annotations

import atexit
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Optional, TextIO

LOG_FILE = Path("logs") / "run.log"
#: The Python loggers whose records go to the run log (NNI's own handler is quirk 26; ``ssl_nas``: the package's notes).
CHATTER_LOGGERS = ("nni", "pytorch_lightning", "lightning_fabric", "lightning", "ssl_nas")
#: Warnings raised inside torch that a user of this package cannot act on.
CHATTER_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6's _pytree on torch 2.13
)
#: Libraries whose own warnings (raised in their code: NNI's Filter middleware, Lightning's "no val_dataloader")
#: go to the run log: the package decides how it calls them, so the user cannot act on them.
CHATTER_PACKAGES = ("nni", "pytorch_lightning", "lightning_fabric", "lightning")


class RunLog(logging.Handler):
    """Holds records until :func:`open_run_log` names the file, then writes every record there."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.pending: list[logging.LogRecord] = []
        self.stream: Optional[TextIO] = None
        self.path: Optional[Path] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            self.pending.append(record)
            return
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except OSError:  # a full or read-only disk: the job's own error line says so, not a logging traceback
            pass
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.stream is not None:
            self.stream.close()
        self.stream, self.path = open(path, "a", encoding="utf-8"), path
        pending, self.pending = self.pending, []
        for record in pending:
            self.emit(record)

    def flush_unclaimed(self) -> None:
        """At exit: records no run directory took are printed to stderr rather than dropped."""
        for record in self.pending:
            print(self.format(record), file=sys.stderr)
        self.pending = []


_handler: Optional[RunLog] = None


def capture_chatter() -> RunLog:
    """Route NNI's and Lightning's loggers and the known warnings to one :class:`RunLog` (idempotent)."""
    global _handler
    if _handler is not None:
        return _handler
    import pytorch_lightning  # noqa: F401 - it adds its own stderr handler when first imported

    from experiments import nni_compat

    _handler = RunLog()
    for name in CHATTER_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(_handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    nni_compat.nni_log_to(_handler)
    _route_warnings(_handler)
    atexit.register(_handler.flush_unclaimed)
    return _handler


def _route_warnings(handler: RunLog) -> None:
    """The warnings in :data:`CHATTER_WARNINGS` go to the run log; every other warning shows as usual."""
    show = warnings.showwarning
    pattern = re.compile("|".join(CHATTER_WARNINGS))
    libraries = _package_folders(CHATTER_PACKAGES)
    chatter = logging.getLogger("ssl_nas.warnings")
    chatter.addHandler(handler)
    chatter.propagate = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if pattern.search(str(message)) or str(filename).startswith(libraries):
            chatter.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


def _package_folders(names) -> tuple[str, ...]:
    """Where the installed packages ``names`` live (each folder with its trailing separator)."""
    import importlib.util
    import os

    folders = []
    for name in names:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            folders.append(os.path.join(os.path.realpath(folder), ""))
            folders.append(os.path.join(folder, ""))
    return tuple(dict.fromkeys(folders))


def open_run_log(out: Path, rank: int = 0) -> Optional[Path]:
    """Once a run has claimed ``out``: its chatter (so far and from now on) goes to ``out/logs/run.log``
    (``run.rank<R>.log`` for a DDP rank R > 0, which would otherwise print it on the terminal at exit)."""
    if _handler is None:
        return None
    path = Path(out) / LOG_FILE
    _handler.open(path.with_name(f"{path.stem}.rank{rank}{path.suffix}") if rank else path)
    return _handler.path
