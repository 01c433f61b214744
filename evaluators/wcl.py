"""WCL (Zheng et al., ICCV 2021): weakly supervised contrastive learning.

Two projection heads on one backbone. The first does instance discrimination (NT-Xent over
the two views); the second links every embedding to its nearest neighbour in the batch,
takes the graph's connected components as weak labels and applies a supervised contrastive
loss with them (one view's labels supervise the other view). K-NN multi-crop adds small,
low-resolution crops: the K crops of each image nearest its two views are extra positives
of the first head. Loss: NT-Xent + weak-label SupCon + multi-crop SupCon, temperature 0.1.
Under DDP every term uses every rank's embeddings (``evaluators.distributed``): NT-Xent's
negatives, the weak-label graph and its contrast set, and the multi-crop term's contrast set,
so two processes compute the single-process loss of the concatenated batch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from evaluators.base import SSLFramework
from evaluators.options import Option
from evaluators.losses import KNNMultiCropLoss, NTXentLoss, WeakLabelSupConLoss
from evaluators.views import AugmentSettings, ssl_view
from search_spaces.heads import HeadDims, HeadSpec, NasiamLayout


def low_res_crop(size: int) -> tuple[int, tuple[float, float]]:
    """Side and area range of the low-resolution crops for images of side ``size``.

    ImageNet-size images (96 px and up) follow SwAV and WCL: 96/224 of the side, 5-14% of
    the area. Smaller images (no published recipe; ours): half the side, at least 4 px,
    14-50% of the area.
    """
    if size >= 96:
        return max(4, round(size * 96 / 224)), (0.05, 0.14)
    return max(4, round(size / 2)), (0.14, 0.5)


class WCL(SSLFramework):
    name = "wcl"
    option_specs = {"temperature": Option(0.1, "[0.001, 100]", "a softmax temperature"),
                    "multi_crop": Option(True),
                    "low_res_crops": Option(6, "[1, 64]"),
                    "knn_crops": Option(3, "[1, 64]")}
    # The paper's two identical heads: two 2048-wide hidden blocks -> 128. NASiam (ours): both
    # heads are SimCLR-shaped (NT-Xent) and take SimCLR's layout, the second as ``projector2.*``.
    heads = HeadSpec("wcl", HeadDims(projector_hidden=2048, projector_out=128, projector_hidden_layers=2),
                     NasiamLayout(projector=("to_out", 6, None), projector2=("to_out", 6, None)),
                     second_projector=True)
    batched_views = False  # low-resolution crops beside the two views

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        o = self.options
        self.instance_loss = NTXentLoss(o["temperature"])
        self.graph_loss = WeakLabelSupConLoss(o["temperature"])
        self.crop_loss = KNNMultiCropLoss(int(o["knn_crops"]), o["temperature"])

    @classmethod
    def view_sides(cls, size: int, options: Optional[dict] = None) -> tuple[int, ...]:
        o = {**cls.defaults, **(options or {})}
        return (size, low_res_crop(size)[0]) if o["multi_crop"] else (size,)

    @classmethod
    def view_transforms(cls, settings: AugmentSettings, size: int, mean, std, options: Optional[dict] = None):
        """Two full-size views, then ``low_res_crops`` low-resolution crops when ``multi_crop`` is on."""
        o = {**cls.defaults, **(options or {})}
        views = [ssl_view(settings, size, mean, std), ssl_view(settings, size, mean, std)]
        if o["multi_crop"]:
            side, (low, high) = low_res_crop(size)
            crop = ssl_view(dataclasses.replace(settings, crop_min_scale=low), side, mean, std, crop_max_scale=high)
            views += [crop] * int(o["low_res_crops"])
        return views

    @property
    def projector2(self) -> torch.nn.Module:
        return self.model.projector2

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        features = self.encode(torch.cat([x1, x2]), arch_step)
        z1, z2 = self.projector(features).chunk(2)
        g1, g2 = self.projector2(features).chunk(2)
        loss = self.instance_loss(z1, z2) + self.graph_loss(g1, g2)
        crops = views[2:]
        if crops:
            z_crops = self.projector(self.encode(torch.cat(crops), arch_step)).chunk(len(crops))
            loss = loss + self.crop_loss(z1, z2, z_crops)
        return loss
