"""A plain supervised objective as one more framework: cross-entropy of a linear classifier.

Not self-supervised: it is here so the same search machinery can be checked against
NAS-Bench-Macro, whose ground truth is supervised. The network's "projector" is the linear
classifier (``SSLNetworkSpace`` sizes it by the dataset's classes); batches carry labels
(``uses_labels``) and one lightly augmented view (random crop with padding, flip), the
benchmark's own CIFAR augmentation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from evaluators.base import SSLFramework
from evaluators.options import Option
from search_spaces.heads import HeadDims, HeadSpec


class Supervised(SSLFramework):
    name = "supervised"
    option_specs = {"label_smoothing": Option(0.0, "[0, 1)")}
    # A linear classifier, sized by the dataset's classes in the network space (``classifier``).
    heads = HeadSpec("supervised", HeadDims(projector_hidden=10, projector_out=10, projector_hidden_layers=0),
                     classifier=True)
    uses_labels = True
    batched_views = False  # one lightly augmented view, with its label

    @staticmethod
    def view_transforms(settings, size: int, mean, std, options=None):
        """One view: random crop (padding size/8) and flip, then scaling and normalisation."""
        return [T.Compose([
            T.RandomCrop(size, padding=max(1, size // 8)),
            T.RandomHorizontalFlip(p=settings.hflip_p),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ])]

    def logits(self, x: torch.Tensor, arch_step: bool = False) -> torch.Tensor:
        return self.projector(self.encode(x, arch_step))

    def ssl_loss(self, views, arch_step):
        x, y = views[0], views[-1]
        logits = self.logits(x, arch_step)
        if not arch_step:
            self.log("train/accuracy", (logits.argmax(1) == y).float().mean().detach())
        smoothing = self.options["label_smoothing"]
        return F.cross_entropy(logits, y, label_smoothing=float(smoothing))
