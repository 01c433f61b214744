"""Architecture JSON: read, validate against its space, and rebuild the fixed network through NNI.

The JSON's ``architecture`` is NNI's exported choice dict (label -> value); ``space`` says
which space the labels belong to. Rebuilding uses ``ModelSpace.freeze``, never a parser
of our own, so what retrain trains is exactly what NNI would build.
"""
from __future__ import annotations

import difflib
import json
import math
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
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{p}: cannot read the architecture as text ({type(err).__name__})") from None
    except RecursionError:
        raise ConfigError(f"{p}: malformed architecture JSON (nested too deeply)") from None
    check_record(record, str(p))
    return record


def check_record(record: Any, source: str = "architecture") -> None:
    """The shape of an architecture record, before any space is built: one line per problem."""
    from experiments.common import FORMAT_VERSION

    if not isinstance(record, dict) or not isinstance(record.get("architecture"), dict) \
            or not isinstance(record.get("space"), dict):
        raise ConfigError(f"{source}: not an architecture file: it needs an 'architecture' mapping and a 'space' mapping")
    version = record.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{source}: format_version must be a positive integer, got {_show(version)}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{source}: made by a newer version of this package (format {version}; this one reads "
                          f"{FORMAT_VERSION})")
    space = record["space"]
    for key in SPACE_KEYS:
        if not isinstance(space.get(key), str):
            raise ConfigError(f"{source}: space.{key} is missing")
    if "framework" in record and record["framework"] != space["framework"]:
        raise ConfigError(f"{source}: framework {_show(record['framework'])} disagrees with space.framework "
                          f"{_show(space['framework'])}")
    for key, integer in (("mlp_widths", False), ("mlp_depths", True)):
        if key in space:
            values = space[key]
            ok = isinstance(values, list) and values and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                and (isinstance(v, int) or not integer) for v in values)
            if not ok:
                raise ConfigError(f"{source}: space.{key} must be a non-empty list of positive "
                                  f"{'integers' if integer else 'numbers'}, got {_show(values)}")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def space_for(record: dict, cfg: Config) -> SSLNetworkSpace:
    """The record's space (its framework and head space) at the config's backbone and widths.

    A searched backbone (its record names a backbone space) is rebuilt as it was searched: the
    record's backbone space, widths, options and classes, since its labels depend on them.
    """
    from evaluators import FRAMEWORKS
    from search_spaces.backbone_spaces import is_backbone_space

    from search_spaces.network import HEAD_SPACES

    check_record(record)
    space = record["space"]
    if space["framework"] not in FRAMEWORKS:
        raise ConfigError(f"architecture was made for framework {_show(space['framework'])}, which this package "
                          f"lacks (it has {', '.join(sorted(FRAMEWORKS))})")
    if space["head_space"] not in HEAD_SPACES:
        raise ConfigError(f"architecture was made for head space {_show(space['head_space'])}, which this package "
                          f"lacks (it has {', '.join(HEAD_SPACES)})")
    m = cfg.model
    widths = space.get("mlp_widths", m.mlp_widths)
    depths = space.get("mlp_depths", m.mlp_depths)
    if space["head_space"] == "mlp" and (max(widths) > 16 or max(depths) > 16):
        raise ConfigError(f"architecture space: mlp_widths {_show(widths)} / mlp_depths {_show(depths)} are beyond "
                          f"what this package builds (16)")
    backbone, backbone_width, head_width, options = m.backbone, m.backbone_width, m.head_width, {}
    if is_backbone_space(str(space.get("backbone", ""))):
        backbone, options = space["backbone"], dict(space.get("backbone_options") or {})
        backbone_width = float(space.get("backbone_width", 1.0))
        head_width = float(space.get("head_width", head_width))
    try:
        return SSLNetworkSpace(space["framework"], space["head_space"], backbone, backbone_width, 3,
                               head_width, tuple(widths), tuple(depths), backbone_options=options,
                               num_classes=int(space.get("num_classes", 10)))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"architecture space: {' '.join(str(err).split())}") from None


def validate_choices(space: SSLNetworkSpace, architecture: dict[str, Any], source: str = "architecture") -> dict:
    """Every label of the space present, none extra, every value among its choices."""
    mutables = space.simplify()
    for label, value in architecture.items():
        if label not in mutables:
            heads = {str(known).split(".")[0] for known in mutables}
            close = difflib.get_close_matches(str(label)[:100], list(mutables), n=1)
            if str(label).split(".")[0] not in heads or not close:  # e.g. a predictor where the space has none
                hint = "; was the architecture made for another framework or head space?"
            else:
                hint = f"; did you mean {close[0]!r}?"
            raise ConfigError(f"{source}: label {_show(label)} is not in the {space.head_space} space for "
                              f"{space.framework}{hint}")
        values = list(mutables[label].values)
        # The same type too: JSON's true is 1 to Python, and 2.0 == 2, but neither builds a layer.
        if not any(type(value) is type(v) and value == v for v in values):
            raise ConfigError(f"{source}: {label} = {_show(value)} is not one of its choices {values}")
    missing = [label for label in mutables if label not in architecture]
    if missing:
        raise ConfigError(f"{source}: missing choice(s) for {', '.join(missing)}")
    return dict(architecture)


def build_fixed(record: dict, cfg: Config, source: str = "architecture"):
    """The fixed network of ``record`` via NNI's ``freeze``."""
    space = space_for(record, cfg)
    architecture = validate_choices(space, record["architecture"], source)
    return space.freeze(architecture), architecture
