"""A ResNet-family backbone space: per stage, the depth, the width and the block type.

Four stages as in ResNet (planes 64, 128, 256, 512 at width 1; stride 2 from stage 2 on).
Stage ``s`` has three choices, labelled

- ``backbone.stage<s>.depth``: the number of blocks (NNI ``Repeat``),
- ``backbone.stage<s>.width``: the block's planes, in channels (NNI ``MutableConv2d`` /
  ``MutableBatchNorm2d``, weight-shared by prefix slicing under one-shot strategies),
- ``backbone.stage<s>.block``: ``basic`` (two 3x3 convs, output = planes) or ``bottleneck``
  (1x1, 3x3, 1x1, output = 4 x planes), one ``LayerChoice`` per block sharing the label.

torchvision's ``BasicBlock`` and ``Bottleneck`` (ResNet v1.5: stride on the 3x3 conv), with the
CIFAR stem of ``search_spaces.backbones``: ResNet-18 is ``basic``, planes 64-128-256-512,
depths 2-2-2-2 and ResNet-50 is ``bottleneck`` with depths 3-4-6-3; both are points of the
default space (:func:`resnet_point`).

The stage output width depends on the sample, while the heads need one input width: the pooled
features are zero-padded to the widest possible output (``feature_dim``). Zero columns change
neither cosine kNN nor a linear probe, and a projector reading them is the weight-shared
"dynamic linear" of once-for-all supernets (only the columns of live channels act).
"""
from __future__ import annotations

from typing import Any, Sequence

import nni
import torch
import torch.nn.functional as F
from nni.mutable import Mutable, MutableExpression
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableBatchNorm2d, MutableConv2d, MutableModule, Repeat
from nni.nas.nn.pytorch.base import recursive_freeze
from torch import nn

RESNET_PLANES = (64, 128, 256, 512)
RESNET_BLOCKS = ("basic", "bottleneck")
EXPANSION = {"basic": 1, "bottleneck": 4}
DEFAULT_DEPTHS = ((1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6), (1, 2, 3))
DEFAULT_WIDTHS = (0.5, 0.75, 1.0)  # planes as a fraction of ResNet's
RESNET_POINTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _is_mutable(*values) -> bool:
    return any(isinstance(v, Mutable) for v in values)


def _value(v: Any, sample: dict) -> Any:
    return v.freeze(sample) if isinstance(v, Mutable) else v


def conv(in_channels, out_channels, kernel: int, stride: int = 1) -> nn.Module:
    """A bias-free conv (padding kernel // 2); NNI's ``MutableConv2d`` where a width is a choice."""
    cls = MutableConv2d if _is_mutable(in_channels, out_channels) else nn.Conv2d
    return cls(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)


def bn(channels) -> nn.Module:
    return MutableBatchNorm2d(channels) if _is_mutable(channels) else nn.BatchNorm2d(channels)


class Shortcut(MutableModule):
    """The residual path: identity where the shape is kept, else a 1x1 conv + BN (torchvision's downsample).

    ``kind`` is ``identity``, ``projection`` or ``auto``. ``auto`` is the first block of the
    first stage (stride 1), whose input width is the stem's and whose output width is a choice:
    the supernet holds the projection and skips it at run time when the widths match, and
    ``freeze`` keeps it only in networks that need it (ResNet-18 has none there, ResNet-50 has one).
    """

    def __init__(self, in_channels, out_channels, stride: int, kind: str = "auto"):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        if kind == "auto" and not _is_mutable(in_channels, out_channels):
            kind = "identity" if stride == 1 and in_channels == out_channels else "projection"
        self.kind = kind
        self.projection = None if kind == "identity" else nn.Sequential(conv(in_channels, out_channels, 1, stride),
                                                                        bn(out_channels))

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        if self.projection is None or (self.kind == "auto" and x.shape[1] == out_channels):
            return x
        return self.projection(x)

    def freeze(self, sample: dict) -> nn.Module:
        if self.kind != "auto":
            return recursive_freeze(self, sample, include_root=False)[0]
        in_c, out_c = _value(self.in_channels, sample), _value(self.out_channels, sample)
        if in_c == out_c:
            return Shortcut(in_c, out_c, self.stride, "identity")
        frozen = recursive_freeze(self, sample, include_root=False)[0]
        frozen.in_channels, frozen.out_channels, frozen.kind = in_c, out_c, "projection"
        return frozen


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: 3x3 (stride) - BN - ReLU - 3x3 - BN, plus the shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_channels, planes, stride: int, shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, planes, 3, stride), bn(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3), bn(planes)
        self.shortcut = Shortcut(in_channels, planes, stride, shortcut)
        nn.init.zeros_(self.bn2.weight)  # every block starts as identity (zero-init residual)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x, out.shape[1]), inplace=True)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5): 1x1 - 3x3 (stride) - 1x1 to 4 x planes, plus the shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_channels, planes, stride: int, shortcut: str):
        super().__init__()
        out_channels = planes * 4
        self.conv1, self.bn1 = conv(in_channels, planes, 1), bn(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride), bn(planes)
        self.conv3, self.bn3 = conv(planes, out_channels, 1), bn(out_channels)
        self.shortcut = Shortcut(in_channels, out_channels, stride, shortcut)
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x, out.shape[1]), inplace=True)


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


