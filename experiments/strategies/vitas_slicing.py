"""ViTAS's cyclic weight sharing: NNI's mixed layers slicing a width D from the left ([0, D)) or the right
([E - D, E)) of the widest weight, as each module's ``channel_side`` says.

The ``vitas`` strategy registers ``CYCLIC_HOOKS`` ahead of NNI's own mutation hooks, so the ViT
space's ``MutableLinear``, ``MutableConv2d`` and ``MutableLayerNorm`` become these layers, and turns
the whole supernet to one side with :func:`set_channel_side` (the space's tokens and feature pad
have the same attribute). Prefix sharing (NNI's own layers) is the left side always.

:func:`both_sides_summed` is the released trainer's step (``xiusu/ViTAS``,
``tools/trainer/imagenet/trainer.py``, ``side_scheme: BCNet``): the same path runs on its left and
its right slices and the two outputs are summed before the one loss and the one backward.
"""
from __future__ import annotations

from contextlib import contextmanager

from nni.nas.oneshot.pytorch.supermodule.operation import MixedConv2d, MixedLayerNorm, MixedLinear
from torch import nn

from search_spaces.vit import channel_slice

SIDES = ("left", "right")


def set_channel_side(model: nn.Module, side: str) -> None:
    """Every sliced module of ``model`` takes the ``side`` slice ([0, D) or [E - D, E)) from now on."""
    if side not in SIDES:
        raise ValueError(f"channel side must be one of {SIDES}, got {side!r}")
    for m in model.modules():
        if hasattr(m, "channel_side"):
            m.channel_side = side


def sliced_parts(model: nn.Module) -> list[nn.Module]:
    """The top-level parts of ``model`` that slice by side (the backbone, a momentum copy of it)."""
    return [part for part in model.children() if any(hasattr(m, "channel_side") for m in part.modules())]


@contextmanager
def both_sides_summed(model: nn.Module):
    """Within: each sliced part of ``model`` returns its left slice's output plus its right slice's.

    The heads and the loss then run once on the sum, so one backward trains both sides together.
    """
    patched = []
    for part in sliced_parts(model):
        def summed(*args, _part=part, _forward=part.forward, **kwargs):
            set_channel_side(_part, "left")
            left = _forward(*args, **kwargs)
            set_channel_side(_part, "right")
            right = _forward(*args, **kwargs)
            set_channel_side(_part, "left")
            return left + right
        patched.append((part, part.__dict__.get("forward")))
        part.forward = summed
    try:
        yield
    finally:
        for part, own_forward in patched:
            if own_forward is None:
                del part.forward
            else:
                part.forward = own_forward
        set_channel_side(model, "left")


class CyclicLinear(MixedLinear):
    """NNI's ``MixedLinear`` taking the first (left) or last (right) rows and columns."""

    channel_side = "left"

    def freeze_weight(self, in_features, out_features, **kwargs):
        weight = channel_slice(self.weight, 0, out_features, self.channel_side)
        weight = channel_slice(weight, 1, in_features, self.channel_side)
        bias = None if self.bias is None else channel_slice(self.bias, 0, out_features, self.channel_side)
        return {"weight": weight, "bias": bias}


class CyclicConv2d(MixedConv2d):
    """NNI's ``MixedConv2d`` (fixed kernel and groups) taking the left or right output channels."""

    channel_side = "left"

    def _freeze_weight_impl(self, in_channels, out_channels, kernel_size, groups, **kwargs):
        weight = channel_slice(self.weight, 0, out_channels, self.channel_side)
        weight = channel_slice(weight, 1, in_channels // groups, self.channel_side)
        bias = None if self.bias is None else channel_slice(self.bias, 0, out_channels, self.channel_side)
        return {"weight": weight, "bias": bias, "in_channels_per_group": None}


class CyclicLayerNorm(MixedLayerNorm):
    """NNI's ``MixedLayerNorm`` (one normalised dimension) taking the left or right channels."""

    channel_side = "left"

    def _freeze_weight_impl(self, normalized_shape, **kwargs):
        width = normalized_shape[0] if isinstance(normalized_shape, (tuple, list)) else int(normalized_shape)
        return {"weight": channel_slice(self.weight, 0, width, self.channel_side),
                "bias": channel_slice(self.bias, 0, width, self.channel_side), "normalized_shape": (width,)}


#: mutation hooks that make a one-shot strategy's supernet slice cyclically (before NNI's own)
CYCLIC_HOOKS = [CyclicLinear.mutate, CyclicConv2d.mutate, CyclicLayerNorm.mutate]


__all__ = ["CYCLIC_HOOKS", "SIDES", "both_sides_summed", "sliced_parts", "CyclicConv2d", "CyclicLayerNorm", "CyclicLinear", "set_channel_side"]
