"""The cost of a search: a DARTS head-search epoch over a plain training epoch of the same network.

Same network: the NASiam supernet after NNI's DARTS mutation (every candidate computed,
mixed by the softmax of the architecture weights). Same data: the weight split of the
search. A plain epoch trains the supernet's weights on it (architecture weights frozen);
a DARTS epoch adds, per weight step, an architecture step on a held-out batch, either
the fast one (``search.fast_arch_step: true``: the backbone runs under ``no_grad``, only
the heads back-propagate) or NNI's stock one (a full forward and backward).

Each setting runs ``1 + --epochs`` epochs; the first is discarded and the median of the
others is the epoch time. Ratios compare runs made by this one invocation.

    python -m benchmarks.search_cost
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks._util import (EpochTimer, PeakMemory, common_arguments, make_config, median, quiet_trainer, report,
                              resolve, with_options)
from benchmarks.throughput import variant_options

RUNS = ("plain", "darts-fast", "darts-stock")


def run_one(args, cfg, data, run: str, epochs: int) -> dict:
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.experiment import NasExperiment

    from experiments import nni_compat
    from experiments.common import build_module, build_space
    from experiments.data import split_indices
    from experiments.search import build_strategy

    pl.seed_everything(args.seed, verbose=False)
    bundle = data if cfg.data.batched_augment else replace(data, augment=None)
    weight_idx, arch_idx = split_indices(len(bundle.train), cfg.data.search_split, cfg.seed)
    timer = EpochTimer()
    trainer = quiet_trainer(args, epochs, [timer], precision=cfg.trainer.precision)
    space = build_space(cfg)
    strategy = build_strategy(cfg)
    with PeakMemory(args.device) as memory:
        if run == "plain":
            supernet = strategy.mutate_model(space)  # the same mixed network DARTS trains
            for name, p in supernet.named_parameters():
                if "_arch_alpha" in name:
                    p.requires_grad_(False)
            module = build_module(cfg, epochs, interleaved=False, augment=bundle.augment)
            module.set_model(supernet)
            trainer.fit(module, train_dataloaders=bundle.loader(weight_idx, cfg))
        else:
            cfg = with_options(cfg, {"search.fast_arch_step": run == "darts-fast"})
            module = build_module(cfg, epochs, interleaved=True, augment=bundle.augment)
            evaluator = Lightning(module, trainer, train_dataloaders=bundle.loader(weight_idx, cfg),
                                  val_dataloaders=bundle.loader(arch_idx, cfg))
            experiment = NasExperiment(space, evaluator, strategy)
            nni_compat.experiment_config_dir(experiment, Path(tempfile.mkdtemp(prefix="bench-nni-")))
            experiment.run()
    walls = [w for w, _ in timer.epochs[1:]] or [timer.epochs[0][0]]
    cpus = [c for _, c in timer.epochs[1:]] or [timer.epochs[0][1]]
    return {"epoch_s": median(walls), "epoch_cpu_s": median(cpus), "peak_mib": memory.mib,
            "weight_steps": len(weight_idx) // cfg.data.batch_size}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_cost", description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--images", type=int, default=1536, help="training images (half are held out for DARTS)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per setting (after one untimed)")
    parser.add_argument("--variants", default="per-image,batched+cl",
                        help="data/speed variants as in benchmarks.throughput (comma list)")
    parser.add_argument("--head-space", default="nasiam", choices=("nasiam", "mlp"))
    args = resolve(parser.parse_args(argv))

    from experiments.common import build_data

    base = make_config(args, train_images=args.images, **{
        "model.head_space": args.head_space, "search.epochs": args.epochs + 1, "search.warmup_epochs": 0})
    data = build_data(with_options(base, {"data.batched_augment": True}))
    rows, summary = [], {}
    for variant in args.variants.split(","):
        cfg = with_options(base, variant_options(variant))
        results = {}
        for run in RUNS:
            results[run] = run_one(args, cfg, data, run, args.epochs + 1)
            print(f"{variant:16s} {run:12s} {results[run]['epoch_s']:.2f} s/epoch")
        plain = results["plain"]
        for run in RUNS:
            r = results[run]
            rows.append({"variant": variant, "run": run, **r, "ratio": r["epoch_s"] / plain["epoch_s"],
                         "ratio_cpu": r["epoch_cpu_s"] / plain["epoch_cpu_s"]})
        summary[f"{variant}: fast / plain"] = results["darts-fast"]["epoch_s"] / plain["epoch_s"]
        summary[f"{variant}: stock / plain"] = results["darts-stock"]["epoch_s"] / plain["epoch_s"]
    report("search_cost", f"Search cost: {args.head_space} heads, {args.backbone} x{args.width}, batch "
           f"{args.batch_size}, {args.images} {args.dataset} images, {args.device}",
           ["variant", "run", "epoch_s", "ratio", "epoch_cpu_s", "ratio_cpu", "peak_mib", "weight_steps"],
           rows, args, summary,
           notes=["ratio: epoch wall time over the plain epoch of the same variant (target for darts-fast: <= 1.3); "
                  "ratio_cpu: the same in process CPU time (less sensitive to other load on the machine)"])


if __name__ == "__main__":
    main()
