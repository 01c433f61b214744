"""Study: a searched backbone against ResNet-18 and NAS-Bench-Macro's best, at equal FLOPs and training.

    python -m experiments study backbone [--datasets digits cifar10] [--output runs/backbone_study]

For each dataset it (1) runs the SPOS backbone search (SimSiam objective) over NAS-Bench-Macro's
space within a FLOPs budget, then trains three backbones from scratch with SimSiam under one
training budget (same data, epochs, optimiser, heads) and reports kNN and linear top-1 on the
test split:

- the searched backbone,
- ResNet-18 (CIFAR stem), its width chosen so its FLOPs meet the same budget,
- NAS-Bench-Macro's best supervised network within the budget (highest ``mean_acc`` among the
  benchmark's networks whose FLOPs, counted here at the study's width and image size, fit).

FLOPs are the backbone's multiply-accumulates at the dataset's image size. Sizes are for a
2-core CPU (digits in full; a CIFAR-10 subset); ``--scale`` multiplies epochs and images.
Prints one table per dataset and writes ``study.json`` (machine, budget, seeds) under ``--output``.
"""
from __future__ import annotations

import time
from pathlib import Path

from experiments.studies.kit import RESULTS, ROOT, command

NAME = "backbone-study"  # also ``python -m experiments study backbone``
HELP = "searched backbone against ResNet-18 and NAS-Bench-Macro's best, at equal FLOPs and training"

# Per dataset: data, widths, budget (fraction of the way from the space's smallest to its largest
# network), epochs. digits: 8x8 images, the whole set; cifar10: a subset of the ImageFolder copy.
SETTINGS = {
    "digits": dict(data={"data.dataset": "digits", "data.batch_size": 128}, width=0.25, head_width=0.25,
                   budget_fraction=0.4, search_epochs=15, train_epochs=15, trials=32, knn_k=20),
    "cifar10": dict(data={"data.dataset": "imagefolder", "data.train_subset": 1000, "data.test_subset": 500,
                          "data.batch_size": 128},
                    width=0.25, head_width=0.25, budget_fraction=0.4, search_epochs=3, train_epochs=3, trials=12,
                    knn_k=20),
}


def base_overrides(name: str, s: dict, out: Path, seed: int, scale: float, cifar: Path | None) -> dict:
    o = dict(s["data"])
    if name == "cifar10":
        o["data.root"] = str(cifar)
        for key in ("data.train_subset", "data.test_subset"):
            o[key] = int(o[key] * scale)
    o.update({
        "framework": "simsiam", "seed": seed, "output_dir": str(out),
        "model.backbone": "nas_bench_macro", "model.backbone_width": s["width"], "model.head_space": "fixed",
        "model.head_width": s["head_width"], "search.epochs": max(1, round(s["search_epochs"] * scale)),
        "search.warmup_epochs": 0, "train.epochs": max(1, round(s["train_epochs"] * scale)),
        "backbone_search.strategy": "spos", "backbone_search.trials": s["trials"],
        "backbone_search.population": 12, "backbone_search.tournament": 4, "backbone_search.score_images": 500,
        "evaluation.knn_k": s["knn_k"], "evaluation.linear_epochs": 100,
        "evaluation.monitor_every_n_epochs": 1000, "trainer.progress_bar": False,
        # the defaults when the committed results were measured
        "data.batched_augment": False, "trainer.channels_last": False,
    })
    return o


def resnet18_width_for(budget: float, image_size: int) -> tuple[float, int, int]:
    """The widest ResNet-18 (width a multiple of 1/64) whose FLOPs fit ``budget``: (width, flops, params)."""
    from search_spaces.backbones import build_backbone
    from search_spaces.cost import count_fixed

    best = None
    for k in range(1, 65):
        c = count_fixed(build_backbone("resnet18", k / 64), image_size)
        if c.flops > budget:
            break
        best = (k / 64, c.flops, c.params)
    if best is None:
        raise ValueError(f"even the narrowest ResNet-18 exceeds {budget:,.0f} FLOPs")
    return best


