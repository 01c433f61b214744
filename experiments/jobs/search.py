"""The search job: a differentiable strategy (DARTS, GumbelDARTS) over the heads through NNI's ``NasExperiment``.

config -> data -> space -> framework -> strategy -> evaluation -> ``best_architecture.json``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
from nni.nas.evaluator.pytorch import Lightning
from nni.nas.experiment import NasExperiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from experiments import nni_compat
from experiments.core.assembly import build_data, build_module, build_monitor, build_space, build_trainer, \
    downstream_metrics
from experiments.core.run_dir import claim_output_dir, claims_output_dir
from experiments.core.config import BACKBONE_SPACE_NAMES, Config
from experiments.core.console import EpochPrinter
from experiments.core.data import split_indices
from experiments.core.errors import ConfigError, RunFailed
from experiments.core.guards import FailureGuard
from experiments.core.records import dataset_record, new_record, space_record, write_results
from experiments.jobs.command import add_config_arguments, run_search_job
from experiments.strategies import STRATEGIES, SearchContext

NAME = "search"
HELP = "head search (DARTS, GumbelDARTS) through NNI, trained jointly with the backbone"
ARCHITECTURE_FILE = "best_architecture.json"
MODEL_FILE = "search_model.pt"
RESULT_FILES = (ARCHITECTURE_FILE, MODEL_FILE)


class SearchCollapsed(RunFailed):
    """The derived architecture's representation collapsed: the search failed (its record is written)."""


def add_arguments(p) -> None:
    add_config_arguments(p)


def run(args) -> int:
    return run_search_job(args, RESULT_FILES, run_search)  # a collapsed head raises RunFailed: exit 3


@claims_output_dir
def run_search(cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
               log_fn: Callable[[str], None] = print, overwrite: bool = False) -> Optional[dict]:
    """Run one search into ``out``; returns the architecture record written to ``best_architecture.json``.

    Under DDP, ranks other than global rank zero write nothing and return None.
    """
    if cfg.model.backbone in BACKBONE_SPACE_NAMES:
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r} is a backbone space; search it with the "
                          f"backbone-search job (python -m experiments backbone-search)")
    if cfg.model.head_space == "width":
        raise ConfigError("model.head_space: width is searched by the backbone-search job's width strategies")
    if cfg.model.head_space == "fixed":
        raise ConfigError("model.head_space: 'fixed' has nothing to search; use nasiam or mlp "
                          "(or retrain the hand-made head with the retrain job)")
    strategy = STRATEGIES[cfg.search.strategy]
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    weight_idx, arch_idx = split_indices(len(data.train), cfg.data.search_split, cfg.seed)
    weight_loader = data.loader(weight_idx, cfg)
    arch_loader = data.loader(arch_idx, cfg, stream=1)
    space = build_space(cfg)
    labels = list(space.simplify())
    log_fn(f"search space {cfg.model.head_space} for {cfg.framework}: {len(labels)} choices "
           f"({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''}); "
           f"{len(weight_idx)} weight / {len(arch_idx)} architecture images")
    ctx = SearchContext(cfg, "heads", out=out, log_fn=log_fn)
    module = build_module(cfg, cfg.search.epochs, interleaved=strategy.interleaved, augment=data.augment,
                          **strategy.module_options(ctx))
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, EpochPrinter(log_fn))
    run = claim_output_dir(out, cfg, "search", RESULT_FILES, overwrite=overwrite, log_fn=log_fn)
    guard = FailureGuard(monitor, cfg, "search")
    trainer = build_trainer(cfg, cfg.search.epochs, out, [monitor, guard, *run.callbacks(
        cfg, [weight_loader.sampler, arch_loader.sampler], cfg.data.batch_size)])
    evaluator = Lightning(module, trainer, train_dataloaders=weight_loader, val_dataloaders=arch_loader,
                          fit_kwargs=run.fit_kwargs())
    nni_strategy = strategy.build(ctx)
    experiment = NasExperiment(space, evaluator, nni_strategy)
    nni_compat.experiment_config_dir(experiment, out / "nni")
    start = time.perf_counter()
    experiment.run()
    seconds = time.perf_counter() - start
    if rank_zero_only.rank != 0:
        # Under DDP every rank runs this job (``ddp`` relaunches the command): the others trained
        # along and hold the same architecture weights; only global rank zero exports and writes.
        return None
    probabilities = nni_compat.architecture_probabilities(nni_strategy.oneshot_module)
    architecture = nni_compat.plain_architecture(experiment.export_top_models(formatter="dict")[0])
    derived = experiment.export_top_models(formatter="instance")[0]
    metrics = downstream_metrics(cfg, data, derived)
    metrics["search_seconds"] = seconds
    collapsed = metrics["collapse"] < cfg.search.collapse_threshold
    record = new_record("ssl_head_search", cfg, space_record(cfg, num_classes=len(data.train.classes)),
                        architecture, metrics, monitor.history, probabilities=probabilities,
                        dataset=dataset_record(cfg, data), strategy=cfg.search.strategy,
                        status="collapsed" if collapsed else "ok")
    write_results(out, record, ARCHITECTURE_FILE, derived, MODEL_FILE)
    if collapsed:
        raise SearchCollapsed(f"the derived head collapsed: collapse score {metrics['collapse']:.3f} is below "
                              f"search.collapse_threshold {cfg.search.collapse_threshold} (healthy is about 1); "
                              f"see {out / ARCHITECTURE_FILE}")
    return record
