"""The cost of a search: a DARTS head-search epoch over a plain training epoch of the same network.

Same network: the NASiam supernet after NNI's DARTS mutation (every candidate computed,
mixed by the softmax of the architecture weights). Same data: the weight split of the
search. A plain epoch trains the supernet's weights on it (architecture weights frozen);
a DARTS epoch adds, per weight step, an architecture step on a held-out batch, either
the fast one (``search.fast_arch_step: true``: the backbone runs under ``no_grad``, only
the heads back-propagate) or NNI's stock one (a full forward and backward). The
``darts-fast-everyK`` runs take the fast architecture step on every K-th batch only
(``search.arch_every: K``; ``--arch-every``).

Each setting runs ``1 + --epochs`` epochs; the first is discarded and the median of the
others is the epoch time. Ratios compare runs made by this one invocation; one untimed plain
run goes first (the process's one-time costs: kernels, allocator, imports), so that the
first timed run does not pay them. Beside each ``everyK`` ratio the summary puts whether
k = K derives what k = 1 derives, read from the arch-every study's record (``python -m experiments study arch-every``)
(``--agreement``, default ``docs/results/arch_every-cpu.json``), with that record's date.

    python -m benchmarks.search_cost
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from benchmarks._util import (ROOT, EpochTimer, PeakMemory, common_arguments, make_config, median, quiet_trainer,
                              report, resolve, with_options)
from benchmarks.throughput import variant_options

RUNS = ("plain", "darts-fast", "darts-stock")


def arch_every_of(run: str) -> int:
    """``darts-fast-every3`` -> 3; any other run takes the architecture step on every batch."""
    return int(run.rsplit("every", 1)[1]) if "-every" in run else 1


def run_one(args, cfg, data, run: str, epochs: int) -> dict:
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.experiment import NasExperiment

    from experiments import nni_compat
    from experiments.core.assembly import build_module, build_space
    from experiments.core.data import split_indices
    from experiments.strategies import STRATEGIES, SearchContext

    pl.seed_everything(args.seed, verbose=False)
    bundle = data if cfg.data.batched_augment else replace(data, augment=None)
    weight_idx, arch_idx = split_indices(len(bundle.train), cfg.data.search_split, cfg.seed)
    timer = EpochTimer()
    trainer = quiet_trainer(args, epochs, [timer], precision=cfg.trainer.precision)
    if run != "plain":
        cfg = with_options(cfg, {"search.fast_arch_step": run != "darts-stock",
                                 "search.arch_every": arch_every_of(run)})
    space = build_space(cfg)
    strategy = STRATEGIES[cfg.search.strategy].build(SearchContext(cfg, "heads"))
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


def agreement_figures(path: Optional[str]) -> dict:
    """k -> "agreement [ci] (ceiling ..., record date)" from an arch-every study's JSON record; {} without one."""
    import json

    if not path or not Path(path).is_file():
        return {}
    record = json.loads(Path(path).read_text())
    rows = {row["compared"]: row for row in record.get("rows", [])}
    ceiling = rows.get("k=1, seed vs seed (noise ceiling)")
    figures = {}
    for compared, row in rows.items():
        if compared.startswith("k=") and "vs k=1, same seed" in compared and not compared.startswith("k=1 "):
            k = int(compared[2:].split()[0])
            noise = f", seed-to-seed {ceiling['agreement']:.2f}" if ceiling else ""
            figures[k] = (f"{row['agreement']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] of labels as k=1 "
                          f"(seeds: {row['per_seed']}{noise}; {Path(path).name}, {record.get('date', '?')})")
    return figures


