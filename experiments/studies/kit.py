"""What every study shares: its grid of arms x seeds, a run cache, Kendall's tau, the bootstrap over
networks, mean ± sd, the machine it ran on and the one writer of a table between a page's markers.

A study is one module under ``experiments/studies/`` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, and one entry in ``experiments.studies.STUDIES``; ``python -m experiments study
NAME ...`` runs it. Committed results live under :data:`RESULTS` (``docs/results/``). The kit imports
nothing of the studies (they import it).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import statistics
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
#: the one root of the studies' committed results (caches, assembled JSON, per-study pages)
RESULTS = ROOT / "docs" / "results"
#: the results page: each study's short table between its markers (the README links to it, so the front page
#: stays short)
RESULTS_PAGE = ROOT / "docs" / "results.md"


def quiet() -> None:
    """The tables are a study's output: Lightning's and NNI's chatter below warnings is not."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "nni"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")


# --- the grid and the cache ------------------------------------------------------------------------
def grid(arms: Iterable, seeds: Iterable[int], seed_major: bool = True) -> list[tuple[Any, int]]:
    """Every (arm, seed) pair. Seed-major (every arm at one seed before the next) keeps a killed study
    balanced; arm-major finishes one arm's seeds first."""
    arms, seeds = list(arms), list(seeds)
    if seed_major:
        return [(arm, seed) for seed in seeds for arm in arms]
    return list(itertools.product(arms, seeds))