def nas_bench_macro_best(budget: float, width: float, image_size: int):
    """The benchmark network with the highest mean_acc whose FLOPs (here) fit ``budget``."""
    from search_spaces.cost import BackboneCost
    from search_spaces.nas_bench_macro import NasBenchMacro, NasBenchMacroSpace, canonical_key, key_to_arch

    table = NasBenchMacro()
    cost = BackboneCost(NasBenchMacroSpace(width=width), image_size)
    best = None
    for key in sorted({canonical_key(k) for k in table.keys()}):
        c = cost(key_to_arch(key))
        if c.flops <= budget:
            acc = table.mean_acc(key)
            if best is None or acc > best[1]:
                best = (key, acc, c)
    return best


def train_and_evaluate(cfg, record: dict, out: Path) -> dict:
    from experiments.jobs.retrain import run_retrain

    result = run_retrain(cfg, record, out, log_fn=lambda line: None)
    return result["metrics"]


def study(name: str, args, cifar: Path | None, log) -> dict:
    from experiments.jobs.backbone_search import run_backbone_search
    from experiments.core.validation import load_config
    from search_spaces.cost import BackboneCost
    from search_spaces.nas_bench_macro import NasBenchMacroSpace, arch_to_key, key_to_arch

    s = SETTINGS[name]
    out = args.output / name
    overrides = base_overrides(name, s, out / "search", args.seed, args.scale, cifar)
    cfg = load_config(None, overrides)
    image_size = 8 if name == "digits" else 32
    cost = BackboneCost(NasBenchMacroSpace(width=s["width"]), image_size)
    lo, hi = cost.smallest()[1].flops, cost(key_to_arch("22222222")).flops
    budget = float(round(lo + s["budget_fraction"] * (hi - lo)))
    cfg.backbone_search.max_flops = budget
    log(f"== {name}: FLOPs budget {budget:,.0f} (space {lo:,} to {hi:,} at {image_size}x{image_size}, "
        f"width {s['width']})")
    start = time.perf_counter()
    searched = run_backbone_search(cfg, out / "search", log_fn=log)
    search_seconds = time.perf_counter() - start
    rows = []

    def contender(label: str, record: dict, flops: int, params: int, note: str, model: dict | None = None):
        run_cfg = load_config(None, dict(overrides, **(model or {}), output_dir=str(out / label)))
        t = time.perf_counter()
        metrics = train_and_evaluate(run_cfg, record, out / label)
        rows.append({"network": label, "note": note, "flops": flops, "params": params,
                     "knn_top1": metrics["knn_top1"], "linear_top1": metrics["linear_top1"],
                     "train_seconds": time.perf_counter() - t})
        log(f"{label}: kNN {metrics['knn_top1']:.3f}  linear {metrics['linear_top1']:.3f}")

    space = searched["space"]
    contender("searched (SPOS, SimSiam)", {"space": space, "architecture": searched["architecture"]},
              searched["cost"]["flops"], searched["cost"]["params"], f"key {arch_to_key(searched['architecture'])}")
    key, acc, c = nas_bench_macro_best(budget, s["width"], image_size)
    contender("NAS-Bench-Macro best", {"space": space, "architecture": key_to_arch(key)}, c.flops, c.params,
              f"key {key}, mean_acc {acc:.2f}")
    width, flops, params = resnet18_width_for(budget, image_size)
    contender("ResNet-18", {"space": {"framework": "simsiam", "head_space": "fixed"}, "architecture": {}},
              flops, params, f"width {width:.3f}", {"model.backbone": "resnet18", "model.backbone_width": width})
    return {"dataset": name, "budget_flops": budget, "image_size": image_size, "search_seconds": search_seconds,
            "search": {"architecture": searched["architecture"], "cost": searched["cost"],
                       "benchmark": searched.get("benchmark")},
            "train_epochs": cfg.train.epochs, "search_epochs": cfg.search.epochs,
            "train_images": searched["dataset"]["train_images"], "test_images": searched["dataset"]["test_images"],
            "rows": rows}


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result['dataset']}: SimSiam, {result['train_epochs']} epochs, {result['train_images']} train / "
                    f"{result['test_images']} test images, FLOPs budget {result['budget_flops']:,.0f}")
    for col in ("backbone", "FLOPs", "params", "kNN top-1", "linear top-1", "note"):
        t.add_column(col)
    for r in result["rows"]:
        t.add_row(r["network"], f"{r['flops']:,}", f"{r['params']:,}", f"{r['knn_top1']:.3f}",
                  f"{r['linear_top1']:.3f}", r["note"])
    Console(width=140).print(t)


