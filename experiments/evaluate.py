"""The evaluate job: kNN and linear accuracy of a saved model (``search_model.pt`` or ``retrain_model.pt``)."""
from __future__ import annotations

from pathlib import Path

from experiments import nni_compat  # noqa: F401

import torch

from experiments.architecture import build_fixed
from experiments.common import build_data, downstream_metrics
from experiments.config import Config, ConfigError, config_from_dict


def load_saved_model(path: str | Path, cfg: Config):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(p)!r} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ConfigError(f"{p}: not a model file of this package ({type(err).__name__})") from None
    if not isinstance(payload, dict) or not {"space", "architecture", "state_dict"} <= set(payload):
        raise ConfigError(f"{p}: not a model file of this package (needs space, architecture, state_dict)")
    space = payload["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"{p}: not a model file of this package (its space is not a mapping)")
    saved = {key: space[key] for key in ("backbone", "backbone_width", "head_width") if key in space}
    try:  # the saved sizes pass the same checks as a config's
        checked = config_from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], **saved}}).model
    except ConfigError as err:
        raise ConfigError(f"{p}: the saved network does not fit this package: {err}") from None
    for key in saved:
        setattr(cfg.model, key, getattr(checked, key))
    network, _ = build_fixed({"space": space, "architecture": payload["architecture"]}, cfg, str(p))
    try:
        network.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        detail = detail if len(detail) <= 240 else detail[:237] + "..."
        raise ConfigError(f"{p}: weights do not fit the architecture (a checkpoint of another network?): "
                          f"{detail}") from None
    return network, payload


def run_evaluate(cfg: Config, checkpoint: str | Path) -> dict:
    network, payload = load_saved_model(checkpoint, cfg)
    data = build_data(cfg)
    return {"checkpoint": str(checkpoint), "framework": payload["space"]["framework"],
            "architecture": payload["architecture"], "metrics": downstream_metrics(cfg, data, network)}
