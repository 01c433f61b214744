"""A width space on NAS-Bench-Macro's skeleton: every layer's operation fixed, its hidden width searched.

The layout of Channel-Bench-Macro (Su et al.; ``xiusu/Channel-Bench-Macro``): the network of
NAS-Bench-Macro (stem 3x3 conv to 32, stages of 2, 3 and 3 layers at 64, 128 and 256 channels,
a 1x1 conv to 1280, global pooling), each layer one fixed MobileNetV2 block (``op``,
``mb<expansion>_k<kernel>``), and per layer a choice ``backbone.layer<i>.width`` of its hidden
width among ``k / bins`` of the layer's maximum (``expansion x input width``), ``k = 1..bins``
(1/8 .. 8/8 by default). The widths are channel counts, so an architecture JSON reads
``"backbone.layer3.width": 96``.

``bins_by: flops`` makes the bins FLOPs-sensitive, after CafeNet: every bin of every layer carries
about the same FLOPs, so a layer's number of bins is proportional to its FLOPs at full width
(``bins`` per layer on average; :func:`flops_sensitive_bins`).

``stages`` shortens the skeleton (``[1, 1, 1]``: three layers, one per stage) for a ground truth
small enough to train every network. FLOPs and parameters of any sample are a closed form
(:meth:`MacroWidthSpace.cost`, checked against a hook count of frozen networks in the tests).
"""
from __future__ import annotations

from typing import Sequence

import torch
from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from search_spaces.channels import WidthChoiceBlock
from search_spaces.macro import _MB, MACRO_PLANS, to_channels_last

NAS_BENCH_MACRO_STAGES = (2, 3, 3)


def width_choices(max_width: int, bins: int) -> list[int]:
    """``round(k * max_width / bins)`` for ``k = 1..bins`` (at least 1 channel, duplicates dropped)."""
    return sorted({max(1, round(k * max_width / bins)) for k in range(1, bins + 1)})


def flops_sensitive_bins(layer_flops: Sequence[float], max_widths: Sequence[int], bins: int) -> list[int]:
    """Bins per layer so that each bin carries about the same FLOPs: ``bins x layers`` bins in all,
    shared in proportion to each layer's FLOPs at full width (at least 1, at most its channels)."""
    total = float(sum(layer_flops))
    return [min(h, max(1, round(bins * len(layer_flops) * f / total))) for f, h in zip(layer_flops, max_widths)]


class MacroWidthSpace(ModelSpace):
    """Stem, one width-searched block per layer, 1x1 conv to the head width, global pooling."""

    space_name = "nas_bench_macro_width"
    choice_kinds = frozenset({"width"})

    def __init__(self, op: str = "mb3_k3", bins: int = 8, stages: Sequence[int] = NAS_BENCH_MACRO_STAGES,
                 bins_by: str = "width", width: float = 1.0, in_channels: int = 3, prefix: str = "backbone"):
        super().__init__()
        match = _MB.match(op) if isinstance(op, str) else None
        if match is None or int(match.group(2)) % 2 == 0 or int(match.group(1)) < 1:
            raise ValueError(f"nas_bench_macro_width op must be mb<expansion>_k<odd kernel> (e.g. mb3_k3), got {op!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 64:
            raise ValueError(f"nas_bench_macro_width bins must be an integer in [1, 64], got {bins!r}")
        stages = list(stages) if isinstance(stages, (list, tuple)) else stages
        if not isinstance(stages, list) or len(stages) != 3 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in stages):
            raise ValueError(f"nas_bench_macro_width stages must be three layer counts >= 1, got {stages!r}")
        if bins_by not in ("width", "flops"):
            raise ValueError(f"nas_bench_macro_width bins_by must be width or flops, got {bins_by!r}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"backbone width must be positive, got {width}")
        self.expansion, self.kernel, self.bins = int(match.group(1)), int(match.group(2)), bins
        plan = MACRO_PLANS["cifar"].scaled(width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, plan.stem_channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(plan.stem_channels), nn.ReLU(inplace=True))
        self.in_channels, self.stem_channels = in_channels, plan.stem_channels
        shapes, channels, size = [], plan.stem_channels, 32  # (in, out, stride) per layer; FLOPs at 32x32
        for (out_channels, _, first_stride), n_layers in zip(plan.stages, stages):
            for j in range(n_layers):
                stride = first_stride if j == 0 else 1
                shapes.append((channels, out_channels, stride, size))
                channels, size = out_channels, (size - 1) // stride + 1
        hidden = [c_in * self.expansion for c_in, _, _, _ in shapes]
        per_channel = [c_in * s * s + (self.kernel ** 2 + c_out) * ((s - 1) // st + 1) ** 2
                       for c_in, c_out, st, s in shapes]
        layer_bins = ([bins] * len(shapes) if bins_by == "width" else
                      flops_sensitive_bins([h * f for h, f in zip(hidden, per_channel)], hidden, bins))
        layers = [WidthChoiceBlock(c_in, c_out, stride, self.kernel, width_choices(h, n), f"{prefix}.layer{i}.width")
                  for i, ((c_in, c_out, stride, _), h, n) in enumerate(zip(shapes, hidden, layer_bins), 1)]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(channels, plan.head_channels, 1, bias=False),
                                  nn.BatchNorm2d(plan.head_channels), nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.feature_dim = plan.head_channels
        self.labels = [block.label for block in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.layers(self.stem(to_channels_last(x)))))

    def cost(self, sample: dict, input_size: int) -> tuple[int, int]:
        """(FLOPs, params): conv multiply-accumulates at ``input_size`` and every parameter (BN affine too)."""
        c, size = self.stem_channels, input_size
        flops = self.in_channels * c * 9 * size * size
        params = self.in_channels * c * 9 + 2 * c
        for block in self.layers:
            if block.label not in sample:
                raise KeyError(f"the sample has no choice for {block.label}")
            h, out, k = int(sample[block.label]), block.out_channels, block.kernel
            out_size = (size - 1) // block.stride + 1
            flops += block.in_channels * h * size * size + h * k * k * out_size ** 2 + h * out * out_size ** 2
            params += block.in_channels * h + h * k * k + h * out + 2 * (h + h + out)
            size = out_size
        last, head = self.layers[-1].out_channels, self.head[0].out_channels
        return int(flops + last * head * size * size), int(params + last * head + 2 * head)


__all__ = ["MacroWidthSpace", "flops_sensitive_bins", "width_choices"]
