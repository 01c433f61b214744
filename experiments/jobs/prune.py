"""The prune job: a trained network's backbone made smaller to a FLOPs (or parameter) target, then fine-tuned.

``--method dagger`` learns one gate per filter from each layer's pretrained weights under the
framework's SSL loss and a cost penalty (``experiments.pruning.dagger``); ``l1``, ``fpgm`` and
``taylor`` (scored by the same SSL loss, over the same batches as DAGGER's gate epochs) are
NNI's pruners at the same target (``experiments.pruning.nni_pruners``). The chosen filters
are removed for real (``experiments.pruning.filter_groups``), the smaller network is fine-tuned under
the same SSL loss (unlabelled data) and evaluated (kNN, linear probe). ``prune_model.pt`` saves
and loads like every model file here (``evaluate --checkpoint``; ``prune`` again).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import pytorch_lightning as pl
import torch

from experiments.core.assembly import build_data, build_module, downstream_metrics
from experiments.core.run_dir import announce_on_claim, claim_output_dir, claims_output_dir, refuse_finished
from experiments.core.config import Config
from experiments.core.validation import load_config
from experiments.core.errors import ConfigError
from experiments.core.records import load_saved_model, new_record, write_results
from experiments.jobs.command import add_config_arguments
from experiments.jobs.retrain import fit_ssl
from experiments.pruning.dagger import DaggerModule, minimum_counts, select_filters, train_gates
from experiments.pruning.nni_pruners import NNI_PRUNERS, nni_keep, uniform_counts
from experiments.pruning.filter_groups import CostModel, channel_counts, find_groups, prune_filters

NAME = "prune"
HELP = ("remove filters of a trained backbone to a FLOPs or parameter target (DAGGER, or NNI's L1, FPGM, Taylor), "
        "fine-tune, evaluate")
RESULTS_FILE = "prune_results.json"
MODEL_FILE = "prune_model.pt"
METHODS = ("dagger", *NNI_PRUNERS)


def add_arguments(p) -> None:
    add_config_arguments(p, outputs=False)  # no --nni: a prune is not an nnictl trial
    p.add_argument("--output-dir", help="where results go (default: <output_dir>/prune-<method>-<target>)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of a finished prune")
    p.add_argument("--checkpoint", help="a model file: retrain_model.pt, search_model.pt, prune_model.pt")
    p.add_argument("--method", default="dagger", help=f"which filters go: {', '.join(METHODS)} (default dagger)")
    p.add_argument("--flops", type=float, help="keep this fraction of the backbone's FLOPs, in (0, 1)")
    p.add_argument("--params", type=float, help="or this fraction of its parameters, in (0, 1)")
    p.add_argument("--gate-epochs", type=int, default=10,
                   help="epochs of gate learning (dagger) or of Taylor scores (taylor); default 10")
    p.add_argument("--finetune-epochs", type=int, help="epochs of SSL fine-tuning (default: train.epochs)")
    p.add_argument("--penalty", type=float, default=5.0,
                   help="weight of the cost penalty in gate learning (dagger; default 5)")
    p.add_argument("--gate-lr", type=float, default=0.02, help="Adam's learning rate for the Dagger module")
    p.add_argument("--min-keep", type=float, default=0.0,
                   help="dagger: every filter group keeps at least this fraction of its filters (default 0: one)")


def check_arguments(args, cfg: Config) -> tuple[str, float, int]:
    """(quantity, target, fine-tuning epochs) after every check, or ``ConfigError`` (nothing is written yet)."""
    if not args.checkpoint:
        raise ConfigError("prune: --checkpoint is required (a model file such as retrain_model.pt)")
    if args.method not in METHODS:
        raise ConfigError(f"--method: {args.method!r} is not one of {', '.join(METHODS)}")
    if (args.flops is None) == (args.params is None):
        raise ConfigError("prune: give exactly one target, --flops F or --params P (a fraction to keep)")
    quantity, target = ("flops", args.flops) if args.flops is not None else ("params", args.params)
    if not (math.isfinite(target) and 0 < target < 1):
        raise ConfigError(f"--{quantity}: the fraction to keep must be in (0, 1), got {target:g}")
    epochs = cfg.train.epochs if args.finetune_epochs is None else args.finetune_epochs
    for flag, value in (("--gate-epochs", args.gate_epochs), ("--finetune-epochs", epochs)):
        if not 0 <= value <= 10_000:
            raise ConfigError(f"{flag}: must be from 0 to 10000, got {value}")
    for flag, value in (("--penalty", args.penalty), ("--gate-lr", args.gate_lr)):
        if not (math.isfinite(value) and 0 < value <= 1e4):
            raise ConfigError(f"{flag}: must be a positive number up to 1e4, got {value:g}")
    if not (math.isfinite(args.min_keep) and 0 <= args.min_keep < 1):
        raise ConfigError(f"--min-keep: the fraction every group keeps must be in [0, 1), got {args.min_keep:g}")
    return quantity, target, epochs


def run(args) -> int:
    from experiments.core.console import start_line, summary

    cfg = load_config(args.config, args.overrides)
    quantity, target, epochs = check_arguments(args, cfg)
    out = Path(args.output_dir or Path(cfg.output_dir) / f"prune-{args.method}-{quantity}{target:g}")
    refuse_finished(out, (RESULTS_FILE, MODEL_FILE), args.overwrite)
    with announce_on_claim(start_line("prune", cfg, out, architecture=args.checkpoint, epochs=epochs)):
        result = run_prune(cfg, args.checkpoint, out, args.method, target, quantity, epochs,
                           gate_epochs=args.gate_epochs, penalty=args.penalty, gate_lr=args.gate_lr,
                           min_keep=args.min_keep, overwrite=args.overwrite)
    summary(result, out / RESULTS_FILE)
    return 0


@claims_output_dir
def run_prune(cfg: Config, checkpoint: str | Path, out: Path, method: str, target: float, quantity: str = "flops",
              finetune_epochs: int = 0, gate_epochs: int = 10, penalty: float = 5.0, gate_lr: float = 0.02,
              min_keep: float = 0.0, overwrite: bool = False, log_fn: Callable[[str], None] = print) -> dict:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    network, payload = load_saved_model(checkpoint, cfg)
    framework = payload["space"]["framework"]
    if framework != cfg.framework:  # its views and loss would fine-tune one framework under another's
        raise ConfigError(f"{checkpoint} is a {framework} network but the config is for {cfg.framework}; use a "
                          f"{framework} config")
    backbone = network.backbone
    groups = find_groups(backbone)
    if not groups:
        raise ConfigError(f"{checkpoint}: its backbone has no prunable filters (ResNet blocks or inverted residuals)")
    data = build_data(cfg)
    loader = data.loader(None, cfg)
    cost = CostModel.build(backbone, groups, data.image_size)
    sizes = {g.name: g.size for g in groups}
    least = minimum_counts(sizes, min_keep if method == "dagger" else 0.0)
    floor = cost.cost(least, quantity) / cost.full[quantity]
    if target < floor:
        raise ConfigError(f"--{quantity}: {target:g} is below what pruning inner filters can reach here "
                          f"({floor:.3f}: the stem, shortcuts and block outputs stay whole"
                          f"{f', every group keeps {min_keep:g} of its filters' if min(least.values()) > 1 else ''})")
    before = {q: cost.full[q] for q in ("flops", "params")}
    run = claim_output_dir(out, cfg, "prune", (RESULTS_FILE, MODEL_FILE), overwrite=overwrite, log_fn=log_fn,
                           extra={"checkpoint": str(checkpoint), "method": method, "quantity": quantity,
                                  "target": target, "gate_epochs": gate_epochs, "penalty": penalty,
                                  "gate_lr": gate_lr, "min_keep": min_keep, "finetune_epochs": finetune_epochs})
    start = time.perf_counter()
    metrics_pretrained = downstream_metrics(cfg, data, network)
    history: list = []
    scale: Optional[dict] = None
    # the framework's SSL loss over the network: DAGGER's gates train under it, Taylor scores with it
    module = build_module(cfg, max(1, gate_epochs) if method == "dagger" else 1, interleaved=False,
                          framework=framework, augment=data.augment)
    module.set_model(network)
    if method == "dagger":
        dagger = DaggerModule(backbone, groups)
        history = train_gates(module, backbone, dagger, groups, cost, loader, gate_epochs, target, quantity,
                              penalty, gate_lr, log_fn)
        with torch.no_grad():
            gates = dagger(backbone)
        keep = select_filters(gates, cost, target, quantity, min_keep)
        scale = {name: gates[name][idx] for name, idx in keep.items()}
    else:
        keep = nni_keep(backbone, groups, uniform_counts(groups, cost, target, quantity), method, module, loader,
                        taylor_steps=max(1, gate_epochs) * len(loader))
    for branch in (backbone, getattr(network, "momentum_backbone", None)):
        if branch is not None:  # a momentum copy loses the same filters
            prune_filters(branch, groups, keep, scale)
    counts = channel_counts(backbone)
    after = {q: float(cost.cost(counts, q)) for q in ("flops", "params")}
    log_fn(f"pruned by {method}: {quantity} {after[quantity] / before[quantity]:.3f} of the original "
           f"(target {target:g}); fine-tuning {finetune_epochs} epochs")
    metrics_pruned = downstream_metrics(cfg, data, network)
    monitor_history: list = []
    if finetune_epochs > 0:
        monitor_history = fit_ssl(cfg, network, framework, data, loader, finetune_epochs, out, run,
                                  log_fn=log_fn).history
    metrics = downstream_metrics(cfg, data, network)
    metrics["seconds"] = time.perf_counter() - start
    pruning = {"method": method, "quantity": quantity, "target": target, "checkpoint": str(checkpoint),
               "before": before, "after": after, "ratio": {q: after[q] / before[q] for q in before},
               "channels": {name: [sizes[name], counts[name]] for name in sizes}, "gate_history": history,
               "gate_epochs": gate_epochs if method in ("dagger", "taylor") else 0, "finetune_epochs": finetune_epochs,
               "metrics_pretrained": metrics_pretrained, "metrics_before_finetune": metrics_pruned}
    result = new_record("ssl_prune", cfg, payload["space"], payload["architecture"], metrics, monitor_history,
                        pruning=pruning)
    write_results(out, result, RESULTS_FILE, network, MODEL_FILE, pruned=counts)
    return result


__all__ = ["METHODS", "run_prune"]
