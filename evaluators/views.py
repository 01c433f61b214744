"""The augmented views a framework trains on: the CIFAR two-view recipe, field by field.

A framework's ``view_transforms`` builds its views from these settings (SimSiam, SimCLR,
MoCo and BYOL take two ``ssl_view``s; ReSSL a strong and a weak one; WCL adds
low-resolution crops), so the recipe lives next to the frameworks that use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torchvision.transforms import v2 as T


@dataclass
class AugmentSettings:
    """The CIFAR two-view recipe (SimSiam, SimCLR, the SSL libraries), per field."""

    crop_min_scale: float = 0.2
    hflip_p: float = 0.5
    jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


def ssl_view(settings: AugmentSettings, image_size: int, mean, std,
             crop_max_scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """One random view of a uint8 image: crop, flip, colour jitter, grey, [blur], [solarize].

    ``image_size`` is the output side; ``crop_max_scale`` < 1 keeps crops small (multi-crop's
    low-resolution crops).
    """
    steps: list = [
        T.RandomResizedCrop(image_size, scale=(settings.crop_min_scale, crop_max_scale), antialias=True),
        T.RandomHorizontalFlip(p=settings.hflip_p),
    ]
    if settings.jitter_p > 0:
        steps.append(T.RandomApply([T.ColorJitter(*settings.jitter)], p=settings.jitter_p))
    if settings.grayscale_p > 0:
        steps.append(T.RandomGrayscale(p=settings.grayscale_p))
    if settings.blur_p > 0:  # blur for larger images (kernel ~10% of the side, odd)
        kernel = max(3, int(math.ceil(image_size * 0.1)) // 2 * 2 + 1)
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=settings.blur_p))
    if settings.solarize_p > 0:
        steps.append(T.RandomSolarize(128, p=settings.solarize_p))
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    return T.Compose(steps)
