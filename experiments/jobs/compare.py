"""Compare runs at a glance: one table of run directories, and accuracy against FLOPs.

``python -m experiments compare runs/*`` reads what each run left (``run.json``, ``status.json``
and its result file) and prints one row per run: job, framework, space, strategy, budget,
FLOPs, parameters, kNN, linear, collapse, wall time, status; as Markdown or CSV, sorted by any
column. Runs that report FLOPs (backbone searches, prunes) are also drawn as accuracy against
FLOPs with the Pareto front marked. It reads only: no run is changed.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from experiments.core.errors import ConfigError

NAME = "compare"
HELP = "one table of runs (job, space, strategy, budget, FLOPs, kNN, linear, status), and a Pareto plot"

#: each job's result file, in the order they are looked for
RESULT_FILES = ("best_architecture.json", "retrain_results.json", "prune_results.json")
#: column key -> heading; the keys are what ``--sort`` takes
COLUMNS = {
    "run": "run", "job": "job", "framework": "framework", "space": "space", "strategy": "strategy",
    "budget": "budget", "flops": "FLOPs", "params": "params", "knn": "kNN", "linear": "linear",
    "collapse": "collapse", "seconds": "wall s", "status": "status",
}
NUMERIC = ("flops", "params", "knn", "linear", "collapse", "seconds")
METRICS = {"knn": "kNN top-1", "linear": "linear top-1"}


@dataclass
class RunRow:
    """One run's line of the table; a missing figure is None."""
    run: str
    job: str
    framework: str
    space: str
    strategy: str
    budget: str
    flops: Optional[float]
    params: Optional[float]
    knn: Optional[float]
    linear: Optional[float]
    collapse: Optional[float]
    seconds: Optional[float]
    status: str

    def value(self, key: str) -> Any:
        return getattr(self, key)


