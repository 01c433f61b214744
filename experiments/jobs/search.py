"""The search job: one pipeline for the heads (``search``) and a backbone (``backbone-search``).

config -> data -> space -> framework -> strategy -> evaluation -> ``best_architecture.json``.
Both commands go through it: a strategy (``experiments.strategies``) trains the supernet through
NNI's ``NasExperiment``, selects the architecture (``Strategy.select``) and derives the network
with the supernet's weights for it (``Strategy.derive``); the job scores it, writes one record
and prints its summary. It owns its output directory (``run.json``, ``status.json``,
``checkpoints/last.ckpt``, resumed exactly after a kill, and a ``.lock``). What differs between
the two targets (their checks, the backbone's cost, budget and scorer, the head search's
collapse guard) is a ``SearchTarget``; the backbone's is in ``experiments/jobs/backbone_search.py``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from experiments import nni_compat
from experiments.core.assembly import build_data, build_module, build_monitor, build_space, build_trainer, \
    check_split_size, downstream_metrics, untrained_knn
from experiments.core.run_dir import Run, claim_output_dir, claims_output_dir
from experiments.core.config import Config
from experiments.core.console import EpochPrinter
from experiments.core.data import split_indices
from experiments.core.errors import ConfigError, RunFailed
from experiments.core.guards import FailureGuard
from experiments.core.records import dataset_record, new_record, space_record, write_results
from experiments.jobs.command import add_config_arguments, run_search_job
from experiments.strategies import STRATEGIES, SearchContext, Strategy
from search_spaces.supernet import plain_architecture
from search_spaces.backbone_spaces import is_backbone_space
from search_spaces.head_spaces import HEAD_SPACES

NAME = "search"
HELP = "head search (DARTS, GumbelDARTS) through NNI, trained jointly with the backbone"
ARCHITECTURE_FILE = "best_architecture.json"
MODEL_FILE = "search_model.pt"
RESULT_FILES = (ARCHITECTURE_FILE, MODEL_FILE)


class SearchCollapsed(RunFailed):
    """The derived architecture's representation collapsed: the search failed (its record is written)."""


@dataclass
class SearchSetup:
    """Everything a search needs before its strategy runs (the ranking studies reuse it)."""

    cfg: Config
    target: "SearchTarget"
    data: Any
    weight_idx: torch.Tensor
    arch_idx: torch.Tensor
    num_classes: int
    space: Any
    cost: Any = None  # a backbone's FLOPs/params model
    smallest: Optional[dict] = None  # the backbone space's smallest network (its cost)
    scorer: Any = None  # evaluators.subnet.SubnetScorer: a sub-network's held-out score

    @property
    def strategy(self) -> Strategy:
        return STRATEGIES[self.target.strategy_name(self.cfg)]

    def context(self, out: Optional[Path] = None, log_fn: Callable[[str], None] = print) -> SearchContext:
        return SearchContext(self.cfg, self.target.name, cost=self.cost, scorer=self.scorer, out=out, log_fn=log_fn)


@dataclass(frozen=True)
class SearchTarget:
    """What the heads' and a backbone's searches do differently; the rest is one pipeline (``search``)."""

    name: str  # ``SearchContext.target``: heads or backbone
    job: str  # the command, and the run's kind in run.json
    record_kind: str  # best_architecture.json's ``kind``
    strategy_name: Callable[[Config], str]
    #: validate the config, load and split the data, build the space (and a backbone's cost, budget, scorer)
    prepare: Callable[[Config, Callable[[str], None]], SearchSetup]
    #: the derived network's own measures before the downstream ones, as (metrics, record fields)
    measure: Callable[[SearchSetup, torch.nn.Module, dict], tuple] = lambda setup, derived, architecture: ({}, {})
    #: why the finished search failed (its record is still written), or None
    failure: Callable[[Config, dict, Path], Optional[str]] = lambda cfg, metrics, out: None
    held_out_stream: int = 0  # the held-out loader's random stream
    collapse_guard: bool = False  # stop the run when the representation collapses (search.collapse_threshold)


def add_arguments(p) -> None:
    add_config_arguments(p)


def run(args) -> int:
    return run_search_job(args, RESULT_FILES, run_search)  # a collapsed head raises RunFailed: exit 3


