"""Failures reported, not hidden: a run that can no longer produce a useful result stops.

``FailureGuard`` is a Lightning callback that ends the run with ``RunFailed`` (one line that
names the cause, the epoch and the batch) when

- a loss is NaN or infinite (``train/ssl_loss``, or ``search/arch_loss`` in a search), or
- the representation collapsed: the monitor's collapse score of an epoch (about 1 when
  healthy, 0 when every image maps to one point; see ``evaluators.downstream.collapse_score``)
  stays below the config's threshold (``search.collapse_threshold`` / ``train.collapse_threshold``;
  0 turns the check off) for ``evaluation.collapse_patience`` monitored epochs in a row.

The CLI turns ``RunFailed`` into an ``error:`` line and exit status 3, so a trial under
nnictl ends FAILED; ``status.json`` in the output directory keeps the reason. No checkpoint
is written for the failed epoch: the last good one stays.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from pytorch_lightning import Callback

from experiments.core.errors import NonFiniteLoss, RepresentationCollapsed

LOSS_METRICS = ("train/ssl_loss", "search/arch_loss")
#: what to change when a loss diverges: the settings the section's job reads (retrain has no clipping)
DIVERGENCE_HINTS = {"search": "lower optim.lr or search.arch_lr, or set search.gradient_clip",
                    "train": "lower optim.lr or raise optim.warmup_epochs; retrain reads optim.* and train.*, "
                             "not search.*"}


def _scalar(value: Any) -> Optional[float]:
    if isinstance(value, dict):
        value = value.get("loss")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().float().cpu())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class FailureGuard(Callback):
    """Stops the run on a non-finite loss (every batch) or a collapsed representation (monitored epochs).

    ``section`` is the config section whose ``collapse_threshold`` applies (``search`` or
    ``train``); ``evaluation.collapse_patience`` monitored epochs in a row must fall below it.
    A fresh network often starts below the threshold and spreads out within an epoch or two,
    which is why one low epoch is not enough.
    """

    def __init__(self, monitor: Any, cfg: Any, section: str, metrics: Sequence[str] = LOSS_METRICS):
        self.monitor = monitor
        self.collapse_threshold = float(getattr(cfg, section).collapse_threshold)
        self.patience = int(cfg.evaluation.collapse_patience)
        self.section = section
        self.threshold_name = f"{section}.collapse_threshold"
        self.metrics = tuple(metrics)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = {name: _scalar(trainer.callback_metrics.get(name)) for name in self.metrics}
        step_loss = _scalar(outputs)  # what training_step returned: the weight step's loss
        if step_loss is not None and not math.isfinite(step_loss):
            values[self.metrics[0]] = step_loss
        for name, value in values.items():
            if value is not None and not math.isfinite(value):
                raise NonFiniteLoss(f"{name} is {value} at epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}: "
                                    f"training diverged ({DIVERGENCE_HINTS[self.section]})")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None or self.collapse_threshold <= 0 or not self.monitor.history:
            return
        if self.monitor.history[-1].get("epoch") != trainer.current_epoch + 1:  # not a monitored epoch
            return
        recent = [r.get("collapse") for r in self.monitor.history[-self.patience:]]
        if len(recent) < self.patience or any(s is None for s in recent):
            return
        if all(not math.isfinite(s) or s < self.collapse_threshold for s in recent):
            scores = ", ".join(f"{s:.4f}" for s in recent)
            raise RepresentationCollapsed(
                f"the representation collapsed: collapse score {scores} in the last {self.patience} monitored "
                f"epoch(s) up to epoch {trainer.current_epoch + 1}, below {self.threshold_name} "
                f"{self.collapse_threshold} (healthy is about 1); the run stops here")
