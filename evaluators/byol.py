"""BYOL (Grill et al., 2020): online predictor regresses the momentum target's projection."""
from __future__ import annotations

from evaluators.base import SSLFramework
from evaluators.losses import NegativeCosineSimilarity


class BYOL(SSLFramework):
    name = "byol"
    defaults = {"momentum": 0.99}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = NegativeCosineSimilarity()

    def before_weight_step(self):
        self.momentum_step(self.options["momentum"], schedule=True)

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        p1 = self.predictor(self.embed(x1, arch_step))
        p2 = self.predictor(self.embed(x2, arch_step))
        t1, t2 = self.momentum_embed(x1), self.momentum_embed(x2)
        # 2 - 2 cos, averaged over both directions: an affine map of the negative cosine.
        return 2 + 2 * self.criterion(p1, p2, t1, t2)
