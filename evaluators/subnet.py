"""Scoring a sub-network that inherits its weights from a supernet (SPOS's second stage).

A supernet's BatchNorm statistics mix every path it trained, so each sub-network first
recalibrates them on a few batches of training images (Guo et al., SPOS, 2020); it is then
scored on held-out images: kNN top-1 of its backbone features (SSL frameworks) or top-1 of
its classifier (the supervised objective).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from evaluators.downstream import extract_features, knn_accuracy


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, images: torch.Tensor, batches: int, batch_size: int) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on
    ``batches`` batches of ``images`` in train mode; leaves ``module`` in eval mode. Returns the
    number of BatchNorm layers reset (0: nothing to do)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    module.eval()
    if not norms or batches <= 0:
        return 0
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    device = next(module.parameters()).device
    module.train()
    try:
        for i in range(batches):
            chunk = images[i * batch_size:(i + 1) * batch_size]
            if len(chunk) < 2:
                break
            module(chunk.to(device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        module.eval()
    return len(norms)


class SubnetScorer:
    """``scorer(network) -> accuracy`` for a network with ``backbone`` (and ``projector``) attributes.

    ``calibration``: normalised training images for BatchNorm recalibration; ``bank``/``queries``:
    normalised labelled images (the kNN bank from the weight split, the queries held out).
    """

    def __init__(self, framework: str, calibration: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                 queries: torch.Tensor, query_labels: torch.Tensor, num_classes: int, *, k: int = 200,
                 temperature: float = 0.1, bn_batches: int = 4, batch_size: int = 128):
        from evaluators import FRAMEWORKS

        self.supervised = FRAMEWORKS[framework].heads.classifier  # scored by its classifier, not by kNN
        self.calibration, self.bank, self.bank_labels = calibration, bank, bank_labels
        self.queries, self.query_labels, self.num_classes = queries, query_labels, num_classes
        self.k, self.temperature, self.bn_batches, self.batch_size = k, temperature, bn_batches, batch_size

    def __call__(self, network: nn.Module) -> float:
        net = nn.Sequential(network.backbone, network.projector) if self.supervised else network.backbone
        recalibrate_batchnorm(net, self.calibration, self.bn_batches, self.batch_size)
        if self.supervised:
            logits = extract_features(net, self.queries)
            return (logits.argmax(1) == self.query_labels).float().mean().item()
        return knn_accuracy(extract_features(net, self.bank), self.bank_labels,
                            extract_features(net, self.queries), self.query_labels,
                            self.num_classes, self.k, self.temperature)

    @classmethod
    def from_splits(cls, framework: str, images: torch.Tensor, labels: torch.Tensor, weight_idx: torch.Tensor,
                    held_idx: torch.Tensor, num_classes: int, *, limit: Optional[int] = None, seed: int = 0,
                    **kwargs) -> "SubnetScorer":
        """Calibration and bank from the weight split, queries from the held-out split (at most ``limit`` each)."""
        g = torch.Generator().manual_seed(seed)
        w = weight_idx[torch.randperm(len(weight_idx), generator=g)]
        h = held_idx[torch.randperm(len(held_idx), generator=g)]
        if limit is not None:
            w, h = w[:limit], h[:limit]
        return cls(framework, images[w], images[w], labels[w], images[h], labels[h], num_classes, **kwargs)


__all__ = ["recalibrate_batchnorm", "SubnetScorer"]
