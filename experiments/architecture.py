"""Architecture JSON: read, validate against its space, and rebuild the fixed network through NNI.

The JSON's ``architecture`` is NNI's exported choice dict (label -> value); ``space`` says
which space the labels belong to. Rebuilding uses ``ModelSpace.freeze``, never a parser
of our own, so what retrain trains is exactly what NNI would build.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from experiments import nni_compat  # noqa: F401

from experiments.config import Config, ConfigError
from search_spaces import SSLNetworkSpace

SPACE_KEYS = ("framework", "head_space")


def read_architecture(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"architecture file {str(p)!r} does not exist")
    try:
        record = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{p}: malformed architecture JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(record, dict) or not isinstance(record.get("architecture"), dict) \
            or not isinstance(record.get("space"), dict):
        raise ConfigError(f"{p}: not an architecture file: it needs an 'architecture' mapping and a 'space' mapping")
    for key in SPACE_KEYS:
        if not isinstance(record["space"].get(key), str):
            raise ConfigError(f"{p}: space.{key} is missing")
    return record


def space_for(record: dict, cfg: Config) -> SSLNetworkSpace:
    """The record's space (its framework and head space) at the config's backbone and widths.

    A searched backbone (its record names a backbone space) is rebuilt as it was searched: the
    record's backbone space, widths, options and classes, since its labels depend on them.
    """
    from evaluators import FRAMEWORKS
    from search_spaces.backbone_spaces import is_backbone_space

    space = record["space"]
    if space["framework"] not in FRAMEWORKS:
        raise ConfigError(f"architecture was made for framework {space['framework']!r}, which this package lacks")
    m = cfg.model
    backbone, backbone_width, head_width, options = m.backbone, m.backbone_width, m.head_width, {}
    if is_backbone_space(str(space.get("backbone", ""))):
        backbone, options = space["backbone"], dict(space.get("backbone_options") or {})
        backbone_width = float(space.get("backbone_width", 1.0))
        head_width = float(space.get("head_width", head_width))
    try:
        return SSLNetworkSpace(space["framework"], space["head_space"], backbone, backbone_width, 3,
                               head_width, tuple(space.get("mlp_widths", m.mlp_widths)),
                               tuple(space.get("mlp_depths", m.mlp_depths)), backbone_options=options,
                               num_classes=int(space.get("num_classes", 10)))
    except ValueError as err:
        raise ConfigError(f"architecture space: {err}") from None


def validate_choices(space: SSLNetworkSpace, architecture: dict[str, Any], source: str = "architecture") -> dict:
    """Every label of the space present, none extra, every value among its choices."""
    mutables = space.simplify()
    for label, value in architecture.items():
        if label not in mutables:
            close = difflib.get_close_matches(label, list(mutables), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: label {label!r} is not in the {space.head_space} space for "
                              f"{space.framework} (backbone {type(space.backbone).__name__}){hint}")
        values = list(mutables[label].values)
        if value not in values:
            raise ConfigError(f"{source}: {label} = {value!r} is not one of its choices {values}")
    missing = [label for label in mutables if label not in architecture]
    if missing:
        raise ConfigError(f"{source}: missing choice(s) for {', '.join(missing)}")
    return dict(architecture)


def build_fixed(record: dict, cfg: Config, source: str = "architecture"):
    """The fixed network of ``record`` via NNI's ``freeze``."""
    space = space_for(record, cfg)
    architecture = validate_choices(space, record["architecture"], source)
    return space.freeze(architecture), architecture
