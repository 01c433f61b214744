"""Command line: ``python -m experiments JOB ...`` (installed: ``ssl-nas JOB ...``), one subcommand per job and study.

Bad input ends with one ``error:`` line on stderr and exit status 2, before anything is
written; a run that failed (NaN loss, collapsed representation, a search whose derived head
collapsed) exits with status 3; SIGINT/SIGTERM save a checkpoint and exit with 128 + signal; a disk
that fills up or turns read-only mid-run ends it with one line and status 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def job_modules() -> list:
    """Every job and study, in the order ``--help`` lists them."""
    from experiments.jobs import (backbone_search, check, compare, evaluate, export, export_space, prune, retrain,
                                  screenshot, search, show)
    from experiments.studies import backbone_study, head_study

    return [search, backbone_search, retrain, prune, evaluate, export, check, export_space, compare, show, head_study,
            backbone_study, screenshot]


def build_parser(modules: list, prog: str = "python -m experiments") -> argparse.ArgumentParser:
    from experiments.jobs.command import OneLineParser
    from experiments.studies import STUDIES

    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="job", required=True, metavar="JOB")  # subparsers are OneLineParsers too
    for module in modules:
        job = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, job=module.NAME)
        module.add_arguments(job)
        job.set_defaults(run=module.run)
    study = sub.add_parser("study", help="run a study (experiments/studies/): " + ", ".join(STUDIES),
                           description="A study: arms x seeds, each run cached, its tables rebuilt from the cache.",
                           job="study")
    studies = study.add_subparsers(dest="study", required=True, metavar="NAME")
    for name, module in STUDIES.items():
        one = studies.add_parser(name, help=module.HELP, description=module.HELP, job=f"study {name}")
        module.add_arguments(one)
        one.set_defaults(run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    from experiments import nni_compat

    nni_compat.apply()
    from experiments.core.run_log import capture_chatter

    capture_chatter()  # NNI's and Lightning's chatter waits for the run's logs/run.log
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "ssl-nas" if Path(sys.argv[0]).name == "ssl-nas" else "python -m experiments"  # the installed command
    from experiments.core.run_dir import global_rank
    from experiments.core.errors import (EXIT_BAD_INPUT, EXIT_FAILED, ConfigError, OutputUnwritable, RunFailed,
                                         RunInterrupted, one_line)

    try:
        args = build_parser(job_modules(), prog).parse_args(argv)
        # the job's own arguments, for studies that record the command that made them
        args.argv = argv[2:] if args.job == "study" else argv[1:]
        if getattr(args, "nni", False):  # a run job as the trial of an nnictl experiment
            from experiments.jobs import trial

            args.run = trial.run
        return args.run(args)
    except ConfigError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    except RunInterrupted as err:
        if global_rank() == 0:  # under DDP every rank stops; rank zero says so, once
            print(f"error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except OutputUnwritable as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except SystemExit as err:
        if type(err).__name__ != "SIGTERMException":  # Lightning's SIGTERM under DDP (a checkpoint was saved)
            raise
        print("error: interrupted by SIGTERM; run the same command again to resume", file=sys.stderr)
        return 128 + 15
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