class FeaturePad(nn.Module):
    """Zero-pads (N, C) features to ``dim`` columns (see the module docstring)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.dim - x.shape[1])) if x.shape[1] < self.dim else x


def _choice(label: str, values: Sequence):
    values = list(dict.fromkeys(values))
    return values[0] if len(values) == 1 else nni.choice(label, values)


def stage_planes(stage: int, widths: Sequence[float], width: float) -> list[int]:
    return sorted({max(4, int(round(RESNET_PLANES[stage] * w * width))) for w in widths})


class ResNetSpace(ModelSpace):
    """Stem, four searchable stages, global pooling, zero-padding to ``feature_dim``."""

    space_name = "resnet"
    choice_kinds = frozenset({"layer", "width", "depth"})  # what a strategy must be able to search

    def __init__(self, depths: Sequence[Sequence[int]] = DEFAULT_DEPTHS, widths: Sequence[float] = DEFAULT_WIDTHS,
                 blocks: Sequence[str] = RESNET_BLOCKS, width: float = 1.0, in_channels: int = 3,
                 stem: str = "cifar", prefix: str = "backbone"):
        super().__init__()
        if len(depths) != 4 or any(not d or any(int(x) < 1 for x in d) for d in depths):
            raise ValueError(f"resnet depths: four non-empty lists of depths >= 1 are needed, got {depths}")
        if not widths or any(w <= 0 for w in widths) or width <= 0:
            raise ValueError(f"resnet widths must be positive, got {list(widths)} (width {width})")
        unknown = [b for b in blocks if b not in BLOCK_TYPES]
        if not blocks or unknown:
            raise ValueError(f"resnet blocks must be among {list(BLOCK_TYPES)}, got {list(blocks)}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"resnet stem must be cifar or imagenet, got {stem!r}")
        self.depths = [sorted({int(x) for x in d}) for d in depths]
        self.widths, self.blocks, self.width = list(widths), list(dict.fromkeys(blocks)), width
        self.stem_kind, self.prefix = stem, prefix
        self.stem_channels = stem_channels = max(4, int(round(RESNET_PLANES[0] * width)))
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.labels: list[str] = []
        channels: Any = stem_channels
        stages = []
        for s in range(4):
            name = f"{prefix}.stage{s + 1}"
            planes = _choice(f"{name}.width", stage_planes(s, widths, width))
            block = _choice(f"{name}.block", self.blocks)
            depth = _choice(f"{name}.depth", self.depths[s])
            self.labels += [f"{name}.{k}" for k, v in (("depth", depth), ("width", planes), ("block", block))
                            if isinstance(v, Mutable)]
            stages.append(Repeat(self._block_factory(name, channels, planes, block, s), depth)
                          if isinstance(depth, Mutable)
                          else nn.Sequential(*[self._block_factory(name, channels, planes, block, s)(i)
                                               for i in range(depth)]))
            channels = self._stage_out(planes, block)
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        last = stage_planes(3, widths, width)[-1]
        self.feature_dim = max(last * BLOCK_TYPES[b].expansion for b in self.blocks)
        self.pad = FeaturePad(self.feature_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage_out(self, planes, block):
        if isinstance(block, str):
            return planes * BLOCK_TYPES[block].expansion
        return MutableExpression.switch_case(block, {b: planes * BLOCK_TYPES[b].expansion for b in self.blocks})

    def _block_factory(self, name: str, stage_in, planes, block, s: int):
        def make(i: int) -> nn.Module:
            candidates = {}
            for b in self.blocks:
                if i == 0:  # the stage's first block takes the previous width (and the stride)
                    stride = 1 if s == 0 else 2
                    c_in, shortcut = stage_in, ("auto" if stride == 1 else "projection")
                else:
                    stride, c_in, shortcut = 1, planes * BLOCK_TYPES[b].expansion, "identity"
                candidates[b] = BLOCK_TYPES[b](c_in, planes, stride, shortcut)
            if isinstance(block, str):
                return candidates[block]
            return LayerChoice(candidates, label=f"{name}.block")
        return make

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pad(self.pool(self.stages(self.stem(x))))

    # --- the analytic FLOPs / parameter count ----------------------------------------------------
    def cost(self, sample: dict, input_size: int) -> tuple[int, int]:
        """(FLOPs, params) of ``sample``: conv multiply-accumulates (as NAS-Bench-Macro counts them) and
        every parameter (conv weights, BN affine). A test checks it against a hook count of frozen networks."""
        stem_conv = self.stem[0]
        k, c = stem_conv.kernel_size[0], self.stem_channels
        size = (input_size + 2 * (k // 2) - k) // stem_conv.stride[0] + 1
        flops = stem_conv.in_channels * c * k * k * size * size
        params = stem_conv.in_channels * c * k * k + 2 * c
        if self.stem_kind == "imagenet":
            size = (size + 2 - 3) // 2 + 1
        for s in range(4):
            name = f"{self.prefix}.stage{s + 1}"
            planes = _pick(sample, f"{name}.width", stage_planes(s, self.widths, self.width))
            block = _pick(sample, f"{name}.block", self.blocks)
            depth = _pick(sample, f"{name}.depth", self.depths[s])
            for i in range(depth):
                stride = (1 if s == 0 else 2) if i == 0 else 1
                f, p, c, size = _block_cost(block, c, planes, stride, size)
                flops += f
                params += p
        return int(flops), int(params)


def _pick(sample: dict, label: str, values: Sequence):
    values = list(dict.fromkeys(values))
    if len(values) == 1:
        return values[0]
    if label not in sample:
        raise KeyError(f"the sample has no choice for {label}")
    return sample[label]


def _block_cost(block: str, c_in: int, planes: int, stride: int, size: int) -> tuple[int, int, int, int]:
    out_size = (size - 1) // stride + 1
    if block == "basic":
        c_out = planes
        f = c_in * planes * 9 * out_size ** 2 + planes * planes * 9 * out_size ** 2
        p = c_in * planes * 9 + planes * planes * 9 + 4 * planes
    else:
        c_out = planes * 4
        f = c_in * planes * size ** 2 + planes * planes * 9 * out_size ** 2 + planes * c_out * out_size ** 2
        p = c_in * planes + planes * planes * 9 + planes * c_out + 2 * (planes + planes + c_out)
    if stride != 1 or c_in != c_out:
        f += c_in * c_out * out_size ** 2
        p += c_in * c_out + 2 * c_out
    return f, p, c_out, out_size


def resnet_point(name: str, width: float = 1.0, prefix: str = "backbone") -> dict:
    """ResNet-18/34/50 as a sample of the default space (planes at 100%)."""
    if name not in RESNET_POINTS:
        raise ValueError(f"unknown ResNet point {name!r}; choose one of {sorted(RESNET_POINTS)}")
    block, depths = RESNET_POINTS[name]
    arch = {}
    for s in range(4):
        arch[f"{prefix}.stage{s + 1}.depth"] = depths[s]
        arch[f"{prefix}.stage{s + 1}.width"] = max(4, int(round(RESNET_PLANES[s] * width)))
        arch[f"{prefix}.stage{s + 1}.block"] = block
    return arch


__all__ = ["ResNetSpace", "resnet_point", "RESNET_POINTS", "DEFAULT_DEPTHS", "DEFAULT_WIDTHS", "RESNET_BLOCKS"]
