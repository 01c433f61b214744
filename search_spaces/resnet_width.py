"""ResNet's stage widths as a width space for the width strategies (``autoslim``, ``bcnet``, ``cafenet``).

The ``resnet`` space searches stage widths with NNI's ``MutableConv2d``, which slices the *first*
``c`` channels: prefix sharing only. Here a stage's width is a set of channel indices
(``search_spaces.channels.ChannelChoice``), so BCNet's right side and CafeNet's free channels
work on ResNet as they do on ``nas_bench_macro_width``.

The network is ResNet with basic blocks (torchvision's ``BasicBlock``, the CIFAR stem: 3x3 conv,
no pooling), depths fixed (default 2-2-2-2: ResNet-18), and per stage ``s`` one choice
``backbone.stage<s>.width`` among ``k / bins`` of its planes (64, 128, 256, 512 times the
backbone width), ``k = 1..bins``. Every conv of a stage outputs the stage's channels; the first
block of stages 2-4 reads the previous stage's channels (its conv and the 1x1 projection
shortcut); the stem has stage 1's width and label, so stage 1 keeps ResNet's identity
shortcuts and "ResNet-18 uniformly narrowed" (every stage at one fraction) is a point of the space.
The pooled features are placed at the last stage's channel positions in a vector of its full
width (zeros elsewhere): a head reads the same column for a channel whichever side trains it.
FLOPs and parameters of any sample are a closed form (:meth:`ResNetWidthSpace.cost`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from search_spaces.channels import ChannelChoice, batch_norm_on, copy_batch_norm
from search_spaces.macro_width import width_choices
from search_spaces.resnet_space import RESNET_PLANES, BasicBlock, _block_cost

RESNET18_DEPTHS = (2, 2, 2, 2)


class WidthChoiceStem(ChannelChoice):
    """The CIFAR stem (3x3 conv, BN, ReLU) on stage 1's channels."""

    def __init__(self, in_channels: int, widths: Sequence[int], label: str):
        super().__init__(widths, label)
        self.conv, self.bn = nn.Conv2d(in_channels, self.max_width, 3, 1, 1, bias=False), nn.BatchNorm2d(self.max_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self.selection(x.device)
        return F.relu(batch_norm_on(self.bn, F.conv2d(x, self.conv.weight[sel], None, 1, 1), sel))

    @torch.no_grad()
    def freeze(self, sample: dict[str, Any]) -> nn.Sequential:
        sel, width = self.selection(self.conv.weight.device, sample), int(sample[self.label])
        stem = nn.Sequential(nn.Conv2d(self.conv.in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True)).to(self.conv.weight.device)
        stem[0].weight.copy_(self.conv.weight[sel])
        copy_batch_norm(self.bn, stem[1], sel)
        return stem.train(self.training)


class WidthChoiceStage(ChannelChoice):
    """A stage of basic blocks whose every conv outputs the stage's channels; the first block reads
    ``source``'s channels (the stem, which shares stage 1's label, or the previous stage)."""

    def __init__(self, source: ChannelChoice, depth: int, stride: int, widths: Sequence[int], label: str):
        super().__init__(widths, label)
        self._source = (source,)  # a reference, not a submodule
        planes, c_in = self.max_width, source.max_width
        first = "identity" if stride == 1 and source.label == label else "projection"
        self.blocks = nn.ModuleList([BasicBlock(c_in if i == 0 else planes, planes, stride if i == 0 else 1,
                                                first if i == 0 else "identity") for i in range(depth)])

    @property
    def source(self) -> ChannelChoice:
        return self._source[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel, in_sel = self.selection(x.device), self.source.selection(x.device)
        for i, block in enumerate(self.blocks):
            s_in = in_sel if i == 0 else sel
            out = F.conv2d(x, block.conv1.weight[sel][:, s_in], None, block.conv1.stride, 1)
            out = F.relu(batch_norm_on(block.bn1, out, sel))
            out = batch_norm_on(block.bn2, F.conv2d(out, block.conv2.weight[sel][:, sel], None, 1, 1), sel)
            shortcut = block.shortcut.projection
            if shortcut is not None:
                conv, norm = shortcut
                x = batch_norm_on(norm, F.conv2d(x, conv.weight[sel][:, s_in], None, conv.stride), sel)
            x = F.relu(out + x)
        return x

    @torch.no_grad()
    def freeze(self, sample: dict[str, Any]) -> nn.Sequential:
        """Plain ``BasicBlock``s at the sample's widths with the active channels' weights (see ``selection``)."""
        device = self.blocks[0].conv1.weight.device
        sel, in_sel = self.selection(device, sample), self.source.selection(device, sample)
        width, in_width = int(sample[self.label]), int(sample[self.source.label])
        frozen = []
        for i, block in enumerate(self.blocks):
            s_in = in_sel if i == 0 else sel
            plain = BasicBlock(in_width if i == 0 else width, width, block.conv1.stride[0],
                               block.shortcut.kind).to(device)
            plain.conv1.weight.copy_(block.conv1.weight[sel][:, s_in])
            plain.conv2.weight.copy_(block.conv2.weight[sel][:, sel])
            copy_batch_norm(block.bn1, plain.bn1, sel)
            copy_batch_norm(block.bn2, plain.bn2, sel)
            if block.shortcut.projection is not None:
                plain.shortcut.projection[0].weight.copy_(block.shortcut.projection[0].weight[sel][:, s_in])
                copy_batch_norm(block.shortcut.projection[1], plain.shortcut.projection[1], sel)
            frozen.append(plain)
        return nn.Sequential(*frozen).train(self.training)


class PlacedFeatures(nn.Module):
    """(N, c) features written into columns ``columns`` of an (N, ``dim``) zero matrix."""

    def __init__(self, dim: int, columns: Sequence[int] | torch.Tensor):
        super().__init__()
        self.dim = dim
        self.register_buffer("columns", torch.as_tensor(columns, dtype=torch.long).clone())  # saved: the searched positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.dim).index_copy(1, self.columns, x)


class FeaturePlacement(ChannelChoice):
    """The last stage's pooled channels at their own positions (its label); frozen: ``PlacedFeatures``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.max_width).index_copy(1, self.channels.to(x.device), x)

    def freeze(self, sample: dict[str, Any]) -> PlacedFeatures:
        sel = self.selection(torch.device("cpu"), sample)
        columns = torch.arange(self.max_width)[sel]
        return PlacedFeatures(self.max_width, columns)


class ResNetWidthSpace(ModelSpace):
    """CIFAR stem, four stages of basic blocks at fixed depths, each stage's width a choice; pooled features."""

    space_name = "resnet_width"
    choice_kinds = frozenset({"width"})

    def __init__(self, depths: Sequence[int] = RESNET18_DEPTHS, bins: int = 8, width: float = 1.0,
                 in_channels: int = 3, prefix: str = "backbone"):
        super().__init__()
        depths = list(depths) if isinstance(depths, (list, tuple)) else depths
        if not isinstance(depths, list) or len(depths) != 4 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"resnet_width depths must be four block counts >= 1, got {depths!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 64:
            raise ValueError(f"resnet_width bins must be an integer in [1, 64], got {bins!r}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"backbone width must be positive, got {width}")
        self.depths, self.bins, self.in_channels, self.prefix = depths, bins, in_channels, prefix
        self.planes = [max(4, int(round(p * width))) for p in RESNET_PLANES]
        self.labels = [f"{prefix}.stage{s}.width" for s in range(1, 5)]
        choices = [width_choices(p, bins) for p in self.planes]
        self.stem = WidthChoiceStem(in_channels, choices[0], self.labels[0])
        source: ChannelChoice = self.stem
        stages = []
        for s in range(4):
            source = WidthChoiceStage(source, depths[s], 1 if s == 0 else 2, choices[s], self.labels[s])
            stages.append(source)
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.place = FeaturePlacement(choices[3], self.labels[3])
        self.feature_dim = self.planes[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.place(self.pool(self.stages(self.stem(x))))

    def cost(self, sample: dict, input_size: int) -> tuple[int, int]:
        """(FLOPs, params): conv multiply-accumulates at ``input_size`` and every parameter (BN affine too)."""
        missing = [label for label in self.labels if label not in sample]
        if missing:
            raise KeyError(f"the sample has no choice for {', '.join(missing)}")
        c, size = int(sample[self.labels[0]]), input_size
        flops, params = self.in_channels * c * 9 * size * size, self.in_channels * c * 9 + 2 * c
        for s, depth in enumerate(self.depths):
            planes = int(sample[self.labels[s]])
            for i in range(depth):
                f, p, c, size = _block_cost("basic", c, planes, (1 if s == 0 else 2) if i == 0 else 1, size)
                flops, params = flops + f, params + p
        return int(flops), int(params)


def uniform_point(space: ResNetWidthSpace, k: int) -> dict:
    """Every stage at the same ``k / bins`` of its planes (ResNet uniformly narrowed), as a sample."""
    return {label: max(1, round(k * p / space.bins)) for label, p in zip(space.labels, space.planes)}


__all__ = ["ResNetWidthSpace", "WidthChoiceStage", "WidthChoiceStem", "FeaturePlacement", "PlacedFeatures",
           "uniform_point", "RESNET18_DEPTHS"]