def markdown(results: list[dict], seed: int, scale: float, machine: dict, argv: list[str]) -> str:
    """The tables as a Markdown page (docs/results/backbone_study.md), with machine, budget and seed."""
    import os
    from datetime import datetime, timezone

    lines = ["# A searched backbone against ResNet-18 and NAS-Bench-Macro's best, at equal FLOPs", "",
             f"Rerun: `{command('backbone', *argv)}`", "",
             f"- machine: {machine.get('machine', '?')}, {os.cpu_count()} CPUs, GPU: {machine.get('cuda') or 'none'}; "
             + ", ".join(f"{k} {machine[k]}" for k in ("python", "torch", "torchvision", "nni", "pytorch_lightning")
                         if k in machine),
             f"- seed {seed} (data split, search, training); scale {scale}; finished "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average at the end "
             f"{os.getloadavg()[0]:.1f} (a shared machine: times are wall-clock and noisy)", ""]
    for r in results:
        lines += [f"## {r['dataset']}", "",
                  f"SimSiam, {r['train_images']} train / {r['test_images']} test images at {r['image_size']} px; "
                  f"SPOS search {r['search_epochs']} epochs ({r['search_seconds']:.0f} s) within "
                  f"{r['budget_flops']:,.0f} FLOPs (multiply-accumulates of the backbone); each network then "
                  f"trained from scratch for {r['train_epochs']} epochs with the same heads, data and optimiser.", "",
                  "| backbone | FLOPs | params | kNN top-1 | linear top-1 | train s | note |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['network']} | {row['flops']:,} | {row['params']:,} | {row['knn_top1']:.3f} | "
                         f"{row['linear_top1']:.3f} | {row['train_seconds']:.0f} | {row['note']} |")
        lines.append("")
    lines += ["kNN (k=20) and linear probe (100 epochs) on frozen backbone features of the test split; one seed, "
              "so differences of a few points are within noise.", ""]
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--datasets", nargs="+", default=["digits", "cifar10"], choices=sorted(SETTINGS))
    p.add_argument("--output", type=Path, default=ROOT / "runs" / "backbone_study")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiply epochs and CIFAR-10 images (1: CPU size)")
    p.add_argument("--docs", type=Path, default=RESULTS / "backbone_study.md",
                   help="the tables as Markdown (empty string: none)")


def run(args) -> int:
    argv = args.argv
    from experiments.core.records import versions
    from experiments.core.files import write_json_atomic
    from experiments.core.errors import ConfigError
    from search_spaces.nas_bench_macro import default_table_path, shared_data_candidates

    if default_table_path() is None:
        raise ConfigError("the NAS-Bench-Macro table is not under ../shared/data/nas-bench-macro")
    cifar = next((d / "cifar10" for d in shared_data_candidates() if (d / "cifar10" / "train").is_dir()), None)
    if "cifar10" in args.datasets and cifar is None:
        raise ConfigError("CIFAR-10 (ImageFolder) is not under ../shared/data/cifar10")
    log = lambda line: print(line, flush=True)  # noqa: E731
    results = []
    for name in args.datasets:
        results.append(study(name, args, cifar, log))
        write_json_atomic(args.output / "study.json", {"results": results, "seed": args.seed,
                                                       "scale": args.scale, "machine": versions()})
    for r in results:
        print_table(r)
    print(f"written: {args.output / 'study.json'}")
    if str(args.docs) not in ("", "."):
        from experiments.core.files import write_text_atomic

        write_text_atomic(args.docs, markdown(results, args.seed, args.scale, versions(), argv))
        print(f"written: {args.docs}")
    return 0
