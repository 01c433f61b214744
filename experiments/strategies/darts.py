"""DARTS (Liu et al. 2019) through NNI: every choice relaxed to a softmax over its candidates.

NNI alternates an architecture step on a held-out batch with a weight step (quirk 2);
``search.arch_every: k`` keeps the architecture step on every k-th batch only (quirk 25). On a
backbone, a budget is a differentiable penalty ``budget_penalty * max(0, E[cost] / budget - 1)``
on the architecture step, E[cost] the exact expectation of the profiled cost under the softmax;
the derived network is the argmax, then, if still over budget, the most probable one within it.
On the cell space (``search_spaces/cells.py``) it is NNI's DARTS cell (``DartsCell``): a softmax
per edge over the operations and a zero, and NNI's top-2 rule for the derived cell.

As NNI structures its strategies, the architecture step's additions live in this strategy's own
Lightning module (``DartsModule``, a subclass of NNI's ``DartsLightningModule``), which a subclass
of NNI's strategy makes (``configure_oneshot_module``): the penalties (the heads' parameter-free
guard, the budget, a subclass's own such as TopoNAS's), the architecture parameters in a stable
order (quirk 22), the architecture step on every k-th batch (quirk 25) and the DDP gradient sync
of a fast architecture step (quirk 20). The SSL framework stays the objective.
"""
from __future__ import annotations

from typing import Callable

import torch
from nni.nas.oneshot.pytorch.differentiable import (DartsLightningModule, GumbelDartsLightningModule,
                                                    LinearTemperatureScheduler)
from nni.nas.strategy import DARTS as NniDARTS
from nni.nas.strategy import GumbelDARTS as NniGumbelDARTS
from nni.nas.strategy import Proxyless as NniProxyless

from evaluators.distributed import average_gradients
from experiments import nni_compat
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.budget import budget_penalty_fn, most_probable_within_budget
from experiments.strategies.cell_supernet import DartsCell, cell_budget_penalty_fn, select_with_cells, \
    supernet_cells
from search_spaces.supernet import architecture_probabilities, mixed_layers

#: the head candidates without parameters, which NASiam's guard prices (``search.param_free_penalty``)
PARAMETER_FREE_CANDIDATES = frozenset({"maxpool_3x3", "avgpool_3x3", "identity"})

#: an architecture-step penalty: ``fn(module) -> scalar tensor`` added to the step's loss
Penalty = Callable[[torch.nn.Module], torch.Tensor]


def parameter_free_mass(model: torch.nn.Module) -> torch.Tensor:
    """Mean probability that a searched head layer picks a parameter-free candidate (NASiam's guard)."""
    masses = []
    for label, (names, alpha) in mixed_layers(model).items():
        if label.startswith("backbone."):  # a head guard: a backbone's identity is priced by its budget
            continue
        idx = [i for i, n in enumerate(names) if n in PARAMETER_FREE_CANDIDATES]
        if idx:
            masses.append(torch.softmax(alpha, dim=-1)[idx].sum())
    if not masses:
        return torch.zeros(())
    return torch.stack(masses).mean()


def sync_architecture_gradients(trainer, alphas: list) -> None:
    """Quirk 20's end: the alphas' gradients averaged over the ranks by hand, then DDP's own sync resumed."""
    average_gradients(alphas, missing_as_zero=True)
    nni_compat.resume_ddp_gradient_sync(trainer)