def _read_json(path: Path, what: str) -> Optional[dict]:
    """A run's JSON file, None when absent; unreadable or not a mapping is one error line."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the {what} ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} is not a JSON mapping")
    return data


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _space(config: dict, job: str) -> str:
    model = config.get("model") or {}
    backbone, heads = model.get("backbone", "?"), model.get("head_space", "fixed")
    if job == "search":  # a head search: the heads are what it searched
        return f"{heads} heads on {backbone}"
    return str(backbone) if heads in (None, "fixed") else f"{backbone} + {heads} heads"


def _strategy(config: dict, job: str, record: dict) -> str:
    if job == "prune":
        return str((record.get("pruning") or {}).get("method", "-"))
    if record.get("strategy"):
        return str(record["strategy"])
    section = {"search": "search", "backbone-search": "backbone_search"}.get(job)
    return str((config.get(section) or {}).get("strategy", "-")) if section else "-"


def _budget(config: dict, job: str, record: dict) -> str:
    """Epochs and training images; a search's FLOPs or parameter budget; a prune's target."""
    section = {"search": "search", "backbone-search": "search", "retrain": "train"}.get(job)
    parts = []
    if section and (config.get(section) or {}).get("epochs") is not None:
        parts.append(f"{config[section]['epochs']} ep")
    if job == "prune":
        pruning = record.get("pruning") or {}
        if pruning.get("target") is not None:
            parts.append(f"{pruning.get('quantity', 'flops')} x{pruning['target']}")
    images = (record.get("dataset") or {}).get("train_images") or (config.get("data") or {}).get("train_subset")
    if images:
        parts.append(f"{images} img")
    budget = (record.get("budget") or config.get("backbone_search") or {}) if job == "backbone-search" else {}
    for key, unit in (("max_flops", "FLOPs"), ("max_params", "params")):
        if _number(budget.get(key)) is not None:
            parts.append(f"<= {budget[key]:,.0f} {unit}")
    return ", ".join(parts) or "-"


def _cost(record: dict) -> tuple[Optional[float], Optional[float]]:
    cost = record.get("cost") or (record.get("pruning") or {}).get("after") or {}
    return _number(cost.get("flops")), _number(cost.get("params"))


def _seconds(metrics: dict) -> Optional[float]:
    parts = [_number(metrics.get(k)) for k in ("search_seconds", "select_seconds", "train_seconds", "seconds")]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def read_run(directory: Path) -> RunRow:
    """The table row of one run directory (finished or not)."""
    claim = _read_json(directory / "run.json", "run record")
    if claim is None:
        raise ConfigError(f"{directory}: not a run directory (no run.json)")
    job = str(claim.get("job", "?"))
    config = claim.get("config") if isinstance(claim.get("config"), dict) else {}
    state = (_read_json(directory / "status.json", "run status") or {}).get("state", "unknown")
    record: dict = {}
    for name in RESULT_FILES:
        found = _read_json(directory / name, "result")
        if found is not None:
            record = found
            break
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    status = str(state)
    if record.get("status") not in (None, "ok"):
        status = f"{state} ({record['status']})"
    flops, params = _cost(record)
    return RunRow(
        run=str(directory), job=job, framework=str(record.get("framework") or config.get("framework", "?")),
        space=_space(config, job), strategy=_strategy(config, job, record), budget=_budget(config, job, record),
        flops=flops, params=params, knn=_number(metrics.get("knn_top1")), linear=_number(metrics.get("linear_top1")),
        collapse=_number(metrics.get("collapse")), seconds=_seconds(metrics), status=status)


def sort_rows(rows: Sequence[RunRow], key: Optional[str], reverse: bool = False) -> list[RunRow]:
    """Numbers high to low (the best accuracy first), text A to Z; missing figures last; ``reverse`` flips."""
    if key is None:
        return list(rows)
    present = [r for r in rows if r.value(key) is not None]
    missing = [r for r in rows if r.value(key) is None]
    descending = key in NUMERIC
    present.sort(key=lambda r: r.value(key), reverse=descending != reverse)
    return present + missing


def _cell(row: RunRow, key: str) -> str:
    value = row.value(key)
    if value is None:
        return "-"
    if key in ("flops", "params"):
        return f"{value:,.0f}"
    if key == "seconds":
        return f"{value:.1f}"
    if key in ("knn", "linear", "collapse"):
        return f"{value:.3f}"
    return str(value)


def render_markdown(rows: Sequence[RunRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS.values()) + " |",
             "|" + "|".join("---:" if k in NUMERIC else "---" for k in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(r, k).replace("|", "\\|") for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[RunRow]) -> str:
    """Raw numbers (no thousands separators, full precision), one header row of the column keys."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if r.value(k) is None else r.value(k) for k in COLUMNS])
    return buffer.getvalue()


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: fewer or equal FLOPs and higher or equal accuracy, one strictly."""
    front = []
    for i, (f, a) in enumerate(points):
        dominated = any((g <= f and b >= a) and (g < f or b > a) for j, (g, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows: Sequence[RunRow], path: Path, metric: str = "knn") -> Optional[Path]:
    """Accuracy against FLOPs of every run that reports both, the Pareto front joined; None if none does."""
    drawn = [r for r in rows if r.flops is not None and r.value(metric) is not None]
    if not drawn:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r.flops, r.value(metric)) for r in drawn]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:gray", label="run", zorder=2)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", marker="o",
            drawstyle="steps-post", label="Pareto front", zorder=3)
    for r, (f, a) in zip(drawn, points):
        ax.annotate(Path(r.run).name, (f, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("backbone FLOPs")
    ax.set_ylabel(METRICS[metric])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{METRICS[metric]} against FLOPs ({len(drawn)} runs)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", help="run directories (e.g. runs/*); paths without a run.json are skipped")
    p.add_argument("--sort", choices=sorted(COLUMNS), help="sort by this column (numbers high to low, text A-Z)")
    p.add_argument("--reverse", action="store_true", help="reverse the sort order")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="table format (default markdown)")
    p.add_argument("--output", help="write the table to this file (default: print it)")
    p.add_argument("--plot", default="compare.png",
                   help="PNG of accuracy against FLOPs with the Pareto front (default compare.png; 'none' for no plot)")
    p.add_argument("--metric", choices=sorted(METRICS), default="knn", help="accuracy on the plot (default knn)")


def run(args) -> int:
    directories = [Path(r) for r in args.runs]
    candidates = [d for d in directories if (d / "run.json").exists()]
    if not candidates:
        raise ConfigError(f"none of the {len(directories)} path(s) is a run directory (a directory with run.json)")
    rows = sort_rows([read_run(d) for d in candidates], args.sort, args.reverse)
    skipped = len(directories) - len(candidates)
    text = render_csv(rows) if args.format == "csv" else render_markdown(rows)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written: {out} ({len(rows)} runs)")
    else:
        sys.stdout.write(text)
    if args.plot != "none":
        drawn = plot_pareto(rows, Path(args.plot), args.metric)
        if drawn is not None:
            print(f"plot: {drawn} ({args.metric} against FLOPs, Pareto front marked)")
    if skipped:
        sys.stdout.flush()
        print(f"skipped {skipped} path(s) without run.json", file=sys.stderr)
    return 0
