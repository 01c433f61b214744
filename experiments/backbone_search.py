"""The backbone-search job: NNI one-shot strategies over a backbone space, under any framework's objective.

config -> data -> space (backbone space + the framework's heads) -> framework -> strategy ->
evaluation -> ``best_architecture.json`` (the same export and ``retrain`` as the head search).

- ``spos``: NNI ``RandomOneShot`` trains the supernet by uniform single-path sampling (SPOS,
  Guo et al. 2020); then NNI ``RegularizedEvolution`` runs over the trained supernet (sequential
  engine, weights kept), each sub-network scored with inherited weights after recalibrating
  BatchNorm: kNN top-1 on held-out images for SSL frameworks, classifier top-1 for
  ``supervised``. An NNI ``Filter`` keeps every scored sub-network within the budget.
- ``darts``, ``gdarts``, ``proxyless``: relaxation of every ``LayerChoice``; the budget is a
  differentiable penalty ``budget_penalty * max(0, E[cost] / budget - 1)`` on the architecture
  step, E[cost] the exact expectation of the profiled cost (a sum over layers) under the
  softmax of the architecture weights. The derived network is the argmax, then, if still over
  budget, the most probable network within it (greedy: give up the least probability per unit
  of excess cost).
- ``enas``: NNI ``ENAS`` (needs tianshou); the reward is the sampled network's kNN top-1
  (or accuracy) on a held-out batch, minus a budget penalty; exported as for DARTS.

Budgets bound the backbone only (the heads are dropped after pre-training): FLOPs are
multiply-accumulates at the data's image size (NAS-Bench-Macro's count), params all parameters.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from experiments import nni_compat

import pytorch_lightning as pl
import torch

from experiments.common import (FORMAT_VERSION, build_data, build_module, build_monitor, build_space, build_trainer,
                                downstream_metrics, save_model_atomic, versions, write_json_atomic)
from experiments.config import Config, ConfigError
from search_spaces.backbone_spaces import SPACE_STRATEGIES, is_backbone_space
from search_spaces.cost import BackboneCost, Cost

ARCHITECTURE_FILE = "best_architecture.json"
INTERLEAVED = ("darts", "gdarts", "proxyless")


# --- budget -----------------------------------------------------------------------------------------
def check_budget(cfg: Config, cost: BackboneCost) -> dict:
    """One clear error for a budget no network of the space meets; returns the smallest network's cost."""
    b = cfg.backbone_search
    smallest, c = cost.smallest("flops")
    if b.max_flops is not None and c.flops > b.max_flops:
        raise ConfigError(f"backbone_search.max_flops: {b.max_flops:.4g} is below the smallest network of space "
                          f"{cfg.model.backbone} ({c.flops:,} FLOPs at {cost.input_size}x{cost.input_size})")
    if b.max_params is not None:
        _, cp = cost.smallest("params")
        if cp.params > b.max_params:
            raise ConfigError(f"backbone_search.max_params: {b.max_params:.4g} is below the smallest network of "
                              f"space {cfg.model.backbone} ({cp.params:,} parameters)")
        if not c.within(b.max_flops, b.max_params):
            raise ConfigError(f"backbone_search: no network of space {cfg.model.backbone} meets both max_flops "
                              f"{b.max_flops:.4g} and max_params {b.max_params:.4g}")
    return {"flops": c.flops, "params": c.params, "architecture": smallest}


def budget_penalty_fn(cost: BackboneCost, max_flops: Optional[float], max_params: Optional[float], scale: float):
    """``fn(module) -> scale * sum max(0, E[cost] / budget - 1)`` on the module's architecture weights."""
    def penalty(module) -> torch.Tensor:
        probs = nni_compat.differentiable_probabilities(module.model, cost.labels)
        total = torch.zeros(())
        for quantity, limit in (("flops", max_flops), ("params", max_params)):
            if limit is not None:
                expected = cost.expected(probs, quantity)
                total = total + torch.relu(expected / float(limit) - 1.0)
        return scale * total
    return penalty


