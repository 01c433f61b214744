"""The architecture record: the one owner of its format, its writer, its reader and its checks.

Every job writes one (``best_architecture.json`` of a search, ``retrain_results.json``) and a
model file with the same ``space`` and ``architecture`` beside it. The JSON's ``architecture``
is NNI's exported choice dict (label -> value); ``space`` says which space the labels belong
to. Rebuilding uses ``ModelSpace.freeze``, never a parser of our own, so what retrain trains
is exactly what NNI would build.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from experiments.core.config import MAX_WIDTH, Config
from experiments.core.validation import config_from_dict
from experiments.core.errors import ConfigError, existing_file
from experiments.core.files import atomic_torch_save, write_json_atomic
from evaluators import FRAMEWORKS
from search_spaces.backbone_spaces import is_backbone_space
from search_spaces.cost import exported_values
from experiments.pruning.filter_groups import shrink_to
from search_spaces.head_spaces import HEAD_SPACES
from search_spaces.network import SSLNetworkSpace

#: the record's format; a reader refuses a newer one
FORMAT_VERSION = 1

SPACE_KEYS = ("framework", "head_space")
MAX_CLASSES = 100_000


def read_architecture(path: str | Path) -> dict:
    p = existing_file(path, "architecture file")
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
    for key in ("backbone_width", "head_width"):  # the bounds a config's widths have (a huge one fills the memory)
        if key in space and not (_positive_number(space[key]) and space[key] <= MAX_WIDTH):
            raise ConfigError(f"{source}: space.{key} must be a number in (0, {MAX_WIDTH:g}], got {_show(space[key])}")
    classes = space.get("num_classes", 1)
    if not (_positive_number(classes) and isinstance(classes, int) and classes <= MAX_CLASSES):
        raise ConfigError(f"{source}: space.num_classes must be an integer from 1 to {MAX_CLASSES}, got "
                          f"{_show(classes)}")
    if "backbone" in space and not isinstance(space["backbone"], str):
        raise ConfigError(f"{source}: space.backbone must be a backbone name, got {_show(space['backbone'])}")
    options = space.get("backbone_options")
    if options is not None and not (isinstance(options, dict) and all(isinstance(k, str) for k in options)):
        raise ConfigError(f"{source}: space.backbone_options must be a mapping of option names to values, got "
                          f"{_show(options)}")


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_backbone_space(space: dict, cfg: Config, source: str = "architecture") -> None:
    """A config for a backbone space takes architectures of that space only: another space's (a ViT under a
    ``nas_bench_macro`` config) would train under the other space's settings, and its record would name the
    wrong backbone. (A searched backbone under a config of a fixed ResNet is rebuilt as it was searched.)"""
    theirs, ours = str(space.get("backbone") or ""), cfg.model.backbone
    if not is_backbone_space(ours) or theirs == ours:
        return
    if is_backbone_space(theirs):
        what, use = f"an architecture of the {theirs} backbone space", f"a config for the {theirs} space"
    else:
        what = f"an architecture of {_show(space.get('head_space'))} heads on a fixed " \
               f"{_show(theirs) if theirs else 'ResNet'} backbone, not of a backbone space"
        use = "a config with a fixed backbone"
    raise ConfigError(f"{source} is {what}, but the config is for the {ours} backbone space (model.backbone); "
                      f"use {use} (the one that made it)")


def space_for(record: dict, cfg: Config, source: str = "architecture") -> SSLNetworkSpace:
    """The record's space (its framework and head space) at the config's backbone and widths.

    A searched backbone (its record names a backbone space) is rebuilt as it was searched: the
    record's backbone space, widths, options and classes, since its labels depend on them.
    """
    check_record(record, source)
    space = record["space"]
    check_backbone_space(space, cfg, source)
    if space["framework"] not in FRAMEWORKS:
        raise ConfigError(f"architecture was made for framework {_show(space['framework'])}, which this package "
                          f"lacks (it has {', '.join(sorted(FRAMEWORKS))})")
    if space["head_space"] not in HEAD_SPACES:
        raise ConfigError(f"architecture was made for head space {_show(space['head_space'])}, which this package "
                          f"lacks (it has {', '.join(HEAD_SPACES)})")
    m = cfg.model
    widths = space.get("mlp_widths", m.mlp_widths)
    depths = space.get("mlp_depths", m.mlp_depths)
    if HEAD_SPACES[space["head_space"]].width_factors and (max(widths) > 16 or max(depths) > 16):
        raise ConfigError(f"architecture space: mlp_widths {_show(widths)} / mlp_depths {_show(depths)} are beyond "
                          f"what this package builds (16)")
    backbone, backbone_width, head_width, options = m.backbone, m.backbone_width, m.head_width, {}
    try:
        if is_backbone_space(str(space.get("backbone", ""))):
            backbone, options = space["backbone"], dict(space.get("backbone_options") or {})
            backbone_width = float(space.get("backbone_width", 1.0))
            head_width = float(space.get("head_width", head_width))
        return SSLNetworkSpace(FRAMEWORKS[space["framework"]].heads, space["head_space"], backbone, backbone_width, 3,
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
        values = exported_values(mutables[label])  # a cell's input: a list of predecessors
        # The same type too: JSON's true is 1 to Python, and 2.0 == 2, but neither builds a layer.
        if not any(_same(value, v) for v in values):
            raise ConfigError(f"{source}: {label} = {_show(value)} is not one of its choices {values}")
    missing = [label for label in mutables if label not in architecture]
    if missing:
        raise ConfigError(f"{source}: missing choice(s) for {', '.join(missing)}")
    return dict(architecture)


def _same(value, choice) -> bool:
    if isinstance(choice, list):
        return isinstance(value, list) and len(value) == len(choice) and all(map(_same, value, choice))
    return type(value) is type(choice) and value == choice


def build_fixed(record: dict, cfg: Config, source: str = "architecture"):
    """The fixed network of ``record`` via NNI's ``freeze``."""
    space = space_for(record, cfg, source)
    architecture = validate_choices(space, record["architecture"], source)
    return space.freeze(architecture), architecture


