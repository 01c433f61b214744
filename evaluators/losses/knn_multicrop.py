"""WCL's K-nearest-neighbour multi-crop: the low-resolution crops nearest their image become extra positives."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.distributed import gather_rows
from evaluators.losses.supcon import SupConLoss


class KNNMultiCropLoss(nn.Module):
    """SupCon with an image's K nearest low-resolution crops as anchors and its two views as positives.

    Multi-crop (SwAV) adds small, low-resolution crops as positives, but a small crop may
    show only background. WCL keeps, for each image, the K crops whose embeddings are
    nearest the image's high-resolution views (cosine to the mean of the two normalised
    view embeddings, no gradient). Each kept crop is an anchor whose positives are the two
    high-resolution views of its image and whose contrast set is every high-resolution view
    in the batch. With K >= the number of crops every crop is kept (plain multi-crop).

    Under DDP (``gather_distributed``, the default) the contrast set is every rank's
    high-resolution views; the crops stay with their rank (each is an anchor only there), so
    the mean of the ranks' losses is the single-process loss on the concatenated batch.
    """

    def __init__(self, k: int, temperature: float = 0.1, gather_distributed: bool = True):
        super().__init__()
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.supcon = SupConLoss(temperature)
        self.gather_distributed = gather_distributed

    @torch.no_grad()
    def select(self, z1: torch.Tensor, z2: torch.Tensor, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Indices (N x K') of each image's nearest crops, K' = min(K, number of crops)."""
        center = F.normalize(F.normalize(z1, dim=1) + F.normalize(z2, dim=1), dim=1)
        stacked = F.normalize(torch.stack(list(crops), dim=1), dim=2)  # N x C x D
        similarity = (stacked * center[:, None, :]).sum(dim=2)  # N x C
        return similarity.topk(min(self.k, len(crops)), dim=1).indices

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        chosen = self.select(z1, z2, crops)  # N x K'
        stacked = torch.stack(list(crops), dim=1)  # N x C x D
        anchors = stacked.gather(1, chosen[:, :, None].expand(-1, -1, stacked.shape[2])).reshape(-1, stacked.shape[2])
        all1, local = gather_rows(z1, self.gather_distributed)  # local: this rank's images among all ranks'
        all2, _ = gather_rows(z2, self.gather_distributed)
        anchor_image = local.repeat_interleave(chosen.shape[1])
        contrast_image = torch.arange(all1.shape[0], device=z1.device).repeat(2)
        positives = anchor_image[:, None] == contrast_image[None, :]
        return self.supcon(anchors, torch.cat([all1, all2]), positives)
