"""SimSiam (Chen & He, 2021): predictor + stop-gradient, negative cosine similarity."""
from __future__ import annotations

from evaluators.base import SSLFramework
from evaluators.losses import NegativeCosineSimilarity


class SimSiam(SSLFramework):
    name = "simsiam"
    defaults = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = NegativeCosineSimilarity()

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        z1, z2 = self.embed(x1, arch_step), self.embed(x2, arch_step)
        return self.criterion(self.predictor(z1), self.predictor(z2), z1, z2)
