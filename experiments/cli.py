"""Command line: ``python -m experiments {search,backbone-search,retrain,evaluate,export,check} --config FILE [--set key=value ...]``.

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

PROTECTED = {"search": "best_architecture.json", "backbone-search": "best_architecture.json",
             "retrain": "retrain_results.json"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="job", required=True)
    for job, text in (("search", "DARTS/GumbelDARTS head search through NNI"),
                      ("backbone-search", "SPOS/DARTS/Proxyless/ENAS backbone search through NNI, within a budget"),
                      ("retrain", "train an architecture JSON from scratch and evaluate it"),
                      ("evaluate", "kNN and linear accuracy of a saved model")):
        s = sub.add_parser(job, help=text)
        s.add_argument("--config", help="YAML config (see README: Config reference)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set search.epochs=3 (repeatable)")
        if job != "evaluate":
            s.add_argument("--output-dir", help="where results go (default: the config's output_dir)")
            s.add_argument("--overwrite", action="store_true", help="replace the results of a finished run")
            s.add_argument("--nni", action="store_true",
                           help="run as the trial of an nnictl experiment (README: Searching with nnictl)")
        if job == "retrain":
            s.add_argument("--arch", help="architecture JSON (best_architecture.json or a shipped one); with --nni "
                                          "and no --arch the tuner's parameters are the architecture")
        if job == "evaluate":
            s.add_argument("--checkpoint", required=True, help="search_model.pt or retrain_model.pt")
    from experiments.export import add_export_parser
    from experiments.nni_check import add_check_parser

    add_export_parser(sub)
    add_check_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.job in ("export", "check"):
        from experiments import export, nni_check

        return (export if args.job == "export" else nni_check).main(args)
    if getattr(args, "nni", False):
        return _trial(args)
    if args.job == "retrain" and not args.arch:
        parser.error("retrain: --arch is required (except with --nni, where the tuner gives the architecture)")
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
            if record is not None:  # None: a DDP rank other than zero, which reports nothing
                _summary(record, out / "best_architecture.json")
        elif args.job == "backbone-search":
            from experiments.backbone_search import run_backbone_search, summary

            summary(run_backbone_search(cfg, out), out / "best_architecture.json")
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


def _trial(args) -> int:
    from experiments import trial

    common = dict(output_dir=args.output_dir, overwrite=args.overwrite)
    if args.job == "search":
        return trial.guarded(lambda: trial.run_search_trial(args.config, args.overrides, **common))
    if args.arch:
        return trial.guarded(lambda: trial.run_retrain_trial(args.config, args.overrides, args.arch, **common))
    return trial.guarded(lambda: trial.run_head_trial(args.config, args.overrides, **common))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _summary(record: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['framework']} · {record['space']['head_space']} heads")
    table.add_column("choice")
    table.add_column("value")
    probabilities = record.get("probabilities") or {}
    if probabilities:
        table.add_column("probability", justify="right")
    for label, value in record["architecture"].items():
        row = [label, str(value)]
        if probabilities:
            p = probabilities.get(label, {}).get(str(value))
            row.append(f"{p:.3f}" if p is not None else "")
        table.add_row(*row)
    console = Console()
    console.print(table)
    m = record["metrics"]
    console.print(f"kNN top-1 {m['knn_top1']:.3f}  linear top-1 {m['linear_top1']:.3f}  "
                  f"collapse {m['collapse']:.3f} (healthy ~1)  chance {m['chance']:.3f}")
    console.print(f"written: {path}")
