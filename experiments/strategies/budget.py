"""A FLOPs/parameter budget on the backbone: checked before a search, priced during it, enforced after.

Budgets bound the backbone only (the heads are dropped after pre-training): FLOPs are
multiply-accumulates at the data's image size (NAS-Bench-Macro's count), params all parameters.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from experiments.core.errors import ConfigError
from search_spaces.cost import BackboneCost, Cost
from search_spaces.supernet import derived_architecture_from, differentiable_probabilities


def check_budget(max_flops: Optional[float], max_params: Optional[float], cost: BackboneCost, space: str) -> dict:
    """One clear error for a budget no network of the space meets; returns the smallest network's cost."""
    smallest, c = cost.smallest("flops")
    if max_flops is not None and c.flops > max_flops:
        raise ConfigError(f"backbone_search.max_flops: {max_flops:.4g} is below the smallest network of space "
                          f"{space} ({c.flops:,} FLOPs at {cost.input_size}x{cost.input_size})")
    if max_params is not None:
        _, cp = cost.smallest("params")
        if cp.params > max_params:
            raise ConfigError(f"backbone_search.max_params: {max_params:.4g} is below the smallest network of "
                              f"space {space} ({cp.params:,} parameters)")
        if not c.within(max_flops, max_params):
            raise ConfigError(f"backbone_search: no network of space {space} meets both max_flops "
                              f"{max_flops:.4g} and max_params {max_params:.4g}")
    return {"flops": c.flops, "params": c.params, "architecture": smallest}


def budget_penalty_fn(cost: BackboneCost, max_flops: Optional[float], max_params: Optional[float], scale: float):
    """``fn(module) -> scale * sum max(0, E[cost] / budget - 1)`` on the module's architecture weights."""
    def penalty(module) -> torch.Tensor:
        probs = differentiable_probabilities(module.model, cost.labels)
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
    if not limits:  # no budget (the head search): nothing to fit
        return arch

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


def most_probable_within_budget(probabilities: dict[str, dict[str, float]], cost: BackboneCost,
                                max_flops: Optional[float], max_params: Optional[float], log_fn=print) -> dict:
    """The argmax of relaxed or learned choices, then, if over budget, the most probable network within it."""
    architecture = derived_architecture_from(probabilities)
    fitted = fit_to_budget(probabilities, architecture, cost, max_flops, max_params)
    if fitted != architecture:
        log_fn(f"argmax network {cost(architecture)} is over budget; derived the most probable one within it")
    return fitted
