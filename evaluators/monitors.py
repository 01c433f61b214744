"""Epoch-level monitors as a Lightning callback: online kNN, collapse score, architecture weights.

DARTS never calls ``validation_step``, so everything per-epoch lives here. Each epoch's
record goes to the logger, to ``history`` and to any listener (the nnictl trial reporter).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from pytorch_lightning import Callback
from torch import nn

from evaluators.downstream import collapse_score, extract_features, knn_accuracy
from search_spaces.supernet import architecture_probabilities


class EvaluationSet:
    """Normalised labelled images: a kNN bank (train) and a test set."""

    def __init__(self, bank: torch.Tensor, bank_labels: torch.Tensor, test: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int):
        self.bank, self.bank_labels = bank, bank_labels
        self.test, self.test_labels = test, test_labels
        self.num_classes = num_classes

    def knn(self, encoder: nn.Module, k: int = 200, temperature: float = 0.1) -> float:
        return knn_accuracy(extract_features(encoder, self.bank), self.bank_labels,
                            extract_features(encoder, self.test), self.test_labels,
                            self.num_classes, k, temperature)


class SSLMonitor(Callback):
    """Every ``every_n_epochs``: kNN top-1 of the backbone, collapse score of the projector output."""

    def __init__(self, evaluation: EvaluationSet, k: int = 200, temperature: float = 0.1,
                 every_n_epochs: int = 1, listeners: Sequence[Callable[[dict], None]] = ()):
        self.evaluation = evaluation
        self.k, self.temperature, self.every_n_epochs = k, temperature, max(1, every_n_epochs)
        self.listeners = list(listeners)
        self.history: list[dict] = []
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start = time.perf_counter()

    def state_dict(self) -> dict:  # in every checkpoint: a resumed run keeps the epochs it already had
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        seconds = time.perf_counter() - self._epoch_start
        net = pl_module.model  # NNI's one-shot wrapper gives its training module's network too
        knn = self.evaluation.knn(net.backbone, self.k, self.temperature)
        z = extract_features(nn.Sequential(net.backbone, net.projector), self.evaluation.test[:1024])
        loss = trainer.callback_metrics.get("train/ssl_loss")
        record = {
            "epoch": epoch + 1,
            "knn_top1": knn,
            "collapse": collapse_score(z),
            "ssl_loss": float(loss) if loss is not None else None,
            "epoch_seconds": seconds,
            "architecture": architecture_probabilities(net),
        }
        self.history.append(record)
        pl_module.log_dict({"monitor/knn_top1": knn, "monitor/collapse": record["collapse"]})
        for listener in self.listeners:
            listener(record)
