"""Export an nnictl experiment: a table of its trials and the overall best architecture JSON.

``python -m experiments export --experiment ID [--experiment-dir DIR] [--output FILE]`` reads
what NNI stored (``<DIR>/<ID>/db/nni.sqlite``: the experiment profile, each trial's events and
parameters, every metric), so it works while the experiment runs and after it has stopped,
with no NNI manager. The best trial is the SUCCEEDED one with the best final ``default``
metric (the direction is the tuner's ``optimize_mode``); its ``best_architecture.json`` (a
search trial) or ``retrain_results.json`` (a head trial) is written, with an ``nni`` section
saying where it came from, in the format ``python -m experiments retrain --arch`` reads.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from experiments.core.errors import ConfigError

NAME = "export"
HELP = "table of an nnictl experiment's trials; write its best architecture JSON"

ARCHITECTURE_FILES = ("best_architecture.json", "retrain_results.json")
MANIFEST = Path("~/nni-experiments/.experiment")


@dataclass
class TrialRow:
    trial_id: str
    sequence: int
    status: str = "UNKNOWN"
    parameter_id: Optional[int] = None
    parameters: dict = field(default_factory=dict)
    output_dir: Optional[str] = None
    intermediate: list = field(default_factory=list)  # [(parameter id, metric dict)]
    final: Optional[dict] = None
    final_parameter_id: Optional[str] = None
    swapped: bool = False  # NNI recorded other parameters than the trial ran (nni_compat quirk 10)

    @property
    def default(self) -> Optional[float]:
        return None if self.final is None else self.final.get("default")

    def error_line(self) -> str:
        """The last ``error:`` line of the trial's stderr (why it failed), if it can be read."""
        if not self.output_dir:
            return ""
        path = Path(self.output_dir) / "trial.stderr"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if line.startswith("error:")]
        return errors[-1] if errors else (lines[-1] if lines else "")


@dataclass
class ExperimentRecord:
    experiment_id: str
    directory: Path
    profile: dict
    trials: list

    @property
    def optimize_mode(self) -> str:
        tuner = self.profile.get("tuner") or {}
        return str((tuner.get("classArgs") or {}).get("optimize_mode", "maximize"))

    def best(self) -> Optional[TrialRow]:
        done = [t for t in self.trials if t.status == "SUCCEEDED" and isinstance(t.default, (int, float))]
        if not done:
            return None
        pick = min if self.optimize_mode == "minimize" else max
        return pick(done, key=lambda t: t.default)


def _metric_value(data: str) -> Any:
    """NNI stores a metric as JSON text of JSON text (``'"{\\"default\\": 0.5}"'``)."""
    value = json.loads(data)
    while isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, (int, float)):
        value = {"default": value}
    return value


def find_experiment_dir(experiment_id: str, experiment_dir: Optional[str] = None) -> Path:
    """``<dir>/<id>``; without ``--experiment-dir``, the folder nnictl's experiment list names."""
    candidates = []
    if experiment_dir:
        base = Path(experiment_dir).expanduser()
        candidates += [base / experiment_id] + ([base] if base.name == experiment_id else [])
    else:
        try:
            entry = json.loads(MANIFEST.expanduser().read_text()).get(experiment_id) or {}
        except (OSError, ValueError):
            entry = {}
        if entry.get("logDir"):
            candidates.append(Path(entry["logDir"]) / experiment_id)
        candidates.append(MANIFEST.expanduser().parent / experiment_id)
    for path in candidates:
        if (path / "db" / "nni.sqlite").is_file():
            return path
    where = experiment_dir or "the folder nnictl lists for it (default ~/nni-experiments)"
    raise ConfigError(f"experiment {experiment_id!r}: no NNI database (db/nni.sqlite) under {where}; "
                      f"pass --experiment-dir, the experiment's experimentWorkingDirectory")