def fit_to_budget(probabilities: dict[str, dict[str, float]], architecture: dict, cost: BackboneCost,
                  max_flops: Optional[float], max_params: Optional[float]) -> dict:
    """The argmax architecture, made to fit the budget by the cheapest changes in probability.

    Greedy: while over budget, take the change of one choice to a cheaper value that gives up
    the least log-probability per unit of (relative) excess cost removed; between equals, the
    one that stays closest under the budget.
    """
    arch = dict(architecture)
    limits = [(q, float(v)) for q, v in (("flops", max_flops), ("params", max_params)) if v is not None]

    def excess(c: Cost) -> float:  # relative cost above the budget, summed over the limits
        return sum(max(0.0, getattr(c, q) / v - 1.0) for q, v in limits)

    def undershoot(c: Cost) -> float:  # relative room left under the tightest limit
        return min(max(0.0, 1.0 - getattr(c, q) / v) for q, v in limits)

    current = cost(arch)
    while excess(current) > 0:
        best = None
        for label, values in cost.labels.items():
            p = probabilities.get(label, {})
            p_now = max(p.get(str(arch[label]), 1e-12), 1e-12)
            for v in values:
                if v == arch[label]:
                    continue
                trial = dict(arch, **{label: v})
                c = cost(trial)
                gain = excess(current) - excess(c)
                if gain <= 0:
                    continue
                loss = math.log(p_now) - math.log(max(p.get(str(v), 1e-12), 1e-12))
                score = (round(loss / gain, 9), undershoot(c))
                if best is None or score < best[0]:
                    best = (score, trial, c)
        if best is None:  # no single change helps: fall back to the smallest network
            arch = dict(arch, **cost.smallest("flops")[0])
            current = cost(arch)
            break
        _, arch, current = best
    return arch


# --- the job -----------------------------------------------------------------------------------------
def validate(cfg: Config) -> None:
    m, b = cfg.model, cfg.backbone_search
    if not is_backbone_space(m.backbone):
        raise ConfigError(f"model.backbone: {m.backbone!r} is a fixed ResNet; the backbone search needs a backbone "
                          f"space (nas_bench_macro, macro or resnet)")
    allowed = SPACE_STRATEGIES[m.backbone]
    if b.strategy not in allowed:
        raise ConfigError(f"backbone_search.strategy: {b.strategy} cannot search space {m.backbone} "
                          f"(it supports {', '.join(allowed)})")
    if b.strategy in INTERLEAVED and m.head_space == "mlp" and len(m.mlp_widths) > 1:
        raise ConfigError("model.mlp_widths: DARTS-family strategies cannot relax a width choice; give one width")
    if b.strategy == "enas":
        nni_compat.require_tianshou()


@dataclass
class SearchSetup:
    """Everything a backbone search needs before its strategy runs (the ranking benchmark reuses it)."""

    cfg: Config
    data: Any
    weight_idx: torch.Tensor
    arch_idx: torch.Tensor
    num_classes: int
    space: Any
    cost: BackboneCost
    smallest: dict
    scorer: Any


def prepare(cfg: Config, log_fn: Callable[[str], None] = print) -> SearchSetup:
    """Validate, load data, build the space and its cost model, check the budget, build the scorer."""
    validate(cfg)
    b = cfg.backbone_search
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    num_classes = len(data.train.classes)
    from experiments.data import split_indices

    weight_idx, arch_idx = split_indices(len(data.train), cfg.data.search_split, cfg.seed)
    try:
        space = build_space(cfg, num_classes=num_classes)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    cost = BackboneCost(space.backbone, data.image_size)
    smallest = check_budget(cfg, cost)
    log_fn(f"backbone space {cfg.model.backbone} for {cfg.framework}: {len(cost.labels)} backbone choices, "
           f"{cost.size():.3g} backbones; smallest {smallest['flops']:,} FLOPs / {smallest['params']:,} params; "
           f"budget max_flops {b.max_flops} max_params {b.max_params}; strategy {b.strategy}")
    scorer = _scorer(cfg, data, weight_idx, arch_idx, num_classes)
    return SearchSetup(cfg, data, weight_idx, arch_idx, num_classes, space, cost, smallest, scorer)


def train_supernet(setup: SearchSetup, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                   log_fn: Callable[[str], None] = print):
    """Run the strategy's one-shot training through NNI; returns (strategy, monitor, seconds)."""
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.experiment import NasExperiment

    cfg, data = setup.cfg, setup.data
    strategy_name, epochs = cfg.backbone_search.strategy, cfg.search.epochs
    module = build_module(cfg, epochs, interleaved=strategy_name in INTERLEAVED)
    module.fast_arch_step = False  # the architecture step must reach the backbone's choices
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, lambda r: log_fn(_epoch_line(r)))
    trainer = build_trainer(cfg, epochs, out, [monitor])
    labelled = strategy_name == "enas" or getattr(module, "uses_labels", False)
    weight_loader = data.loader(setup.weight_idx, cfg)
    arch_loader = data.loader(setup.arch_idx, cfg, labelled=labelled)
    evaluator = Lightning(module, trainer, train_dataloaders=weight_loader, val_dataloaders=arch_loader)
    strategy = _strategy(cfg, module, setup.cost, setup.scorer)
    experiment = NasExperiment(setup.space, evaluator, strategy)
    nni_compat.experiment_config_dir(experiment, out / "nni")
    start = time.perf_counter()
    _run_and_stop(experiment)
    return strategy, monitor, time.perf_counter() - start


