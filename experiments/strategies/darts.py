"""DARTS (Liu et al. 2019) through NNI: every choice relaxed to a softmax over its candidates.

NNI alternates an architecture step on a held-out batch with a weight step (quirk 2);
``search.arch_every: k`` keeps the architecture step on every k-th batch only (quirk 25). On a
backbone, a budget is a differentiable penalty ``budget_penalty * max(0, E[cost] / budget - 1)``
on the architecture step, E[cost] the exact expectation of the profiled cost under the softmax;
the derived network is the argmax, then, if still over budget, the most probable one within it.
On the cell space (``search_spaces/cells.py``) it is NNI's DARTS cell (``DartsCell``): a softmax
per edge over the operations and a zero, and NNI's top-2 rule for the derived cell.
"""
from __future__ import annotations

from experiments import nni_compat
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.budget import budget_penalty_fn, most_probable_within_budget
from experiments.strategies.cell_supernet import DartsCell, cell_budget_penalty_fn, select_with_cells, \
    supernet_cells


class DARTS(Strategy):
    name = "darts"
    summary = "differentiable relaxation of every choice (NNI DARTS)"
    interleaved = True
    targets = ("heads", "backbone")
    handles = frozenset({"layer", "cell"})
    config_fields = ("search.arch_lr", "search.warmup_epochs", "search.arch_every", "search.gradient_clip",
                     "search.fast_arch_step", "search.param_free_penalty", "backbone_search.budget_penalty")

    def nni_arguments(self, ctx: SearchContext) -> dict:
        s = ctx.cfg.search
        return dict(arc_learning_rate=s.arch_lr, gradient_clip_val=s.gradient_clip, warmup_epochs=s.warmup_epochs,
                    log_prob_every_n_step=1, mutation_hooks=self.cell_hooks(ctx))

    def cell_hooks(self, ctx: SearchContext) -> list:
        """NNI mutation hooks that turn the cell space's cells into this strategy's supernet cells."""
        return [DartsCell.mutate]

    def nni_strategy(self, ctx: SearchContext):
        from nni.nas.strategy import DARTS as NniDARTS

        return NniDARTS(**self.nni_arguments(ctx))

    def build(self, ctx: SearchContext):
        strategy = nni_compat.stable_arch_parameter_order(self.nni_strategy(ctx))
        return nni_compat.architecture_step_every(strategy, ctx.cfg.search.arch_every)

    def module_options(self, ctx: SearchContext) -> dict:
        # On a backbone the architecture step must reach the backbone's choices: no fast step.
        options: dict = {"fast_arch_step": ctx.cfg.search.fast_arch_step if ctx.target == "heads" else False}
        max_flops, max_params = ctx.budget
        scale = ctx.cfg.backbone_search.budget_penalty
        if (max_flops is not None or max_params is not None) and scale > 0:
            if ctx.cost.separable:
                penalty = budget_penalty_fn(ctx.cost, max_flops, max_params, scale)
            else:  # the cell space: the cells' expected cost
                penalty = cell_budget_penalty_fn(ctx.cost.input_size, max_flops, max_params, scale)
            options["arch_penalties"] = {"budget": penalty}
        return options

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        if supernet_cells(nni_strategy.supernet):
            return select_with_cells(ctx, nni_strategy.supernet)
        probabilities = nni_compat.architecture_probabilities(nni_strategy.supernet)
        return Selection(most_probable_within_budget(probabilities, ctx.cost, *ctx.budget, log_fn=ctx.log_fn),
                         probabilities)


class CellDARTS(DARTS):
    """A DARTS variant that searches the cell space only (TopoNAS, EnTranNAS): NNI's DARTS loop, its own cells."""

    targets = ("backbone",)
    handles = frozenset({"cell"})
