"""BYOL (Grill et al., 2020): online predictor regresses the momentum target's projection."""
from __future__ import annotations

from evaluators.base import SSLFramework
from evaluators.options import Option
from evaluators.losses import NegativeCosineSimilarity
from search_spaces.heads import HeadDims, HeadSpec, NasiamLayout


class BYOL(SSLFramework):
    name = "byol"
    option_specs = {"momentum": Option(0.99, "(0, 1)", "the EMA coefficient's start (cosine-scheduled to 1)")}
    # 4096 -> 256 projector and predictor; NASiam (not in the paper; ours): MoCo's projector layout
    # and a 4-layer predictor with NASiam's 512-wide hidden layer.
    heads = HeadSpec("byol", HeadDims(projector_hidden=4096, projector_out=256, predictor_hidden=4096),
                     NasiamLayout(projector=("at_f", 4, "linear"), predictor=4), momentum=True)

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