def step_costs(args, cfg, data, repeats: int = 5) -> dict:
    """Seconds of each step's compute on one fixed batch of the supernet (no loader, no optimiser, no Lightning).

    What the fast architecture step keeps: the backbone's forward pass over the held-out
    batch's views (under no_grad) and the heads' forward and backward.
    """
    import time

    import torch

    from experiments.core.assembly import build_module, build_space
    from experiments.strategies import STRATEGIES, SearchContext

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    strategy = STRATEGIES[cfg.search.strategy].build(SearchContext(cfg, "heads"))
    supernet = strategy.mutate_model(build_space(cfg)).to(device)
    module = build_module(cfg, 1, interleaved=True, augment=None)
    module.set_model(supernet)
    module.to(device).train()
    images = data.train.images[:cfg.data.batch_size].to(device)
    views = [v.contiguous(memory_format=torch.channels_last) if cfg.trainer.channels_last else v
             for v in data.augment.to(device)(images, torch.Generator(device=device).manual_seed(0))]
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=cfg.trainer.precision == "bf16-mixed")

    def step(arch: bool, fast: bool):
        module.fast_arch_step = fast
        supernet.zero_grad(set_to_none=True)
        with autocast:
            loss = module.ssl_loss(views, arch)
        loss.backward()

    def backbone_forward():
        with torch.no_grad(), autocast:
            for v in views:
                module.backbone(v)

    def timed(fn) -> tuple[float, float, Optional[float]]:
        fn()
        walls, cpus = [], []
        with PeakMemory(args.device) as memory:
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                w, c = time.perf_counter(), time.process_time()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
        return median(walls), median(cpus), memory.mib

    return {"weight step": timed(lambda: step(False, True)), "arch step, fast": timed(lambda: step(True, True)),
            "arch step, stock": timed(lambda: step(True, False)), "backbone forward, no_grad": timed(backbone_forward)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_cost", description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--images", type=int, default=1024, help="training images (half are held out for DARTS)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per setting (after one untimed)")
    parser.add_argument("--variants", default="per-image,batched+cl",
                        help="data/speed variants as in benchmarks.throughput (comma list)")
    parser.add_argument("--head-space", default="nasiam", choices=("nasiam", "mlp"))
    parser.add_argument("--arch-every", default="3",
                        help="search.arch_every values of extra fast runs (comma list; empty: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run plain, fast and stock this many times in turn; the median epoch counts")
    parser.add_argument("--agreement", default=str(ROOT / "docs" / "results" / "arch_every-cpu.json"),
                        help="an arch-every study record: its agreement figures go beside the everyK ratios")
    args = resolve(parser.parse_args(argv))

    from experiments.core.assembly import build_data

    base = make_config(args, train_images=args.images, **{
        "model.head_space": args.head_space, "search.epochs": args.epochs + 1, "search.warmup_epochs": 0})
    data = build_data(with_options(base, {"data.batched_augment": True}))
    runs = RUNS + tuple(f"darts-fast-every{int(k)}" for k in args.arch_every.split(",") if k.strip())
    agreement = agreement_figures(args.agreement)
    rows, summary = [], {}
    for variant in args.variants.split(","):
        cfg = with_options(base, variant_options(variant))
        run_one(args, cfg, data, "plain", 1)  # untimed: the process's one-time costs
        rounds: dict[str, list[dict]] = {run: [] for run in runs}
        for _ in range(args.rounds):  # in turn, so that a change of load on the machine hits all of them
            for run in runs:
                rounds[run].append(run_one(args, cfg, data, run, args.epochs + 1))
                print(f"{variant:16s} {run:12s} {rounds[run][-1]['epoch_s']:.2f} s/epoch "
                      f"({rounds[run][-1]['epoch_cpu_s']:.2f} CPU s)")
        results = {run: {"epoch_s": median(r["epoch_s"] for r in rs),
                         "epoch_cpu_s": median(r["epoch_cpu_s"] for r in rs),
                         "peak_mib": max(r["peak_mib"] or 0 for r in rs), "weight_steps": rs[0]["weight_steps"]}
                   for run, rs in rounds.items()}
        plain = results["plain"]
        for run in runs:
            r = results[run]
            rows.append({"variant": variant, "run": run, **r, "ratio": r["epoch_s"] / plain["epoch_s"],
                         "ratio_cpu": r["epoch_cpu_s"] / plain["epoch_cpu_s"]})
        costs = step_costs(args, cfg, data)
        weight = costs["weight step"]
        for name, (wall, cpu, mib) in costs.items():
            rows.append({"variant": variant, "run": name, "epoch_s": None, "step_s": wall, "step_cpu_s": cpu,
                         "ratio": wall / weight[0], "ratio_cpu": cpu / weight[1], "peak_mib": mib})
        labelled = [("darts-fast", "fast"), ("darts-stock", "stock")] + [(r, r[len("darts-"):]) for r in runs[3:]]
        for run, label in labelled:
            summary[f"{variant}: {label} / plain"] = results[run]["epoch_s"] / plain["epoch_s"]
            summary[f"{variant}: {label} / plain (CPU time)"] = results[run]["epoch_cpu_s"] / plain["epoch_cpu_s"]
            if arch_every_of(run) in agreement:
                summary[f"{variant}: {label}: derived architecture"] = agreement[arch_every_of(run)]
        summary[f"{variant}: 1 + fast arch step / weight step, one fixed batch (CPU time)"] = \
            1 + costs["arch step, fast"][1] / weight[1]
    report("search_cost", f"Search cost: {args.head_space} heads, {args.backbone} x{args.width}, batch "
           f"{args.batch_size}, {args.images} {args.dataset} images, {args.device}",
           ["variant", "run", "epoch_s", "epoch_cpu_s", "step_s", "step_cpu_s", "ratio", "ratio_cpu", "peak_mib",
            "weight_steps"], rows, args, summary,
           notes=["ratio: epoch time over the plain epoch of the same variant (target for darts-fast: <= 1.3, "
                  "for darts-fast-everyK: <= 1.1); "
                  "for the step rows, step time over the weight step's. ratio_cpu: the same in process CPU time "
                  "(less sensitive to other jobs on a shared machine). Step rows: one fixed batch, no loader. "
                  "peak_mib: CUDA allocator peak, or the process's peak resident set on CPU (step rows: on top "
                  "of what the epoch runs before them left allocated)."])


if __name__ == "__main__":
    main()
