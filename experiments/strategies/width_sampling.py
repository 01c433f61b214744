"""What the width strategies share: which channels a width trains, the one-shot module, the scoring.

A width strategy (``autoslim``, ``bcnet``, ``cafenet``) is a *sampler*: each weight step it
draws one width per layer (uniformly, numpy's global generator, as NNI's own draws; under DDP
rank zero's draw is broadcast) and says which channels that width trains, as one or more
*placements* (``{label: channel indices}``) and how their losses combine:

- ``autoslim``: one placement, the first ``c`` channels (NNI's prefix slicing);
- ``bcnet``: the left ``[0, c)`` and the right ``[C - c, C)`` channels, loss averaged;
- ``cafenet``: a few placements of ``c - r`` base channels plus ``r`` free ones in the zone
  ``[c - r, c + r)``; each is probed without gradient and only the lowest-loss one is trained (min-min).

The step's views, momentum update and queue push happen once (``WidthSamplingModule``, this
strategy's own NNI Lightning module, takes the views and the step's bookkeeping from the
framework and computes the loss over the placements; a second side or a probe never pushes the
queue, and a probe leaves BatchNorm's running statistics alone). The searched widths are those of ``search_spaces.channels``'
``ChannelChoice`` modules (a macro layer, a ResNet stage and its stem, a head): every module with a label (online
and momentum branches) gets the same channels.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule
from torch import nn

from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.sampling import broadcast_from_rank_zero, mean_over_ranks
from experiments.strategies.spos import EVOLUTION_OPTIONS, check_evolution
from search_spaces.channels import use_channels, width_blocks

CHECKPOINT_KEY = "width_sampler"
Placement = dict  # label -> list of channel indices


def prefix(width: int, max_width: int) -> list[int]:
    """AutoSlim's channels (and BCNet's left side): ``[0, width)``."""
    return list(range(width))


def right_side(width: int, max_width: int) -> list[int]:
    """BCNet's right side: ``[max_width - width, max_width)``."""
    return list(range(max_width - width, max_width))


def free_zone(width: int, max_width: int, free: int) -> tuple[int, list[int]]:
    """CafeNet: ``(base, zone)``: ``base = width - r`` fixed first channels, and the zone ``[base, width + r)``
    (clipped to the layer) where the ``r = min(free, width)`` free channels may lie."""
    r = min(free, width)
    base = width - r
    return base, list(range(base, min(max_width, width + r)))


def free_placement(width: int, max_width: int, free: int, rng: np.random.RandomState | Any = np.random) -> list[int]:
    """A CafeNet placement: the base channels and ``r`` channels drawn uniformly from the zone."""
    base, zone = free_zone(width, max_width, free)
    chosen = rng.choice(zone, size=width - base, replace=False) if zone else []
    return sorted(list(range(base)) + [int(c) for c in chosen])


def complementary(values: Sequence[int], width: int) -> int:
    """BCNet's complementary width: the k-th smallest width's partner is the k-th largest (``C + 1 - c`` in
    bins), so the pair covers every bin and the widths stay uniformly trained (never width 0)."""
    values = list(values)
    return values[len(values) - 1 - values.index(width)]


@contextlib.contextmanager
def batchnorm_statistics_kept(model: nn.Module):
    """Forward passes in train mode that leave every BatchNorm's running statistics as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@dataclass
class WidthStep:
    """One weight step: the widths drawn, their placements, and how the placements' losses combine."""

    widths: dict
    placements: list
    combine: str = "mean"  # "mean" (one side, or BCNet's two) or "min" (CafeNet's min-min)
    losses: list = field(default_factory=list)  # per placement, mean over ranks (filled by ``loss``)
    chosen: int = 0  # the placement trained (min-min)

    def loss(self, module, views) -> torch.Tensor:
        """The weight step's loss over the placements, from the step's views (``WidthSamplingModule``)."""
        model = module.model
        if self.combine == "min" and len(self.placements) > 1:
            with torch.no_grad(), module.queue_frozen(), batchnorm_statistics_kept(model):
                for placement in self.placements:
                    use_channels(model, placement)
                    self.losses.append(mean_over_ranks(module.ssl_loss(views, False)))
            self.chosen = int(np.argmin(self.losses))
            use_channels(model, self.placements[self.chosen])
            return module.ssl_loss(views, False)
        total = []
        for i, placement in enumerate(self.placements):
            use_channels(model, placement)
            with module.queue_frozen() if i else contextlib.nullcontext():
                total.append(module.ssl_loss(views, False))
        self.losses = [mean_over_ranks(t) for t in total]
        return torch.stack(total).mean()


