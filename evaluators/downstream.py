"""Downstream accuracy of frozen features: weighted kNN and a linear probe; the collapse score.

kNN follows the protocol of InstDisc and the SSL libraries (lightly, solo-learn): cosine
similarity of L2-normalised features, the k nearest training features vote for their
class with weight exp(sim / T); k=200, T=0.1 by default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Encoder outputs for a float image tensor, in eval mode (restored afterwards)."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    try:
        out = [encoder(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_predict(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class predicted for each row of ``features`` by a weighted vote of its k nearest in ``bank``."""
    features = F.normalize(features.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    predictions = []
    for start in range(0, len(features), chunk):
        sim = features[start:start + chunk] @ bank.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = 200, temperature: float = 0.1) -> float:
    pred = knn_predict(test_features, train_features, train_labels, num_classes, k, temperature)
    return (pred == test_labels).float().mean().item()


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                          epochs: int = 100, lr: float = 0.1, weight_decay: float = 0.0,
                          batch_size: int = 256, seed: int = 0) -> float:
    """Top-1 of a linear classifier trained on frozen (standardised) features with SGD + cosine."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(xtr) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(xtr), generator=generator)
            for i in range(0, len(xtr), batch_size):
                idx = order[i:i + batch_size]
                loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return (head(xte).argmax(1) == test_labels).float().mean().item()


@torch.no_grad()
def collapse_score(embeddings: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings, times sqrt(d).

    SimSiam's collapse check: the std is about 1/sqrt(d) for a healthy, spread-out
    representation and goes to 0 when every input maps to the same point; scaled by
    sqrt(d) the score is about 1 when healthy and 0 when collapsed.
    """
    z = F.normalize(embeddings.float(), dim=1)
    return (z.std(dim=0).mean() * math.sqrt(z.shape[1])).item()
