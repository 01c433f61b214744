"""Symmetric negative cosine similarity (SimSiam, BYOL): the target branch gets no gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NegativeCosineSimilarity(nn.Module):
    """``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``; -1 when predictions match targets.

    BYOL's ``2 - 2 cos`` is the same loss up to an affine map (``2 + 2 * this``).
    """

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return -(F.cosine_similarity(p1, z2.detach(), dim=1).mean()
                 + F.cosine_similarity(p2, z1.detach(), dim=1).mean()) / 2