class WidthSampler:
    """Draws each step's widths; subclasses say which channels they train and what they remember."""

    combine = "mean"

    def __init__(self, space: Mapping[str, Sequence[int]]):
        self.space = {label: sorted(int(v) for v in values) for label, values in space.items()}
        self.max_width = {label: values[-1] for label, values in self.space.items()}

    def draw_widths(self) -> dict:
        return {label: values[int(np.random.randint(len(values)))] for label, values in self.space.items()}

    def placements(self, widths: dict) -> list[Placement]:
        return [{label: prefix(w, self.max_width[label]) for label, w in widths.items()}]

    def next_step(self) -> WidthStep:
        widths = self.draw_widths()
        return WidthStep(widths, self.placements(widths), self.combine)

    def after_step(self, step: WidthStep) -> None:
        """What the sampler learns from a finished step (BCNet's loss records, CafeNet's best placements)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class WidthSamplingModule(RandomSamplingLightningModule):
    """NNI's single-path module whose weight step is the width sampler's ``WidthStep`` (same on every rank):
    the framework makes the step's views and keeps its bookkeeping once, the step trains its placements."""

    def __init__(self, training_module, make_sampler: Callable[[], WidthSampler]):
        super().__init__(training_module)
        self.sampler = make_sampler()

    def training_step(self, batch, batch_idx):
        step = broadcast_from_rank_zero(self.sampler.next_step())
        framework = self.training_module
        views = framework.step_views(batch, batch_idx, arch_step=False)
        loss = framework.step_loss(step.loss(framework, views), arch_step=False)
        self.sampler.after_step(step)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.sampler.load_state_dict(checkpoint.get(CHECKPOINT_KEY, {}))


class WidthStrategy(Strategy):
    """A width strategy: a sampler that trains the supernet, a way to score a width on it, and NNI's
    regularized evolution within the FLOPs/parameter budget (the framework's heads fixed)."""

    handles = frozenset({"width"})
    config_fields = ("backbone_search.trials", "backbone_search.bn_batches", "backbone_search.score_images")
    option_specs = EVOLUTION_OPTIONS

    def check(self, cfg, target: str) -> None:
        from search_spaces.head_spaces import HEAD_SPACES

        if cfg.backbone_search.strategy != self.name:
            return
        check_evolution(target, self.settings(cfg))
        heads = HEAD_SPACES[cfg.model.head_space]
        if not heads.choice_kinds(cfg.model.mlp_widths) <= self.handles:
            able = [name for name, s in HEAD_SPACES.items() if s.choice_kinds(cfg.model.mlp_widths) <= self.handles]
            raise ConfigError(f"model.head_space: {self.name} searches widths: use heads whose choices are widths "
                              f"or none ({', '.join(able)}), got {cfg.model.head_space}")

    def sampler(self, settings: dict, space: dict[str, list[int]]) -> WidthSampler:
        return WidthSampler(space)

    def build(self, ctx: SearchContext):
        from experiments.strategies.sampling import PresetPathOneShot

        settings, space = self.settings(ctx.cfg), width_space(ctx)
        return PresetPathOneShot(lambda module: WidthSamplingModule(module, lambda: self.sampler(settings, space)))

    def score(self, scorer: Callable[[nn.Module], float], nni_strategy, architecture: dict) -> float:
        """A width's score on the trained supernet (here: its first channels; BCNet and CafeNet differ)."""
        return scorer(frozen_at(nni_strategy.supernet, architecture, None))

    def seeds(self, ctx: SearchContext, nni_strategy) -> list[dict]:
        """Widths within the budget that start the evolution's population (BCNet's lowest losses)."""
        return []

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        from experiments.strategies.spos import evolve

        architecture, history = evolve(ctx, nni_strategy.supernet, self.settings(ctx.cfg),
                                       seeds=self.seeds(ctx, nni_strategy),
                                       score_of=lambda arch: self.score(ctx.scorer, nni_strategy, arch))
        reset_channels(nni_strategy.supernet)  # freeze (the export) then takes each width's first channels
        return Selection(architecture, evolution=history)


def width_space(ctx: SearchContext) -> dict[str, list[int]]:
    """``label -> widths`` with plain ``str`` labels (quirk 6: the sampler's state goes into checkpoints)."""
    return {str(label): [int(v) for v in values] for label, values in ctx.cost.labels.items()}


def frozen_at(supernet: nn.Module, architecture: dict, placement: Optional[Placement]) -> nn.Module:
    """The network ``architecture`` with the supernet's weights of ``placement``'s channels (prefix: None)."""
    for block in width_blocks(supernet):
        width = int(architecture[block.label])
        block.use_channels(placement[block.label] if placement and block.label in placement else range(width))
    return supernet.freeze(architecture)


def reset_channels(supernet: nn.Module) -> None:
    """Every block back to its full width (then ``freeze`` takes the prefix channels of any width)."""
    for block in width_blocks(supernet):
        block.use_channels(range(block.max_width))


class LowestLosses:
    """The ``size`` lowest training losses seen and their widths (BCNet's loss records)."""

    def __init__(self, size: int):
        self.size = int(size)
        self.heap: list = []  # (-loss, counter, widths): the root is the highest kept loss
        self._counter = itertools.count()

    def push(self, loss: float, widths: dict) -> None:
        item = (-float(loss), next(self._counter), dict(widths))
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def lowest_first(self) -> list[tuple[float, dict]]:
        return [(-neg, widths) for neg, _, widths in sorted(self.heap, reverse=True)]

    def state_dict(self) -> dict:
        return {"records": self.lowest_first()}

    def load_state_dict(self, state: dict) -> None:
        self.heap = []
        for loss, widths in state.get("records", []):
            self.push(loss, widths)


__all__ = ["WidthSampler", "WidthStep", "WidthSamplingModule", "prefix", "right_side",
           "free_zone", "free_placement", "complementary", "batchnorm_statistics_kept", "frozen_at",
           "reset_channels", "LowestLosses", "WidthStrategy", "width_space"]