def run_backbone_search(cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                        log_fn: Callable[[str], None] = print) -> dict:
    """Run one backbone search into ``out``; returns the record written to ``best_architecture.json``."""
    setup = prepare(cfg, log_fn)
    b, data, cost, scorer, num_classes = cfg.backbone_search, setup.data, setup.cost, setup.scorer, setup.num_classes
    smallest, strategy_name = setup.smallest, cfg.backbone_search.strategy
    strategy, monitor, train_seconds = train_supernet(setup, out, listeners, log_fn)
    supernet = strategy.supernet
    probabilities: dict = {}
    evolution: list = []
    start = time.perf_counter()
    if strategy_name == "spos":
        architecture, evolution = _evolve(cfg, supernet, cost, scorer, out, log_fn)
    else:
        if strategy_name == "enas":
            probabilities = nni_compat.enas_probabilities(strategy.oneshot_module)
        else:
            probabilities = nni_compat.architecture_probabilities(supernet)
        architecture = nni_compat.derived_architecture_from(probabilities)
        fitted = fit_to_budget(probabilities, architecture, cost, b.max_flops, b.max_params)
        if fitted != architecture:
            log_fn(f"argmax network {cost(architecture)} is over budget; derived the most probable one within it")
        architecture = fitted
    select_seconds = time.perf_counter() - start
    architecture = nni_compat.plain_architecture(architecture)
    derived = supernet.freeze(architecture)  # weight-preserving: the supernet's weights for this network
    score = scorer(derived)  # recalibrates BatchNorm, scores on held-out images
    backbone_cost = cost(architecture)
    if not backbone_cost.within(b.max_flops, b.max_params):  # cannot happen: the guards above keep it in
        raise RuntimeError(f"derived network {backbone_cost} is outside the budget")
    metrics = downstream_metrics(cfg, data, derived)
    metrics.update(search_seconds=train_seconds, select_seconds=select_seconds, held_out_score=score)
    record = {
        "format_version": FORMAT_VERSION,
        "kind": "backbone_search",
        "space": space_record(cfg, num_classes),
        "framework": cfg.framework,
        "architecture": architecture,
        "cost": {"flops": backbone_cost.flops, "params": backbone_cost.params, "input_size": data.image_size},
        "budget": {"max_flops": b.max_flops, "max_params": b.max_params, "smallest": smallest},
        "probabilities": probabilities,
        "evolution": evolution,
        "dataset": {"name": cfg.data.dataset, "root": cfg.data.root, "train_images": len(data.train),
                    "test_images": len(data.test), "image_size": data.image_size},
        "strategy": strategy_name,
        "metrics": metrics,
        "history": monitor.history,
        "config": cfg.to_dict(),
        "versions": versions(),
        "status": "ok",
    }
    if cfg.model.backbone == "nas_bench_macro":
        record["benchmark"] = _benchmark_entry(architecture)
    write_json_atomic(out / ARCHITECTURE_FILE, record)
    save_model_atomic(out / "search_model.pt", {"space": record["space"], "architecture": architecture,
                                                 "state_dict": derived.state_dict()})
    return record


def space_record(cfg: Config, num_classes: int) -> dict:
    m = cfg.model
    return {"framework": cfg.framework, "head_space": m.head_space, "backbone": m.backbone,
            "backbone_width": m.backbone_width, "backbone_options": dict(m.backbone_options),
            "head_width": m.head_width, "mlp_widths": list(m.mlp_widths), "mlp_depths": list(m.mlp_depths),
            "num_classes": num_classes}


def _scorer(cfg: Config, data, weight_idx, arch_idx, num_classes: int):
    from evaluators.subnet import SubnetScorer
    from experiments.data import normalized

    images = normalized(data.train, data.mean, data.std)
    return SubnetScorer.from_splits(cfg.framework, images, data.train.labels, weight_idx, arch_idx, num_classes,
                                    limit=cfg.backbone_search.score_images, seed=cfg.seed,
                                    k=cfg.evaluation.knn_k, temperature=cfg.evaluation.knn_temperature,
                                    bn_batches=cfg.backbone_search.bn_batches, batch_size=cfg.data.batch_size)


