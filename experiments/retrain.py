"""The retrain job: rebuild the architecture from its JSON with NNI's ``freeze``, train from scratch, evaluate."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from experiments import nni_compat  # noqa: F401

import pytorch_lightning as pl

from experiments.architecture import build_fixed
from experiments.common import (FORMAT_VERSION, build_data, build_module, build_monitor, build_trainer,
                                downstream_metrics, save_model_atomic, versions, write_json_atomic)
from experiments.checkpointing import claim_output_dir, claims_output_dir
from experiments.config import Config
from experiments.guards import FailureGuard

RESULTS_FILE = "retrain_results.json"
MODEL_FILE = "retrain_model.pt"


@claims_output_dir
def run_retrain(cfg: Config, record: dict, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                log_fn: Callable[[str], None] = print, source: str = "architecture", overwrite: bool = False) -> dict:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    network, architecture = build_fixed(record, cfg, source)
    framework = record["space"]["framework"]
    data = build_data(cfg)
    loader = data.loader(None, cfg)
    module = build_module(cfg, cfg.train.epochs, interleaved=False, framework=framework, augment=data.augment)
    module.set_model(network)
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, lambda r: log_fn(f"epoch {r['epoch']}: ssl_loss {r['ssl_loss']:.4f}  "
                                                 f"knn_top1 {r['knn_top1']:.3f}  collapse {r['collapse']:.3f}"))
    run = claim_output_dir(out, cfg, "retrain", (RESULTS_FILE, MODEL_FILE), overwrite=overwrite, log_fn=log_fn,
                           extra={"space": {k: record["space"][k] for k in ("framework", "head_space")},
                                  "architecture": architecture})
    guard = FailureGuard(monitor, cfg, "train")
    trainer = build_trainer(cfg, cfg.train.epochs, out, [monitor, guard, *run.callbacks(
        cfg, [loader.sampler], cfg.data.batch_size)])
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, **run.fit_kwargs())
    metrics = downstream_metrics(cfg, data, network)
    metrics["train_seconds"] = time.perf_counter() - start
    from search_spaces.backbone_spaces import is_backbone_space

    if is_backbone_space(str(record["space"].get("backbone", ""))):
        space = dict(record["space"])  # a searched backbone is retrained as it was searched
    else:
        space = dict(record["space"], backbone=cfg.model.backbone, backbone_width=cfg.model.backbone_width,
                     head_width=cfg.model.head_width)
    result = {"format_version": FORMAT_VERSION, "kind": "ssl_retrain", "space": space, "framework": framework,
              "architecture": architecture, "metrics": metrics, "history": monitor.history,
              "config": cfg.to_dict(), "versions": versions()}
    write_json_atomic(out / RESULTS_FILE, result)
    save_model_atomic(out / MODEL_FILE, {"space": space, "architecture": architecture,
                                         "state_dict": network.state_dict()})
    return result
