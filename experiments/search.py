"""The search job: DARTS or GumbelDARTS over the heads through NNI's ``NasExperiment``.

config -> data -> space -> framework -> strategy -> evaluation -> ``best_architecture.json``.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from experiments import nni_compat

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from nni.nas.evaluator.pytorch import Lightning
from nni.nas.experiment import NasExperiment
from nni.nas.strategy import DARTS, GumbelDARTS

from experiments.common import (FORMAT_VERSION, build_data, build_module, build_monitor, build_space, build_trainer,
                                downstream_metrics, save_model_atomic, versions, write_json_atomic)
from experiments.checkpointing import claim_output_dir, claims_output_dir
from experiments.config import BACKBONE_SPACE_NAMES, Config, ConfigError
from experiments.guards import FailureGuard

log = logging.getLogger("experiments.search")

ARCHITECTURE_FILE = "best_architecture.json"


class SearchCollapsed(RuntimeError):
    """The derived architecture's representation collapsed: the search failed."""


def build_strategy(cfg: Config):
    s = cfg.search
    common = dict(arc_learning_rate=s.arch_lr, gradient_clip_val=s.gradient_clip, warmup_epochs=s.warmup_epochs,
                  log_prob_every_n_step=1)
    if s.strategy == "darts":
        return DARTS(**common)
    if s.strategy == "gdarts":
        return GumbelDARTS(temperature=tuple(float(t) for t in s.gumbel_temperature), **common)
    raise ConfigError(f"search.strategy: unknown strategy {s.strategy!r}")


def space_record(cfg: Config, framework: str, head_space: str) -> dict:
    m = cfg.model
    return {"framework": framework, "head_space": head_space, "backbone": m.backbone,
            "backbone_width": m.backbone_width, "head_width": m.head_width,
            "mlp_widths": list(m.mlp_widths), "mlp_depths": list(m.mlp_depths)}


@claims_output_dir
def run_search(cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
               log_fn: Callable[[str], None] = print, overwrite: bool = False) -> Optional[dict]:
    """Run one search into ``out``; returns the architecture record written to ``best_architecture.json``.

    Under DDP, ranks other than global rank zero write nothing and return None.
    """
    if cfg.model.backbone in BACKBONE_SPACE_NAMES:
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r} is a backbone space; search it with the "
                          f"backbone-search job (python -m experiments backbone-search)")
    if cfg.model.head_space == "fixed":
        raise ConfigError("model.head_space: 'fixed' has nothing to search; use nasiam or mlp "
                          "(or retrain the hand-made head with the retrain job)")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    weight_idx, arch_idx = _split(cfg, data)
    weight_loader = data.loader(weight_idx, cfg)
    arch_loader = data.loader(arch_idx, cfg, stream=1)
    space = build_space(cfg)
    labels = list(space.simplify())
    log_fn(f"search space {cfg.model.head_space} for {cfg.framework}: {len(labels)} choices "
           f"({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''}); "
           f"{len(weight_idx)} weight / {len(arch_idx)} architecture images")
    module = build_module(cfg, cfg.search.epochs, interleaved=True, augment=data.augment)
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, functools.partial(_log_epoch, log_fn))  # picklable, for ddp_spawn
    run = claim_output_dir(out, cfg, "search", (ARCHITECTURE_FILE, "search_model.pt"), overwrite=overwrite, log_fn=log_fn)
    guard = FailureGuard(monitor, cfg, "search")
    trainer = build_trainer(cfg, cfg.search.epochs, out, [monitor, guard, *run.callbacks(
        cfg, [weight_loader.sampler, arch_loader.sampler], cfg.data.batch_size)])
    evaluator = Lightning(module, trainer, train_dataloaders=weight_loader, val_dataloaders=arch_loader,
                          fit_kwargs=run.fit_kwargs())
    strategy = nni_compat.stable_arch_parameter_order(build_strategy(cfg))
    experiment = NasExperiment(space, evaluator, strategy)
    nni_compat.experiment_config_dir(experiment, out / "nni")
    start = time.perf_counter()
    experiment.run()
    seconds = time.perf_counter() - start
    if rank_zero_only.rank != 0:
        # Under DDP every rank runs this job (``ddp`` relaunches the command): the others trained
        # along and hold the same architecture weights; only global rank zero exports and writes.
        return None
    supernet = strategy.oneshot_module
    probabilities = nni_compat.architecture_probabilities(supernet)
    architecture = nni_compat.plain_architecture(experiment.export_top_models(formatter="dict")[0])
    derived = experiment.export_top_models(formatter="instance")[0]
    metrics = downstream_metrics(cfg, data, derived)
    metrics["search_seconds"] = seconds
    record = {
        "format_version": FORMAT_VERSION,
        "kind": "ssl_head_search",
        "space": space_record(cfg, cfg.framework, cfg.model.head_space),
        "framework": cfg.framework,
        "architecture": architecture,
        "probabilities": probabilities,
        "dataset": {"name": cfg.data.dataset, "root": cfg.data.root, "train_images": len(data.train),
                    "test_images": len(data.test), "image_size": data.image_size},
        "strategy": cfg.search.strategy,
        "metrics": metrics,
        "history": monitor.history,
        "config": cfg.to_dict(),
        "versions": versions(),
        "status": "ok",
    }
    collapsed = metrics["collapse"] < cfg.search.collapse_threshold
    if collapsed:
        record["status"] = "collapsed"
    write_json_atomic(out / ARCHITECTURE_FILE, record)
    save_model_atomic(out / "search_model.pt", {"space": record["space"], "architecture": architecture,
                                                 "state_dict": derived.state_dict()})
    if collapsed:
        raise SearchCollapsed(f"the derived head collapsed: collapse score {metrics['collapse']:.3f} is below "
                              f"search.collapse_threshold {cfg.search.collapse_threshold} (healthy is about 1); "
                              f"see {out / ARCHITECTURE_FILE}")
    return record


def _split(cfg: Config, data):
    from experiments.data import split_indices

    return split_indices(len(data.train), cfg.data.search_split, cfg.seed)


def _log_epoch(log_fn: Callable[[str], None], record: dict) -> None:
    if rank_zero_only.rank == 0:
        log_fn(_epoch_line(record))


def _epoch_line(r: dict) -> str:
    loss = f"{r['ssl_loss']:.4f}" if r.get("ssl_loss") is not None else "n/a"
    arch = r.get("architecture") or {}
    moved = ""
    if arch:  # how far the architecture weights are from uniform: mean top probability vs 1/n
        top = sum(max(p.values()) for p in arch.values()) / len(arch)
        uniform = sum(1 / len(p) for p in arch.values()) / len(arch)
        moved = f"  arch top-p {top:.3f} (uniform {uniform:.3f})"
    return (f"epoch {r['epoch']}: ssl_loss {loss}  knn_top1 {r['knn_top1']:.3f}  "
            f"collapse {r['collapse']:.3f}{moved}  ({r['epoch_seconds']:.1f}s)")
