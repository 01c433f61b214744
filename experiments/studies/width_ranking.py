"""A width ground truth small enough to train here, and how well each width strategy's supernet ranks it.

    python -m experiments study width-ranking [--objectives supervised simsiam] [--gt-seeds ...] [--gt-epochs N]
        [--seeds 0 1] [--strategies autoslim bcnet cafenet] [--search-epochs 20] [--channel-bench PATH]
        [--bootstrap 1000] [--docs] [--table-only]

The space: ``nas_bench_macro_width`` with one layer per stage and four widths per layer
(``backbone_options: {stages: [1, 1, 1], bins: 4}``, backbone width 0.25, ``mb3_k3``): 3 layers x 4
hidden widths = 64 networks, on scikit-learn's digits (8x8, no download).

*Ground truth*, one per objective (``--objectives``), every network trained alone:

- ``supervised``: the backbone plus a linear classifier, cross-entropy, SGD (lr 0.1, momentum 0.9, weight decay
  5e-4, cosine), batch 64, no augmentation, 4 epochs on digits' training split; top-1 on its test split; seeds 0-3.
- ``simsiam``: the retrain job on one thread (the ssl-ground-truth study's digits budget: batch 128, head
  width 0.25, lr 0.06, its grey-digit augmentation) for 20 epochs; kNN (k=20, the ranking metric) and linear-probe
  top-1 of the frozen backbone on the test split; seeds 0-2.

``--gt-seeds`` / ``--gt-epochs`` replace those defaults. One JSON per (network, objective, seed) under
``docs/results/width_ground_truth/``: ``<widths>__seed<s>__e<epochs>.json`` for ``supervised`` (the names it
had before other objectives), ``<widths>__<objective>__seed<s>__e<epochs>.json`` for the others. A rerun reads them
back and trains only what is missing (network by network, every seed of one network before the next).

*Ranking.* For each objective, strategy and seed, the backbone-search job's own ``prepare`` and ``train_supernet``
train the strategy's supernet for ``--search-epochs``; then each of the 64 networks is scored as the strategy scores
a width in its search (``WidthStrategy.score``: AutoSlim its first channels, BCNet the mean of its left and right
sides, CafeNet its remembered lowest-loss placement), each after BatchNorm recalibration: classifier top-1 on
held-out training images (``simsiam``: kNN top-1 of the backbone's features). One JSON per (strategy, objective,
seed) under ``docs/results/width_ranking/``. Reported per ground truth (each objective's supernets against
its own objective's truth): Kendall's tau against the truth's mean over its seeds per supernet seed, their mean
and standard deviation, a 95% bootstrap interval of the mean over the networks, the difference from AutoSlim's mean
on the same resamples, FLOPs and parameters as label-free rankers, and the noise ceiling (the two halves of the
truth's seeds against each other: seed against seed with two).

*Channel-Bench-Macro* (``--channel-bench PATH``, its ``Results_MobileNet.json`` or ``Results_ResNet.json``; not
shipped, it has no licence): every supernet run is also ranked against its CIFAR-10 accuracies of the 64 keys that
carry our widths (:data:`CHANNEL_BENCH_LAYERS`). A path that is not its table: one ``error:`` line, exit 2.
``--docs`` writes the tables into ``docs/width-search.md`` between its markers.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from experiments.studies.kit import (RESULTS, ROOT, cached, command, invoked, kendall, machine, page_argument,
                                     quiet, resampled_interval, write_between_markers)

NAME = "width-ranking"
HELP = "a width ground truth small enough to train here, and how well each width strategy's supernet ranks it"
GT_DIR = RESULTS / "width_ground_truth"
RANK_DIR = RESULTS / "width_ranking"
DOCS = ROOT / "docs" / "width-search.md"
DOCS_BEGIN = f"<!-- width ranking tables: written by {command(NAME, '--docs')}; edits here are lost -->"
DOCS_END = "<!-- end of the width ranking tables -->"
SUMMARY_BEGIN = f"<!-- width ranking summary: written by {command(NAME, '--readme')} -->"
SUMMARY_END = "<!-- end of the width ranking summary -->"
SPACE = {"stages": [1, 1, 1], "bins": 4}
WIDTH = 0.25


LEARNING_RATES = {"supervised": 0.1, "simsiam": 0.06}
# The ground truth of each objective: its default seeds and epochs, and the metric that ranks it.
GT_SEEDS = {"supervised": [0, 1, 2, 3], "simsiam": [0, 1, 2]}
GT_EPOCHS = {"supervised": 4, "simsiam": 20}
GT_METRIC = {"supervised": "test_top1", "simsiam": "knn_top1"}


def overrides(strategy: str, objective: str, seed: int, epochs: int) -> dict:
    return {
        "framework": objective, "seed": seed, "data.dataset": "digits", "data.batch_size": 64,
        "data.search_split": 0.5, "model.backbone": "nas_bench_macro_width", "model.backbone_width": WIDTH,
        "model.backbone_options": SPACE, "model.head_space": "fixed", "model.head_width": 0.25,
        "optim.lr": LEARNING_RATES[objective],
        "search.epochs": epochs, "search.warmup_epochs": 0, "backbone_search.strategy": strategy,
        "backbone_search.max_flops": None, "backbone_search.bn_batches": 4, "backbone_search.score_images": 500,
        "evaluation.knn_k": 20, "evaluation.monitor_every_n_epochs": 1000, "trainer.progress_bar": False,
        "trainer.accelerator": "cpu",
    }


@functools.lru_cache(maxsize=1)
def width_choices() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Each layer's label and its hidden widths (channels), in the space's order (built once: a space is slow)."""
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace

    labels = BackboneCost(MacroWidthSpace(width=WIDTH, **SPACE), 8).labels
    return tuple((label, tuple(values)) for label, values in labels.items())


