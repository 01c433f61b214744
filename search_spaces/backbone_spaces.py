"""The backbone-space registry: a name in a config -> an NNI model space with ``feature_dim``.

A new backbone space is one module and one line here. ``options`` are the space's own
keyword arguments (``model.backbone_options`` in a config), checked against its signature. A
space declares the kinds of choice it holds (``choice_kinds``); a strategy lists those it can
search (``experiments.strategies``: DARTS-family strategies relax layer choices only).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

from nni.nas.nn.pytorch import ModelSpace

from search_spaces.cells import CellBackboneSpace
from search_spaces.macro import MacroBackboneSpace
from search_spaces.macro_width import MacroWidthSpace
from search_spaces.nas_bench_macro import NasBenchMacroSpace
from search_spaces.resnet_space import ResNetSpace
from search_spaces.resnet_width import ResNetWidthSpace
from search_spaces.vit import ViTSpace

BACKBONE_SPACES = {cls.space_name: cls for cls in (NasBenchMacroSpace, MacroBackboneSpace, ResNetSpace, ViTSpace,
                                                   MacroWidthSpace, CellBackboneSpace, ResNetWidthSpace)}

_RESERVED = ("width", "in_channels", "prefix")


def is_backbone_space(name: str) -> bool:
    return name in BACKBONE_SPACES


def choice_kinds(name: str) -> frozenset:
    """The kinds of choice the space holds (``layer``, ``width``, ``depth``): a strategy must handle them all."""
    return frozenset(BACKBONE_SPACES[name].choice_kinds)


def space_options(name: str) -> list[str]:
    cls = BACKBONE_SPACES[name]
    params = inspect.signature(getattr(cls, "_init_wrapped", cls.__init__)).parameters  # NNI wraps __init__
    return [p for p in params if p not in ("self", *_RESERVED)]


def build_backbone_space(name: str, width: float = 1.0, in_channels: int = 3,
                         options: Optional[Mapping[str, Any]] = None) -> ModelSpace:
    """The backbone space ``name`` (an NNI ``ModelSpace`` of its own, labels ``backbone.*``)."""
    if name not in BACKBONE_SPACES:
        raise ValueError(f"unknown backbone space {name!r}; choose one of {sorted(BACKBONE_SPACES)}")
    options = dict(options or {})
    allowed = space_options(name)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"backbone space {name} has no option(s) {unknown}; it takes {allowed or 'none'}")
    return BACKBONE_SPACES[name](width=width, in_channels=in_channels, **options)


__all__ = ["BACKBONE_SPACES", "build_backbone_space", "choice_kinds", "is_backbone_space", "space_options"]
