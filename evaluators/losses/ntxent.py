"""NT-Xent (SimCLR): cross-entropy over the cosine similarities of every view with every other view."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.distributed import gather_rows


class NTXentLoss(nn.Module):
    """Each view's positive is the other view of its image; every other view is a negative.

    Under DDP (``gather_distributed``, the default) the negatives are the views of every
    rank: this rank's ``2n`` views are the anchors, the ``2nW`` gathered views the keys, so
    the mean of the ranks' losses is the single-process loss on the concatenated batch
    (and, through ``evaluators.distributed``, so is DDP's averaged gradient).
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        keys1, local = gather_rows(z1, self.gather_distributed)  # local: this rank's images among all ranks'
        keys2, _ = gather_rows(z2, self.gather_distributed)
        total = keys1.shape[0]  # images over all ranks
        logits = torch.cat([z1, z2]) @ torch.cat([keys1, keys2]).t() / self.temperature
        own = torch.cat([local, local + total])  # each anchor's own column: not its positive nor a negative
        logits[torch.arange(2 * n, device=z1.device), own] = float("-inf")
        targets = torch.cat([local + total, local])
        return F.cross_entropy(logits, targets)
