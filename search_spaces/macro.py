"""Macro backbone spaces: a chain of layers, each picking its whole block (NAS-Bench-Macro's skeleton).

The skeleton of NAS-Bench-Macro (Su et al., CVPR 2021; xiusu/NAS-Bench-Macro ``train/model.py``):
a stem (3x3 conv + BN + ReLU), searchable layers grouped in stages whose first layer changes
resolution and width, then a 1x1 conv to 1280 channels + BN + ReLU and global average pooling.
Every searchable layer is a ``LayerChoice`` labelled ``backbone.layer<i>.op`` whose candidates
are MobileNetV2 inverted-residual blocks ``mb<expansion>_k<kernel>`` or ``identity``; where a
layer changes stride or width, ``identity`` is a 1x1 conv + BN, exactly as in the benchmark.

``macro`` is the wider space on the same skeleton: kernel 3/5/7, expansion 3/6 and identity,
with a channel plan for 32x32 inputs (the benchmark's) and one for 224x224 inputs (a stride-2
stem and five stages, after MobileNetV2/ProxylessNAS).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from torch import nn


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Quirk 19 (docs/nni.md): NNI's shape inference (FLOPs profiler) fails on ``Tensor.contiguous(memory_format=...)``.

    The macro spaces run channels-last because PyTorch's CPU depth-wise convolution is several
    times faster in it; NNI profiles them with a tensor subclass (``ShapeTensor``) that has no
    shape formula for the conversion, so only plain tensors are converted.
    """
    if type(x) is torch.Tensor or type(x) is torch.nn.Parameter:
        return x.contiguous(memory_format=torch.channels_last)
    return x


_MB = re.compile(r"^mb(\d+)_k(\d+)$")


class Downsample(nn.Module):
    """NAS-Bench-Macro's ``identity``: nothing, or a 1x1 conv + BN where stride or width changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + BN + ReLU, kxk depth-wise + BN + ReLU, 1x1 project + BN [+ x]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, kernel: int,
                 hidden: int | None = None):
        super().__init__()
        hidden = round(in_channels * expansion) if hidden is None else hidden  # a width-searched block's own
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.use_shortcut = in_channels == out_channels and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x if self.use_shortcut else self.conv(x)


def macro_op(name: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """``identity`` or ``mb<expansion>_k<kernel>`` mapping ``in_channels`` to ``out_channels``."""
    if name == "identity":
        return Downsample(in_channels, out_channels, stride)
    match = _MB.match(name)
    if match is None:
        raise ValueError(f"unknown macro operation {name!r}; use 'identity' or 'mb<expansion>_k<kernel>'")
    expansion, kernel = int(match.group(1)), int(match.group(2))
    if kernel % 2 == 0 or expansion < 1:
        raise ValueError(f"macro operation {name!r}: kernel must be odd and expansion >= 1")
    return InvertedResidual(in_channels, out_channels, stride, expansion, kernel)


@dataclass(frozen=True)
class MacroPlan:
    """Channel plan: stem width and stride, stages as (out_channels, layers, first stride), head width."""

    stem_channels: int
    stem_stride: int
    stages: tuple
    head_channels: int = 1280

    def scaled(self, width: float) -> "MacroPlan":
        s = lambda c: max(4, int(round(c * width)))  # noqa: E731
        return MacroPlan(s(self.stem_channels), self.stem_stride,
                         tuple((s(c), n, st) for c, n, st in self.stages), s(self.head_channels))

    @property
    def num_layers(self) -> int:
        return sum(n for _, n, _ in self.stages)


# "cifar": NAS-Bench-Macro's plan (32 -> 64 -> 128 -> 256 in stages of 2, 3, 3; 32x32 in, 4x4 out).
# "imagenet": stride-2 stem, then five stages as in MobileNetV2/ProxylessNAS (224x224 in, 7x7 out).
MACRO_PLANS = {
    "cifar": MacroPlan(32, 1, ((64, 2, 2), (128, 3, 2), (256, 3, 2))),
    "imagenet": MacroPlan(32, 2, ((24, 2, 2), (40, 3, 2), (80, 3, 2), (112, 3, 1), (192, 3, 2))),
}
MACRO_OPS = ("identity", "mb3_k3", "mb6_k3", "mb3_k5", "mb6_k5", "mb3_k7", "mb6_k7")


class MacroBackboneSpace(ModelSpace):
    """Stem, ``num_layers`` searchable layers, 1x1 conv to the head width, global pooling.

    ``forward`` returns the pooled feature vector of size ``feature_dim``.
    """

    space_name = "macro"
    choice_kinds = frozenset({"layer"})  # what a strategy must be able to search

    def __init__(self, ops: Sequence[str] = MACRO_OPS, plan: str = "cifar", width: float = 1.0,
                 in_channels: int = 3, prefix: str = "backbone"):
        super().__init__()
        if not isinstance(plan, str) or plan not in MACRO_PLANS:
            raise ValueError(f"unknown channel plan {plan!r}; choose one of {sorted(MACRO_PLANS)}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"backbone width must be positive, got {width}")
        if isinstance(ops, str) or not isinstance(ops, (list, tuple)) or not all(isinstance(op, str) for op in ops):
            raise ValueError(f"macro operations must be a list of operation names, got {ops!r}")
        ops = tuple(ops)
        if not ops or len(set(ops)) != len(ops):
            raise ValueError(f"macro operations must be distinct and non-empty, got {list(ops)}")
        for op in ops:
            macro_op(op, 8, 8, 1)  # validates the name early, with one clear message
        self.ops, self.plan_name, self.width = ops, plan, width
        p = MACRO_PLANS[plan].scaled(width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, p.stem_channels, 3, stride=p.stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(p.stem_channels),
            nn.ReLU(inplace=True))
        layers, channels, index = [], p.stem_channels, 0
        for out_channels, n_layers, first_stride in p.stages:
            for j in range(n_layers):
                index += 1
                stride = first_stride if j == 0 else 1
                layers.append(LayerChoice(
                    OrderedDict((op, macro_op(op, channels, out_channels, stride)) for op in ops),
                    label=f"{prefix}.layer{index}.op"))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(channels, p.head_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(p.head_channels),
            nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.feature_dim = p.head_channels
        self.labels = [f"{prefix}.layer{i}.op" for i in range(1, index + 1)]
        # PyTorch's default initialisation, as the benchmark's training used.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last: PyTorch's CPU depth-wise convolution is several times faster in it (same numbers)
        x = to_channels_last(x)
        return self.pool(self.head(self.layers(self.stem(x))))


__all__ = ["MacroBackboneSpace", "to_channels_last", "MACRO_OPS", "MACRO_PLANS", "MacroPlan", "macro_op",
           "InvertedResidual", "Downsample"]