def _strategy(cfg: Config, module, cost: BackboneCost, scorer):
    from nni.nas.strategy import DARTS, GumbelDARTS, Proxyless, RandomOneShot

    s, b = cfg.search, cfg.backbone_search
    common = dict(arc_learning_rate=s.arch_lr, gradient_clip_val=s.gradient_clip, warmup_epochs=s.warmup_epochs,
                  log_prob_every_n_step=1)
    if b.strategy in INTERLEAVED and (b.max_flops is not None or b.max_params is not None) and b.budget_penalty > 0:
        module.arch_penalties["budget"] = budget_penalty_fn(cost, b.max_flops, b.max_params, b.budget_penalty)
    if b.strategy == "spos":
        return RandomOneShot()
    if b.strategy == "darts":
        return DARTS(**common)
    if b.strategy == "gdarts":
        return GumbelDARTS(temperature=tuple(float(t) for t in s.gumbel_temperature), **common)
    if b.strategy == "proxyless":
        return Proxyless(**common)
    if b.strategy == "enas":
        bank = scorer.bank[: min(len(scorer.bank), 256)], scorer.bank_labels[: min(len(scorer.bank), 256)]
        module.reward_bank = (bank[0], bank[1], scorer.num_classes, min(cfg.evaluation.knn_k, len(bank[0])),
                              cfg.evaluation.knn_temperature)
        module.validation_step = module.reward_step  # NNI's ENAS calls it on held-out batches
        return nni_compat.tagged_enas(cost, b.max_flops, b.max_params, b.budget_penalty,
                                      batches_per_update=b.enas_batches_per_update, warmup_epochs=s.warmup_epochs)
    raise ConfigError(f"backbone_search.strategy: unknown strategy {b.strategy!r}")


def _evolve(cfg: Config, supernet, cost: BackboneCost, scorer, out: Path, log_fn) -> tuple[dict, list]:
    """NNI RegularizedEvolution over the trained supernet, scored with inherited weights, within budget."""
    import nni
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import RegularizedEvolution
    from nni.nas.strategy.middleware import Chain, Filter

    b = cfg.backbone_search
    history: list[dict] = []

    def in_budget(model) -> bool:
        return cost(model.sample).within(b.max_flops, b.max_params)

    def evaluate(network):
        sample = nni_compat.current_sample()
        accuracy = scorer(network)
        c = cost(sample)
        history.append({"architecture": nni_compat.plain_architecture(sample), "score": accuracy,
                        "flops": c.flops, "params": c.params})
        log_fn(f"[{len(history):3d}/{b.trials}] score {accuracy:.4f}  {c.flops:,} FLOPs  {c.params:,} params")
        nni.report_final_result(accuracy)

    evolution = Chain(RegularizedEvolution(population_size=min(b.population, b.trials),
                                           sample_size=min(b.tournament, b.population, b.trials),
                                           mutation_prob=b.mutation_prob, seed=cfg.seed),
                      Filter(in_budget, patience=10_000, retain_history=False))
    experiment = NasExperiment(supernet, FunctionalEvaluator(evaluate), evolution)
    experiment.config.max_trial_number = b.trials
    nni_compat.experiment_config_dir(experiment, out / "nni")
    _run_and_stop(experiment)
    if not history:
        raise ConfigError("backbone_search: the evolution scored no network (is the budget too tight?)")
    best = max(history, key=lambda r: r["score"])
    return dict(best["architecture"]), history


def _run_and_stop(experiment) -> None:
    """``run()`` leaves an NNI experiment open until process exit (atexit); close it here."""
    try:
        experiment.run()
    finally:
        experiment.stop()


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


def _epoch_line(r: dict) -> str:
    loss = f"{r['ssl_loss']:.4f}" if r.get("ssl_loss") is not None else "n/a"
    return (f"epoch {r['epoch']}: loss {loss}  knn_top1 {r['knn_top1']:.3f}  "
            f"collapse {r['collapse']:.3f}  ({r['epoch_seconds']:.1f}s)")


def summary(record: dict, path: Path) -> None:
    """The searched backbone as a table, its cost against the budget, its downstream accuracy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['framework']} · {record['space']['backbone']} backbone · {record['strategy']}")
    table.add_column("choice")
    table.add_column("value")
    for label, value in record["architecture"].items():
        table.add_row(label, str(value))
    console = Console()
    console.print(table)
    c, b, m = record["cost"], record["budget"], record["metrics"]
    console.print(f"backbone {c['flops']:,} FLOPs (budget {b['max_flops']}), {c['params']:,} params "
                  f"(budget {b['max_params']}) at {c['input_size']}x{c['input_size']}")
    if record.get("benchmark"):
        bm = record["benchmark"]
        acc = f", NAS-Bench-Macro mean_acc {bm['mean_acc']:.2f}" if "mean_acc" in bm else ""
        console.print(f"benchmark key {bm['key']}{acc}")
    console.print(f"kNN top-1 {m['knn_top1']:.3f}  linear top-1 {m['linear_top1']:.3f}  "
                  f"held-out score {m['held_out_score']:.3f}  chance {m['chance']:.3f}")
    console.print(f"written: {path}")
