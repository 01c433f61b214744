"""AutoSlim-style width search (Yu & Huang 2019), the baseline: prefix channel sharing, then evolution.

Each weight step trains one width per layer, drawn uniformly, on the *first* ``c`` channels
(what NNI's mixed layers do: ``weight[:c]``), so channel ``i`` of ``C`` is trained by
``(C - i + 1) / C`` of the widths: the first channels by all, the last by one in ``C``. The
search is NNI's regularized evolution over the trained supernet within the FLOPs/parameter
budget, each network scored on its prefix channels after BatchNorm recalibration. (AutoSlim's own
greedy slimming and in-place distillation are not used: the three width strategies share one
evolution so that they differ only in which channels a width trains and scores.)
"""
from __future__ import annotations

from experiments.strategies.base import SearchContext, Selection
from experiments.strategies.spos import evolve
from experiments.strategies.width_sampling import WidthSampler, WidthStrategy, reset_channels, width_one_shot, width_space


class AutoSlim(WidthStrategy):
    name = "autoslim"
    summary = "uniform widths on prefix channels (NNI's slicing), then evolution within the budget"

    def build(self, ctx: SearchContext):
        space = width_space(ctx)
        return width_one_shot(lambda: WidthSampler(space))

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        reset_channels(nni_strategy.supernet)  # freeze then takes each width's first channels
        architecture, history = evolve(ctx, nni_strategy.supernet)
        return Selection(architecture, evolution=history)
