"""Width search at half of ResNet-18's FLOPs: the searched backbone (each strategy) against ResNet-18 uniformly
narrowed, and the searched SimSiam projector and predictor against the hand-made ones; SimSiam, one budget.

Issue 19, item 4, as one command. Everything is a point of ``resnet_width`` (ResNet-18's basic blocks, depths
2-2-2-2, CIFAR stem, each stage's width among ``k / bins`` of its planes at the config's backbone width):

- *Backbones.* The budget is half the FLOPs of ResNet-18 at the configured width (every stage at
  ``bins / bins``; at the data's image size). ``autoslim``, ``bcnet`` and ``cafenet`` each search the stage
  widths within it (``backbone-search``, SimSiam, the hand-made heads); ``uniform`` is ResNet-18 narrowed
  uniformly, the largest ``k / bins`` of every stage within the same budget (``bins: 10`` puts ``k = 7``,
  0.7 of each width, at about half).
- *Heads.* On the full-width ResNet-18, the projector's and predictor's hidden widths are searched
  (head space ``width``, ``--head-fractions`` of SimSiam's hidden widths, one strategy) within the FLOPs of the
  network with the hand-made heads; ``hand-made`` is that network (fraction 1.0, SimSiam's 2048/512 at the
  head width).
- Every chosen network is trained from scratch by the ``retrain`` job under the same SimSiam budget
  (``--epochs``; the collapse guard off, so a collapsing network trains to the end too, its final
  collapse score recorded) and scored by kNN and linear top-1 on the test split.

One JSON per run under ``--out`` (default ``docs/results/width_study/``): a killed study resumes, and a
finished one prints its tables from the cache. ``--page`` also writes the short table (mean ± sd over the seeds per
network) between its markers on the results page (``docs/results.md``). CPU seconds are the process's own
(``time.process_time``).

    python -m experiments study width                       # digits (8x8), seed 0, the budget below
    python -m experiments study width --seeds 0 1 2 --search-epochs 60 --epochs 100
"""
from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from experiments.studies.kit import RESULTS as STUDY_RESULTS
from experiments.studies.kit import (ROOT, cached, command, machine, mean_sd_text, page_argument, quiet,
                                     write_between_markers)

NAME = "width"
HELP = "width search at half of ResNet-18's FLOPs: searched backbones and heads against the narrowed and hand-made"
STRATEGIES = ("autoslim", "bcnet", "cafenet")
RESULTS = STUDY_RESULTS / "width_study"


