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

from experiments.strategies.width_sampling import WidthStrategy


class AutoSlim(WidthStrategy):
    """Uniform widths, each on its first channels (``WidthSampler``), scored on them (``WidthStrategy``)."""

    name = "autoslim"
    summary = "uniform widths on prefix channels (NNI's slicing), then evolution within the budget"
