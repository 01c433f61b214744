"""Does MCT-NAS's tree (experiments/strategies/mcts.py) learn to sample good paths? A simulation.

    python -m experiments study mcts-simulation [--space both] [--seeds 5] [--epochs 50] [--noise 0.05]
                                                [--loss inverse|error]

No network is trained. Each step samples a path and feeds the tree the "loss"
trend(step) x base(path) x (1 + noise * N(0, 1)), trend = 1 + 2 exp(-step / 1000) standing for
a supernet whose loss falls as it trains, base = 1 / score (``--loss inverse``, the default) or
the error 1 - score (``--loss error``, NAS-Bench-Macro only): the tree's reward is a ratio of
losses, so the second gives the same table a tenfold wider spread of rewards (docs/mctnas.md).
Two spaces, 8 layers x 3 ops each:

- ``synthetic``: score = 1 + a per-layer, per-op value drawn from U(0, 0.1), summed over layers;
- ``nas-bench-macro``: score = the table's ``mean_acc`` / 100 (``../shared/data/nas-bench-macro``).

Three schedules, ``--epochs`` of ``--steps-per-epoch`` steps: warm-up as the released NAS-Bench-Macro
config has it (backups from epoch 25, tree sampling from epoch 30), no warm-up (the tree from the
first step), and uniform sampling throughout (SPOS) with backups from epoch 25, so that selection
still has a tree.
For each it reports the share of the last epoch's samples in the top 1% of the space (chance:
0.01), their mean score, and the path that hierarchical selection (20 leaves, held-out score = the
noise-free loss ratio) returns: its percentile in the space and the evaluate calls it took; mean
and standard deviation over seeds. The held-out score being exact flatters selection: a real
supernet's held-out score ranks architectures far less well.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import sys
from pathlib import Path

from experiments.studies.kit import ROOT, mean_sd, options_of

NAME = "mcts-simulation"
HELP = "does MCT-NAS's tree learn to sample good paths? a simulation, no network trained"
TABLE = next((p / "shared" / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"
              for p in (ROOT.parent, ROOT.parent.parent)
              if (p / "shared" / "data" / "nas-bench-macro").is_dir()),
             ROOT.parent / "shared" / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json")


def synthetic_scores(seed: int) -> dict[tuple[int, ...], float]:
    world = random.Random(seed)
    per_layer = [[world.uniform(0.0, 0.1) for _ in range(3)] for _ in range(8)]
    return {path: 1.0 + sum(per_layer[layer][op] for layer, op in enumerate(path))
            for path in itertools.product(range(3), repeat=8)}


def table_scores(table: Path) -> dict[tuple[int, ...], float]:
    records = json.loads(table.read_text())
    return {tuple(int(digit) for digit in key): record["mean_acc"] / 100 for key, record in records.items()}


def simulate(scores: dict, schedule: WarmupSchedule, total_steps: int, steps_per_epoch: int,
             noise: float, seed: int, loss: str = "inverse") -> dict:
    """One search: train on simulated losses, then select; what the last epoch sampled and what
    selection returned."""
    ranked = sorted(scores, key=scores.get, reverse=True)
    top_percent = set(ranked[:len(ranked) // 100])
    percentile = {path: 100.0 * rank / len(ranked) for rank, path in enumerate(ranked)}
    from experiments.strategies.mcts import MonteCarloTree

    tree = MonteCarloTree([3] * 8, seed=seed, warmup=schedule)
    loss_noise = random.Random(seed + 1000)

    def trend(step: int) -> float:
        return 1.0 + 2.0 * math.exp(-step / 1000)

    def base(path) -> float:
        return 1.0 / scores[path] if loss == "inverse" else 1.0 - scores[path]

    late = []
    for step in range(total_steps):
        path = tree.sample()
        tree.update(path, trend(step) * base(path) * (1.0 + noise * loss_noise.gauss(0.0, 1.0)))
        if step >= total_steps - steps_per_epoch:
            late.append(path)
    calls = 0

    def held_out_reward(path):
        nonlocal calls
        calls += 1
        return tree.loss_average / (trend(total_steps) * base(path))

    selection = tree.select(held_out_reward)
    return {"late_top1_share": sum(path in top_percent for path in late) / len(late),
            "late_mean_score": statistics.fmean(scores[path] for path in late),
            "selected_top_percentile": percentile[selection.path],
            "selected_score": scores[selection.path],
            "evaluate_calls": calls}


def add_arguments(parser) -> None:
    parser.add_argument("--space", default="both", choices=("synthetic", "nas-bench-macro", "both"))
    parser.add_argument("--table", default=str(TABLE), help="the NAS-Bench-Macro JSON table")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--steps-per-epoch", type=int, default=196)
    parser.add_argument("--updates-from", type=int, default=25, help="epoch backups start")
    parser.add_argument("--tree-from", type=int, default=30, help="epoch tree sampling starts")
    parser.add_argument("--noise", type=float, default=0.05, help="relative sd of the loss noise")
    parser.add_argument("--loss", default="inverse", choices=("inverse", "error"),
                        help="the simulated loss: 1 / score, or 1 - score (NAS-Bench-Macro only)")
    parser.add_argument("--output", default=None, help="JSON file for the results")


def summarise(runs: list[dict]) -> dict:
    """Per measure: its mean and sample standard deviation over the seeds' runs (0 for one seed)."""
    return {key: tuple(v or 0.0 for v in mean_sd([run[key] for run in runs])) for key in runs[0]}


def run(args) -> int:
    from experiments.strategies.mcts import WarmupSchedule

    if args.space != "synthetic" and not Path(args.table).is_file():
        print(f"error: no NAS-Bench-Macro table at {args.table} (--table)", file=sys.stderr)
        return 2
    if args.loss == "error" and args.space != "nas-bench-macro":
        print("error: --loss error needs --space nas-bench-macro (the synthetic scores exceed 1)", file=sys.stderr)
        return 2
    if not 0 <= args.updates_from <= args.tree_from <= args.epochs:
        print("error: need 0 <= --updates-from <= --tree-from <= --epochs", file=sys.stderr)
        return 2
    epochs = dict(unit="epochs", steps_per_epoch=args.steps_per_epoch)
    schedules = {
        f"warm-up (backups {args.updates_from}, tree {args.tree_from})":
            WarmupSchedule(uniform_until=args.tree_from, updates_from=args.updates_from, **epochs),
        "no warm-up": WarmupSchedule(),
        f"uniform throughout (backups {args.updates_from})":
            WarmupSchedule(uniform_until=args.epochs, updates_from=args.updates_from, **epochs),
    }
    spaces = ["synthetic", "nas-bench-macro"] if args.space == "both" else [args.space]
    table = table_scores(Path(args.table)) if "nas-bench-macro" in spaces else {}
    results = {}
    for space in spaces:
        for name, schedule in schedules.items():
            runs = [simulate(synthetic_scores(seed) if space == "synthetic" else table,
                             schedule, args.epochs * args.steps_per_epoch, args.steps_per_epoch,
                             args.noise, seed, args.loss) for seed in range(args.seeds)]
            summary = summarise(runs)
            results[f"{space} / {name}"] = summary
            print(f"{space:16s} {name:32s} " + "  ".join(
                f"{key} {mean:.3f}±{sd:.3f}" for key, (mean, sd) in summary.items()), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"arguments": options_of(args), "results": results}, indent=2))
    return 0
