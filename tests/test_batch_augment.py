"""The batched two-view augmentation matches torchvision's per-image ops, sample by sample."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from experiments.core.batch_augment import (BatchViewAugment, UInt8Images, adjust_hue, collate_uint8, color_jitter, gaussian_blur, resized_crop, sample_crops)
from evaluators.views import AugmentSettings


def _images(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_resized_crop_matches_torchvision_per_sample():
    x = _images()
    boxes = torch.tensor([[0, 0, 16, 16], [2, 3, 8, 8], [5, 1, 10, 6], [0, 7, 9, 9], [4, 4, 12, 3], [1, 0, 15, 16]],
                         dtype=torch.float32)
    flip = torch.tensor([False, True, False, True, False, True])
    out = resized_crop(x, boxes, 16, flip)
    for i, (top, left, h, w) in enumerate(boxes.long().tolist()):
        ref = TF.resized_crop(x[i], top, left, h, w, [16, 16], antialias=False)
        if flip[i]:
            ref = TF.horizontal_flip(ref)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)


def test_sample_crops_follow_the_scale_and_ratio_rule():
    g = torch.Generator().manual_seed(1)
    boxes = sample_crops(4000, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / (32 * 32)
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 0.1 and ratio.max() <= 4 / 3 + 0.1
    # per-sample parameters: the boxes differ from each other
    assert len({tuple(b) for b in boxes[:50].tolist()}) > 40


@pytest.mark.parametrize("sync_free", [False, True])
def test_color_jitter_matches_torchvision_in_each_samples_order(sync_free):
    x = _images(n=8)
    g = torch.Generator().manual_seed(2)
    factors = torch.stack([0.6 + 0.8 * torch.rand(8, generator=g), 0.6 + 0.8 * torch.rand(8, generator=g),
                           0.6 + 0.8 * torch.rand(8, generator=g), -0.1 + 0.2 * torch.rand(8, generator=g)], 1)
    order = torch.argsort(torch.rand(8, 4, generator=g), dim=1)
    apply = torch.tensor([True] * 6 + [False] * 2)
    out = color_jitter(x, factors, order, apply, sync_free=sync_free)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(8):
        ref = x[i]
        if apply[i]:
            for op_index in order[i].tolist():
                ref = ops[op_index](ref, float(factors[i, op_index]))
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=1e-4)


def test_hue_shift_of_zero_and_one_is_identity():
    x = _images()
    torch.testing.assert_close(adjust_hue(x, torch.zeros(len(x))), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adjust_hue(x, torch.ones(len(x)) * 0.5 * 2), x, atol=1e-5, rtol=1e-5)


def test_gaussian_blur_matches_torchvision_per_sample():
    x = _images(n=3, size=20)
    sigma = torch.tensor([0.3, 1.0, 1.9])
    out = gaussian_blur(x, 5, sigma)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)


def test_identity_recipe_is_plain_normalisation():
    images = (torch.rand(5, 3, 12, 12) * 255).to(torch.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    settings = AugmentSettings(crop_min_scale=1.0, hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    aug = BatchViewAugment(settings, 12, mean, std)
    # scale 1 with ratio in [3/4, 4/3] on a square image: the whole image, every time
    v1, v2 = aug(images, torch.Generator().manual_seed(0))
    ref = TF.normalize(images.float() / 255, mean, std)
    torch.testing.assert_close(v1, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v2, ref, atol=1e-5, rtol=1e-5)


def test_full_recipe_gives_two_different_normalised_views_with_each_effect():
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(256, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    settings = AugmentSettings(crop_min_scale=0.2, hflip_p=0.5, grayscale_p=1.0, blur_p=0.5, solarize_p=0.5)
    aug = BatchViewAugment(settings, 16, [0.0] * 3, [1.0] * 3)
    v1, v2 = aug(images, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (256, 3, 16, 16) and v1.dtype == torch.float32
    assert not torch.allclose(v1, v2)
    assert v1.min() >= 0 and v1.max() <= 1
    # grayscale p=1: all three channels equal in every sample
    torch.testing.assert_close(v1[:, 0], v1[:, 1])
    torch.testing.assert_close(v1[:, 1], v1[:, 2])


def test_views_stay_float32_under_bf16_autocast():
    images = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    aug = BatchViewAugment(AugmentSettings(), 16, [0.5] * 3, [0.25] * 3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        v1, _ = aug(images, torch.Generator().manual_seed(0))
    ref, _ = aug(images, torch.Generator().manual_seed(0))
    assert v1.dtype == torch.float32 and torch.equal(v1, ref)


def test_same_generator_seed_gives_the_same_views():
    images = (torch.rand(8, 3, 16, 16) * 255).to(torch.uint8)
    aug = BatchViewAugment(AugmentSettings(), 16, [0.5] * 3, [0.25] * 3)
    a = aug(images, torch.Generator().manual_seed(7))
    b = aug(images, torch.Generator().manual_seed(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_uint8_dataset_gathers_a_batch_in_one_index():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    ds = UInt8Images(images)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_uint8)
    batches = list(loader)
    assert [b.dtype for b in batches] == [torch.uint8, torch.uint8]
    assert torch.equal(torch.cat(batches), images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_with_a_cuda_generator():
    images = (torch.rand(8, 3, 16, 16) * 255).to(torch.uint8).cuda()
    aug = BatchViewAugment(AugmentSettings(blur_p=0.5), 16, [0.5] * 3, [0.25] * 3).cuda()
    v1, v2 = aug(images, torch.Generator(device="cuda").manual_seed(0))
    assert v1.is_cuda and v1.shape == (8, 3, 16, 16) and math.isfinite(float(v2.sum()))


def test_search_module_makes_views_from_uint8_batches(tiny_config):
    from experiments.core.assembly import build_data, build_module

    cfg = tiny_config(**{"data.batched_augment": True, "trainer.channels_last": True})
    data = build_data(cfg)
    batch = next(iter(data.loader(None, cfg)))
    assert batch.dtype == torch.uint8 and batch.shape == (64, 3, 8, 8)
    module = build_module(cfg, 1, interleaved=False, augment=data.augment)
    v1, v2 = module.make_views(batch)
    assert v1.shape == v2.shape == (64, 3, 8, 8) and v1.dtype == torch.float32
    assert v1.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(v1, v2)
    with pytest.raises(RuntimeError, match="augment=data.augment"):
        build_module(cfg, 1, interleaved=False).make_views(batch)