def all_widths() -> list[dict]:
    labels = [label for label, _ in width_choices()]
    return [dict(zip(labels, values)) for values in itertools.product(*(v for _, v in width_choices()))]


def name_of(architecture: dict) -> str:
    return "-".join(str(architecture[k]) for k in sorted(architecture))


def train_alone(architecture: dict, seed: int, epochs: int) -> dict:
    """One network of the space trained from scratch, supervised; its test top-1."""
    import math

    import torch
    from torch import nn

    from experiments.core.data import channel_stats, load_images, normalized
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace

    torch.manual_seed(seed)
    train, test = load_images("digits", "train", None, None, seed), load_images("digits", "test", None, None, seed)
    mean, std = channel_stats(train.images)
    x, y = normalized(train, mean, std), train.labels
    xt, yt = normalized(test, mean, std), test.labels
    space = MacroWidthSpace(width=WIDTH, **SPACE)
    backbone = space.freeze(architecture)
    network = nn.Sequential(backbone, nn.Linear(space.feature_dim, len(train.classes)))
    opt = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = epochs * math.ceil(len(x) / 64)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        network.train()
        for idx in torch.randperm(len(x), generator=generator).split(64):
            if len(idx) < 2:
                continue
            loss = nn.functional.cross_entropy(network(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    network.eval()
    with torch.no_grad():
        accuracy = float((network(xt).argmax(1) == yt).float().mean())
    cost = BackboneCost(space, 8)(architecture)
    return {"architecture": architecture, "seed": seed, "epochs": epochs, "test_top1": accuracy,
            "final_loss": loss.item(), "flops": cost.flops, "params": cost.params,
            "seconds": time.perf_counter() - start, "machine": machine(),
            "command": invoked()}


def train_alone_ssl(architecture: dict, objective: str, seed: int, epochs: int, workdir: Path) -> dict:
    """One network of the space trained from scratch under an SSL objective (the retrain job, one thread, the
    digits budget of the ssl-ground-truth study at ``epochs``): kNN and linear top-1 of its backbone."""
    from experiments.studies.networks_alone import BUDGETS, config_for, retrain_alone
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace

    budget = dict(BUDGETS["digits"], epochs=epochs, width=WIDTH)
    out = workdir / f"{name_of(architecture)}-{objective}-seed{seed}"
    cfg = config_for(objective, seed, budget, None, out,
                     {"model.backbone": "nas_bench_macro_width", "model.backbone_options": SPACE})
    result, wall, cpu = retrain_alone(cfg, architecture, out)
    metrics, cost = result["metrics"], BackboneCost(MacroWidthSpace(width=WIDTH, **SPACE), 8)(architecture)
    return {"architecture": architecture, "objective": objective, "seed": seed, "epochs": epochs, "budget": budget,
            "knn_top1": metrics["knn_top1"], "linear_top1": metrics["linear_top1"], "collapse": metrics["collapse"],
            "final_loss": result["history"][-1]["ssl_loss"], "flops": cost.flops, "params": cost.params,
            "cpu_seconds": cpu, "wall_seconds": wall, "machine": machine(),
            "command": invoked()}


def rank_with(strategy: str, objective: str, seed: int, epochs: int, widths: list[dict], log) -> dict:
    """Train the strategy's supernet, score every width as the strategy does."""
    import tempfile

    from experiments.core.validation import load_config
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.strategies import STRATEGIES

    cfg = load_config(None, overrides(strategy, objective, seed, epochs))
    setup = prepare(cfg, log_fn=log)
    with tempfile.TemporaryDirectory() as out:
        nni_strategy, monitor, train_seconds = train_supernet(setup, Path(out), log_fn=log)
    start = time.perf_counter()
    scores = [STRATEGIES[strategy].score(setup.scorer, nni_strategy, w) for w in widths]
    return {"strategy": strategy, "objective": objective, "seed": seed, "search_epochs": epochs, "widths": widths, "scores": scores,
            "seconds": {"train": train_seconds, "score": time.perf_counter() - start},
            "final_epoch": monitor.history[-1] if monitor.history else None, "machine": machine(),
            "command": invoked()}


@dataclass
class Truth:
    """A ground truth over some of the space's networks: ``per_seed[s][n]`` is seed ``s``'s accuracy of network
    ``networks[n]`` (an index into :func:`all_widths`); ``flops`` and ``params`` are the label-free rankers."""

    name: str
    objective: Optional[str]  # rank only the supernets trained under it (None: every objective)
    networks: list[int]
    per_seed: list[list[float]]
    flops: list[float]
    params: list[float]


def own_truth(objective: str, runs: dict[int, dict[int, dict]], metric: Optional[str] = None) -> Optional[Truth]:
    """The space's ground truth of ``objective`` (by ``metric``, default its own) on the networks that every seed
    reached (None if fewer than 3)."""
    metric = metric or GT_METRIC[objective]
    seeds = sorted(runs)
    networks = sorted(set.intersection(*(set(runs[s]) for s in seeds))) if seeds else []
    if len(networks) < 3:
        return None
    first = runs[seeds[0]]
    return Truth(f"{objective} ground truth ({metric}, seeds {seeds})", objective, networks,
                 [[runs[s][n][metric] for n in networks] for s in seeds],
                 [first[n]["flops"] for n in networks], [first[n]["params"] for n in networks])


def agreement(a: Truth, b: Truth, rounds: int) -> str:
    """One Markdown row: tau between two ground truths' means over seeds on the networks both have."""
    import numpy as np

    common = sorted(set(a.networks) & set(b.networks))
    x, y = ([float(np.mean(t.per_seed, axis=0)[t.networks.index(n)]) for n in common] for t in (a, b))
    lo, hi = resampled_interval(len(common), lambda idx: kendall(np.asarray(x)[idx], np.asarray(y)[idx]), rounds, 0)
    return f"| {a.name} | {b.name} | {kendall(x, y):.3f} | [{lo:+.2f}, {hi:+.2f}] | {len(common)} |"


def mean_tau(score_lists: list, truth, idx=None) -> float:
    """The mean over supernet seeds of Kendall's tau against ``truth`` (on the networks ``idx`` if given)."""
    import numpy as np

    truth = np.asarray(truth)
    idx = np.arange(len(truth)) if idx is None else idx
    return float(np.mean([kendall(np.asarray(s)[idx], truth[idx]) for s in score_lists]))


def seed_halves(truth: Truth):
    """The noise ceiling's two sides: the mean of the first half of the truth's seeds and of the rest, and a label."""
    import numpy as np

    half = len(truth.per_seed) // 2
    first, second = (np.mean(truth.per_seed[part], axis=0) for part in (slice(0, half), slice(half, None)))
    label = "one seed against the other" if len(truth.per_seed) == 2 else \
        f"mean of its first {half} seeds against the rest"
    return first, second, label


def table(truth: Truth, runs: list[dict], rounds: int = 1000, baseline: str = "autoslim") -> str:
    """Markdown: each ranker's tau against the truth's mean over its seeds with a 95% bootstrap interval over the
    networks (for a supernet: of its mean tau over supernet seeds, and of its difference from ``baseline``'s on the
    same resamples), and its pick within a budget (the median FLOPs): the pick's true accuracy and its rank in budget."""
    import numpy as np

    n = len(truth.networks)
    mean_truth = np.mean(truth.per_seed, axis=0)
    flops = truth.flops
    in_budget = [i for i, f in enumerate(flops) if f <= np.median(flops)]
    order = sorted(in_budget, key=lambda i: -mean_truth[i])

    def pick(scores) -> str:  # the best-scored network within budget (ties: fewer FLOPs)
        i = max(in_budget, key=lambda j: (scores[j], -flops[j]))
        return f"{mean_truth[i]:.3f} ({order.index(i) + 1})"

    def interval(statistic) -> str:
        lo, hi = resampled_interval(n, statistic, rounds, 0)
        return f"[{lo:+.2f}, {hi:+.2f}]"

    rows: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: (r.get("objective", "supervised"), r["strategy"], r["seed"])):
        if truth.objective in (None, run.get("objective", "supervised")):
            rows.setdefault(f"{run['strategy']} ({run.get('objective', 'supervised')})", []).append(run)
    scores = {key: [[run["scores"][i] for i in truth.networks] for run in group] for key, group in rows.items()}
    lines = [f"Against the {truth.name}, {n} networks; intervals: 95% bootstrap over the networks ({rounds} resamples).",
             "", f"| ranker | tau per supernet seed | mean tau (sd over seeds) | 95% interval | minus {baseline}: "
             f"mean [95% interval] | pick within {int(np.median(flops)):,} FLOPs: top-1 (rank of {len(in_budget)}) |",
             "|---|---|---|---|---|---|"]
    for key, lists in scores.items():
        taus = [kendall(s, mean_truth) for s in lists]
        base = scores.get(key.replace(key.split(" ")[0], baseline, 1))
        versus = "-"
        if base is not None and not key.startswith(baseline + " "):
            diff = lambda idx, a=lists, b=base: mean_tau(a, mean_truth, idx) - mean_tau(b, mean_truth, idx)  # noqa: E731
            versus = f"{diff(None):+.3f} {interval(diff)}"
        lines.append(f"| {key.replace(' (', ' supernet (')} | {', '.join(f'{t:.3f}' for t in taus)} | "
                     f"{np.mean(taus):.3f} ({np.std(taus):.3f}) | "
                     f"{interval(lambda idx, a=lists: mean_tau(a, mean_truth, idx))} | {versus} | "
                     f"{', '.join(pick(s) for s in lists)} |")
    for name, values in (("FLOPs", flops), ("parameters", truth.params)):
        lines.append(f"| {name} (label-free) | - | {kendall(values, mean_truth):.3f} | "
                     f"{interval(lambda idx, v=values: mean_tau([v], mean_truth, idx))} | - | {pick(values)} |")
    if len(truth.per_seed) >= 2:
        first, second, halves = seed_halves(truth)
        lines.append(f"| noise ceiling: {halves} | - | "
                     f"{kendall(first, second):.3f} | {interval(lambda idx: mean_tau([first], second, idx))} | - | "
                     f"best in budget: {mean_truth[order[0]]:.3f} (1) |")
    return "\n".join(lines)


def summary(truths: list[Truth], runs: list[dict], rounds: int = 1000) -> str:
    """The results page's table: strategy x objective (mean tau over supernet seeds, each seed's in brackets), each
    objective's supernets against its own truth, then the label-free rankers and the noise ceiling per objective,
    each with its 95% bootstrap interval over the networks."""
    import numpy as np

    columns = [t for t in truths if t is not None]
    means = {t.objective: np.mean(t.per_seed, axis=0) for t in columns}
    strategies = sorted({run["strategy"] for run in runs})
    header = "| ranker | " + " | ".join(f"{t.objective} ({len(t.per_seed)} truth seeds)" for t in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for strategy in strategies:
        row = []
        for t in columns:
            group = sorted((r for r in runs if r["strategy"] == strategy and r.get("objective", "supervised")
                            == t.objective), key=lambda r: r["seed"])
            taus = [kendall([r["scores"][i] for i in t.networks], means[t.objective]) for r in group]
            row.append(f"{np.mean(taus):+.3f} ({' / '.join(f'{x:+.2f}' for x in taus)})" if taus else "-")
        lines.append(f"| {strategy} supernet | " + " | ".join(row) + " |")
    for name in ("FLOPs", "parameters", "noise ceiling"):
        row = []
        for t in columns:
            truth = means[t.objective]
            if name == "noise ceiling":
                if len(t.per_seed) < 2:
                    row.append("-")
                    continue
                values, truth, _ = seed_halves(t)
            else:
                values = t.flops if name == "FLOPs" else t.params
            lo, hi = resampled_interval(len(truth), lambda idx, v=values, g=truth: mean_tau([v], g, idx), rounds, 0)
            row.append(f"{kendall(values, truth):+.3f} [{lo:+.2f}, {hi:+.2f}]")
        lines.append(f"| {name}{' (label-free)' * (name != 'noise ceiling')} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# --- Channel-Bench-Macro (xiusu/Channel-Bench-Macro: not shipped, it has no licence) ---------------------------
# Its table is a JSON object keyed by seven digits, one per layer, '1'..'4' = 1/4..4/4 of the layer's maximum
# width, each {"acc": [three seeds' test top-1], "mean", "std", "params", "flops"} (CIFAR-10). Its seven layers are
# the stem, hidden and stage-output widths of its own skeleton; positions 2, 3 and 5 are the hidden widths of three
# consecutive blocks (the one before its downsampling block, that block, the one after), in both its MobileNet and
# ResNet tables. Our ``stages: [1, 1, 1]`` space searches the hidden widths of three consecutive blocks, so its 64
# networks are read as the 64 keys with those positions searched and the other four at full width ('4'): the same
# width pattern in another network on another dataset (a transfer check, not the same networks).
CHANNEL_BENCH_LAYERS = (2, 3, 5)
CHANNEL_BENCH_FULL = "4"


def channel_bench_key(architecture: dict) -> str:
    """Channel-Bench-Macro's key of one of our networks: our layer i's width index k of 4 at position
    ``CHANNEL_BENCH_LAYERS[i]``, the other positions at full width."""
    digits = [CHANNEL_BENCH_FULL] * 7
    for position, (label, values) in zip(CHANNEL_BENCH_LAYERS, width_choices()):
        digits[position] = str(values.index(architecture[label]) + 1)
    return "".join(digits)


def read_channel_bench(path: Path, widths: list[dict]) -> Truth:
    """Channel-Bench-Macro's accuracies of our 64 networks (ConfigError if the file is not its table or lacks one)."""
    from experiments.core.errors import ConfigError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"--channel-bench {path}: cannot read it as JSON ({err.__class__.__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--channel-bench {path}: not Channel-Bench-Macro's table (a JSON object keyed by "
                          "architecture)")
    per_seed, flops, params = [], [], []
    for w in widths:
        key = channel_bench_key(w)
        entry = data.get(key)
        if entry is None:
            raise ConfigError(f"--channel-bench {path}: no network {key!r} (the table has {len(data)} networks; "
                              "every one of 4^7 keys '1111111'..'4444444' is expected)")
        accuracies = entry.get("acc", [entry.get("mean")]) if isinstance(entry, dict) else None
        numbers = [accuracies, [entry.get("flops"), entry.get("params")]] if accuracies is not None else []
        if not numbers or not isinstance(accuracies, list) or not accuracies or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for part in numbers for v in part):
            raise ConfigError(f"--channel-bench {path}: network {key!r} lacks numeric acc (or mean), flops and params")
        per_seed.append([float(a) for a in accuracies])
        flops.append(float(entry["flops"]))
        params.append(float(entry["params"]))
    if len({len(a) for a in per_seed}) != 1:
        raise ConfigError(f"--channel-bench {path}: the networks have different numbers of accuracies")
    return Truth(f"Channel-Bench-Macro table {Path(path).name} (CIFAR-10 test top-1, its {len(per_seed[0])} seeds)",
                 None, list(range(len(widths))), [list(seed) for seed in zip(*per_seed)], flops, params)


def truth_file(architecture: dict, seed: int, epochs: int, objective: str = "supervised", root: Path = GT_DIR) -> Path:
    """One ground-truth run's JSON; the supervised runs keep their first names (no objective in them)."""
    tag = "" if objective == "supervised" else f"__{objective}"
    return root / f"{name_of(architecture)}{tag}__seed{seed}__e{epochs}.json"


def ground_truth_runs(widths: list[dict], objective: str, seeds: list[int], epochs: int, table_only: bool,
                      workdir: Path, log) -> dict[int, dict[int, dict]]:
    """seed -> network index -> its cached run (trained first unless ``table_only``); network-major in a seeded random
    order, so a study cut short has every seed of the networks it reached, and those spread over the space."""
    import random

    runs: dict[int, dict[int, dict]] = {seed: {} for seed in seeds}
    for i in random.Random(0).sample(range(len(widths)), len(widths)):
        w = widths[i]
        for seed in seeds:
            path = truth_file(w, seed, epochs, objective)
            if table_only and not path.is_file():
                continue
            fresh = not path.is_file()
            train = (lambda: train_alone(w, seed, epochs)) if objective == "supervised" else (
                lambda: train_alone_ssl(w, objective, seed, epochs, workdir))
            run = runs[seed][i] = cached(path, train, log=lambda line: None)
            if fresh:
                log(f"ground truth {objective} {name_of(w)} seed {seed}: {GT_METRIC[objective]} "
                    f"{run[GT_METRIC[objective]]:.3f} ({run.get('cpu_seconds', run.get('seconds', 0)):.1f} s)")
    return runs


def add_arguments(p) -> None:
    p.add_argument("--objectives", nargs="+", default=["supervised", "simsiam"], choices=sorted(LEARNING_RATES),
                   help="each objective's ground truth and the supernets trained under it")
    p.add_argument("--gt-seeds", type=int, nargs="+", default=None,
                   help=f"the ground truth's seeds (default per objective: {GT_SEEDS})")
    p.add_argument("--gt-epochs", type=int, default=None,
                   help=f"the ground truth's epochs (default per objective: {GT_EPOCHS})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the supernets' seeds")
    p.add_argument("--strategies", nargs="+", default=["autoslim", "bcnet", "cafenet"])
    p.add_argument("--search-epochs", type=int, default=20)
    p.add_argument("--channel-bench", type=Path, default=None, metavar="PATH",
                   help="Channel-Bench-Macro's Results_*.json (not shipped): rank the supernets against it too")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds of the 95%% intervals")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "width_ground_truth")
    p.add_argument("--docs", action="store_true", help=f"also write the tables into {DOCS.relative_to(ROOT)}")
    page_argument(p, "also write the short strategy x objective table")
    p.add_argument("--table-only", action="store_true", help="print the table from the cached runs only")


def run(args) -> int:
    from experiments.core.errors import ConfigError

    quiet()
    widths = all_widths()
    try:
        if args.bootstrap < 1:
            raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
        channel_bench = read_channel_bench(args.channel_bench, widths) if args.channel_bench else None
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log = lambda line: print(line, flush=True)  # noqa: E731
    gt_runs = {objective: ground_truth_runs(widths, objective, args.gt_seeds or GT_SEEDS[objective],
                                            args.gt_epochs or GT_EPOCHS[objective], args.table_only, args.workdir, log)
               for objective in args.objectives}
    truths = [own_truth(objective, runs) for objective, runs in gt_runs.items()]
    runs = []
    for objective, strategy, seed in itertools.product(args.objectives, args.strategies, args.seeds):
        path = RANK_DIR / f"{strategy}__{objective}__seed{seed}__e{args.search_epochs}.json"
        if args.table_only and not path.is_file():
            continue
        runs.append(cached(path, lambda: rank_with(strategy, objective, seed, args.search_epochs, widths, log),
                           log=log))
    text = "\n\n".join(table(truth, runs, args.bootstrap) for truth in [*truths, channel_bench] if truth is not None)
    # how the ground truths agree with each other (and an SSL truth's linear probe with its kNN)
    extra = [own_truth(o, gt_runs[o], "linear_top1") for o in args.objectives if GT_METRIC[o] == "knn_top1"]
    pairs = [(a, b) for i, a in enumerate(t for t in truths if t) for b in [*(t for t in truths if t)][i + 1:]]
    pairs += [(t, next(o for o in truths if o and o.objective == t.objective)) for t in extra if t]
    if channel_bench is not None:
        pairs += [(t, channel_bench) for t in truths if t]
    if pairs:
        text += ("\n\nThe ground truths against each other (tau of their means over seeds, 95% bootstrap interval):\n\n"
                 "| truth A | truth B | tau | 95% interval | networks |\n|---|---|---|---|---|\n"
                 + "\n".join(agreement(a, b, args.bootstrap) for a, b in pairs))
    print(text)
    if args.docs:
        write_between_markers(DOCS, text, DOCS_BEGIN, DOCS_END)
    if args.page is not None:
        seeds = sorted({run["seed"] for run in runs})
        intro = (f"Kendall's tau against each objective's width ground truth (64 networks of `nas_bench_macro_width`, "
                 f"3 layers x 4 widths, each trained alone on digits: supervised 4 epochs, SimSiam 20 epochs, kNN), "
                 f"each objective's supernets against its own truth; supernets {args.search_epochs} epochs, seeds "
                 f"{', '.join(map(str, seeds))} (mean, each seed's tau in brackets); label-free rankers and the noise "
                 f"ceiling with a 95% bootstrap interval over the networks. Machine: {machine().get('cpu', 'CPU')}, "
                 f"{os.cpu_count()} cores, no GPU. Rebuild: "
                 f"`{command(NAME, '--table-only', '--seeds', *map(str, seeds), '--page')}`; every interval, pick and "
                 f"cost: "
                 f"docs/width-search.md.")
        write_between_markers(args.page, intro + "\n\n" + summary(truths, runs, args.bootstrap),
                              SUMMARY_BEGIN, SUMMARY_END)
    return 0

