"""The evaluate job: kNN and linear accuracy of a saved model (``search_model.pt`` or ``retrain_model.pt``)."""
from __future__ import annotations

import json
from pathlib import Path

from experiments.core.assembly import build_data, downstream_metrics
from experiments.core.config import Config
from experiments.core.validation import load_config
from experiments.core.records import load_saved_model
from experiments.jobs.command import add_config_arguments

NAME = "evaluate"
HELP = "kNN and linear accuracy of a saved model"


def add_arguments(p) -> None:
    add_config_arguments(p, outputs=False)
    p.add_argument("--checkpoint", required=True, help="search_model.pt or retrain_model.pt")


def run(args) -> int:
    print(json.dumps(run_evaluate(load_config(args.config, args.overrides), args.checkpoint), indent=2))
    return 0


def run_evaluate(cfg: Config, checkpoint: str | Path) -> dict:
    network, payload = load_saved_model(checkpoint, cfg)
    data = build_data(cfg)
    return {"checkpoint": str(checkpoint), "framework": payload["space"]["framework"],
            "architecture": payload["architecture"], "metrics": downstream_metrics(cfg, data, network)}
