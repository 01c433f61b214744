"""Two-view SSL augmentation of a whole uint8 batch at once, on the batch's device.

The per-image recipe (``experiments.core.data.ssl_view``) runs one torchvision transform per
image and view in the data loader; on a GPU machine the CPU workers then bound the epoch.
``BatchViewAugment`` applies the same recipe to a ``B x C x H x W`` uint8 batch with
batched tensor operations and per-sample random parameters:

- random resized crop and horizontal flip as one affine sampling grid per sample
  (``affine_grid`` + bilinear ``grid_sample``; a crop is never smaller than its output
  side's input, so no anti-aliasing is lost);
- colour jitter (brightness, contrast, saturation, hue) with per-sample factors, applied
  in a per-sample random order, as ``torchvision``'s ``ColorJitter`` does per image;
- random grayscale, Gaussian blur (per-sample sigma, a grouped separable convolution),
  solarize, then normalisation.

Turned on by ``data.batched_augment: true``: the loader then yields uint8 batches and the
framework module augments them in ``training_step`` (so it runs on the GPU where there is
one, under every NNI strategy and under DDP).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from evaluators.views import AugmentSettings

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class UInt8Images(Dataset):
    """The images themselves (uint8); ``__getitems__`` lets the loader gather a batch in one index."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> torch.Tensor:
        return self.images[_index(index)]

    def __getitems__(self, indices: Sequence) -> torch.Tensor:
        return self.images[torch.as_tensor([_index(i) for i in indices], dtype=torch.long)]


def _index(item) -> int:
    """``SeededSampler`` yields (index, sample seed); batched views draw their own randomness."""
    return int(item[0]) if isinstance(item, (tuple, list)) else int(item)


def collate_uint8(batch) -> torch.Tensor:
    """The batch as one uint8 tensor (``__getitems__`` already stacked it)."""
    return batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))


# --- crop and flip ------------------------------------------------------------------------------

def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                 generator: Optional[torch.Generator] = None, device=None, attempts: int = 10) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes ``(top, left, h, w)`` (float pixels), torchvision's rule per sample.

    Up to ``attempts`` draws of area fraction and log-aspect per sample; the first one
    that fits wins; a sample with none falls back to the central crop of clamped ratio.
    """
    area = float(height * width)
    u = torch.rand(n, attempts, 2, generator=generator, device=device)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # first fitting attempt (0 if none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    any_fit = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))
    pos = torch.rand(n, 2, generator=generator, device=device)
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    top = torch.where(any_fit, top, torch.round((height - h) / 2))
    left = torch.where(any_fit, left, torch.round((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop each sample to its box ``(top, left, h, w)``, resize to ``size`` (bilinear), flip where asked.

    Pixel centres map as in ``torch.nn.functional.interpolate(align_corners=False)`` and
    samples stay inside the box, so an integer box gives torchvision's ``resized_crop``
    (without anti-aliasing, which an enlarging crop never needs) up to rounding.
    """
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)
    sx, sy = w / width, h / height
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    # Sample inside the crop only (edge pixels repeat, as interpolate does at a crop's border).
    lo = torch.stack([(2 * left + 1) / width, (2 * top + 1) / height], dim=1) - 1
    hi = torch.stack([(2 * (left + w) - 1) / width, (2 * (top + h) - 1) / height], dim=1) - 1
    grid = torch.maximum(torch.minimum(grid, hi.view(n, 1, 1, 2)), lo.view(n, 1, 1, 2))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --- colour ---------------------------------------------------------------------------------------

