"""The heads' hidden widths as width choices (head space ``width``), searched like the backbone's widths.

A projector (or predictor) is the framework's hand-made MLP (``search_spaces.heads``: hidden
Linear [-BN] -ReLU blocks, then the output Linear [+ its norm]) whose hidden width is one choice,
``projector.width`` (``predictor.width``, WCL's ``projector2.width``), among ``model.mlp_widths``
times the framework's hidden width (at ``model.head_width``). Its active hidden channels are any
index set (``search_spaces.channels.ChannelChoice``), so the width strategies place them as they
place a backbone layer's: the prefix (``autoslim``), left and right (``bcnet``), base plus free
channels in a zone (``cafenet``). Every hidden layer of a head shares its label; the output width
stays the framework's.

Under a FLOPs budget the searched heads count too (:class:`NetworkWidthCost`: the backbone's cost
plus each online head's multiply-accumulates per image and parameters; the momentum copies, which
do not run at inference, are not counted), otherwise the widest head would always win.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.channels import ChannelChoice, batch_norm_on, copy_batch_norm
from search_spaces.cost import BackboneCost, Cost
from search_spaces.heads import HeadDims, HeadSpace, build_mlp


def head_widths(hidden: int, fractions: Sequence[float]) -> list[int]:
    """``round(f x hidden)`` for each fraction (at least 1, duplicates dropped)."""
    return sorted({max(1, round(f * hidden)) for f in fractions})


class WidthChoiceMlp(ChannelChoice):
    """``hidden_layers`` Linear [-BN] -ReLU blocks on the active hidden channels, then the output Linear [+ norm]."""

    def __init__(self, in_dim: int, out_dim: int, widths: Sequence[int], label: str, hidden_layers: int = 1,
                 hidden_norm: Optional[str] = "bn", out_norm: Optional[str] = None):
        super().__init__(widths, label)
        if hidden_layers < 1:
            raise ValueError(f"{label}: a head with a searched hidden width needs a hidden layer")
        hidden = self.max_width
        self.in_dim, self.out_dim, self.hidden_norm, self.out_norm_kind = in_dim, out_dim, hidden_norm, out_norm
        self.hidden = nn.ModuleList([nn.Linear(in_dim if i == 0 else hidden, hidden, bias=hidden_norm is None)
                                     for i in range(hidden_layers)])
        self.norms = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(hidden_layers)] if hidden_norm else [])
        self.output = nn.Linear(hidden, out_dim, bias=out_norm is None)
        self.out_norm = nn.BatchNorm1d(out_dim, affine=out_norm == "bn") if out_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self.selection(x.device)
        for i, linear in enumerate(self.hidden):
            weight = linear.weight[sel] if i == 0 else linear.weight[sel][:, sel]
            x = F.linear(x, weight, None if linear.bias is None else linear.bias[sel])
            x = F.relu(batch_norm_on(self.norms[i], x, sel) if self.hidden_norm else x)
        return self.out_norm(F.linear(x, self.output.weight[:, sel], self.output.bias))

    def blocks(self, width: int) -> list:
        """``build_mlp``'s blocks at ``width``: the framework's hand-made head when ``width`` is its own."""
        dims = [self.in_dim] + [width] * len(self.hidden)
        return ([(a, b, self.hidden_norm, nn.ReLU(inplace=True)) for a, b in zip(dims, dims[1:])]
                + [(width, self.out_dim, self.out_norm_kind, None)])

    @torch.no_grad()
    def freeze(self, sample: dict[str, Any]) -> nn.Sequential:
        """The plain head at the sample's width with the active channels' weights (see ``selection``)."""
        device = self.output.weight.device
        sel, width = self.selection(device, sample), int(sample[self.label])
        head = build_mlp(self.blocks(width)).to(device)
        linears = [m for m in head if isinstance(m, nn.Linear)]
        norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
        for i, (mine, theirs) in enumerate(zip(self.hidden, linears)):
            theirs.weight.copy_(mine.weight[sel] if i == 0 else mine.weight[sel][:, sel])
            if mine.bias is not None:
                theirs.bias.copy_(mine.bias[sel])
        for mine, theirs in zip(self.norms, norms):
            copy_batch_norm(mine, theirs, sel)
        linears[-1].weight.copy_(self.output.weight[:, sel])
        if self.output.bias is not None:
            linears[-1].bias.copy_(self.output.bias)
        if self.out_norm_kind:
            copy_batch_norm(self.out_norm, norms[-1], slice(None))
        return head.train(self.training)

    def cost(self, width: int) -> Cost:
        """Multiply-accumulates per image and parameters of the head at ``width`` (BN affine counted)."""
        flops = params = 0
        for in_dim, out_dim, norm, _ in self.blocks(int(width)):
            flops += in_dim * out_dim
            params += in_dim * out_dim + (out_dim if norm is None else 0) + (2 * out_dim if norm == "bn" else 0)
        return Cost(flops, params)


def width_projector(feature_dim: int, dims: HeadDims, fractions: Sequence[float], prefix: str = "projector"):
    return WidthChoiceMlp(feature_dim, dims.projector_out, head_widths(dims.projector_hidden, fractions),
                          f"{prefix}.width", dims.projector_hidden_layers, dims.projector_hidden_norm,
                          dims.projector_out_norm)


def width_predictor(dims: HeadDims, fractions: Sequence[float]):
    return WidthChoiceMlp(dims.projector_out, dims.projector_out, head_widths(dims.predictor_hidden, fractions),
                          "predictor.width")


class WidthHeads(HeadSpace):
    """The framework's hand-made heads with their hidden widths searched (factors ``model.mlp_widths``)."""

    name = "width"
    head_search = False  # searched by the backbone search's width strategies, beside the backbone's widths
    width_factors = True

    def choice_kinds(self, mlp_widths: Sequence[float]) -> frozenset:
        return frozenset({"width"})

    def projector(self, heads, feature_dim, head_width, mlp_widths, mlp_depths, prefix="projector"):
        return width_projector(feature_dim, heads.scaled(head_width), mlp_widths, prefix)

    def predictor(self, heads, head_width, mlp_widths, mlp_depths):
        return width_predictor(heads.scaled(head_width), mlp_widths)