def add_arguments(p) -> None:
    p.add_argument("--config", default=str(ROOT / "configs" / "digits_width_search.yml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--bins", type=int, default=10, help="stage widths k / bins of ResNet-18's")
    p.add_argument("--search-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=40, help="SimSiam epochs of every retrained network")
    p.add_argument("--trials", type=int, default=32, help="networks the evolution scores")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--head-strategy", default="cafenet", choices=STRATEGIES)
    p.add_argument("--head-fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--table-only", action="store_true", help="print the tables from the cached runs")
    page_argument(p, "also write the short table (mean over seeds per network)")


def config(args, seed: int, out: Path, bins: int, head_space: str = "fixed", **extra):
    from experiments.core.validation import load_config

    values = [f"seed={seed}", f"output_dir={out}", "model.backbone=resnet_width",
              f"model.backbone_options={json.dumps({'bins': bins})}", f"model.head_space={head_space}",
              f"search.epochs={args.search_epochs}", f"train.epochs={args.epochs}",
              f"backbone_search.trials={args.trials}", "trainer.progress_bar=false",
              "train.collapse_threshold=0", *args.overrides,  # every network trains its whole budget, then is scored
              *(f"{k}={v}" for k, v in extra.items())]
    return load_config(args.config, values)


def budgets(args, seed: int) -> dict:
    """ResNet-18's FLOPs at the configured width, the half budget, and the uniform narrowing within it."""
    from experiments.core.assembly import build_space
    from search_spaces.cost import BackboneCost
    from search_spaces.resnet_width import uniform_point

    cfg = config(args, seed, Path(tempfile.gettempdir()), args.bins)
    space = build_space(cfg).backbone
    cost = BackboneCost(space, 8 if cfg.data.dataset == "digits" else 32)
    full = cost(uniform_point(space, args.bins)).flops
    k = max(k for k in range(1, args.bins + 1) if cost(uniform_point(space, k)).flops <= full / 2)
    return {"resnet18_flops": full, "max_flops": full // 2, "uniform_k": k, "uniform": uniform_point(space, k),
            "uniform_flops": cost(uniform_point(space, k)).flops, "input_size": cost.input_size}


def run_one(args, name: str, seed: int, out_dir: Path, log) -> dict:
    """One row: search (unless ``uniform``/``hand-made``), then retrain; cached as ``<name>_seed<seed>.json``."""
    return cached(out_dir / f"{name}_seed{seed}.json", lambda: train_one(args, name, seed, log), log=lambda line: None)


def train_one(args, name: str, seed: int, log) -> dict:
    """``run_one``'s row, trained now."""
    from experiments.core.assembly import build_space
    from experiments.core.records import space_record
    from experiments.jobs.backbone_search import run_backbone_search
    from experiments.jobs.retrain import run_retrain
    from search_spaces.head_widths import network_cost

    b = budgets(args, seed)
    work = Path(tempfile.mkdtemp(prefix=f"width-study-{name}-"))
    start_cpu, start = time.process_time(), time.perf_counter()
    silent = lambda line: None  # noqa: E731
    heads = name.startswith("heads-") or name == "hand-made"
    if heads:
        cfg = config(args, seed, work, 1, "width", **{"model.mlp_widths": json.dumps(args.head_fractions),
                                                       "backbone_search.strategy": args.head_strategy})
        network = build_space(cfg)
        hand = {label: values[-1] for label, values in network_cost(network, b["input_size"]).labels.items()}
        fraction_one = sorted(args.head_fractions).index(1.0)  # the hand-made hidden widths
        hand.update({h.label: h.widths[fraction_one] for h in (network.projector, network.predictor)})
        budget = network_cost(network, b["input_size"])(hand).flops
        cfg = config(args, seed, work, 1, "width", **{"model.mlp_widths": json.dumps(args.head_fractions),
                                                       "backbone_search.strategy": args.head_strategy,
                                                       "backbone_search.max_flops": budget})
    else:
        budget = b["max_flops"]
        pinned = {"backbone_search.strategy_options.init": "records"} if name == "bcnet" else {}  # as the
        # committed runs were made: BCNet's evolution seeded with the lowest-loss records (before its fitted prior)
        cfg = config(args, seed, work, args.bins, **{"backbone_search.strategy": name if name in STRATEGIES else
                                                      "autoslim", "backbone_search.max_flops": budget, **pinned})
    search = None
    if name in ("uniform", "hand-made"):
        architecture = b["uniform"] if name == "uniform" else hand
        record = {"architecture": architecture, "space": space_record(cfg, num_classes=10)}
    else:
        search = run_backbone_search(cfg, work / "search", log_fn=silent)
        record = {"architecture": search["architecture"], "space": search["space"]}
    search_cpu = time.process_time() - start_cpu
    result = run_retrain(cfg, record, work / "retrain", log_fn=silent)
    cost = network_cost(build_space(cfg), b["input_size"])(record["architecture"])
    row = {"name": name, "seed": seed, "architecture": record["architecture"], "flops": cost.flops,
           "params": cost.params, "max_flops": budget, "knn_top1": result["metrics"]["knn_top1"],
           "linear_top1": result["metrics"]["linear_top1"], "collapse": result["metrics"]["collapse"],
           "search_held_out_score": search["metrics"]["held_out_score"] if search else None,
           "search_cpu_seconds": round(search_cpu, 1), "cpu_seconds": round(time.process_time() - start_cpu, 1),
           "wall_seconds": round(time.perf_counter() - start, 1), "budgets": b,
           "settings": {"config": str(Path(args.config).relative_to(ROOT)), "bins": args.bins,
                        "search_epochs": args.search_epochs, "epochs": args.epochs, "trials": args.trials,
                        "head_strategy": args.head_strategy, "head_fractions": args.head_fractions,
                        "overrides": args.overrides},
           "machine": f"{platform.processor() or platform.machine()}, {platform.node()}"}
    shutil.rmtree(work, ignore_errors=True)
    log(f"{name} seed {seed}: kNN {row['knn_top1']:.3f} linear {row['linear_top1']:.3f} "
        f"{row['flops']:,} FLOPs (budget {budget:,}) {row['cpu_seconds']} CPU s")
    return row


def table(rows: list[dict]) -> str:
    lines = ["| network | widths | FLOPs (budget) | params | kNN top-1 | linear top-1 | collapse | CPU s (search + train) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        widths = ", ".join(f"{k.split('.')[-2]} {v}" for k, v in r["architecture"].items())
        lines.append(f"| {r['name']} (seed {r['seed']}) | {widths} | {r['flops']:,} ({r['max_flops']:,}) | "
                     f"{r['params']:,} | {r['knn_top1']:.3f} | {r['linear_top1']:.3f} | {r['collapse']:.2f} | "
                     f"{r['cpu_seconds']} |")
    return "\n".join(lines)


SUMMARY_BEGIN = f"<!-- width study summary: written by {command(NAME, '--readme')} -->"
SUMMARY_END = "<!-- end of the width study summary -->"


def summary(rows: list[dict]) -> str:
    """Per network: FLOPs and the searched widths' spread, kNN and linear top-1 as mean ± sd over the seeds (each
    seed's kNN in brackets)."""
    import statistics

    lines = ["| network | seeds | FLOPs (mean; budget) | kNN top-1 (each seed) | linear top-1 |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["seed"])
        knn = [r["knn_top1"] for r in mine]
        lines.append(f"| {name} | {len(mine)} | {statistics.mean(r['flops'] for r in mine):,.0f}; "
                     f"{mine[0]['max_flops']:,} | {mean_sd_text(knn)} ({' / '.join(f'{v:.3f}' for v in knn)}) | "
                     f"{mean_sd_text([r['linear_top1'] for r in mine])} |")
    return "\n".join(lines)


def run(args) -> int:
    quiet()
    if 1.0 not in args.head_fractions:
        print("error: --head-fractions must hold 1.0 (the hand-made heads)", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    names = ["uniform", *args.strategies, "hand-made", f"heads-{args.head_strategy}"]
    rows = []
    for seed in args.seeds:
        for name in names:
            path = out_dir / f"{name}_seed{seed}.json"
            if args.table_only:
                if path.exists():
                    rows.append(json.loads(path.read_text()))
                continue
            rows.append(run_one(args, name, seed, out_dir, print))
    print(table([r for r in rows if not (r["name"].startswith("heads-") or r["name"] == "hand-made")]))
    print()
    print(table([r for r in rows if r["name"].startswith("heads-") or r["name"] == "hand-made"]))
    if args.page is not None and rows:
        seeds = sorted({r["seed"] for r in rows})
        intro = (f"SimSiam on digits (8x8), ResNet-18 at backbone width 0.25 (CIFAR stem), `resnet_width` with "
                 f"`bins: {args.bins}`: backbones within half of ResNet-18's FLOPs (`uniform`: every stage narrowed "
                 f"alike; the strategies' searches {args.search_epochs} epochs, {args.trials} networks scored), then "
                 f"SimSiam's heads on the full network (`hand-made` against `heads-{args.head_strategy}`, searched "
                 f"within the hand-made heads' FLOPs); every chosen network retrained {args.epochs} epochs, kNN (k 20) "
                 f"and linear top-1 on the test split; seeds {', '.join(map(str, seeds))}; "
                 f"{machine().get('cpu', platform.machine())}, 2 shared cores, no GPU. Rerun: "
                 f"`{command(NAME, '--seeds', *map(str, seeds), '--page')}` "
                 f"(cached runs are read back); the widths of every run: docs/width-heads-resnet.md.")
        write_between_markers(args.page, intro + "\n\n" + summary(rows), SUMMARY_BEGIN, SUMMARY_END)
    return 0

