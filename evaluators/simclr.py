"""SimCLR (Chen et al., 2020): NT-Xent over the two views of every image in the batch
(under DDP, the global batch: every rank's views are negatives, ``evaluators.distributed``)."""
from __future__ import annotations

import torch

from evaluators.base import SSLFramework
from evaluators.options import Option
from evaluators.losses import NTXentLoss
from search_spaces.heads import HeadDims, HeadSpec, NasiamLayout


class SimCLR(SSLFramework):
    name = "simclr"
    option_specs = {"temperature": Option(0.5, "[0.001, 100]", "a softmax temperature")}
    # 2048 -> 128 (the libraries' CIFAR head); NASiam: 6 searchable layers, the last to 128.
    heads = HeadSpec("simclr", HeadDims(projector_hidden=2048, projector_out=128),
                     NasiamLayout(projector=("to_out", 6, None)))

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = NTXentLoss(self.options["temperature"])

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        z = self.embed(torch.cat([x1, x2]), arch_step)
        z1, z2 = z.chunk(2)
        return self.criterion(z1, z2)
