"""ResNet backbones with the CIFAR stem, built from torchvision's own blocks.

torchvision's ResNet hard-codes the 64-128-256-512 channel plan and the ImageNet stem
(7x7 stride-2 conv, max-pool), which throws away most of a 32x32 image. The CIFAR
variant every SSL library uses swaps in a 3x3 stride-1 conv and drops the max-pool;
a width multiplier shrinks the network for tests and CPU runs.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

BACKBONE_LAYOUTS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class CifarResNet(ResNet):
    """torchvision ResNet with a 3x3 stem, no max-pool, scaled widths and no classifier.

    ``forward`` returns the pooled feature vector of size ``feature_dim``.
    """

    def __init__(self, block, layers, width: float = 1.0, in_channels: int = 3,
                 zero_init_residual: bool = True):
        nn.Module.__init__(self)
        widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = widths[3] * block.expansion
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as identity: the SSL libraries' default
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.zeros_(m.bn2.weight)


def build_backbone(name: str = "resnet18", width: float = 1.0, in_channels: int = 3) -> CifarResNet:
    """A CIFAR-stem ResNet by name (``resnet18``, ``resnet34``, ``resnet50``)."""
    if name not in BACKBONE_LAYOUTS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_LAYOUTS)}")
    if width <= 0:
        raise ValueError(f"backbone width must be positive, got {width}")
    block, layers = BACKBONE_LAYOUTS[name]
    return CifarResNet(block, layers, width=width, in_channels=in_channels)


__all__ = ["CifarResNet", "build_backbone", "BACKBONE_LAYOUTS"]
