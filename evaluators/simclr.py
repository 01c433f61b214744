"""SimCLR (Chen et al., 2020): NT-Xent over the two views of every image in the batch."""
from __future__ import annotations

import torch

from evaluators.base import SSLFramework
from evaluators.losses import NTXentLoss


class SimCLR(SSLFramework):
    name = "simclr"
    defaults = {"temperature": 0.5}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = NTXentLoss(self.options["temperature"])

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        z = self.embed(torch.cat([x1, x2]), arch_step)
        z1, z2 = z.chunk(2)
        return self.criterion(z1, z2)
