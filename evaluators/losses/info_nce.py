"""InfoNCE against a queue of negative keys (MoCo v2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QueueInfoNCELoss(nn.Module):
    """``-log exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.n_j/T))`` with ``n_j`` from the queue.

    ``q`` and ``k`` are L2-normalised here; ``queue`` rows are already normalised keys.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=1)
        k = F.normalize(k.detach(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negatives = q @ queue.detach().t()
        logits = torch.cat([positive, negatives], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