def load_split(cfg: Config) -> tuple:
    """Seed, load the data and split its training part into weight and held-out images (checked for a batch)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    weight_idx, arch_idx = split_indices(len(data.train), cfg.data.search_split, cfg.seed)
    for split in (weight_idx, arch_idx):  # before the output directory is claimed
        check_split_size(cfg, len(split))
    return data, weight_idx, arch_idx


def train_supernet(setup: SearchSetup, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                   log_fn: Callable[[str], None] = print, run: Optional[Run] = None):
    """Run the strategy's one-shot training through NNI; returns (NNI strategy, monitor, seconds).

    With ``run`` (a claimed output directory) the training checkpoints every epoch and resumes from
    the last checkpoint.
    """
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.experiment import NasExperiment

    from experiments.strategies.spos import run_and_stop

    cfg, data, target, strategy = setup.cfg, setup.data, setup.target, setup.strategy
    epochs = cfg.search.epochs
    ctx = setup.context(out, log_fn)
    module = build_module(cfg, epochs, interleaved=strategy.interleaved, augment=data.augment,
                          **strategy.module_options(ctx))
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, EpochPrinter(log_fn))
    labelled = strategy.needs_labels or module.uses_labels
    weight_loader = data.loader(setup.weight_idx, cfg)
    arch_loader = data.loader(setup.arch_idx, cfg, labelled=labelled, stream=target.held_out_stream)
    callbacks: list = [monitor]
    if target.collapse_guard:
        callbacks.append(FailureGuard(monitor, cfg, "search"))
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


def search(target: SearchTarget, cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
           log_fn: Callable[[str], None] = print, overwrite: bool = False) -> Optional[dict]:
    """Run one search of ``target`` into ``out``; returns the record written to ``best_architecture.json``.

    Every rank of a DDP run trains and selects (their supernets are the same); global rank zero
    alone measures, writes and returns the record, the others return None.
    """
    setup = target.prepare(cfg, log_fn)
    run = claim_output_dir(out, cfg, target.job, RESULT_FILES, overwrite=overwrite, log_fn=log_fn)
    nni_strategy, monitor, train_seconds = train_supernet(setup, out, listeners, log_fn, run)
    start = time.perf_counter()
    selection = setup.strategy.select(setup.context(out, log_fn), nni_strategy)
    select_seconds = time.perf_counter() - start
    if rank_zero_only.rank != 0:
        return None
    architecture = plain_architecture(selection.architecture)
    derived = setup.strategy.derive(nni_strategy, architecture)  # the supernet's weights for it
    own_metrics, fields = target.measure(setup, derived, architecture)
    metrics = downstream_metrics(cfg, setup.data, derived)
    metrics.update(search_seconds=train_seconds, select_seconds=select_seconds, **own_metrics,
                   untrained_knn_top1=untrained_knn(cfg, setup.data, fresh_network(cfg, setup, architecture)))
    failure = target.failure(cfg, metrics, out)
    record = new_record(target.record_kind, cfg, space_record(cfg, num_classes=setup.num_classes), architecture,
                        metrics, monitor.history, **fields, probabilities=selection.probabilities,
                        evolution=selection.evolution, dataset=dataset_record(cfg, setup.data),
                        strategy=target.strategy_name(cfg), status="collapsed" if failure else "ok")
    write_results(out, record, ARCHITECTURE_FILE, derived, MODEL_FILE)
    if failure:
        raise SearchCollapsed(failure)
    return record


def fresh_network(cfg: Config, setup: SearchSetup, architecture: dict) -> torch.nn.Module:
    """The chosen architecture with fresh weights (drawn from the run's seed, the global generators untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_space(cfg, num_classes=setup.num_classes).freeze(architecture)


# --- the heads ------------------------------------------------------------------------------------------
def prepare_heads(cfg: Config, log_fn: Callable[[str], None] = print) -> SearchSetup:
    """Refuse what the head search cannot search, then load the data and build the space."""
    if is_backbone_space(cfg.model.backbone):
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r} is a backbone space; search it with the "
                          f"backbone-search job (python -m experiments backbone-search)")
    heads = HEAD_SPACES[cfg.model.head_space]
    if not heads.choice_kinds(cfg.model.mlp_widths):
        raise ConfigError(f"model.head_space: {cfg.model.head_space!r} has nothing to search; use "
                          f"{' or '.join(n for n, s in HEAD_SPACES.items() if s.head_search)} "
                          f"(or retrain the hand-made head with the retrain job)")
    if not heads.head_search:
        raise ConfigError(f"model.head_space: {cfg.model.head_space} is searched by the backbone-search job's "
                          f"width strategies")
    data, weight_idx, arch_idx = load_split(cfg)
    space = build_space(cfg)
    labels = list(space.simplify())
    log_fn(f"search space {cfg.model.head_space} for {cfg.framework}: {len(labels)} choices "
           f"({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''}); "
           f"{len(weight_idx)} weight / {len(arch_idx)} architecture images")
    return SearchSetup(cfg, HEADS, data, weight_idx, arch_idx, len(data.train.classes), space)


def collapsed_head(cfg: Config, metrics: dict, out: Path) -> Optional[str]:
    """A derived head whose representation collapsed failed the search."""
    if metrics["collapse"] >= cfg.search.collapse_threshold:
        return None
    return (f"the derived head collapsed: collapse score {metrics['collapse']:.3f} is below "
            f"search.collapse_threshold {cfg.search.collapse_threshold} (healthy is about 1); "
            f"see {out / ARCHITECTURE_FILE}")


HEADS = SearchTarget("heads", NAME, "ssl_head_search", lambda cfg: cfg.search.strategy, prepare_heads,
                     failure=collapsed_head, held_out_stream=1, collapse_guard=True)


@claims_output_dir
def run_search(cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
               log_fn: Callable[[str], None] = print, overwrite: bool = False) -> Optional[dict]:
    """Run one head search into ``out``; returns the architecture record written to ``best_architecture.json``.

    Under DDP, ranks other than global rank zero write nothing and return None.
    """
    return search(HEADS, cfg, out, listeners, log_fn, overwrite)
