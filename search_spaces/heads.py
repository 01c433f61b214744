"""Hand-made MLP heads as data: a head is a list of blocks (in, out, norm, activation).

This is lightly's ``ProjectionHead`` idea: every framework's published head is just a
list with the paper's sizes, so the fixed baselines run on the same code path as the
searched heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn

# norm: None, "bn" (affine BatchNorm1d) or "bn_noaffine" (SimSiam's projector output).
Block = tuple  # (in_dim, out_dim, norm, activation or None)


def build_mlp(blocks: Sequence[Block]) -> nn.Sequential:
    """Linear -> [BatchNorm1d] -> [activation] for each block; a Linear followed by BN has no bias."""
    layers: list[nn.Module] = []
    for in_dim, out_dim, norm, activation in blocks:
        layers.append(nn.Linear(in_dim, out_dim, bias=norm is None))
        if norm == "bn":
            layers.append(nn.BatchNorm1d(out_dim))
        elif norm == "bn_noaffine":
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        elif norm is not None:
            raise ValueError(f"unknown norm {norm!r}")
        if activation is not None:
            layers.append(activation)
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class HeadDims:
    """A framework's head sizes at CIFAR scale (the SSL libraries' defaults).

    ``predictor_hidden`` is None for frameworks without a predictor. ``projector_out_norm``
    is the norm after the projector's last Linear (SimSiam: BN without affine).
    """

    projector_hidden: int
    projector_out: int
    predictor_hidden: Optional[int] = None
    projector_out_norm: Optional[str] = None
    projector_hidden_layers: int = 1  # hidden Linear-BN-ReLU blocks before the output Linear
    projector_hidden_norm: Optional[str] = "bn"  # None: hidden blocks are Linear-ReLU (ReSSL)

    def scaled(self, factor: float) -> "HeadDims":
        """All widths times ``factor`` (for tests and CPU runs); never below 8."""
        s = lambda d: None if d is None else max(8, int(round(d * factor)))  # noqa: E731
        return HeadDims(s(self.projector_hidden), s(self.projector_out), s(self.predictor_hidden),
                        self.projector_out_norm, self.projector_hidden_layers, self.projector_hidden_norm)


def fixed_projector(feature_dim: int, dims: HeadDims) -> nn.Sequential:
    """The framework's hand-made projector: hidden Linear-BN-ReLU blocks, then the output Linear."""
    blocks = []
    in_dim = feature_dim
    for _ in range(dims.projector_hidden_layers):
        blocks.append((in_dim, dims.projector_hidden, dims.projector_hidden_norm, nn.ReLU(inplace=True)))
        in_dim = dims.projector_hidden
    blocks.append((in_dim, dims.projector_out, dims.projector_out_norm, None))
    return build_mlp(blocks)


def fixed_predictor(dims: HeadDims) -> nn.Sequential:
    """The hand-made predictor (SimSiam, BYOL): out -> hidden (BN, ReLU) -> out."""
    assert dims.predictor_hidden is not None
    return build_mlp([
        (dims.projector_out, dims.predictor_hidden, "bn", nn.ReLU(inplace=True)),
        (dims.predictor_hidden, dims.projector_out, None, None),
    ])


@dataclass(frozen=True)
class NasiamLayout:
    """A framework's head layout in NASiam's space (``search_spaces.nasiam``).

    A projector is ``(kind, layers, tail)``: ``kind`` "at_f" keeps every searchable layer at the
    backbone's feature width f and ``tail`` maps to the output ("linear", or
    "linear_bn_noaffine" for SimSiam's BN without affine); "to_out" makes the last searchable
    layer map to the output itself (``tail`` None). ``predictor`` is its number of layers (0: none).
    """

    projector: tuple
    predictor: int = 0
    projector2: Optional[tuple] = None  # a second head (WCL), under the labels ``projector2.*``


@dataclass(frozen=True)
class HeadSpec:
    """What a network space needs to know of a framework: its heads and branches, declared by the framework.

    ``classifier``: the "projector" is a linear classifier over the dataset's classes (supervised).
    ``momentum``: a momentum (EMA) copy of backbone and projector (``SSLNetworkSpace.momentum_pairs``).
    ``second_projector``: a second projection head (WCL), searched under its own labels.
    """

    name: str
    dims: HeadDims
    nasiam: Optional[NasiamLayout] = None
    momentum: bool = False
    second_projector: bool = False
    classifier: bool = False

    def scaled(self, width: float) -> HeadDims:
        return self.dims.scaled(width)


class HeadSpace:
    """A head space: how it builds a framework's projector and predictor, and what the jobs ask of it.

    One module per space, one entry in ``search_spaces.head_spaces.HEAD_SPACES``. The framework's
    ``HeadSpec`` says the sizes; the space says which choices sit in them.
    """

    name: str = ""
    #: the head-search job searches it (the heads' widths are searched by the backbone search's width strategies)
    head_search: bool = True
    #: its hidden widths are factors of the framework's (``model.mlp_widths``; ``mlp_depths`` for depths)
    width_factors: bool = False

    def choice_kinds(self, mlp_widths: Sequence[float]) -> frozenset:
        """The kinds of choice it holds (``layer``, ``width``): a strategy must handle them all; none: fixed."""
        return frozenset({"layer"})

    def problem(self, mlp_widths: Sequence[float], dims: HeadDims) -> Optional[tuple[str, str]]:
        """``(field, what is wrong)`` for a config it cannot build, else None (checked at validation)."""
        if self.width_factors and round(min(mlp_widths) * dims.projector_hidden) < 1:
            return "model.mlp_widths", (f"{min(mlp_widths)} of a {dims.projector_hidden}-wide hidden layer is no "
                                        f"unit at all; use a larger factor or model.head_width")
        return None

    def projector(self, heads: HeadSpec, feature_dim: int, head_width: float, mlp_widths: Sequence[float],
                  mlp_depths: Sequence[int], prefix: str = "projector") -> nn.Module:
        raise NotImplementedError

    def predictor(self, heads: HeadSpec, head_width: float, mlp_widths: Sequence[float],
                  mlp_depths: Sequence[int]) -> nn.Module:
        """The predictor; called for frameworks that have one (``dims.predictor_hidden``)."""
        raise NotImplementedError


class FixedHeads(HeadSpace):
    """The framework's hand-made heads: no choice at all (what ``retrain`` trains as the baseline)."""

    name = "fixed"
    head_search = False

    def choice_kinds(self, mlp_widths: Sequence[float]) -> frozenset:
        return frozenset()

    def projector(self, heads, feature_dim, head_width, mlp_widths, mlp_depths, prefix="projector"):
        return fixed_projector(feature_dim, heads.scaled(head_width))

    def predictor(self, heads, head_width, mlp_widths, mlp_depths):
        return fixed_predictor(heads.scaled(head_width))
