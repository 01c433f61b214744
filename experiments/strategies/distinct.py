"""Distinct-network sampling, an option of the sampling strategies (SPOS, MCT-NAS).

NAS-Bench-Macro's 6561 keys are 3969 networks: an identity after a stage's first layer only
moves (``canonical_key``), so drawing keys uniformly trains the networks with identities more
often than others (``10110110``'s network is 4 keys, ``11111111``'s 1). With
``distinct`` a strategy draws one canonical key uniformly: every network as often as every other.
A backbone space offers it by declaring ``distinct_architectures`` (``search_spaces/backbone_spaces.py``).
"""
from __future__ import annotations

from typing import Any, Mapping

from evaluators.options import Option
from experiments.core.errors import ConfigError

DISTINCT_OPTION = Option(False, why="draw each distinct network (NAS-Bench-Macro canonical key) equally often")


def check_distinct(cfg, strategy: str, settings: Mapping[str, Any]) -> None:
    """Distinct networks are known for the spaces that declare them (NAS-Bench-Macro: its identity rule)."""
    from search_spaces.backbone_spaces import has_distinct_networks, spaces_where

    if settings.get("distinct") and not has_distinct_networks(cfg.model.backbone):
        raise ConfigError(f"backbone_search.strategy_options.distinct: {strategy} samples distinct networks of "
                          f"{', '.join(spaces_where(has_distinct_networks))} only, not of {cfg.model.backbone}")


def distinct_architectures(space: str, prefix: str = "backbone") -> list[dict]:
    """One architecture per distinct network of the backbone space ``space``."""
    from search_spaces.backbone_spaces import BACKBONE_SPACES

    return BACKBONE_SPACES[space].distinct_architectures(prefix)


def canonical_architecture(architecture: Mapping[str, Any], prefix: str = "backbone") -> dict:
    """The representative of ``architecture``'s network (its canonical key); other labels kept."""
    from search_spaces.nas_bench_macro import arch_to_key, canonical_key, key_to_arch

    return {**architecture, **key_to_arch(canonical_key(arch_to_key(architecture, prefix)), prefix)}
