"""The searched network: a backbone, a projector and (for some frameworks) a predictor.

Frameworks with a momentum target (MoCo, BYOL, ReSSL) get a second backbone and projector built
with the *same labels*: NNI then shares the architecture weights between the online and
the momentum branch, and ``freeze`` gives both the same choices. WCL has a second
projection head, ``projector2``, searched under its own labels (``projector2.layer1.op``).

The backbone is a fixed ResNet (``search_spaces.backbones``) or a backbone space
(``search_spaces.backbone_spaces``), so a searched backbone pairs with a searched head; the
heads come from a head space (``search_spaces.head_spaces``). A framework whose ``HeadSpec``
declares ``classifier`` gets a linear classifier for its "projector".
"""
from __future__ import annotations

from typing import Sequence

import torch
from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from search_spaces.backbone_spaces import build_backbone_space, is_backbone_space
from search_spaces.backbones import build_backbone
from search_spaces.channels import ChannelChoice
from search_spaces.head_spaces import HEAD_SPACES, fixed_head_spaces
from search_spaces.heads import HeadSpec
#: (online, target) attribute pairs of a momentum framework: built here, followed by EMA in the framework
MOMENTUM_PAIRS = (("backbone", "momentum_backbone"), ("projector", "momentum_projector"))


def make_backbone(name: str, width: float, in_channels: int, options: dict | None = None) -> nn.Module:
    """A fixed CIFAR-stem ResNet by name, or a backbone space (both expose ``feature_dim``)."""
    if is_backbone_space(name):
        return build_backbone_space(name, width, in_channels, options)
    if options:
        raise ValueError(f"backbone {name} takes no backbone options, got {sorted(options)}")
    return build_backbone(name, width, in_channels)


def _heads(heads: HeadSpec, head_space: str, feature_dim: int, head_width: float,
           mlp_widths: Sequence[float], mlp_depths: Sequence[int], num_classes: int = 10):
    """(projector, predictor or None) of the framework's ``heads`` in the head space ``head_space``."""
    space = HEAD_SPACES.get(head_space)
    if space is None:
        raise ValueError(f"unknown head space {head_space!r}; choose one of {', '.join(HEAD_SPACES)}")
    if heads.classifier:
        if space.choice_kinds(mlp_widths):
            raise ValueError(f"framework {heads.name} trains a linear classifier: use a head space without "
                             f"choices ({', '.join(fixed_head_spaces())}), got {head_space!r}")
        return nn.Linear(feature_dim, num_classes), None
    projector = space.projector(heads, feature_dim, head_width, mlp_widths, mlp_depths)
    predictor = space.predictor(heads, head_width, mlp_widths, mlp_depths) if heads.dims.predictor_hidden else None
    return projector, predictor


class SSLNetworkSpace(ModelSpace):
    """Backbone + searchable projector/predictor; ``forward`` gives backbone features.

    ``heads`` is the framework's ``HeadSpec`` (``FRAMEWORKS[name].heads``): the space builds
    what it declares and knows no framework by name.
    """

    def __init__(self, heads: HeadSpec, head_space: str = "nasiam", backbone: str = "resnet18",
                 backbone_width: float = 1.0, in_channels: int = 3, head_width: float = 1.0,
                 mlp_widths: Sequence[float] = (1.0,), mlp_depths: Sequence[int] = (1, 2, 3),
                 backbone_options: dict | None = None, num_classes: int = 10):
        super().__init__()
        self.framework = heads.name
        self.head_space = head_space
        self.backbone = make_backbone(backbone, backbone_width, in_channels, backbone_options)
        feature_dim = self.backbone.feature_dim
        self.feature_dim = feature_dim
        self.projector, predictor = _heads(heads, head_space, feature_dim, head_width, mlp_widths, mlp_depths,
                                           num_classes)
        self.predictor = predictor if predictor is not None else nn.Identity()
        self.has_predictor = predictor is not None
        self.has_momentum = heads.momentum
        if heads.second_projector:  # WCL: a second head with its own labels (projector2.*)
            self.projector2 = HEAD_SPACES[head_space].projector(heads, feature_dim, head_width, mlp_widths,
                                                                mlp_depths, prefix="projector2")
        if self.has_momentum:
            self.momentum_backbone = make_backbone(backbone, backbone_width, in_channels, backbone_options)
            self.momentum_projector, _ = _heads(heads, head_space, feature_dim, head_width, mlp_widths, mlp_depths,
                                                num_classes)
            # The target starts as an exact copy of the online branch, then follows it by EMA.
            for online, target in self.momentum_pairs():
                target.load_state_dict(online.state_dict())
                for p in target.parameters():
                    p.requires_grad_(False)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules of the momentum branch; empty without one."""
        if not self.has_momentum:
            return []
        return [(getattr(self, online), getattr(self, target)) for online, target in MOMENTUM_PAIRS]

    def extra_oneshot_hooks(self, strategy) -> list:
        """NNI's one-shot strategies keep our own supernet modules (width-choice blocks) as they are."""
        return [ChannelChoice.mutate]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
