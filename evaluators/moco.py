"""MoCo v2 (Chen et al., 2020): momentum key encoder and a queue of negative keys.

The symmetric loss of the SSL libraries' CIFAR recipe; the EMA update runs before the
keys are computed and the queue receives the newest keys, once per weight step (under
DDP, every rank's: ``KeyQueue``).
"""
from __future__ import annotations

import torch

from evaluators.base import KeyQueue, SSLFramework
from evaluators.options import Option
from evaluators.losses import QueueInfoNCELoss
from search_spaces.heads import HeadDims, HeadSpec, NasiamLayout


class MoCo(KeyQueue, SSLFramework):
    name = "moco"
    option_specs = {"temperature": Option(0.2, "[0.001, 100]", "a softmax temperature"),
                    "queue_size": Option(4096, "[1, 1048576]"),
                    "momentum": Option(0.99, "(0, 1)", "an EMA coefficient; at 1 the keys never learn")}
    # 2048 -> 128 (MoCo v2); NASiam: 4 searchable layers at f, then Linear to 128.
    heads = HeadSpec("moco", HeadDims(projector_hidden=2048, projector_out=128),
                     NasiamLayout(projector=("at_f", 4, "linear")), momentum=True)

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