# --- writing ---------------------------------------------------------------------------------------
def versions() -> dict:
    """The package versions and machine a result came from."""
    import nni
    import pytorch_lightning
    import torchvision

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "nni": nni.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_count": os.cpu_count()}


def space_record(cfg: Config, framework: Optional[str] = None, head_space: Optional[str] = None,
                 num_classes: int = 10) -> dict:
    """What ``space_for`` needs to rebuild the space a record's labels belong to."""
    m = cfg.model
    return {"framework": framework or cfg.framework, "head_space": head_space or m.head_space,
            "backbone": m.backbone, "backbone_width": m.backbone_width, "backbone_options": dict(m.backbone_options),
            "head_width": m.head_width, "mlp_widths": list(m.mlp_widths), "mlp_depths": list(m.mlp_depths),
            "num_classes": num_classes}


def dataset_record(cfg: Config, data: Any) -> dict:
    return {"name": cfg.data.dataset, "root": cfg.data.root, "train_images": len(data.train),
            "test_images": len(data.test), "image_size": data.image_size}


def new_record(kind: str, cfg: Config, space: dict, architecture: dict, metrics: dict, history: list,
               **fields: Any) -> dict:
    """A record of ``kind`` (``ssl_head_search``, ``backbone_search``, ``ssl_retrain``); ``fields`` are the job's own."""
    return {"format_version": FORMAT_VERSION, "kind": kind, "space": space, "framework": space["framework"],
            "architecture": architecture, **fields, "metrics": metrics, "history": history,
            "config": cfg.to_dict(), "versions": versions()}


def write_results(out: Path, record: dict, record_file: str, network: torch.nn.Module, model_file: str,
                  pruned: Optional[dict] = None) -> None:
    """The record as JSON and the network as a model file that ``evaluate`` and ``load_saved_model`` read.

    ``pruned`` (a pruned network's channels per filter group of its backbone) rebuilds its smaller layers.
    """
    write_json_atomic(out / record_file, record)
    payload = {"space": record["space"], "architecture": record["architecture"], "state_dict": network.state_dict()}
    if pruned is not None:
        payload["pruned"] = dict(pruned)
    atomic_torch_save(payload, out / model_file)


# --- reading a model file ----------------------------------------------------------------------------
def shrink_backbones(network: torch.nn.Module, pruned: Any, source: str) -> None:
    """A pruned model file's filter counts applied to the freshly built backbone (and its momentum copy)."""
    if not isinstance(pruned, dict):
        raise ConfigError(f"{source}: 'pruned' must map filter groups to channel counts")
    for name in ("backbone", "momentum_backbone"):
        if hasattr(network, name):
            try:
                shrink_to(getattr(network, name), pruned)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{source}: the pruned channels do not fit the network: {err}") from None


def load_saved_model(path: str | Path, cfg: Config):
    p = existing_file(path, "checkpoint")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ConfigError(f"{p}: not a model file of this package ({type(err).__name__})") from None
    if not isinstance(payload, dict) or not {"space", "architecture", "state_dict"} <= set(payload):
        raise ConfigError(f"{p}: not a model file of this package (needs space, architecture, state_dict)")
    space = payload["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"{p}: not a model file of this package (its space is not a mapping)")
    check_backbone_space(space, cfg, str(p))
    saved = {key: space[key] for key in ("backbone", "backbone_width", "head_width") if key in space}
    try:  # the saved sizes pass the same checks as a config's
        checked = config_from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], **saved}}).model
    except ConfigError as err:
        raise ConfigError(f"{p}: the saved network does not fit this package: {err}") from None
    for key in saved:
        setattr(cfg.model, key, getattr(checked, key))
    network, _ = build_fixed({"space": space, "architecture": payload["architecture"]}, cfg, str(p))
    if payload.get("pruned") is not None:
        shrink_backbones(network, payload["pruned"], str(p))
    try:
        network.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        detail = detail if len(detail) <= 240 else detail[:237] + "..."
        raise ConfigError(f"{p}: weights do not fit the architecture (a checkpoint of another network?): "
                          f"{detail}") from None
    return network, payload
