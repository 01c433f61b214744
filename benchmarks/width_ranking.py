"""A width ground truth small enough to train here, and how well each width strategy's supernet ranks it.

    python -m benchmarks.width_ranking [--gt-seeds 0 1 2 3] [--seeds 0 1] [--strategies autoslim bcnet cafenet]
        [--objectives supervised simsiam] [--gt-epochs 4] [--search-epochs 20] [--table-only]

The space: ``nas_bench_macro_width`` with one layer per stage and four widths per layer
(``backbone_options: {stages: [1, 1, 1], bins: 4}``, backbone width 0.25, ``mb3_k3``): 3 layers x 4
hidden widths = 64 networks, on scikit-learn's digits (8x8, no download).

*Ground truth.* Every network trained alone, supervised: the backbone plus a linear classifier,
cross-entropy, SGD (lr 0.1, momentum 0.9, weight decay 5e-4, cosine), batch 64, no augmentation,
``--gt-epochs`` epochs on digits' training split; top-1 on its test split; ``--gt-seeds`` seeds.
One JSON per (network, seed) under ``benchmarks/results/width_ground_truth/``, read back on a rerun.

*Ranking.* For each objective (``--objectives``: ``supervised``, and label-free ``simsiam``),
strategy and seed, the backbone-search job's own ``prepare`` and ``train_supernet`` train the
strategy's supernet for ``--search-epochs``; then each of the 64 networks is scored as the
strategy scores a width in its search (``WidthStrategy.score``: AutoSlim its first channels, BCNet
the mean of its left and right sides, CafeNet its remembered lowest-loss placement), each after
BatchNorm recalibration: classifier top-1 on held-out training images (``simsiam``: kNN top-1 of
the backbone's features). Reported: Kendall's tau against the ground truth (mean over its seeds),
per supernet seed (``--seeds``), beside FLOPs and parameters as label-free rankers and the noise
ceiling: tau between the means of the two halves of the ground truth's seeds (seed against seed
with two). One JSON per (strategy, objective, seed) under ``benchmarks/results/width_ranking/``.
The ground truth is supervised only (SimSiam's is not run here).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ranking_nas_bench_macro import cached, kendall, machine  # noqa: E402  (applies nni_compat)

GT_DIR = ROOT / "benchmarks" / "results" / "width_ground_truth"
RANK_DIR = ROOT / "benchmarks" / "results" / "width_ranking"
DOCS = ROOT / "docs" / "width-search.md"
SPACE = {"stages": [1, 1, 1], "bins": 4}
WIDTH = 0.25


LEARNING_RATES = {"supervised": 0.1, "simsiam": 0.06}


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


def all_widths() -> list[dict]:
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace

    cost = BackboneCost(MacroWidthSpace(width=WIDTH, **SPACE), 8)
    labels = list(cost.labels)
    return [dict(zip(labels, values)) for values in itertools.product(*(cost.labels[k] for k in labels))]


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
            "command": "python -m benchmarks.width_ranking " + " ".join(sys.argv[1:])}


def rank_with(strategy: str, objective: str, seed: int, epochs: int, widths: list[dict], log) -> dict:
    """Train the strategy's supernet, score every width as the strategy does."""
    import tempfile

    from experiments.core.config import load_config
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
            "command": "python -m benchmarks.width_ranking " + " ".join(sys.argv[1:])}


def table(truth: dict[int, list[dict]], runs: list[dict]) -> str:
    """Markdown: each ranker's tau against the ground truth's mean over seeds, and its pick within a budget
    (the median FLOPs of the 64 networks): the pick's ground-truth top-1 and its rank among those in budget."""
    import numpy as np

    seeds = sorted(truth)
    accuracy = {s: [r["test_top1"] for r in truth[s]] for s in seeds}
    mean_truth = np.mean([accuracy[s] for s in seeds], axis=0)
    flops, params = [r["flops"] for r in truth[seeds[0]]], [r["params"] for r in truth[seeds[0]]]
    in_budget = [i for i, f in enumerate(flops) if f <= np.median(flops)]
    order = sorted(in_budget, key=lambda i: -mean_truth[i])

    def pick(scores) -> str:  # the best-scored network within budget (ties: fewer FLOPs)
        i = max(in_budget, key=lambda j: (scores[j], -flops[j]))
        return f"{mean_truth[i]:.3f} ({order.index(i) + 1})"

    lines = [f"| ranker | objective | tau per supernet seed | mean tau | pick within {int(np.median(flops)):,} FLOPs: "
             f"top-1 (rank of {len(in_budget)}) per seed |", "|---|---|---|---|---|"]
    rows: dict[tuple[str, str], list] = {}
    for run in sorted(runs, key=lambda r: (r.get("objective", "supervised"), r["strategy"], r["seed"])):
        key = (run["strategy"], run.get("objective", "supervised"))
        rows.setdefault(key, []).append((kendall(run["scores"], mean_truth), pick(run["scores"])))
    for (name, objective), values in rows.items():
        taus = [t for t, _ in values]
        lines.append(f"| {name} supernet | {objective} | {', '.join(f'{t:.3f}' for t in taus)} | "
                     f"{np.mean(taus):.3f} | {', '.join(p for _, p in values)} |")
    for name, values in (("FLOPs", flops), ("parameters", params)):
        lines.append(f"| {name} (label-free) | - | - | {kendall(values, mean_truth):.3f} | {pick(values)} |")
    if len(seeds) >= 2:
        half = len(seeds) // 2
        first, second = (np.mean([accuracy[s] for s in part], axis=0) for part in (seeds[:half], seeds[half:]))
        lines.append(f"| noise ceiling: ground truth seeds {seeds[:half]} vs {seeds[half:]} | supervised | - | "
                     f"{kendall(first, second):.3f} | best in budget: {mean_truth[order[0]]:.3f} (1) |")
    return "\n".join(lines)


def truth_file(architecture: dict, seed: int, epochs: int) -> Path:
    return GT_DIR / f"{name_of(architecture)}__seed{seed}__e{epochs}.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gt-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the supernets' seeds")
    p.add_argument("--strategies", nargs="+", default=["autoslim", "bcnet", "cafenet"])
    p.add_argument("--objectives", nargs="+", default=["supervised", "simsiam"], choices=sorted(LEARNING_RATES),
                   help="the supernets' training objective (the ground truth is supervised)")
    p.add_argument("--gt-epochs", type=int, default=4)
    p.add_argument("--search-epochs", type=int, default=20)
    p.add_argument("--table-only", action="store_true", help="print the table from the cached runs only")
    args = p.parse_args(argv)
    widths = all_widths()
    log = lambda line: print(line, flush=True)  # noqa: E731
    truth = {}
    for seed in args.gt_seeds:
        records = []
        for i, w in enumerate(widths, 1):
            path = truth_file(w, seed, args.gt_epochs)
            if args.table_only and not path.is_file():
                break
            records.append(cached(path, lambda: train_alone(w, seed, args.gt_epochs), log=lambda line: None))
            if i % 8 == 0:
                log(f"ground truth seed {seed}: {i}/{len(widths)}")
        if len(records) == len(widths):
            truth[seed] = records
    runs = []
    for objective, strategy, seed in itertools.product(args.objectives, args.strategies, args.seeds):
        path = RANK_DIR / f"{strategy}__{objective}__seed{seed}__e{args.search_epochs}.json"
        if args.table_only and not path.is_file():
            continue
        runs.append(cached(path, lambda: rank_with(strategy, objective, seed, args.search_epochs, widths, log),
                           log=log))
    if truth:
        print(table(truth, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
