"""A search, or one fixed head, run as the trial of an nnictl experiment (``--nni``).

nnictl runs HPO experiments only, so each trial is one whole job:

- ``python -m experiments search --nni --config F``: one DARTS/GumbelDARTS search; the
  tuner's parameters are dotted config keys (``search.arch_lr``, ``seed``) that override F.
- ``python -m experiments retrain --nni --config F``: one fixed head trained from scratch;
  the tuner's parameters are the head space's own labels (``projector.layer1.op``), so the
  dashboard compares architectures directly; other keys override F as above.

Precedence: the YAML file, then ``--set`` on the trial command, then the tuner's parameters.
Every epoch reports ``{'default': knn_top1, 'ssl_loss', 'collapse', 'epoch'}``; the end reports
``{'default': knn_top1, 'linear_top1', 'ssl_loss', 'collapse'}`` under the trial's own
parameter id (``TrialChannel``). Results go to ``$NNI_OUTPUT_DIR``, which the
dashboard's trial detail and its TensorBoard button read. Outside NNI the same entry runs
alone: no parameters, reports only printed.
"""
from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from experiments import nni_compat
from experiments.core.errors import (EXIT_BAD_INPUT, EXIT_CRASHED, EXIT_FAILED, ConfigError, OutputUnwritable,
                                     RunFailed, RunInterrupted, one_line)
from experiments.core.run_dir import refuse_finished
from experiments.core.config import parse_overrides
from experiments.core.validation import load_config


PICTURE_FILE = "architecture_weights.png"


class TrialChannel:
    """The trial's own command channel and parameter record, kept across a nested NAS experiment
    (quirks 7 and 8, docs/nni.md and ``experiments/nni_compat.py``).

    Create it after ``nni.get_next_parameter()``; report through it, never through
    ``nni.report_*``, while a search may be running; ``restore()`` puts NNI's globals back.
    """

    def __init__(self) -> None:
        import nni
        from nni.runtime.env_vars import trial_env_vars
        from nni.runtime.trial_command_channel import get_default_trial_command_channel

        self.channel = get_default_trial_command_channel()
        self.record = nni.trial._params
        self.trial_job_id = trial_env_vars.NNI_TRIAL_JOB_ID
        self._sequence = 0

    @property
    def parameter_id(self):
        return self.record["parameter_id"] if self.record else None

    def report_intermediate(self, metric: dict) -> None:
        self.channel.send_metric(type="PERIODICAL", parameter_id=self.parameter_id,
                                 trial_job_id=self.trial_job_id, sequence=self._sequence, value=metric)
        self._sequence += 1

    def report_final(self, metric: dict) -> None:
        self.channel.send_metric(type="FINAL", parameter_id=self.parameter_id,
                                 trial_job_id=self.trial_job_id, sequence=0, value=metric)

    def restore(self) -> None:
        """Undo quirks 7 and 8 for any later ``nni.*`` call in this process."""
        import nni
        from nni.runtime.trial_command_channel import set_default_trial_command_channel

        set_default_trial_command_channel(self.channel)
        nni.trial._params = self.record
        nni.trial._intermediate_seq = self._sequence


def inside_nni() -> bool:
    """True in a process that nnictl started as a trial."""
    return os.environ.get("NNI_PLATFORM") not in (None, "", "unittest")


def _number(x: Any) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def intermediate_metric(record: dict) -> dict:
    """One epoch's monitor record as an NNI metric: ``default`` is the online kNN top-1."""
    metric = {"default": _number(record["knn_top1"]), "ssl_loss": _number(record.get("ssl_loss")),
              "collapse": _number(record.get("collapse")), "epoch": int(record["epoch"])}
    return {k: v for k, v in metric.items() if v is not None}


def final_metric(result: dict) -> dict:
    """A finished job's record as the final NNI metric: downstream kNN, linear probe, last SSL loss."""
    m = result["metrics"]
    history = result.get("history") or []
    metric = {"default": _number(m["knn_top1"]), "linear_top1": _number(m.get("linear_top1")),
              "ssl_loss": _number(history[-1].get("ssl_loss")) if history else None,
              "collapse": _number(m.get("collapse"))}
    return {k: v for k, v in metric.items() if v is not None}


