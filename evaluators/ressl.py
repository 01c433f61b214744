"""ReSSL (Zheng et al., NeurIPS 2021): relational self-supervised learning with weak augmentation.

The student (online network, strong view) matches the teacher's (momentum network, weak
view) distribution of similarities to a memory queue of past teacher embeddings; the
teacher's distribution is sharpened by a lower temperature. Defaults are the paper's CIFAR
recipe (queue 4096, momentum 0.99, temperatures 0.1 / 0.04); for ImageNet-size images the
paper uses a queue of 131072 and momentum 0.999 with the same temperatures. The momentum
update and the queue push happen once per weight step (never in a DARTS architecture step).
The EMA coefficient is ``teacher_momentum`` (the base class's ``momentum`` is SGD's).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from evaluators.base import KeyQueue, SSLFramework
from evaluators.options import Option
from evaluators.losses import RelationalLoss
from evaluators.views import AugmentSettings, ssl_view
from search_spaces.heads import HeadDims, HeadSpec, NasiamLayout


class ReSSL(KeyQueue, SSLFramework):
    name = "ressl"
    option_specs = {"student_temperature": Option(0.1, "[0.001, 100]", "a softmax temperature"),
                    "teacher_temperature": Option(0.04, "[0.001, 100]", "a softmax temperature"),
                    "queue_size": Option(4096, "[1, 1048576]"),
                    "teacher_momentum": Option(0.99, "(0, 1)", "an EMA coefficient; above 1 the teacher diverges")}
    # The paper's CIFAR head: 512 -> 128 without BatchNorm. NASiam (ours): ReSSL is MoCo-shaped
    # (momentum teacher, queue), so it takes MoCo's projector layout.
    heads = HeadSpec("ressl", HeadDims(projector_hidden=512, projector_out=128, projector_hidden_norm=None),
                     NasiamLayout(projector=("at_f", 4, "linear")), momentum=True)
    batched_views = False  # a strong and a weak view

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.criterion = RelationalLoss(self.options["student_temperature"], self.options["teacher_temperature"])
        self.register_queue(self.options["queue_size"], self.embedding_dim)

    @classmethod
    def view_transforms(cls, settings: AugmentSettings, size: int, mean, std, options: Optional[dict] = None):
        """[strong, weak]: the config's augmentation for the student; crop and flip only for the teacher."""
        weak = dataclasses.replace(settings, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        return [ssl_view(settings, size, mean, std), ssl_view(weak, size, mean, std)]

    def before_weight_step(self):
        self.momentum_step(self.options["teacher_momentum"], schedule=False)

    def ssl_loss(self, views, arch_step):
        strong, weak = views[:2]
        student = self.embed(strong, arch_step)
        teacher = self.momentum_embed(weak)
        # a copy: the push below changes the queue in place before backward needs it
        loss = self.criterion(student, teacher, self.queue.clone())
        if not arch_step:
            self.enqueue(teacher)
        return loss