def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    delta = maxc - minc
    grey = delta == 0
    ones = torch.ones_like(maxc)
    s = delta / torch.where(grey, ones, maxc)
    d = torch.where(grey, ones, delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.long) % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    # (r, g, b) for sectors 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack([torch.stack([v, q, p, p, t, v], dim=-3),
                         torch.stack([t, v, v, q, p, p], dim=-3),
                         torch.stack([p, p, t, v, v, q], dim=-3)], dim=-4)  # ... x 3 x 6 x H x W
    index = sector.unsqueeze(-3).unsqueeze(-3).expand(*table.shape[:-3], 1, *table.shape[-2:])
    return table.gather(-3, index).squeeze(-3)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                 apply: Optional[torch.Tensor] = None, sync_free: Optional[bool] = None) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-sample ``factors`` (B x 4) in per-sample ``order``.

    ``order[i]`` is a permutation of 0..3 (the op indices above); samples where ``apply``
    is False are left unchanged. On the CPU each op runs on the samples whose turn it is
    (gathered by index); on a GPU (``sync_free``) each op runs on the whole batch and a
    mask keeps the samples whose turn it is, so the host never waits for the device.
    """
    sync_free = x.is_cuda if sync_free is None else sync_free
    out = x.clone()
    selected = torch.ones(len(x), dtype=torch.bool, device=x.device) if apply is None else apply
    for position in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            turn = selected & (order[:, position] == op_index)
            if sync_free:
                out = torch.where(turn.view(-1, 1, 1, 1), op(out, factors[:, op_index]), out)
                continue
            idx = torch.nonzero(turn).squeeze(1)
            if idx.numel():
                out[idx] = op(out[idx], factors[idx, op_index])
    return out


# --- blur -----------------------------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (separable, reflect padding), as torchvision's ``gaussian_blur``."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # n x k
    kernel = kernel.repeat_interleave(c, dim=0)  # (n*c) x k
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), [pad, pad, pad, pad], mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


# --- the recipe -----------------------------------------------------------------------------------

class BatchViewAugment(nn.Module):
    """``views`` random views of a uint8 batch, normalised; the recipe of ``data.ssl_view``."""

    def __init__(self, settings: AugmentSettings, image_size: int, mean, std, views: int = 2):
        super().__init__()
        self.settings = settings
        self.image_size = int(image_size)
        self.views = int(views)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.blur_kernel = max(3, int(math.ceil(self.image_size * 0.1)) // 2 * 2 + 1)

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        # In float32 whatever the trainer's precision: crop coordinates and colours need it.
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = images.float().div_(255.0)
            return [self.view(x, generator) for _ in range(self.views)]

    def _coin(self, n: int, p: float, generator, device) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < p

    def view(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        s, n, dev = self.settings, x.shape[0], x.device
        boxes = sample_crops(n, x.shape[-2], x.shape[-1], (s.crop_min_scale, 1.0), (3 / 4, 4 / 3), generator, dev)
        flip = self._coin(n, s.hflip_p, generator, dev) if s.hflip_p > 0 else None
        y = resized_crop(x, boxes, self.image_size, flip)
        if s.jitter_p > 0 and any(v > 0 for v in s.jitter):
            b, c, sat, hue = s.jitter
            u = torch.rand(n, 4, generator=generator, device=dev)
            low = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - sat), -hue], device=dev)
            high = torch.tensor([1 + b, 1 + c, 1 + sat, hue], device=dev)
            factors = low + (high - low) * u
            order = torch.argsort(torch.rand(n, 4, generator=generator, device=dev), dim=1)
            apply = self._coin(n, s.jitter_p, generator, dev)
            y = color_jitter(y, factors, order, apply)
        if s.grayscale_p > 0:
            grey = self._coin(n, s.grayscale_p, generator, dev).view(-1, 1, 1, 1)
            y = torch.where(grey, grayscale(y).expand_as(y), y)
        if s.blur_p > 0:
            sigma = 0.1 + 1.9 * torch.rand(n, generator=generator, device=dev)
            blur = self._coin(n, s.blur_p, generator, dev).view(-1, 1, 1, 1)
            y = torch.where(blur, gaussian_blur(y, self.blur_kernel, sigma), y)
        if s.solarize_p > 0:
            sol = self._coin(n, s.solarize_p, generator, dev).view(-1, 1, 1, 1)
            y = torch.where(sol & (y >= 128 / 255), 1 - y, y)
        return (y - self.mean) / self.std