class Trial:
    """The parameters of this trial and the channel its results go back through."""

    def __init__(self, parameters: dict, channel: Optional[TrialChannel],
                 log_fn: Callable[[str], None] = print):
        self.parameters = dict(parameters)
        self.channel = channel
        self.log_fn = log_fn

    @classmethod
    def start(cls, log_fn: Callable[[str], None] = print) -> "Trial":
        if not inside_nni():
            log_fn("not inside an nnictl trial: no tuner parameters; metrics are only printed")
            return cls({}, None, log_fn)
        import nni

        nni.get_next_parameter()
        received = nni.trial._params
        nni.trial._params = nni_compat.manager_parameter_record(received)
        if received and nni.trial._params is not received:
            if nni.trial._params["parameter_id"] != received["parameter_id"]:
                log_fn(f"NNI handed this trial parameter id {received['parameter_id']}, but the manager records "
                       f"{nni.trial._params['parameter_id']} for it: running the recorded one (nni_compat quirk 10)")
        parameters = (nni.trial._params or {}).get("parameters") or {}
        channel = TrialChannel()  # before any search can replace NNI's globals
        log_fn(f"nni trial {nni.get_trial_id()} of experiment {nni.get_experiment_id()}: parameter id "
               f"{channel.parameter_id}, parameters {parameters}")
        return cls(parameters, channel, log_fn)

    def output_dir(self, fallback: Path) -> Path:
        """``$NNI_OUTPUT_DIR`` inside a trial (what the dashboard shows), else ``fallback``."""
        return Path(os.environ["NNI_OUTPUT_DIR"]) if self.channel is not None and os.environ.get("NNI_OUTPUT_DIR") \
            else fallback

    def report_epoch(self, record: dict) -> None:
        """Send an epoch's metric; a manager that no longer takes it (``nnictl stop`` closes the channel
        before its SIGINT arrives) costs the dashboard a point, not the run its checkpoint and status."""
        metric = intermediate_metric(record)
        if self.channel is not None:
            try:
                self.channel.report_intermediate(metric)
            except Exception as err:  # noqa: BLE001 - requests' and websockets' errors alike
                self.log_fn(f"warning: the NNI manager did not take epoch {metric.get('epoch')}'s result "
                            f"({type(err).__name__}: {one_line(err)}); the run goes on")

    def report_final(self, metric: dict) -> None:
        if self.channel is not None:
            self.channel.report_final(metric)
            self.channel.restore()
        self.log_fn(f"final result: {metric}")

    def close(self) -> None:
        if self.channel is not None:
            self.channel.restore()


def _with_parameters(message: str, parameters: dict) -> str:
    return f"{message} (this trial's parameters: {parameters})" if parameters else message


def _load(config: Optional[str], overrides: dict, parameters: dict):
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        raise ConfigError(_with_parameters(str(err), parameters)) from None


def _trial_config(trial: "Trial", config: Optional[str], overrides: list[str], output_dir: Optional[str],
                  result_file: str, overwrite: bool, settings: Optional[dict] = None, base=None):
    """The config with the tuner's ``settings`` (default: all its parameters) over the YAML and ``--set``,
    and the trial's output directory; ``base`` is the config without them, when the caller has it."""
    user = parse_overrides(overrides)
    if base is None:
        base = _load(config, user, trial.parameters)
    out = trial.output_dir(Path(output_dir or base.output_dir))
    settings = trial.parameters if settings is None else settings
    cfg = _load(config, {**user, **settings, "output_dir": str(out)}, trial.parameters)
    _refuse_finished(out / result_file, trial, overwrite)
    return cfg, out


def _as_trial(log_fn: Callable[[str], None], job: Callable[["Trial"], int]) -> int:
    """Run ``job`` as one nnictl trial: bad input exits 2 with one line; the trial channel is always restored."""
    trial = Trial.start(log_fn)
    try:
        return job(trial)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        trial.close()


def run_search_trial(config: Optional[str], overrides: list[str], output_dir: Optional[str] = None,
                     overwrite: bool = False, log_fn: Callable[[str], None] = print) -> int:
    """One search as one trial: the tuner's parameters are config keys."""
    from experiments.jobs.search import ARCHITECTURE_FILE, SearchCollapsed, run_search

    def job(trial: Trial) -> int:
        cfg, out = _trial_config(trial, config, overrides, output_dir, ARCHITECTURE_FILE, overwrite)
        scalars = _scalars(out)
        listeners = [trial.report_epoch] + ([scalars] if scalars else [])
        status = 0
        with nni_compat.unregistered_nested_experiments():
            try:
                record = run_search(cfg, out, listeners=listeners, log_fn=log_fn)
            except SearchCollapsed as err:  # the record is written; the tuner still learns from it
                import json

                record = json.loads((out / ARCHITECTURE_FILE).read_text())
                log_fn(f"error: {err}")
                print(f"error: {err}", file=sys.stderr)
                status = EXIT_FAILED
            finally:
                if scalars:
                    scalars.close()
        trial.close()
        if record is None:  # a DDP rank other than zero: rank zero reports
            return status
        _picture(record, out, cfg, log_fn)
        trial.report_final(final_metric(record))
        return status

    return _as_trial(log_fn, job)


