"""Draw a run's chosen architecture: ``python -m experiments show runs/x``.

Reads the run's architecture record (``best_architecture.json``, ``retrain_results.json`` or
``prune_results.json``; or an architecture JSON given directly) and writes a PNG beside it:
heads as a column of layers with each chosen operation and its probability, backbones as their
blocks' choices, cells as their derived graph. Every search writes the same picture into its
run directory when it ends.
"""
from __future__ import annotations

from pathlib import Path

from experiments.core.architecture_picture import PICTURE_FILE
from experiments.core.errors import ConfigError

NAME = "show"
HELP = "draw a run's chosen architecture (heads, backbone blocks, cell graphs) as a PNG"

RECORD_FILES = ("best_architecture.json", "retrain_results.json", "prune_results.json")


def find_record(target: Path) -> Path:
    """The architecture record of a run directory, or the file itself."""
    if target.is_file():
        return target
    if not target.is_dir():
        raise ConfigError(f"{target}: no such run directory or architecture file")
    for name in RECORD_FILES:
        if (target / name).is_file():
            return target / name
    raise ConfigError(f"{target}: no architecture record here ({', '.join(RECORD_FILES)}); has the run finished?")


def add_arguments(p) -> None:
    p.add_argument("target", metavar="RUN", help="a run directory (or an architecture JSON)")
    p.add_argument("--output", help=f"PNG to write (default: {PICTURE_FILE} beside the record)")


def run(args) -> int:
    from experiments.core.architecture_picture import architecture_title, draw_architecture
    from experiments.core.records import read_architecture

    source = find_record(Path(args.target))
    record = read_architecture(source)
    output = Path(args.output) if args.output else source.parent / PICTURE_FILE
    try:
        drawn = draw_architecture(record, output, architecture_title(record))
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    except OSError as err:
        raise ConfigError(f"{output}: cannot write the picture ({err.strerror or type(err).__name__})") from None
    print(f"written: {drawn}")
    return 0
