"""The baselines: NNI 3.0's own filter pruners (``nni.compression.pruning``) at the same cost target.

NNI 3.0 moved its pruners from ``nni.compression.pytorch.pruning`` (which no longer imports) to
``nni.compression.pruning``. We use them for what they decide, which filters a layer loses
(``L1NormPruner``: smallest L1 norm, Li et al. 2017; ``FPGMPruner``: nearest the layer's
geometric median, He et al. 2019), on exactly the producer convs of our filter groups. Each
group keeps the same fraction of its filters (NNI's usual uniform ``sparse_ratio``); the
largest such fraction whose exact cost is within the target is found here, by bisection.
The filters are then removed by our channel surgery (NNI's ``ModelSpeedup`` fails to trace
under torch 2.13, see ``search_spaces.filter_groups``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from search_spaces.filter_groups import CostModel, FilterGroup

NNI_PRUNERS = ("l1", "fpgm")


def uniform_counts(groups: Sequence[FilterGroup], cost: CostModel, target: float, quantity: str = "flops") -> dict:
    """Channels per group when every group keeps the same fraction (rounded, at least one), within the target."""
    def counts(keep: float) -> dict:
        return {g.name: max(1, int(keep * g.size)) for g in groups}

    budget = target * cost.full[quantity]
    low, high = 0.0, 1.0  # cost(counts(low)) <= budget is kept true (one channel a group at low = 0)
    if cost.cost(counts(high), quantity) <= budget:
        return counts(high)
    for _ in range(50):
        mid = (low + high) / 2
        if cost.cost(counts(mid), quantity) <= budget:
            low = mid
        else:
            high = mid
    return counts(low)


def nni_keep(root: nn.Module, groups: Sequence[FilterGroup], counts: dict, method: str) -> dict[str, torch.Tensor]:
    """The kept channel indices of each group, as NNI's pruner ``method`` picks ``counts[g]`` filters of it."""
    from nni.compression.pruning import FPGMPruner, L1NormPruner

    pruner_cls = {"l1": L1NormPruner, "fpgm": FPGMPruner}[method]
    config = [{"op_names": [g.producer], "sparse_ratio": (g.size - counts[g.name]) / g.size}
              for g in groups if counts[g.name] < g.size]
    if not config:
        return {g.name: torch.arange(g.size) for g in groups}
    pruner = pruner_cls(root, config)
    try:
        _, masks = pruner.compress()
    finally:
        pruner.unwrap_model()
    keep = {}
    for g in groups:
        if g.producer not in masks:
            keep[g.name] = torch.arange(g.size)
            continue
        alive = masks[g.producer]["weight"].flatten(1).abs().sum(1) > 0
        idx = alive.nonzero().flatten().cpu()
        if len(idx) != counts[g.name]:  # NNI rounds the ratio its own way: take its best-ranked count
            raise RuntimeError(f"NNI's {method} pruner kept {len(idx)} filters of {g.producer}, "
                               f"not {counts[g.name]}")
        keep[g.name] = idx
    return keep


__all__ = ["NNI_PRUNERS", "nni_keep", "uniform_counts"]
