"""SimSiam (Chen & He, 2021): predictor + stop-gradient, negative cosine similarity."""
from __future__ import annotations

from evaluators.base import SSLFramework
from evaluators.losses import NegativeCosineSimilarity
from search_spaces.heads import HeadDims, HeadSpec, NasiamLayout


class SimSiam(SSLFramework):
    name = "simsiam"
    loss_floor = -1.0  # a negative cosine similarity
    # The SSL libraries' CIFAR head: 2048-2048 projector (BN without affine at its output) and a
    # 2048-512-2048 predictor. NASiam: 6 projector layers at f, then Linear and BN without affine;
    # a 4-layer predictor.
    heads = HeadSpec("simsiam", HeadDims(projector_hidden=2048, projector_out=2048, predictor_hidden=512,
                                         projector_out_norm="bn_noaffine"),
                     NasiamLayout(projector=("at_f", 6, "linear_bn_noaffine"), predictor=4))

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = NegativeCosineSimilarity()

    def ssl_loss(self, views, arch_step):
        x1, x2 = views[:2]
        z1, z2 = self.embed(x1, arch_step), self.embed(x2, arch_step)
        return self.criterion(self.predictor(z1), self.predictor(z2), z1, z2)
