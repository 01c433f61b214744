"""MoCo v2 (Chen et al., 2020): momentum key encoder and a queue of negative keys.

The symmetric loss of the SSL libraries' CIFAR recipe; the EMA update runs before the
keys are computed and the queue receives the newest keys, once per weight step.
"""
from __future__ import annotations

import torch

from evaluators.base import KeyQueue, SSLFramework
from evaluators.losses import QueueInfoNCELoss


class MoCo(KeyQueue, SSLFramework):
    name = "moco"
    defaults = {"temperature": 0.2, "queue_size": 4096, "momentum": 0.99}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = QueueInfoNCELoss(self.options["temperature"])
        self.register_queue(self.options["queue_size"], self.embedding_dim)

    def before_weight_step(self):
        self.momentum_step(self.options["momentum"], schedule=False)

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        q1, q2 = self.embed(x1, arch_step), self.embed(x2, arch_step)
        k1, k2 = self.momentum_embed(x1), self.momentum_embed(x2)
        # A snapshot: the weight step's backward runs after this step's enqueue overwrote the queue.
        negatives = self.queue.clone()
        loss = (self.criterion(q1, k2, negatives) + self.criterion(q2, k1, negatives)) / 2
        if not arch_step:
            self.enqueue(torch.cat([k1, k2]))
        return loss
