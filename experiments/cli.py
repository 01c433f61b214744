"""Command line: ``python -m experiments {search,retrain,evaluate} --config FILE [--set key=value ...]``.

Bad input ends with one ``error:`` line on stderr and exit status 2, before anything is
written; a run that failed (NaN loss, collapsed representation, a search whose derived head
collapsed) exits with status 3; SIGINT/SIGTERM save a checkpoint and exit with 128 + signal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_COLLAPSED = 3

PROTECTED = {"search": "best_architecture.json", "retrain": "retrain_results.json"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="job", required=True)
    for job, text in (("search", "DARTS/GumbelDARTS head search through NNI"),
                      ("retrain", "train an architecture JSON from scratch and evaluate it"),
                      ("evaluate", "kNN and linear accuracy of a saved model")):
        s = sub.add_parser(job, help=text)
        s.add_argument("--config", help="YAML config (see README: Config reference)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set search.epochs=3 (repeatable)")
        if job != "evaluate":
            s.add_argument("--output-dir", help="where results go (default: the config's output_dir)")
            s.add_argument("--overwrite", action="store_true", help="replace the results of a finished run")
        if job == "retrain":
            s.add_argument("--arch", required=True, help="architecture JSON (best_architecture.json or a shipped one)")
        if job == "evaluate":
            s.add_argument("--checkpoint", required=True, help="search_model.pt or retrain_model.pt")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from experiments.config import ConfigError, load_config
    from experiments.failures import RunFailed, RunInterrupted

    try:
        cfg = load_config(args.config, args.overrides)
        out = Path(getattr(args, "output_dir", None) or cfg.output_dir)
        if args.job in PROTECTED and (out / PROTECTED[args.job]).exists() and not args.overwrite:
            raise ConfigError(f"{out / PROTECTED[args.job]} exists: this run is finished; pass --overwrite "
                              f"to replace it or choose another --output-dir")
        if args.job == "search":
            from experiments.search import SearchCollapsed, run_search

            try:
                record = run_search(cfg, out, overwrite=args.overwrite)
            except SearchCollapsed as err:
                print(f"error: {_one_line(err)}", file=sys.stderr)
                return EXIT_COLLAPSED
            _summary(record, out / "best_architecture.json")
        elif args.job == "retrain":
            from experiments.architecture import read_architecture
            from experiments.retrain import run_retrain

            record = read_architecture(args.arch)
            result = run_retrain(cfg, record, out, source=args.arch, overwrite=args.overwrite)
            _summary(result, out / "retrain_results.json")
        else:
            from experiments.evaluate import run_evaluate

            print(json.dumps(run_evaluate(cfg, args.checkpoint), indent=2))
    except ConfigError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_COLLAPSED
    except RunInterrupted as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except SystemExit as err:
        if type(err).__name__ != "SIGTERMException":  # Lightning's SIGTERM under DDP (a checkpoint was saved)
            raise
        print("error: interrupted by SIGTERM; run the same command again to resume", file=sys.stderr)
        return 128 + 15
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _summary(record: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['framework']} · {record['space']['head_space']} heads")
    table.add_column("choice")
    table.add_column("value")
    for label, value in record["architecture"].items():
        table.add_row(label, str(value))
    console = Console()
    console.print(table)
    m = record["metrics"]
    console.print(f"kNN top-1 {m['knn_top1']:.3f}  linear top-1 {m['linear_top1']:.3f}  "
                  f"collapse {m['collapse']:.3f} (healthy ~1)  chance {m['chance']:.3f}")
    console.print(f"written: {path}")