def read_experiment(experiment_id: str, experiment_dir: Optional[str] = None) -> ExperimentRecord:
    directory = find_experiment_dir(experiment_id, experiment_dir)
    db = directory / "db" / "nni.sqlite"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            profiles = con.execute("SELECT params FROM ExperimentProfile ORDER BY revision DESC LIMIT 1").fetchall()
            events = con.execute("SELECT trialJobId, event, data, logPath, sequenceId FROM TrialJobEvent "
                                 "ORDER BY timestamp, rowid").fetchall()
            metrics = con.execute("SELECT trialJobId, parameterId, type, sequence, data FROM MetricData "
                                  "ORDER BY timestamp, rowid").fetchall()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ConfigError(f"{db}: cannot read NNI's database: {err}") from None
    profile = json.loads(profiles[0][0]) if profiles else {}
    trials: dict[str, TrialRow] = {}
    records: dict[str, dict] = {}  # parameter id -> parameters, over all trials
    for trial_id, event, data, log_path, sequence in events:
        row = trials.setdefault(trial_id, TrialRow(trial_id, int(sequence) if sequence is not None else -1))
        row.status = event
        if log_path:
            row.output_dir = log_path
        if data:
            try:
                record = json.loads(data)
            except ValueError:
                continue
            if isinstance(record, dict) and "parameters" in record:
                row.parameters = record.get("parameters") or {}
                row.parameter_id = record.get("parameter_id")
                records[str(row.parameter_id)] = row.parameters
    for trial_id, parameter_id, kind, _sequence, data in metrics:
        row = trials.setdefault(trial_id, TrialRow(trial_id, -1))
        try:
            value = _metric_value(data)
        except ValueError:
            continue
        if kind == "FINAL":
            row.final, row.final_parameter_id = value, parameter_id
        else:
            row.intermediate.append((parameter_id, value))
    for row in trials.values():  # the metrics carry the id of the parameters the trial really ran
        ran = row.final_parameter_id or (row.intermediate[0][0] if row.intermediate else None)
        if ran is not None and str(ran) != str(row.parameter_id) and str(ran) in records:
            row.parameters, row.parameter_id, row.swapped = records[str(ran)], int(ran), True
    ordered = sorted(trials.values(), key=lambda t: (t.sequence, t.trial_id))
    return ExperimentRecord(experiment_id, directory, profile, ordered)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def print_table(exp: ExperimentRecord, best: Optional[TrialRow], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    keys = list(dict.fromkeys(k for t in exp.trials for k in t.parameters))
    metric_keys = ["default", "linear_top1", "ssl_loss", "collapse"]
    headers = {"default": "default (kNN)", "linear_top1": "linear", "ssl_loss": "ssl loss", "collapse": "collapse"}
    name = exp.profile.get("experimentName") or ""
    table = Table(title=f"experiment {exp.experiment_id} {name} ({len(exp.trials)} trials, "
                        f"{exp.optimize_mode} default)")
    table.add_column("no.", justify="right")
    table.add_column("trial", no_wrap=True)
    table.add_column("status", no_wrap=True)
    wide = len(keys) > 5  # e.g. a head search's ten labels: one column, one line per parameter
    for k in (["parameters"] if wide else keys):
        table.add_column(k, overflow="fold")
    table.add_column("epochs", justify="right")
    for k in metric_keys:
        table.add_column(headers[k], justify="right")
    for t in exp.trials:
        status = t.status + (" ★" if best is not None and t is best else "")
        if t.swapped:
            status += f"\n(ran parameter id {t.parameter_id})"
        if t.status == "FAILED":
            reason = t.error_line()
            status += f"\n{reason[:80]}" if reason else ""
        final = t.final or {}
        params = (["\n".join(f"{k}: {_fmt(t.parameters.get(k))}" for k in keys)] if wide
                  else [_fmt(t.parameters.get(k)) for k in keys])
        table.add_row(str(t.sequence), t.trial_id, status, *params,
                      str(len(t.intermediate)), *[_fmt(final.get(k)) for k in metric_keys])
    console.print(table)


def export_best(exp: ExperimentRecord, output: Path) -> tuple[TrialRow, dict]:
    """Write the best trial's architecture record, with its NNI provenance, to ``output``."""
    from experiments.core.records import read_architecture
    from experiments.core.files import write_json_atomic

    best = exp.best()
    if best is None:
        raise ConfigError(f"experiment {exp.experiment_id}: no SUCCEEDED trial with a final result yet "
                          f"({len(exp.trials)} trials); nothing written")
    folder = Path(best.output_dir or "")
    found = [folder / name for name in ARCHITECTURE_FILES if (folder / name).is_file()]
    if not best.output_dir or not found:
        raise ConfigError(f"best trial {best.trial_id}: no {' or '.join(ARCHITECTURE_FILES)} in its output "
                          f"directory {str(folder)!r} (a remote training service keeps it on the remote host: "
                          f"copy the trial directory here first); nothing written")
    record = read_architecture(found[0])
    record["nni"] = {"experiment_id": exp.experiment_id, "trial_id": best.trial_id, "sequence": best.sequence,
                     "parameter_id": best.parameter_id, "parameters": best.parameters, "final": best.final,
                     "trial_output_dir": str(folder), "source_file": found[0].name,
                     "optimize_mode": exp.optimize_mode}
    write_json_atomic(output, record)
    return best, record


def add_arguments(s) -> None:
    s.add_argument("--experiment", required=True, metavar="ID", help="the experiment id nnictl printed")
    s.add_argument("--experiment-dir", metavar="DIR",
                   help="the experiment's experimentWorkingDirectory (default: where nnictl's list says, "
                        "else ~/nni-experiments)")
    s.add_argument("--output", metavar="FILE",
                   help="best architecture JSON (default: runs/nni-<ID>/best_architecture.json)")


def run(args) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=160)
    exp = read_experiment(args.experiment, args.experiment_dir)
    best = exp.best()
    print_table(exp, best, console)
    output = Path(args.output or f"runs/nni-{exp.experiment_id}/best_architecture.json")
    best, record = export_best(exp, output)
    final = ", ".join(f"{k} {_fmt(v)}" for k, v in (best.final or {}).items())
    console.print(f"best trial: no. {best.sequence} ({best.trial_id}): {final}")
    picture = Path(best.output_dir) / "architecture_weights.png"
    if picture.is_file():
        console.print(f"its architecture weights: {picture}")
    console.print(f"written: {output}  (python -m experiments retrain --config <config> --arch {output})")
    return 0
