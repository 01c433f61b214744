"""MoCo v2 (Chen et al., 2020): momentum key encoder and a queue of negative keys.

The symmetric loss of the SSL libraries' CIFAR recipe; the EMA update runs before the
keys are computed and the queue receives the newest keys, once per weight step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evaluators.base import SSLFramework
from evaluators.losses import QueueInfoNCELoss


class MoCo(SSLFramework):
    name = "moco"
    defaults = {"temperature": 0.2, "queue_size": 4096, "momentum": 0.99}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = QueueInfoNCELoss(self.options["temperature"])
        queue = F.normalize(torch.randn(int(self.options["queue_size"]), self.embedding_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def before_weight_step(self):
        self.momentum_step(self.options["momentum"], schedule=False)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest entries with ``keys`` (a ring buffer), newest last."""
        keys = F.normalize(keys.detach(), dim=1)
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        q1, q2 = self.embed(x1, arch_step), self.embed(x2, arch_step)
        k1, k2 = self.momentum_embed(x1), self.momentum_embed(x2)
        # A copy: enqueue() below writes the queue in place before the loss is back-propagated.
        queue = self.queue.clone()
        loss = (self.criterion(q1, k2, queue) + self.criterion(q2, k1, queue)) / 2
        if not arch_step:
            self.enqueue(torch.cat([k1, k2]))
        return loss
