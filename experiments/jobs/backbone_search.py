"""The backbone-search job: a one-shot strategy over a backbone space, under any framework's objective.

config -> data -> space (backbone space + the framework's heads) -> framework -> strategy ->
evaluation -> ``best_architecture.json`` (the same export and ``retrain`` as the head search).

The strategies (``experiments.strategies``: SPOS, K-shot, MCT-NAS, DARTS, GumbelDARTS, Proxyless,
ENAS, ViTAS, the width strategies AutoSlim, BCNet, CafeNet (docs/width-search.md) and, on the cell
space, TopoNAS and EnTranNAS) train the supernet through NNI and select the network within the
FLOPs/parameter budget; see each strategy's module. The job owns its output directory like the other jobs: ``run.json``,
``status.json``, ``checkpoints/last.ckpt`` (the supernet and architecture weights, resumed
exactly after a kill) and a ``.lock``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytorch_lightning as pl
import torch

from experiments import nni_compat
from experiments.core.assembly import build_data, build_module, build_monitor, build_space, build_trainer, \
    check_split_size, downstream_metrics
from experiments.core.run_dir import Run, claim_output_dir, claims_output_dir
from experiments.core.config import Config
from experiments.core.console import EpochPrinter
from experiments.core.data import normalized, split_indices
from experiments.core.errors import ConfigError
from experiments.core.records import dataset_record, new_record, space_record, write_results
from experiments.jobs.command import add_config_arguments, run_search_job
from experiments.strategies import STRATEGIES, SearchContext
from experiments.strategies.budget import check_budget
from experiments.strategies.spos import run_and_stop
from search_spaces.backbone_spaces import BACKBONE_SPACES, choice_kinds, is_backbone_space
from search_spaces.cost import BackboneCost
from search_spaces.head_widths import NetworkWidthCost, network_cost

NAME = "backbone-search"
HELP = ("backbone search (SPOS, K-shot, MCT-NAS, DARTS, GumbelDARTS, Proxyless, ENAS, ViTAS, TopoNAS, EnTranNAS; "
        "widths: AutoSlim, BCNet, CafeNet) within a FLOPs/params budget")
ARCHITECTURE_FILE = "best_architecture.json"
MODEL_FILE = "search_model.pt"
RESULT_FILES = (ARCHITECTURE_FILE, MODEL_FILE)


def add_arguments(p) -> None:
    add_config_arguments(p)


def run(args) -> int:
    return run_search_job(args, RESULT_FILES, run_backbone_search)


def validate(cfg: Config) -> None:
    m, b = cfg.model, cfg.backbone_search
    if not is_backbone_space(m.backbone):
        raise ConfigError(f"model.backbone: {m.backbone!r} is a fixed ResNet; the backbone search needs a backbone "
                          f"space ({', '.join(BACKBONE_SPACES)})")
    strategy = STRATEGIES[b.strategy]
    kinds = choice_kinds(m.backbone) | ({"width"} if m.head_space == "width" else set())  # heads' widths searched
    if not kinds <= strategy.handles:
        able = [name for name, s in STRATEGIES.items() if "backbone" in s.targets and kinds <= s.handles]
        raise ConfigError(f"backbone_search.strategy: {b.strategy} cannot search space {m.backbone} (its "
                          f"{', '.join(sorted(kinds - strategy.handles))} choices; use {', '.join(able)})")
    if strategy.interleaved and m.head_space == "mlp" and len(m.mlp_widths) > 1:
        raise ConfigError("model.mlp_widths: DARTS-family strategies cannot relax a width choice; give one width")


@dataclass
class SearchSetup:
    """Everything a backbone search needs before its strategy runs (the ranking benchmark reuses it)."""

    cfg: Config
    data: Any
    weight_idx: torch.Tensor
    arch_idx: torch.Tensor
    num_classes: int
    space: Any
    cost: BackboneCost | NetworkWidthCost
    smallest: dict
    scorer: Any

    def context(self, out: Optional[Path] = None, log_fn: Callable[[str], None] = print) -> SearchContext:
        return SearchContext(self.cfg, "backbone", cost=self.cost, scorer=self.scorer, out=out, log_fn=log_fn)


def prepare(cfg: Config, log_fn: Callable[[str], None] = print) -> SearchSetup:
    """Validate, load data, build the space and its cost model, check the budget, build the scorer."""
    validate(cfg)
    b = cfg.backbone_search
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    num_classes = len(data.train.classes)
    weight_idx, arch_idx = split_indices(len(data.train), cfg.data.search_split, cfg.seed)
    for split in (weight_idx, arch_idx):  # before the output directory is claimed
        check_split_size(cfg, len(split))
    try:
        space = build_space(cfg, num_classes=num_classes)
        cost = network_cost(space, data.image_size)  # (a ViT's image size is checked here)
    except (ValueError, TypeError) as err:  # a backbone option of the wrong type (plan: [[1, 2]], ops: null)
        raise ConfigError(f"model: {' '.join(str(err).split())}") from None
    smallest = check_budget(b.max_flops, b.max_params, cost, cfg.model.backbone)
    log_fn(f"backbone space {cfg.model.backbone} for {cfg.framework}: {len(cost.labels)} backbone choices, "
           f"{cost.size():.3g} backbones; smallest {smallest['flops']:,} FLOPs / {smallest['params']:,} params; "
           f"budget max_flops {b.max_flops} max_params {b.max_params}; strategy {b.strategy}")
    scorer = _scorer(cfg, data, weight_idx, arch_idx, num_classes)
    return SearchSetup(cfg, data, weight_idx, arch_idx, num_classes, space, cost, smallest, scorer)


def train_supernet(setup: SearchSetup, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                   log_fn: Callable[[str], None] = print, run: Optional[Run] = None):
    """Run the strategy's one-shot training through NNI; returns (NNI strategy, monitor, seconds).

    With ``run`` (a claimed output directory) the training checkpoints every epoch and resumes from
    the last checkpoint. (Unlike the head search, no collapse guard: a tiny SimSiam supernet's
    collapse score starts low, and the backbone searches here have always run to the end.)
    """
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.experiment import NasExperiment

    cfg, data = setup.cfg, setup.data
    strategy, epochs = STRATEGIES[cfg.backbone_search.strategy], cfg.search.epochs
    ctx = setup.context(out, log_fn)
    module = build_module(cfg, epochs, interleaved=strategy.interleaved, augment=data.augment,
                          **strategy.module_options(ctx))
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, EpochPrinter(log_fn))
    labelled = strategy.needs_labels or module.uses_labels
    weight_loader = data.loader(setup.weight_idx, cfg)
    arch_loader = data.loader(setup.arch_idx, cfg, labelled=labelled)
    callbacks: list = [monitor]
    if run is not None:
        callbacks += run.callbacks(cfg, [weight_loader.sampler, arch_loader.sampler], cfg.data.batch_size)
    trainer = build_trainer(cfg, epochs, out, callbacks, unused_parameters=strategy.trains_paths)
    evaluator = Lightning(module, trainer, train_dataloaders=weight_loader, val_dataloaders=arch_loader,
                          fit_kwargs=run.fit_kwargs() if run is not None else {})
    nni_strategy = strategy.build(ctx)
    experiment = NasExperiment(setup.space, evaluator, nni_strategy)
    nni_compat.experiment_config_dir(experiment, out / "nni")
    start = time.perf_counter()
    run_and_stop(experiment)
    return nni_strategy, monitor, time.perf_counter() - start


@claims_output_dir
def run_backbone_search(cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                        log_fn: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Run one backbone search into ``out``; returns the record written to ``best_architecture.json``."""
    setup = prepare(cfg, log_fn)
    b, data, cost = cfg.backbone_search, setup.data, setup.cost
    run = claim_output_dir(out, cfg, "backbone-search", RESULT_FILES, overwrite=overwrite, log_fn=log_fn)
    nni_strategy, monitor, train_seconds = train_supernet(setup, out, listeners, log_fn, run)
    start = time.perf_counter()
    selection = STRATEGIES[b.strategy].select(setup.context(out, log_fn), nni_strategy)
    select_seconds = time.perf_counter() - start
    architecture = nni_compat.plain_architecture(selection.architecture)
    derived = STRATEGIES[b.strategy].derive(nni_strategy, architecture)  # the supernet's weights for it
    score = setup.scorer(derived)  # recalibrates BatchNorm, scores on held-out images
    backbone_cost = cost(architecture)
    if not backbone_cost.within(b.max_flops, b.max_params):  # cannot happen: the strategies keep it in
        raise RuntimeError(f"derived network {backbone_cost} is outside the budget")
    metrics = downstream_metrics(cfg, data, derived)
    metrics.update(search_seconds=train_seconds, select_seconds=select_seconds, held_out_score=score)
    record = new_record(
        "backbone_search", cfg, space_record(cfg, num_classes=setup.num_classes), architecture, metrics,
        monitor.history,
        cost={"flops": backbone_cost.flops, "params": backbone_cost.params, "input_size": data.image_size},
        budget={"max_flops": b.max_flops, "max_params": b.max_params, "smallest": setup.smallest},
        probabilities=selection.probabilities, evolution=selection.evolution, dataset=dataset_record(cfg, data),
        strategy=b.strategy, status="ok")
    if cfg.model.backbone == "nas_bench_macro":
        record["benchmark"] = _benchmark_entry(architecture)
    write_results(out, record, ARCHITECTURE_FILE, derived, MODEL_FILE)
    return record


def _scorer(cfg: Config, data, weight_idx, arch_idx, num_classes: int):
    from evaluators.subnet import SubnetScorer

    images = normalized(data.train, data.mean, data.std)
    return SubnetScorer.from_splits(cfg.framework, images, data.train.labels, weight_idx, arch_idx, num_classes,
                                    limit=cfg.backbone_search.score_images, seed=cfg.seed,
                                    k=cfg.evaluation.knn_k, temperature=cfg.evaluation.knn_temperature,
                                    bn_batches=cfg.backbone_search.bn_batches, batch_size=cfg.data.batch_size)


def _benchmark_entry(architecture: dict) -> Optional[dict]:
    from search_spaces.nas_bench_macro import NasBenchMacro, arch_to_key, canonical_key

    key = arch_to_key(architecture)
    try:
        table = NasBenchMacro()
    except FileNotFoundError:
        return {"key": key, "canonical_key": canonical_key(key)}
    r = table.record(key)
    return {"key": key, "canonical_key": canonical_key(key), "mean_acc": r["mean_acc"], "params": r["params"],
            "flops": r["flops"]}
