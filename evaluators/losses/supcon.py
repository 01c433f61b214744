"""Supervised contrastive loss (Khosla et al., 2020; the form WCL uses) over explicit positive masks."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class SupConLoss(nn.Module):
    """For anchor ``i``, positives ``P(i)`` and the rows ``A(i)`` it is contrasted with:

    ``L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T) )``

    with ``s`` the cosine similarity of anchor and contrast rows. ``A(i)`` is every contrast
    row except those marked in ``exclude`` (an anchor itself, when anchors and contrast are
    the same rows); ``positives`` is a boolean (anchors x contrast) mask. The loss is the
    mean of ``L_i`` over the anchors with at least one positive.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature

    def forward(self, anchors: torch.Tensor, contrast: torch.Tensor, positives: torch.Tensor,
                exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = F.normalize(anchors, dim=1) @ F.normalize(contrast, dim=1).t() / self.temperature
        positives = positives.bool()
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
            positives = positives & ~exclude
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        count = positives.sum(dim=1)
        has_positive = count > 0
        if not has_positive.any():
            return logits.new_zeros(()) + 0.0 * anchors.sum()
        summed = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
        return -(summed[has_positive] / count[has_positive]).mean()
