"""SPOS (Guo et al. 2020): uniform single-path supernet training, then evolution over the trained supernet.

NNI ``RandomOneShot`` trains the supernet; NNI ``RegularizedEvolution`` then runs over it
(sequential engine, weights kept), each sub-network scored with inherited weights after
recalibrating BatchNorm: kNN top-1 on held-out images for SSL frameworks, classifier top-1
for ``supervised``. An NNI ``Filter`` keeps every scored sub-network within the budget.
With ``strategy_options.distinct`` the supernet trains on distinct networks drawn uniformly
(``experiments/strategies/distinct.py``) instead of NAS-Bench-Macro keys.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from experiments import nni_compat
from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SECTIONS, SearchContext, Selection, Strategy
from experiments.strategies.distinct import DISTINCT_OPTION, check_distinct
from search_spaces.supernet import plain_architecture

#: NNI RegularizedEvolution's settings, options of every strategy that ends in ``evolve``
EVOLUTION_OPTIONS = {
    "population": Option(16, "[2, 100000]", "the evolution's population"),
    "tournament": Option(4, "[1, 100000]", "individuals per tournament"),
    "mutation_prob": Option(0.25, "(0, 1]", "per-label mutation probability"),
}


def check_evolution(target: str, settings: Mapping[str, Any]) -> None:
    """A tournament is drawn from the population."""
    if settings["tournament"] > settings["population"]:
        where = f"{SECTIONS[target]}.strategy_options"
        raise ConfigError(f"{where}.tournament: must be <= {where}.population ({settings['population']}), "
                          f"got {settings['tournament']}")


class SPOS(Strategy):
    name = "spos"
    summary = "uniform single-path sampling, then regularized evolution with inherited weights"
    handles = frozenset({"layer", "width", "depth"})
    config_fields = ("backbone_search.trials", "backbone_search.bn_batches", "backbone_search.score_images")
    option_specs = {**EVOLUTION_OPTIONS, "distinct": DISTINCT_OPTION}
    trains_paths = True

    def check(self, cfg, target: str) -> None:
        if target == "backbone":
            check_distinct(cfg, self.name, self.settings(cfg))
        check_evolution(target, self.settings(cfg, target))

    def build(self, ctx: SearchContext):
        from nni.nas.strategy import RandomOneShot

        from experiments.strategies.sampling import distinct_spos

        return distinct_spos(ctx.cfg.model.backbone) if self.settings(ctx.cfg)["distinct"] else RandomOneShot()

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        architecture, history = evolve(ctx, nni_strategy.supernet, self.settings(ctx.cfg))
        return Selection(architecture, evolution=history)


def evolve(ctx: SearchContext, supernet, settings: Mapping[str, Any],
           network_of: Optional[Callable[[dict], Any]] = None, *,
           score_of: Optional[Callable[[dict], float]] = None,
           accept: Optional[Callable[[dict], bool]] = None, seeds: Sequence[dict] = ()) -> tuple[dict, list]:
    """NNI RegularizedEvolution over the trained supernet, scored with inherited weights, within budget.

    ``settings``: the strategy's ``EVOLUTION_OPTIONS`` (and ``trials``, else ``backbone_search.trials``).

    ``network_of(architecture)`` gives the network to score in place of NNI's frozen one (K-shot: the
    path's materialised combination of the copies); ``score_of(architecture)`` the score itself
    (ViTAS: the mean over its weight slices; BCNet: the mean of two sides); ``accept(architecture)``
    replaces the budget test; ``seeds`` (within budget) fill the initial population before random draws.
    """
    import nni
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy.middleware import Chain, Filter

    from experiments.strategies.sampling import SeededEvolution

    cfg, cost, scorer, log_fn = ctx.cfg, ctx.cost, ctx.scorer, ctx.log_fn
    b = cfg.backbone_search
    trials = settings.get("trials", b.trials)
    population = min(settings["population"], trials)
    history: list[dict] = []

    def in_budget(model) -> bool:
        if accept is not None:
            return accept(plain_architecture(model.sample))
        return cost(model.sample).within(b.max_flops, b.max_params)

    def evaluate(network):
        sample = nni_compat.current_sample()
        if score_of is not None:
            accuracy = score_of(plain_architecture(sample))
        else:
            if network_of is not None:
                network = network_of(plain_architecture(sample))
            accuracy = scorer(network)
        c = cost(sample)
        history.append({"architecture": plain_architecture(sample), "score": accuracy,
                        "flops": c.flops, "params": c.params})
        log_fn(f"[{len(history):3d}/{trials}] score {accuracy:.4f}  {c.flops:,} FLOPs  {c.params:,} params")
        nni.report_final_result(accuracy)

    evolution = Chain(SeededEvolution(seeds, population_size=population,
                                      sample_size=min(settings["tournament"], population),
                                      mutation_prob=settings["mutation_prob"], seed=cfg.seed),
                      Filter(in_budget, patience=10_000, retain_history=False))
    experiment = NasExperiment(supernet, FunctionalEvaluator(evaluate), evolution)
    experiment.config.max_trial_number = trials
    nni_compat.experiment_config_dir(experiment, ctx.out / "nni")
    run_and_stop(experiment)
    if not history:
        raise ConfigError("backbone_search: the evolution scored no network (is the budget too tight?)")
    best = max(history, key=lambda r: r["score"])
    return dict(best["architecture"]), history


def run_and_stop(experiment) -> None:
    """``run()`` leaves an NNI experiment open until process exit (atexit); close it here."""
    try:
        experiment.run()
    finally:
        experiment.stop()
