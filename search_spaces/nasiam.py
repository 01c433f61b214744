"""NASiam's head search space (Heuillet et al. 2023), candidate for candidate.

Each searchable layer picks one of seven operations, as in NASiam's ``operations.py``:
max-pool 3 and average-pool 3 over the feature axis (stride 1, padding 1, then
BatchNorm1d), identity, and Linear -> BatchNorm1d -> {ReLU, SiLU, Hardswish, ELU}.
Where a layer changes width, NASiam's adapter rules apply: a widening Linear layer is a
bare Linear; a pool or identity gets Linear -> BN -> ReLU in front when narrowing and a
bare Linear in front when widening. Each framework declares its layout
(``HeadSpec.nasiam``, ``search_spaces.heads.NasiamLayout``) in its own module.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from nni.nas.nn.pytorch import LayerChoice

from search_spaces.heads import HeadSpace, NasiamLayout

# Order matters only for display; the first three are NASiam's parameter-free candidates.
NASIAM_OPS = ("maxpool_3x3", "avgpool_3x3", "identity",
              "linear_relu", "linear_silu", "linear_hardswish", "linear_elu")
PARAMETER_FREE_OPS = ("maxpool_3x3", "avgpool_3x3", "identity")

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "elu": nn.ELU}


class FeaturePool(nn.Module):
    """A 1-D pool of size 3, stride 1, padding 1 along the feature axis of an (N, D) tensor."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.pool = (nn.MaxPool1d if kind == "max" else nn.AvgPool1d)(3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.unsqueeze(1)).squeeze(1)


def _width_adapter(in_dim: int, out_dim: int, op: nn.Module) -> nn.Module:
    if in_dim > out_dim:
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(), op)
    if in_dim < out_dim:
        return nn.Sequential(nn.Linear(in_dim, out_dim), op)
    return op


def nasiam_op(name: str, in_dim: int, out_dim: int) -> nn.Module:
    """One of NASiam's seven candidates mapping ``in_dim`` to ``out_dim``."""
    if name in ("maxpool_3x3", "avgpool_3x3"):
        pool = nn.Sequential(FeaturePool("max" if name.startswith("max") else "avg"), nn.BatchNorm1d(out_dim))
        return _width_adapter(in_dim, out_dim, pool)
    if name == "identity":
        return _width_adapter(in_dim, out_dim, nn.Identity())
    if name.startswith("linear_"):
        activation = _ACTIVATIONS[name[len("linear_"):]]
        if in_dim < out_dim:
            return nn.Linear(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), activation())
    raise ValueError(f"unknown NASiam operation {name!r}; choose one of {NASIAM_OPS}")


class NasiamCell(nn.Sequential):
    """A stack of searchable layers; layer ``i`` is labelled ``<prefix>.layer<i>.op``."""

    def __init__(self, prefix: str, dims: list[tuple[int, int]]):
        layers = OrderedDict()
        for i, (in_dim, out_dim) in enumerate(dims, start=1):
            label = f"{prefix}.layer{i}.op"
            layers[f"layer{i}"] = LayerChoice(
                OrderedDict((op, nasiam_op(op, in_dim, out_dim)) for op in NASIAM_OPS), label=label)
        super().__init__(layers)


NASIAM_PREDICTOR_HIDDEN = 512


def nasiam_projector(layout: NasiamLayout, feature_dim: int, out_dim: int, prefix: str = "projector") -> nn.Module:
    """The projector (or, with ``prefix="projector2"``, a framework's second head) of the layout."""
    spec = getattr(layout, prefix, None)
    if spec is None:
        raise ValueError(f"this nasiam layout has no {prefix}")
    kind, n_layers, tail = spec
    f = feature_dim
    if kind == "at_f":
        dims = [(f, f)] * n_layers
    else:
        dims = [(f, f)] * (n_layers - 1) + [(f, out_dim)]
    cell = NasiamCell(prefix, dims)
    if tail is None:
        return cell
    parts = [cell, nn.Linear(f, out_dim, bias=tail != "linear_bn_noaffine")]
    if tail == "linear_bn_noaffine":
        parts.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*parts)


def nasiam_predictor(layout: NasiamLayout, dim: int, width: float = 1.0) -> nn.Module | None:
    if not layout.predictor:
        return None
    hidden = max(8, int(round(NASIAM_PREDICTOR_HIDDEN * width)))
    dims = [(dim, hidden)] + [(hidden, hidden)] * (layout.predictor - 2) + [(hidden, dim)]
    return NasiamCell("predictor", dims)


class NasiamHeads(HeadSpace):
    """NASiam's operations on every layer of the framework's declared layout (``HeadSpec.nasiam``)."""

    name = "nasiam"

    def projector(self, heads, feature_dim, head_width, mlp_widths, mlp_depths, prefix="projector"):
        if heads.nasiam is None:
            raise ValueError(f"the nasiam space has no layout for framework {heads.name!r}")
        return nasiam_projector(heads.nasiam, feature_dim, heads.scaled(head_width).projector_out, prefix)

    def predictor(self, heads, head_width, mlp_widths, mlp_depths):
        return nasiam_predictor(heads.nasiam, heads.scaled(head_width).projector_out, head_width)
