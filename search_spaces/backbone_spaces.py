"""The backbone-space registry: a name in a config -> an NNI model space with ``feature_dim``.

A new backbone space is one module and one line here. ``options`` are the space's own
keyword arguments (``model.backbone_options`` in a config), checked against its signature.
The jobs ask a space's properties, never its name; a space declares them as class attributes:

* ``choice_kinds``: the kinds of choice it holds (``layer``, ``width``, ``depth``, ``cell``); a
  strategy lists those it can search (DARTS-family strategies relax layer choices only);
* ``benchmark_entry(architecture)`` (a classmethod): the benchmark table's record of a network, for
  a space that has a table of trained networks (NAS-Bench-Macro);
* ``distinct_architectures()`` (a classmethod): one architecture per distinct network, for a
  space whose keys name some networks twice (sampling strategies' ``distinct`` option);
* ``shift_identities``: its layers can be identities shifted to the end (ViTAS's search).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional

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


def has_benchmark_table(name: str) -> bool:
    return is_backbone_space(name) and hasattr(BACKBONE_SPACES[name], "benchmark_entry")


def benchmark_entry(name: str, architecture: dict) -> Optional[dict]:
    """The benchmark table's record of ``architecture`` (None for a space without a table)."""
    return BACKBONE_SPACES[name].benchmark_entry(architecture) if has_benchmark_table(name) else None


def has_distinct_networks(name: str) -> bool:
    return is_backbone_space(name) and hasattr(BACKBONE_SPACES[name], "distinct_architectures")


def shifts_identities(name: str) -> bool:
    return is_backbone_space(name) and hasattr(BACKBONE_SPACES[name], "shift_identities")


def spaces_where(has: Callable[[str], bool]) -> list[str]:
    """The backbone spaces with a property (``spaces_where(has_benchmark_table)``), for an error line."""
    return [name for name in BACKBONE_SPACES if has(name)]


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


__all__ = ["BACKBONE_SPACES", "benchmark_entry", "build_backbone_space", "choice_kinds", "has_benchmark_table",
           "has_distinct_networks", "is_backbone_space", "shifts_identities", "space_options", "spaces_where"]