def config_key(config: Any) -> str:
    """A short hash of a run's whole config (a dict, or anything with ``to_dict()``): two configs that
    differ in any field that changes the result get different keys; key order does not matter."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cached(path: Path, compute: Callable[[], Any], log: Callable[[str], None] = print) -> Any:
    """The record at ``path`` if there is one; else ``compute()``, written there (atomically) first. Either
    way the record as the file holds it (tuples read back as lists), so a first run and a rerun see the same.
    One JSON file per run: a killed study loses at most the run in flight."""
    from experiments.core.files import write_json_atomic

    path = Path(path)
    if path.is_file():
        log(f"cached: {path.name}")
    else:
        write_json_atomic(path, compute())
    return json.loads(path.read_text())


class RunCache:
    """One JSON file per run under ``root``, named by the run's readable ``name`` and :func:`config_key` of
    its full config; the config is stored inside and must match on reading (a hash collision or a hand
    edit reruns the run rather than reading someone else's result)."""

    def __init__(self, root: Path, log: Callable[[str], None] = lambda line: None):
        self.root, self.log = Path(root), log

    def path(self, name: str, config: Any) -> Path:
        return self.root / f"{name}__{config_key(config)}.json"

    def run(self, name: str, config: Any, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(the run's result, whether it ran now): read when cached with the same config, else computed."""
        from experiments.core.files import write_json_atomic

        plain = json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, default=str))
        path = self.path(name, plain)
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("config") == plain:
                self.log(f"cached: {path.name}")
                return record["result"], False
        result = compute()
        write_json_atomic(path, {"config": plain, "result": result})
        return result, True


# --- statistics ------------------------------------------------------------------------------------
def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (scipy's): NaN when either side is constant."""
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def resampled_interval(n: int, statistic: Callable, rounds: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of ``statistic(indices)`` over ``n`` networks resampled with replacement
    (NaN resamples, e.g. a constant one, are dropped). Paired: a statistic that compares two rankers
    on the same ``indices`` gives the interval of their difference."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        t = statistic(rng.integers(0, n, n))
        if t == t:
            values.append(t)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_tau(x: Sequence[float], y: Sequence[float], rounds: int, seed: int) -> tuple[float, float]:
    """95% interval of Kendall's tau between ``x`` and ``y`` over the networks resampled with replacement."""
    import numpy as np

    x, y = np.asarray(x), np.asarray(y)
    return resampled_interval(len(x), lambda idx: kendall(x[idx], y[idx]), rounds, seed)


def bootstrap_paired(a: Sequence[float], b: Sequence[float], truth: Sequence[float], rounds: int,
                     seed: int) -> tuple[float, float]:
    """95% interval of tau(a, truth) - tau(b, truth), both on the same resamples of the networks."""
    import numpy as np

    a, b, truth = np.asarray(a), np.asarray(b), np.asarray(truth)
    return resampled_interval(len(truth), lambda idx: kendall(a[idx], truth[idx]) - kendall(b[idx], truth[idx]),
                              rounds, seed)


def bootstrap_mean(values: Sequence[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of ``values`` (e.g. per-seed agreements) resampled with replacement."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    return resampled_interval(len(v), lambda idx: float(v[idx].mean()), rounds, seed)


def mean_sd(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation of the values that are not None (sd None below two values)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_sd_text(values: Iterable[float], digits: int = 3, lone_sd: bool = False) -> str:
    """``mean ± sd`` (one value: the mean alone, or ``± 0.000`` with ``lone_sd``)."""
    mean, sd = mean_sd(values)
    if sd is None and not lone_sd:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd or 0.0:.{digits}f}"


# --- where a measured run trains and at what size ----------------------------------------------------
# The ImageFolder copy of CIFAR-10 beside the project (../shared/data, see its README.md);
# a git worktree one level deeper finds it one folder further up.
CIFAR10 = next((p / "shared" / "data" / "cifar10" for p in (ROOT.parent, ROOT.parent.parent)
                if (p / "shared" / "data" / "cifar10" / "train").is_dir()), ROOT.parent / "shared" / "data" / "cifar10")


def run_arguments(parser, width: float = 0.25, batch_size: int = 128) -> None:
    """Where and at what size a measured run trains: device, data, network size, batch, threads, seed, output."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when present, else CPU")
    parser.add_argument("--dataset", default="auto", choices=("auto", "cifar10", "digits"),
                        help="auto: CIFAR-10 when --cifar10 is present, else digits upscaled to 32 px")
    parser.add_argument("--cifar10", default=str(CIFAR10), help="CIFAR-10 as an ImageFolder (train/, test/)")
    parser.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet34", "resnet50"))
    parser.add_argument("--width", type=float, default=width, help="backbone width multiplier (1.0: 512 features)")
    parser.add_argument("--head-width", type=float, default=None, help="head width multiplier (default: --width)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loader workers (default: 0 on CPU, 8 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the package's thread policy, experiments/core/machine.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the results")


def resolve_run_arguments(args):
    """``run_arguments``' automatic values made concrete for this machine (and torch's threads set)."""
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    cifar = Path(args.cifar10)
    if args.dataset == "auto":
        args.dataset = "cifar10" if (cifar / "train").is_dir() else "digits"
    if args.dataset == "cifar10" and not (cifar / "train").is_dir():
        raise SystemExit(f"error: --dataset cifar10 needs {cifar}/train (an ImageFolder copy of CIFAR-10)")
    if args.head_width is None:
        args.head_width = args.width
    if args.workers is None:
        args.workers = 8 if args.device == "cuda" else 0
    if not args.threads:  # what a job would take here (batched views: no loader workers)
        from experiments.core.machine import choose_thread_policy, usable_cores

        args.threads = choose_thread_policy(None, 0, True, usable_cores(), os.environ.get("OMP_NUM_THREADS")).threads
    torch.set_num_threads(args.threads)
    return args


# --- where it ran and where it goes ------------------------------------------------------------------
def machine() -> dict:
    """Library versions, CPU model and load average: what a study's times were measured on."""
    from experiments.core.records import versions

    info = {**versions(), "load_average": list(os.getloadavg())}
    cpu = cpu_model()
    if cpu is not None:
        info["cpu"] = cpu
    return info


def cpu_model() -> Optional[str]:
    """The CPU's model name (Linux's /proc/cpuinfo); None where it cannot be read."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return None


def write_between_markers(path: Path, text: str, begin: str, end: str, title: str = "") -> None:
    """Put ``text`` between the page's ``begin`` and ``end`` markers, keeping the hand-written text around them
    (a page without them gets them appended; a missing page starts with ``title``)."""
    from experiments.core.files import write_text_atomic

    path = Path(path)
    page = path.read_text() if path.is_file() else ""
    if begin in page and end in page:
        before, rest = page.split(begin, 1)
        after = rest.split(end, 1)[1]
    else:
        before, after = (page + "\n" if page else (f"{title}\n\n" if title else "")), "\n"
    write_text_atomic(path, f"{before}{begin}\n{text}\n{end}{after}")


def page_argument(parser, what: str) -> None:
    """``--page [PATH]``: also write the study's short table (``what``) between its markers in PATH, the results
    page when PATH is left out. ``--readme`` is its former name (the tables were in the README then)."""
    parser.add_argument("--page", "--readme", dest="page", type=Path, nargs="?", const=RESULTS_PAGE, default=None,
                        metavar="PATH", help=f"{what} into PATH between its markers (PATH left out: "
                                             f"{RESULTS_PAGE.relative_to(ROOT)})")


def report(name: str, title: str, columns: list[str], rows: list[dict], path: Path, command_line: str,
           arguments: dict, info: dict, summary: Optional[dict] = None, notes: Optional[list[str]] = None) -> Path:
    """Print ``rows`` as a rich table (captioned with the machine) and write them, with the machine, the
    command and its arguments, as one JSON record at ``path``."""
    from datetime import datetime, timezone

    from rich.console import Console
    from rich.table import Table

    from experiments.core.files import write_json_atomic

    table = Table(title=title, caption=f"{info.get('cpu', info.get('machine'))}; {info.get('cuda') or 'no CUDA'}; "
                                         f"torch {info.get('torch')}; load {info['load_average'][0]:.1f}")
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file keeps every column
    console.print(table)
    for key, value in (summary or {}).items():
        console.print(f"{key}: {_cell(value)}")
    for note in notes or []:
        console.print(note)
    write_json_atomic(Path(path), {
        "benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line, "arguments": arguments, "machine": info, "rows": rows, "summary": summary or {},
        "notes": notes or []})
    console.print(f"written: {path}")
    return Path(path)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def command(name: str, *arguments: str) -> str:
    """The command line that reruns study ``name``."""
    return " ".join(["python -m experiments study", name, *arguments])


#: the scripts and modules the studies were run as before they moved here, and the command of each now
FORMER_COMMANDS = {
    "python -m benchmarks.ranking_nas_bench_macro": "ranking", "python -m benchmarks.ssl_ground_truth": "ssl-ground-truth",
    "python -m benchmarks.width_ranking": "width-ranking", "python -m benchmarks.width_study": "width",
    "python -m benchmarks.topology_search": "topology", "python -m benchmarks.prune_study": "prune",
    "python -m benchmarks.arch_every": "arch-every", "python -m benchmarks.vit_ranking": "vit-ranking",
    "python -m benchmarks.vit_vs_deit": "vit-vs-deit", "python -m benchmarks.frameworks_knn": "frameworks-knn",
    "python -m benchmarks.mcts_simulation": "mcts-simulation",
    "python -m experiments.study": "head", "python -m experiments head-study": "head",
    "python -m experiments.backbone_study": "backbone", "python -m experiments backbone-study": "backbone",
}


def current_command(recorded: str) -> str:
    """A command recorded in a cached run, as it is typed today (the study's module moved, its options did not)."""
    for former, name in FORMER_COMMANDS.items():
        at = recorded.find(former)  # after any VAR=value settings in front of it
        end = at + len(former)
        if at >= 0 and (at == 0 or recorded[at - 1] == " ") and recorded[end:end + 1] in ("", " "):
            return recorded[:at] + command(name) + recorded[end:]
    return recorded


def options_of(args) -> dict:
    """A study's parsed options as a record keeps them: the command line's own entries (which job, which
    function runs it, the raw argv) left out."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("argv", "run", "job", "study") and not callable(v)}


def invoked() -> str:
    """The command line this process was started with, for a run's record."""
    import sys

    return " ".join(["python -m experiments", *sys.argv[1:]])


def budget_tag(budget: dict) -> str:
    """A short, readable name of a budget: epochs, images, width and a hash of all of it."""
    digest = hashlib.sha1(json.dumps(budget, sort_keys=True).encode()).hexdigest()[:8]
    return f"e{budget['epochs']}-n{budget['train_images']}-w{budget['width']}-{digest}"
