"""Our wider head space: Linear -> BatchNorm1d -> searched activation, with searched depth and width.

Labels: ``<head>.depth`` (number of hidden blocks), ``<head>.width`` (hidden width) and
``<head>.layer<i>.activation``. DARTS relaxes activations and depth (NNI's differentiable
``Repeat``); NNI has no differentiable BatchNorm1d over a width choice, so under DARTS the
width is a single value and only sampling strategies search it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import nni
from torch import nn
from nni.nas.nn.pytorch import LayerChoice, MutableBatchNorm1d, MutableLinear, Repeat

from search_spaces.heads import HeadSpace

MLP_ACTIVATIONS = OrderedDict([
    ("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU), ("gelu", nn.GELU),
    ("silu", nn.SiLU), ("mish", nn.Mish), ("hardswish", nn.Hardswish), ("tanh", nn.Tanh),
    ("identity", nn.Identity),
])
PARAMETER_FREE_OPS = ("identity",)


def _choice_or_value(label: str, values: Sequence[int]):
    values = sorted(set(int(v) for v in values))
    if not values:
        raise ValueError(f"{label}: at least one value is needed")
    return values[0] if len(values) == 1 else nni.choice(label, values)


class MlpBlock(nn.Sequential):
    def __init__(self, label: str, in_dim, out_dim):
        super().__init__(OrderedDict([
            ("linear", MutableLinear(in_dim, out_dim, bias=False)),
            ("bn", MutableBatchNorm1d(out_dim)),
            ("activation", LayerChoice(OrderedDict((k, v()) for k, v in MLP_ACTIVATIONS.items()), label=label)),
        ]))


class MlpHead(nn.Module):
    """Hidden blocks (searched depth, width, activations), then the output Linear [+ norm]."""

    def __init__(self, prefix: str, in_dim: int, out_dim: int, widths: Sequence[int],
                 depths: Sequence[int], out_norm: str | None = None):
        super().__init__()
        width = _choice_or_value(f"{prefix}.width", widths)
        depth = _choice_or_value(f"{prefix}.depth", depths)
        make = lambda i: MlpBlock(f"{prefix}.layer{i + 1}.activation", in_dim if i == 0 else width, width)  # noqa: E731
        self.hidden = Repeat(make, depth) if not isinstance(depth, int) else nn.Sequential(*[make(i) for i in range(depth)])
        self.output = MutableLinear(width, out_dim, bias=out_norm is None)
        self.norm = nn.BatchNorm1d(out_dim, affine=False) if out_norm == "bn_noaffine" else nn.Identity()

    def forward(self, x):
        return self.norm(self.output(self.hidden(x)))


class MlpHeads(HeadSpace):
    """``MlpHead`` for the projector and predictor, hidden widths as factors of the framework's."""

    name = "mlp"
    width_factors = True

    def choice_kinds(self, mlp_widths: Sequence[float]) -> frozenset:
        return frozenset({"layer", "width"} if len(mlp_widths) > 1 else {"layer"})

    def problem(self, mlp_widths, dims):
        if len(mlp_widths) > 1:
            return "model.mlp_widths", ("DARTS cannot relax a width choice (NNI has no differentiable BatchNorm1d); "
                                        "give one width, or search widths with the multi-trial head search")
        return super().problem(mlp_widths, dims)

    def projector(self, heads, feature_dim, head_width, mlp_widths, mlp_depths, prefix="projector"):
        dims = heads.scaled(head_width)
        return MlpHead(prefix, feature_dim, dims.projector_out, [round(w * dims.projector_hidden) for w in mlp_widths],
                       mlp_depths, dims.projector_out_norm)

    def predictor(self, heads, head_width, mlp_widths, mlp_depths):
        dims = heads.scaled(head_width)
        return MlpHead("predictor", dims.projector_out, dims.projector_out,
                       [round(w * dims.predictor_hidden) for w in mlp_widths], mlp_depths)