def run_backbone_trial(config: Optional[str], overrides: list[str], output_dir: Optional[str] = None,
                       overwrite: bool = False, log_fn: Callable[[str], None] = print) -> int:
    """One backbone search as one trial (``nni_configs/*_backbone_*.yml``): the tuner's parameters are config keys."""
    from experiments.jobs.backbone_search import ARCHITECTURE_FILE, run_backbone_search

    def job(trial: Trial) -> int:
        cfg, out = _trial_config(trial, config, overrides, output_dir, ARCHITECTURE_FILE, overwrite)
        with nni_compat.unregistered_nested_experiments():
            record = run_backbone_search(cfg, out, listeners=[trial.report_epoch], log_fn=log_fn)
        trial.close()
        trial.report_final(final_metric(record))
        return 0

    return _as_trial(log_fn, job)


def run_head_trial(config: Optional[str], overrides: list[str], output_dir: Optional[str] = None,
                   overwrite: bool = False, log_fn: Callable[[str], None] = print) -> int:
    """One fixed head as one trial: the tuner's parameters are the head space's labels."""
    from experiments.core.assembly import build_space
    from experiments.jobs.retrain import RESULTS_FILE, run_retrain
    from experiments.core.records import space_record

    def job(trial: Trial) -> int:
        base = _load(config, parse_overrides(overrides), trial.parameters)
        labels = set(build_space(base).simplify())
        architecture = {k: v for k, v in trial.parameters.items() if k in labels}
        settings = {k: v for k, v in trial.parameters.items() if k not in labels}
        if not architecture:
            raise ConfigError(_with_parameters(
                f"retrain --nni without --arch takes the architecture from the tuner, but no parameter names a "
                f"label of the {base.model.head_space} space for {base.framework} (e.g. {sorted(labels)[0]}); "
                f"generate the search space with python -m experiments export-space", trial.parameters))
        cfg, out = _trial_config(trial, config, overrides, output_dir, RESULTS_FILE, overwrite, settings, base)
        record = {"space": space_record(cfg), "framework": cfg.framework,
                  "architecture": architecture}
        result = run_retrain(cfg, record, out, listeners=[trial.report_epoch], log_fn=log_fn,
                             source="the tuner's parameters")
        if result is not None:  # None: a DDP rank other than zero
            trial.report_final(final_metric(result))
        return 0

    return _as_trial(log_fn, job)


def run_retrain_trial(config: Optional[str], overrides: list[str], arch: str, output_dir: Optional[str] = None,
                      overwrite: bool = False, log_fn: Callable[[str], None] = print) -> int:
    """A given architecture retrained as one trial: the tuner's parameters are config keys (e.g. seeds)."""
    from experiments.core.records import read_architecture
    from experiments.jobs.retrain import RESULTS_FILE, run_retrain

    def job(trial: Trial) -> int:
        cfg, out = _trial_config(trial, config, overrides, output_dir, RESULTS_FILE, overwrite)
        result = run_retrain(cfg, read_architecture(arch), out, listeners=[trial.report_epoch], log_fn=log_fn,
                             source=arch)
        if result is not None:  # None: a DDP rank other than zero
            trial.report_final(final_metric(result))
        return 0

    return _as_trial(log_fn, job)


def run(args) -> int:
    """``python -m experiments {search,retrain} --nni ...``: the job as one nnictl trial."""
    common = dict(output_dir=args.output_dir, overwrite=args.overwrite)
    if args.job == "search":
        return guarded(lambda: run_search_trial(args.config, args.overrides, **common))
    if args.job == "backbone-search":
        return guarded(lambda: run_backbone_trial(args.config, args.overrides, **common))
    if args.arch:
        return guarded(lambda: run_retrain_trial(args.config, args.overrides, args.arch, **common))
    return guarded(lambda: run_head_trial(args.config, args.overrides, **common))


def guarded(job: Callable[[], int]) -> int:
    """Run a trial job; an unexpected failure exits 1 with its traceback and one ``error:`` line on stderr.

    A failed run (NaN loss, collapse), a signal and a failing disk go on to the CLI, which ends each
    with its one line and its own exit status (3, 128 + the signal, 1), as outside nnictl."""
    try:
        return job()
    except (RunFailed, RunInterrupted, OutputUnwritable):
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a trial must say why it failed, then exit non-zero
        traceback.print_exc(file=sys.stderr)
        print(f"error: trial failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_CRASHED


def _refuse_finished(path: Path, trial: Trial, overwrite: bool) -> None:
    if trial.channel is None:  # outside nnictl; a trial that nnictl restarts resumes its own directory
        refuse_finished(path.parent, (path.name,), overwrite)


def _scalars(out: Path):
    try:
        from experiments.core.plots import ArchitectureScalars

        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ModuleNotFoundError:
        return None
    return ArchitectureScalars(out / "tensorboard")


def _picture(record: dict, out: Path, cfg, log_fn) -> None:
    from experiments.core.plots import plot_architecture_history

    title = (f"{cfg.framework} {cfg.model.head_space} heads, {cfg.search.strategy}, arch_lr {cfg.search.arch_lr:.3g}, "
             f"seed {cfg.seed}")
    path = plot_architecture_history(record.get("history") or [], out / PICTURE_FILE, title)
    if path is not None:
        log_fn(f"written: {path}")
