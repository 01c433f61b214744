"""Training throughput (images/s) and peak memory of each framework, per speed-up variant.

A variant is ``+``-joined switches on top of the default training path:
``per-image`` (the per-image augmentation in the data loader, the default) or ``batched``
(``data.batched_augment``: the loader yields uint8 batches, the module makes both views
with batched tensor ops on its device), then ``cl`` (``trainer.channels_last``), ``bf16``
(``trainer.precision: bf16-mixed``), ``compile`` (``trainer.compile``).

The network is the framework's hand-made head on the backbone (what ``retrain`` trains);
one image counts once, whatever the number of views. Timed: the training steps after
``--warmup`` steps, loading of their batches included, through Lightning.

    python -m benchmarks.throughput                      # CPU here, CUDA where present
    python -m benchmarks.throughput --width 1 --batch-size 512 --steps 30   # the GPU setting
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from benchmarks._util import common_arguments, make_config, report, resolve, timed_training, with_options

SWITCHES = {"per-image", "batched", "cl", "bf16", "compile"}
DEFAULT_VARIANTS = {"cpu": "per-image,batched,batched+cl",
                    "cuda": "per-image,batched,batched+cl,batched+cl+bf16,batched+cl+bf16+compile"}


def variant_options(variant: str) -> dict:
    switches = set(variant.split("+"))
    unknown = switches - SWITCHES
    if unknown or not switches & {"per-image", "batched"}:
        raise SystemExit(f"error: variant {variant!r}: use per-image or batched, then +cl, +bf16, +compile")
    return {"data.batched_augment": "batched" in switches, "trainer.channels_last": "cl" in switches,
            "trainer.precision": "bf16-mixed" if "bf16" in switches else "32-true",
            "trainer.compile": "compile" in switches}


def run_ours(args, cfg, data, framework: str, steps: int, warmup: int) -> dict:
    """One timed training run of this package's ``framework`` module; returns images/s and peak memory."""
    import pytorch_lightning as pl

    from experiments.core.assembly import build_module, build_space

    pl.seed_everything(args.seed, verbose=False)
    batched = cfg.data.batched_augment
    bundle = data if batched else replace(data, augment=None)
    network = build_space(cfg, framework=framework, head_space="fixed").freeze({})
    module = build_module(cfg, 1, interleaved=False, framework=framework, augment=bundle.augment)
    module.set_model(network)
    return timed_training(args, cfg, module, bundle.loader(None, cfg), steps, warmup, network)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--frameworks", default="simsiam,simclr,moco,byol")
    parser.add_argument("--variants", default=None, help=f"comma list (default CPU: {DEFAULT_VARIANTS['cpu']}; "
                                                         f"CUDA: {DEFAULT_VARIANTS['cuda']})")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, allocator)")
    args = resolve(parser.parse_args(argv))
    variants = (args.variants or DEFAULT_VARIANTS[args.device]).split(",")
    options = {v: variant_options(v) for v in variants}
    frameworks = args.frameworks.split(",")

    from experiments.core.assembly import build_data

    base = make_config(args, train_images=args.batch_size * (args.warmup + args.steps))
    data = build_data(with_options(base, {"data.batched_augment": True}))  # decoded once; views by variant
    rows = []
    for framework in frameworks:
        reference = None
        for variant in variants:
            cfg = with_options(replace(base, framework=framework), options[variant])
            result = run_ours(args, cfg, data, framework, args.steps, args.warmup)
            reference = reference or result["images_per_s"]
            rows.append({"framework": framework, "variant": variant, **result,
                         "speedup": result["images_per_s"] / reference})
            print(f"{framework:8s} {variant:28s} {result['images_per_s']:8.1f} images/s")
    report("throughput", f"Training throughput: {args.backbone} x{args.width}, batch {args.batch_size}, "
           f"{args.dataset}, {args.device}",
           ["framework", "variant", "images_per_s", "speedup", "step_s", "peak_mib", "added_mib", "params_m",
            "images_per_cpu_s"],
           rows, args, notes=["speedup: images/s over the framework's first variant; "
                              "peak_mib: CUDA allocator peak, or the process's peak resident set on CPU; "
                              "added_mib: the peak less the same measure at the run's start"])


if __name__ == "__main__":
    main()
