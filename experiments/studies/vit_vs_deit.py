"""The ViT that vitas finds against a DeiT-Tiny-shaped ViT of the same FLOPs, both retrained alike. A small study.

One vitas search over the ``vit`` space (``configs/digits_backbone_vitas.yml``: SimSiam on digits,
its FLOPs budget), then two SimSiam retrains from scratch under one budget (``train.epochs``):
the searched network, and DeiT-Tiny's shape (uniform layers, MLP ratio 4, the finest patch grid,
64-channel heads, the space's full depth) scaled by its width, as DeiT-Ti/S/B are, to the most FLOPs
within the searched network's (``search_spaces.vit.deit_shaped``).
kNN and linear top-1 on the test split. Every run is cached as its own JSON file under
``--work`` (a killed study resumes); the table goes to ``--output``.

    python -m experiments study vit-vs-deit                         # seed 0, the config's epochs
    python -m experiments study vit-vs-deit --seeds 0,1 --set train.epochs=10
    python -m experiments study vit-vs-deit --tag cifar10-byol --set framework=byol --set data.dataset=imagefolder \
        --set data.root=../shared/data/cifar10 --set data.train_subset=2000 --set data.test_subset=1000 \
        --set model.backbone_options.image_size=32 --set search.epochs=10 --set train.epochs=10
"""
from __future__ import annotations

import time
from pathlib import Path

from experiments.studies.kit import RESULTS, ROOT, cached, invoked, machine, options_of, quiet, report

NAME = "vit-vs-deit"
HELP = "the ViT vitas finds against a DeiT-Tiny-shaped ViT of the same FLOPs, both retrained alike"

CONFIG = ROOT / "configs" / "digits_backbone_vitas.yml"


def retrained(cfg, seed: int, name: str, record: dict, work: Path) -> dict:
    """One network retrained from scratch (the retrain job): its row."""
    from experiments.jobs.retrain import run_retrain
    from search_spaces.vit import ViTSpace

    space = ViTSpace(**record["space"]["backbone_options"])
    start = time.perf_counter()
    result = run_retrain(cfg, record, work / f"seed{seed}" / name, log_fn=lambda line: None, overwrite=True)
    c = space.cost(record["architecture"], space.image_size)
    return {"seed": seed, "network": name, "architecture": record["architecture"],
            "shape": space.dimensions(record["architecture"]), "flops": c[0], "params": c[1],
            "knn_top1": result["metrics"]["knn_top1"], "linear_top1": result["metrics"]["linear_top1"],
            "retrain_seconds": time.perf_counter() - start}


def shape_text(shape: dict) -> str:
    """A ViT's shape in one table cell: its patch size, embedding width and per-layer (heads, hidden)."""
    return f"patch {shape['patch_size']}, E {shape['embed_dim']}, (heads, hidden) {shape['layers']}"


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value (every run)")
    parser.add_argument("--tag", default="", help="names this setting's cache folder and results file")
    parser.add_argument("--work", default=None, help="cache folder (default runs/benchmarks/vit_vs_deit[-TAG])")
    parser.add_argument("--output", default=None,
                        help="results file (default docs/results/vit_vs_deit[-TAG]-cpu.json)")


def run(args) -> int:
    from experiments.core.config import parse_overrides
    from experiments.core.validation import load_config
    from experiments.core.records import read_architecture
    from experiments.jobs.backbone_search import run_backbone_search
    from search_spaces.vit import ViTSpace, deit_shaped

    quiet()
    name = "vit_vs_deit" + (f"-{args.tag}" if args.tag else "")
    args.work = args.work or str(ROOT / "runs" / "benchmarks" / name)  # where its runs were cached
    args.output = args.output or str(RESULTS / f"{name}-cpu.json")
    overrides = parse_overrides(args.set)
    work, rows = Path(args.work), []
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = load_config(CONFIG, {**overrides, "seed": seed, "trainer.progress_bar": False})
        search_dir = work / f"seed{seed}" / "search"
        if not (search_dir / "best_architecture.json").exists():
            start = time.perf_counter()
            run_backbone_search(cfg, search_dir, log_fn=lambda line: None, overwrite=True)
            print(f"seed {seed}: search {time.perf_counter() - start:.0f} s", flush=True)
        searched = read_architecture(search_dir / "best_architecture.json")
        space = ViTSpace(**searched["space"]["backbone_options"])
        options, deit_arch = deit_shaped(space, searched["cost"]["flops"])
        deit = dict(searched, architecture=deit_arch, space=dict(searched["space"], backbone_options=options))
        for name, record in (("searched", searched), ("deit_shaped", deit)):
            rows.append(cached(work / f"seed{seed}" / f"{name}.json",
                               lambda seed=seed, name=name, record=record: retrained(cfg, seed, name, record, work),
                               log=lambda line: None))
    for r in rows:
        r["shape_text"] = shape_text(r["shape"])
    report("vit_vs_deit", f"searched ViT vs DeiT-Tiny-shaped ViT at the same FLOPs ({cfg.framework} retrain, "
                 f"{cfg.data.dataset})",
           ["seed", "network", "flops", "params", "knn_top1", "linear_top1", "retrain_seconds", "shape_text"],
           rows, args.output, invoked(), options_of(args),
           {**machine(), "device": "cpu"}, notes=[f"config {CONFIG.relative_to(ROOT)}; overrides {args.set or 'none'}"])
    return 0