def online_width_heads(network: nn.Module) -> list[WidthChoiceMlp]:
    """The width-searched heads that run at inference (projector, predictor, WCL's second projector)."""
    heads = [getattr(network, name, None) for name in ("projector", "predictor", "projector2")]
    return [h for h in heads if isinstance(h, WidthChoiceMlp)]


class NetworkWidthCost:
    """The backbone's cost plus the searched heads': ``labels`` holds both, so the width strategies draw and the
    budget counts the heads' widths too."""

    separable = False
    smallest, size, enumerate = BackboneCost.smallest, BackboneCost.size, BackboneCost.enumerate

    def __init__(self, network: nn.Module, input_size: int, in_channels: int = 3):
        self.backbone = BackboneCost(network.backbone, input_size, in_channels)
        self.input_size, self.heads = self.backbone.input_size, online_width_heads(network)
        self.labels = {**self.backbone.labels, **{head.label: head.widths for head in self.heads}}

    def __call__(self, sample: Mapping[str, Any]) -> Cost:
        missing = [head.label for head in self.heads if head.label not in sample]
        if missing:
            raise KeyError(f"the sample has no choice for {', '.join(missing)}")
        parts = [self.backbone(sample)] + [head.cost(sample[head.label]) for head in self.heads]
        return Cost(sum(c.flops for c in parts), sum(c.params for c in parts))


def network_cost(network: nn.Module, input_size: int) -> BackboneCost | NetworkWidthCost:
    """The cost model a backbone search budgets: the backbone's, plus the heads' when their widths are searched."""
    if online_width_heads(network):
        return NetworkWidthCost(network, input_size)
    return BackboneCost(network.backbone, input_size)


__all__ = ["WidthChoiceMlp", "NetworkWidthCost", "head_widths", "network_cost", "online_width_heads",
           "width_predictor", "width_projector"]
