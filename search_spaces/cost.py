"""FLOPs and parameters of any sample of a backbone space, so that searches can take a budget.

FLOPs are multiply-accumulates of convolutions and linear layers at the given input size
(NAS-Bench-Macro's ``count_FLOPs``); parameters are all of them, BatchNorm affine included.
The macro spaces get both from NNI's own profilers (``FlopsProfiler``/``NumParamsProfiler``
turn the space into one symbolic expression per quantity, evaluated per sample in
microseconds; their cost is a sum over layers, so its expectation under the architecture
weights is exact and differentiable). The ResNet space, whose widths interact across
stages, counts itself in closed form.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from nni.mutable import Categorical, CategoricalMultiple, MutableExpression
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int

    def within(self, max_flops: Optional[float], max_params: Optional[float]) -> bool:
        return (max_flops is None or self.flops <= max_flops) and (max_params is None or self.params <= max_params)


def _quiet_profiler_logs() -> None:
    # NNI warns once per parameter-free leaf type (pooling, identity) that it "is not counted": true and harmless.
    logging.getLogger("nni.nas.profiler.pytorch.flops").setLevel(logging.ERROR)


class BackboneCost:
    """``cost(sample) -> Cost`` for a backbone space at ``input_size`` x ``input_size`` inputs."""

    def __init__(self, space: nn.Module, input_size: int, in_channels: int = 3):
        self.space, self.input_size, self.in_channels = space, int(input_size), in_channels
        self.labels: dict[str, list] = {label: list(m.values) for label, m in space.simplify().items()
                                        if isinstance(m, Categorical)}
        for label, m in space.simplify().items():  # a cell's input: a one-element list of a predecessor
            if isinstance(m, CategoricalMultiple) and m.n_chosen == 1:
                self.labels[label] = exported_values(m)
        self.flops_expression: Any = None
        self.params_expression: Any = None
        if hasattr(space, "check_input_size"):  # a space built for one image size (ViT position embeddings)
            space.check_input_size(self.input_size)
        if not hasattr(space, "cost"):
            from nni.nas.profiler.pytorch.flops import FlopsProfiler, NumParamsProfiler

            _quiet_profiler_logs()
            dummy = torch.zeros(1, in_channels, self.input_size, self.input_size)
            was_training = space.training
            space.eval()
            try:
                self.flops_expression = FlopsProfiler(space, dummy, count_bias=False, count_normalization=False,
                                                      count_activation=False).expression
                self.params_expression = NumParamsProfiler(space, dummy, count_bias=False,
                                                           count_activation=False).expression
            finally:
                space.train(was_training)

    def __call__(self, sample: Mapping[str, Any]) -> Cost:
        sample = {k: v for k, v in sample.items() if k in self.labels}
        missing = [label for label in self.labels if label not in sample]
        if missing:
            raise KeyError(f"the sample has no choice for {', '.join(missing)}")
        if self.flops_expression is None:
            flops, params = self.space.cost(sample, self.input_size)
            return Cost(int(flops), int(params))
        return Cost(int(round(_evaluate(self.flops_expression, sample))),
                    int(round(_evaluate(self.params_expression, sample))))

    @property
    def separable(self) -> bool:
        """True when the cost is a sum of per-label terms (the macro spaces), so expectations are exact."""
        return self.flops_expression is not None

    def _tables(self) -> dict:
        """Per-label cost deltas from the all-first-values network: ``{quantity: (base, {label: [delta...]})}``."""
        if getattr(self, "_table_cache", None) is None:
            if not self.separable:
                raise TypeError("an expected cost needs a space whose cost is a sum over its choices")
            base_sample = {label: values[0] for label, values in self.labels.items()}
            base = self(base_sample)
            tables = {"flops": (base.flops, {}), "params": (base.params, {})}
            for label, values in self.labels.items():
                costs = [self(dict(base_sample, **{label: v})) for v in values]
                tables["flops"][1][label] = [c.flops - base.flops for c in costs]
                tables["params"][1][label] = [c.params - base.params for c in costs]
            self._table_cache = tables
        return self._table_cache

    def expected(self, probabilities: Mapping[str, torch.Tensor], quantity: str = "flops") -> torch.Tensor:
        """E[cost] under independent per-label distributions (tensors in ``self.labels`` order): differentiable.

        Exact for the macro spaces, whose cost is the stem and head plus one term per layer; labels
        missing from ``probabilities`` count at their first value.
        """
        base, deltas = self._tables()[quantity]
        total = torch.tensor(float(base))
        for label, p in probabilities.items():
            if label in deltas:
                total = total + (p * torch.tensor(deltas[label], dtype=p.dtype, device=p.device)).sum().cpu()
        return total

    def smallest(self, key: str = "flops") -> tuple[dict, Cost]:
        """The cheapest sample by ``key`` (ties broken by the other): coordinate descent over labels,
        exact for these spaces, where every choice's cost grows with every other's."""
        other = "params" if key == "flops" else "flops"
        rank = lambda c: (getattr(c, key), getattr(c, other))  # noqa: E731
        sample = {label: values[0] for label, values in self.labels.items()}
        best = self(sample)
        for _ in range(len(self.labels) + 1):
            changed = False
            for label, values in self.labels.items():
                for v in values:
                    trial = dict(sample, **{label: v})
                    c = self(trial)
                    if rank(c) < rank(best):
                        sample, best, changed = trial, c, True
            if not changed:
                break
        return sample, best

    def size(self) -> int:
        n = 1
        for values in self.labels.values():
            n *= len(values)
        return n

    def enumerate(self, limit: int = 100_000):
        """Every sample of a small space (at most ``limit``), in label order."""
        if self.size() > limit:
            raise ValueError(f"the space has {self.size()} samples, more than {limit}")
        labels = list(self.labels)
        for values in itertools.product(*(self.labels[k] for k in labels)):
            yield dict(zip(labels, values))


def _evaluate(expression: Any, sample: Mapping[str, Any]) -> float:
    if isinstance(expression, MutableExpression):
        return float(expression.freeze(dict(sample)))
    return float(expression)


def classifier_cost(feature_dim: int, num_classes: int) -> Cost:
    """A linear classifier on the pooled features (NAS-Bench-Macro counts it, bias in params only)."""
    return Cost(feature_dim * num_classes, feature_dim * num_classes + num_classes)


def exported_values(mutable: Any) -> list:
    """The values an architecture JSON spells for a choice: a one-of-n input choice (NNI's
    ``CategoricalMultiple`` with ``n_chosen`` 1, a cell's input) as one-element lists of a predecessor."""
    if isinstance(mutable, CategoricalMultiple) and mutable.n_chosen == 1:
        return [[v] for v in mutable.values]
    return list(mutable.values)


@torch.no_grad()
def count_fixed(network: nn.Module, input_size: int, in_channels: int = 3) -> Cost:
    """Conv/linear multiply-accumulates by forward hooks (batch of one), and all parameters, of a fixed network.

    An independent count (no NNI, no closed form) for checking the two above.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += module.in_channels // module.groups * module.out_channels * k * output.shape[-1] * output.shape[-2]
        elif isinstance(module, nn.Linear):  # once per row: per token in a transformer
            total += module.in_features * module.out_features * (output.numel() // module.out_features)

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = network.training
    network.eval()
    try:
        network(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        network.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in network.parameters())
    return Cost(int(total), int(params))


__all__ = ["BackboneCost", "Cost", "classifier_cost", "count_fixed"]
