"""Every SSL framework at one training budget: downstream kNN and linear top-1 on a CIFAR-10 subset.

Each framework trains its hand-made head (``model.head_space: fixed``; ``--job search``: a DARTS
search over the ``nasiam`` space instead, evaluated on its derived network) with the same data
subset, backbone, width, batch, epochs and augmentation; only the framework's own recipe
(learning rate, temperatures, queue, momentum: ``configs/cifar10_<framework>.yml``) differs.

    python -m experiments study frameworks-knn                                  # six frameworks, CIFAR-10 subset
    python -m experiments study frameworks-knn --frameworks ressl,wcl --epochs 2 --train-images 512  # a quick look

This is the small-CPU budget, far from the papers' (ResNet-18 at full width, 50k images,
hundreds of epochs): it ranks what a few epochs teach, not the frameworks' final accuracy.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from experiments.studies.kit import (RESULTS, ROOT, invoked, machine, options_of, quiet, report, resolve_run_arguments,
                                     run_arguments)

NAME = "frameworks-knn"
HELP = "every SSL framework at one training budget: downstream kNN and linear top-1 on a CIFAR-10 subset"

FRAMEWORKS = ("simsiam", "simclr", "moco", "byol", "ressl", "wcl")
UNTRAINED = "untrained"  # the floor: SimSiam's network at initialisation, evaluated the same way


def framework_config(args: argparse.Namespace, framework: str, out: Path):
    """The framework's CIFAR-10 recipe at the benchmark's budget."""
    from experiments.core.validation import load_config

    values = {
        "seed": args.seed, "output_dir": str(out),
        "data.batch_size": args.batch_size, "data.train_subset": args.train_images,
        "data.test_subset": args.test_images, "data.num_workers": args.workers,
        "model.backbone": args.backbone, "model.backbone_width": args.width, "model.head_width": args.head_width,
        "model.head_space": "fixed" if args.job == "retrain" else "nasiam",
        "train.epochs": args.epochs, "search.epochs": args.epochs, "search.warmup_epochs": min(1, args.epochs - 1),
        "search.arch_lr": 3.0e-2,
        # hue jitter alone costs about 5 ms an image on a small CPU (configs/study_cifar10.yml)
        "augment.jitter": [0.4, 0.4, 0.4, 0.0] if args.no_hue else [0.4, 0.4, 0.4, 0.1],
        "evaluation.knn_k": args.knn_k, "evaluation.linear_epochs": args.linear_epochs,
        "evaluation.monitor_every_n_epochs": args.epochs,
        "trainer.accelerator": "gpu" if args.device == "cuda" else "cpu", "trainer.progress_bar": False,
    }
    if args.dataset == "cifar10":
        values.update({"data.dataset": "imagefolder", "data.root": str(args.cifar10)})
    else:  # digits upscaled to CIFAR's 32 px
        values.update({"data.dataset": "digits", "data.image_size": 32, "data.root": None})
    return load_config(ROOT / "configs" / f"cifar10_{framework}.yml", values)


def untrained_metrics(cfg) -> dict:
    """The floor: the hand-made SimSiam network at initialisation, evaluated like the trained ones."""
    import pytorch_lightning as pl

    from experiments.core.records import build_fixed
    from experiments.core.assembly import build_data, downstream_metrics

    pl.seed_everything(cfg.seed, verbose=False)
    network, _ = build_fixed({"space": {"framework": "simsiam", "head_space": "fixed"}, "architecture": {}}, cfg)
    return {"metrics": downstream_metrics(cfg, build_data(cfg), network)}


def run_framework(args: argparse.Namespace, framework: str) -> dict:
    from experiments.core.memory import PeakMemory
    from experiments.jobs.retrain import run_retrain
    from experiments.jobs.search import run_search

    untrained = framework == UNTRAINED
    out = Path(tempfile.mkdtemp(prefix=f"bench-frameworks-{framework}-"))
    cfg = framework_config(args, "simsiam" if untrained else framework, out)
    job = "none" if untrained else args.job
    start = time.perf_counter()
    with PeakMemory(args.device) as memory:
        if untrained:
            result = untrained_metrics(cfg)
        elif job == "retrain":
            record = {"space": {"framework": framework, "head_space": "fixed"}, "architecture": {}}
            result = run_retrain(cfg, record, out, log_fn=lambda line: None, source="hand-made")
        else:
            result = run_search(cfg, out, log_fn=lambda line: None)
    wall = time.perf_counter() - start
    m = result["metrics"]
    return {"framework": framework, "job": job, "knn_top1": m["knn_top1"], "linear_top1": m["linear_top1"],
            "collapse": m["collapse"], "wall_s": wall, "peak_mib": memory.mib,
            "epochs": 0 if untrained else args.epochs,
            "architecture": result.get("architecture") or None, "output": str(out)}


def add_arguments(parser) -> None:
    run_arguments(parser, width=0.125, batch_size=128)
    parser.add_argument("--frameworks", default=",".join((*FRAMEWORKS, UNTRAINED)),
                        help=f"comma list ({UNTRAINED}: the network at initialisation, a floor)")
    parser.add_argument("--job", default="retrain", choices=("retrain", "search"),
                        help="retrain: the hand-made head; search: a DARTS head search (nasiam space)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--knn-k", type=int, default=20)
    parser.add_argument("--linear-epochs", type=int, default=50)
    parser.add_argument("--no-hue", action=argparse.BooleanOptionalAction, default=True,
                        help="leave the hue jitter out (default; --no-no-hue keeps it)")
    parser.set_defaults(head_width=0.25)  # heads as in the study configs


def run(args) -> int:
    quiet()
    args = resolve_run_arguments(args)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = sorted(set(frameworks) - {*FRAMEWORKS, UNTRAINED})
    if unknown:
        print(f"error: --frameworks: unknown {', '.join(unknown)}; choose from {', '.join((*FRAMEWORKS, UNTRAINED))}",
              file=sys.stderr)
        return 2
    rows = []
    for framework in frameworks:
        rows.append(run_framework(args, framework))
        print(f"{framework}: kNN {rows[-1]['knn_top1']:.3f}  linear {rows[-1]['linear_top1']:.3f}  "
              f"{rows[-1]['wall_s']:.0f} s", flush=True)
    report("frameworks_knn", f"{args.job} at one budget: {args.dataset}, {args.train_images} images, "
           f"{args.epochs} epochs, {args.backbone} x{args.width}",
           ["framework", "knn_top1", "linear_top1", "collapse", "wall_s", "peak_mib"], rows,
           args.output or RESULTS / f"frameworks_knn-{args.device}.json", invoked(), options_of(args),
           {**machine(), "device": args.device, "torch_threads": args.threads},
           notes=["kNN (k={}) and linear probe ({} epochs) on frozen backbone features of {} test images; "
                  "chance 0.100; one seed ({}).".format(args.knn_k, args.linear_epochs, args.test_images, args.seed)])
    return 0
