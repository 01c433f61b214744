"""The retrain job: rebuild the architecture from its JSON with NNI's ``freeze``, train from scratch, evaluate."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytorch_lightning as pl

from experiments.core.assembly import build_data, build_module, build_monitor, build_trainer, downstream_metrics
from experiments.core.config import Config
from experiments.core.validation import load_config
from experiments.core.console import EpochPrinter, start_line, summary
from experiments.core.errors import ConfigError
from experiments.core.guards import FailureGuard
from experiments.core.records import build_fixed, new_record, read_architecture, write_results
from experiments.core.run_dir import announce_on_claim, claim_output_dir, claims_output_dir, global_rank, refuse_finished
from experiments.jobs.command import add_config_arguments
from search_spaces.backbone_spaces import is_backbone_space

NAME = "retrain"
HELP = "train an architecture JSON from scratch and evaluate it"
RESULTS_FILE = "retrain_results.json"
MODEL_FILE = "retrain_model.pt"


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--arch", help="architecture JSON (best_architecture.json or a shipped one); with --nni "
                                  "and no --arch the tuner's parameters are the architecture")


def run(args) -> int:
    if not args.arch:
        raise ConfigError("retrain: --arch is required (except with --nni, where the tuner gives the architecture)")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.output_dir or cfg.output_dir)
    refuse_finished(out, (RESULTS_FILE, MODEL_FILE), args.overwrite)
    record = read_architecture(args.arch)
    with announce_on_claim(start_line("retrain", cfg, out, architecture=args.arch)):
        result = run_retrain(cfg, record, out, source=args.arch, overwrite=args.overwrite)
    if result is not None:  # None: a DDP rank other than zero
        summary(result, out / RESULTS_FILE)
    return 0


@claims_output_dir
def run_retrain(cfg: Config, record: dict, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                log_fn: Callable[[str], None] = print, source: str = "architecture",
                overwrite: bool = False) -> Optional[dict]:
    """Train the architecture ``record`` from scratch into ``out``; returns the results record (None on a
    DDP rank other than zero, which writes nothing)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    network, architecture = build_fixed(record, cfg, source)
    framework = record["space"]["framework"]
    if framework != cfg.framework:  # its options and views would train one framework under another's settings
        raise ConfigError(f"{source} is a {framework} architecture but the config is for {cfg.framework}; use a "
                          f"{framework} config (or --set framework={framework} and that framework's options)")
    data = build_data(cfg)
    loader = data.loader(None, cfg)
    run = claim_output_dir(out, cfg, "retrain", (RESULTS_FILE, MODEL_FILE), overwrite=overwrite, log_fn=log_fn,
                           extra={"space": {k: record["space"][k] for k in ("framework", "head_space")},
                                  "architecture": architecture})
    start = time.perf_counter()
    monitor = fit_ssl(cfg, network, framework, data, loader, cfg.train.epochs, out, run, listeners, log_fn)
    if global_rank() != 0:
        # Under DDP every rank runs this job (``ddp`` relaunches the command): the others trained
        # along; only global rank zero, which holds the directory's lock, evaluates and writes.
        return None
    metrics = downstream_metrics(cfg, data, network)
    metrics["train_seconds"] = time.perf_counter() - start
    if is_backbone_space(str(record["space"].get("backbone", ""))):
        space = dict(record["space"])  # a searched backbone is retrained as it was searched
    else:
        space = dict(record["space"], backbone=cfg.model.backbone, backbone_width=cfg.model.backbone_width,
                     head_width=cfg.model.head_width)
    result = new_record("ssl_retrain", cfg, space, architecture, metrics, monitor.history)
    write_results(out, result, RESULTS_FILE, network, MODEL_FILE)
    return result


def fit_ssl(cfg: Config, network, framework: str, data, loader, epochs: int, out: Path, run,
            listeners: Sequence[Callable[[dict], None]] = (), log_fn: Callable[[str], None] = print):
    """Train ``network`` under ``framework``'s SSL loss for ``epochs`` in the claimed ``run``; returns the monitor.

    The retrain of an architecture and the fine-tuning of a pruned network (``prune``) share it.
    """
    module = build_module(cfg, epochs, interleaved=False, framework=framework, augment=data.augment)
    module.set_model(network)
    monitor = build_monitor(cfg, data, listeners)
    monitor.listeners.insert(0, EpochPrinter(log_fn))
    guard = FailureGuard(monitor, cfg, "train")
    trainer = build_trainer(cfg, epochs, out, [monitor, guard, *run.callbacks(cfg, [loader.sampler],
                                                                               cfg.data.batch_size)])
    trainer.fit(module, train_dataloaders=loader, **run.fit_kwargs())
    return monitor
