"""What the run jobs' commands share: their arguments, and how a search job starts and reports.

The command line and ``check`` (which parses an nnictl trial command) read the same arguments.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from experiments.core.errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors end like any other bad input: one ``error:`` line (no usage block), exit status 2."""

    def __init__(self, *args, job: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.job = job

    def error(self, message: str):
        raise ConfigError(f"{self.job + ': ' if self.job else ''}{message} (see {self.prog} --help)")


def output_dir_argument(text: str) -> str:
    """``--output-dir`` as given; an empty one (an unset shell variable) would silently mean the config's."""
    if not text.strip() or "\x00" in text:
        raise argparse.ArgumentTypeError("must be a path (not empty, no NUL character)")
    return text


def add_config_arguments(p: argparse.ArgumentParser, outputs: bool = True) -> None:
    """``--config``, ``--set`` and, for jobs that write a run directory, ``--output-dir``, ``--overwrite``, ``--nni``."""
    p.add_argument("--config", help="YAML config (docs/config.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set search.epochs=3 (repeatable)")
    if outputs:
        p.add_argument("--output-dir", type=output_dir_argument,
                       help="where results go (default: the config's output_dir)")
        p.add_argument("--overwrite", action="store_true", help="replace the results of a finished run")
        p.add_argument("--nni", action="store_true",
                       help="run as the trial of an nnictl experiment (docs/nnictl.md)")


def run_search_job(args, result_files: Sequence[str], search: Callable) -> int:
    """Load the config, refuse a finished run before anything is built, search, print the record.

    ``search(cfg, out, overwrite=...)`` returns the record written to ``result_files[0]`` (None on
    a DDP rank other than zero, which prints nothing).
    """
    from experiments.core.architecture_picture import write_run_picture
    from experiments.core.validation import load_config
    from experiments.core.console import start_line, summary
    from experiments.core.run_dir import announce_on_claim, refuse_finished

    cfg = load_config(args.config, args.overrides)
    out = Path(args.output_dir or cfg.output_dir)
    refuse_finished(out, result_files, args.overwrite)
    with announce_on_claim(start_line(args.job, cfg, out)):
        record = search(cfg, out, overwrite=args.overwrite)
    if record is not None:
        summary(record, out / result_files[0])
        picture, why_not = write_run_picture(record, out)
        print(f"picture of the architecture: {picture}" if picture else f"no picture of the architecture: {why_not}")
    return 0