class ArchitectureStepHooks:
    """What this project adds to NNI's DARTS-family Lightning modules (``DartsModule``, ``GumbelDartsModule``).

    NNI's ``training_step`` runs the architecture step's loss straight into ``manual_backward``; its
    own ``penalty`` hook cannot carry ours (it takes ``export_probs()``, plain floats that send no
    gradient, quirk 14, and under GumbelDARTS each call draws fresh noise, which would change every
    later draw of a search), so the penalties are added here, in ``manual_backward``, on the
    architecture step only (the weight step's backward comes through ``advance_optimization``).
    """

    def __init__(self, training_module, *args, param_free_penalty: float = 0.0,
                 penalties: dict[str, Penalty] | None = None, arch_every: int = 1, **kwargs):
        super().__init__(training_module, *args, **kwargs)
        self.param_free_penalty = float(param_free_penalty)
        self.penalties: dict[str, Penalty] = dict(penalties or {})  # name -> fn(module), logged as search/<name>
        self.arch_every = int(arch_every)
        self._in_weight_step = False

    def arch_parameters(self) -> list:
        return nni_compat.in_registration_order(self, super().arch_parameters())  # quirk 22

    def training_step(self, batch, batch_idx):
        if batch_idx % self.arch_every == 0:
            return super().training_step(batch, batch_idx)
        with nni_compat.architecture_step_skipped(self):  # quirk 25
            return super().training_step(batch, batch_idx)

    def parameter_free_mass(self) -> torch.Tensor:
        return parameter_free_mass(self.model).to(self.device)

    def architecture_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The architecture step's loss with this strategy's penalties, each logged."""
        if self.param_free_penalty > 0:
            mass = self.parameter_free_mass()
            self.log("search/param_free_mass", mass.detach())
            loss = loss + self.param_free_penalty * mass
        for name, penalty_fn in self.penalties.items():
            penalty = penalty_fn(self)
            self.log(f"search/{name}", penalty.detach())
            loss = loss + penalty
        return loss

    def advance_optimization(self, *args, **kwargs):
        self._in_weight_step = True
        try:
            return super().advance_optimization(*args, **kwargs)
        finally:
            self._in_weight_step = False

    def manual_backward(self, loss, *args, **kwargs):
        if self._in_weight_step:
            return super().manual_backward(loss, *args, **kwargs)
        loss = self.architecture_loss(loss)
        # quirk 20: a fast architecture step leaves the backbone out of the graph; DDP must not wait for it
        paused = self.training_module.fast_arch_step and nni_compat.pause_ddp_gradient_sync(self.trainer)
        super().manual_backward(loss, *args, **kwargs)
        if paused:
            sync_architecture_gradients(self.trainer, [alpha for _, alpha in mixed_layers(self.model).values()])


class DartsModule(ArchitectureStepHooks, DartsLightningModule):
    """NNI's DARTS (and Proxyless) module with this project's architecture-step hooks."""


class GumbelDartsModule(ArchitectureStepHooks, GumbelDartsLightningModule):
    """NNI's GumbelDARTS module with this project's architecture-step hooks."""


class OwnModule:
    """A subclass of one of NNI's DARTS-family strategies whose Lightning module is ours (``DartsModule``)."""

    def __init__(self, *, hooks: dict, **kwargs):
        super().__init__(**kwargs)
        self.hooks = hooks  # param_free_penalty, penalties, arch_every

    def nni_module_arguments(self) -> dict:  # what NNI's own configure_oneshot_module passes
        return dict(arc_learning_rate=self.arc_learning_rate, gradient_clip_val=self.gradient_clip_val,
                    log_prob_every_n_step=self.log_prob_every_n_step, warmup_epochs=self.warmup_epochs,
                    penalty=self.penalty)

    def configure_oneshot_module(self, training_module) -> DartsLightningModule:
        return DartsModule(training_module, **self.nni_module_arguments(), **self.hooks)


class DartsStrategy(OwnModule, NniDARTS):
    """NNI's DARTS, training through ``DartsModule``."""


class ProxylessStrategy(OwnModule, NniProxyless):
    """NNI's Proxyless (DARTS's module over binarised paths), training through ``DartsModule``."""


class GumbelDartsStrategy(OwnModule, NniGumbelDARTS):
    """NNI's GumbelDARTS, training through ``GumbelDartsModule``; its temperature is ``(initial, minimum)``."""

    def configure_oneshot_module(self, training_module) -> DartsLightningModule:
        return GumbelDartsModule(training_module, LinearTemperatureScheduler(*self.temperature),
                                 **self.nni_module_arguments(), **self.hooks)


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

    def hooks(self, ctx: SearchContext) -> dict:
        """What this project's Lightning module adds to NNI's (``ArchitectureStepHooks``)."""
        return dict(param_free_penalty=ctx.cfg.search.param_free_penalty, penalties=self.penalties(ctx),
                    arch_every=ctx.cfg.search.arch_every)

    def nni_strategy(self, ctx: SearchContext):
        return DartsStrategy(hooks=self.hooks(ctx), **self.nni_arguments(ctx))

    def build(self, ctx: SearchContext):
        return self.nni_strategy(ctx)

    def penalties(self, ctx: SearchContext) -> dict[str, Penalty]:
        """The architecture step's penalties beside the parameter-free guard: the backbone's budget."""
        max_flops, max_params = ctx.budget
        scale = ctx.cfg.backbone_search.budget_penalty
        if (max_flops is None and max_params is None) or scale <= 0:
            return {}
        if ctx.cost.separable:
            return {"budget": budget_penalty_fn(ctx.cost, max_flops, max_params, scale)}
        return {"budget": cell_budget_penalty_fn(ctx.cost.input_size, max_flops, max_params, scale)}  # the cells'

    def module_options(self, ctx: SearchContext) -> dict:
        # On a backbone the architecture step must reach the backbone's choices: no fast step.
        return {"fast_arch_step": ctx.cfg.search.fast_arch_step if ctx.target == "heads" else False}

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        if supernet_cells(nni_strategy.supernet):
            return select_with_cells(ctx, nni_strategy.supernet)
        probabilities = architecture_probabilities(nni_strategy.supernet)
        return Selection(most_probable_within_budget(probabilities, ctx.cost, *ctx.budget, log_fn=ctx.log_fn),
                         probabilities)


class CellDARTS(DARTS):
    """A DARTS variant that searches the cell space only (TopoNAS, EnTranNAS): NNI's DARTS loop, its own cells."""

    targets = ("backbone",)
    handles = frozenset({"cell"})
