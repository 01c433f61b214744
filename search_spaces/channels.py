"""A block whose hidden width is a choice and whose *active channels* are any index set, not only a prefix.

NNI 3.0's mixed layers (``nni/nas/oneshot/pytorch/supermodule/operation.py``: ``MixedConv2d``,
``MixedLinear``, ``MixedBatchNorm2d``) slice the first ``c`` channels for width ``c``
(``weight[:c]``, ``running_mean[:c]``): AutoSlim's unilateral sharing, and nothing else. BCNet
also trains the right side ``[C - c, C)`` and CafeNet trains ``c - r`` base channels plus ``r``
free channels anywhere in a local zone, so the selection must be an arbitrary set of channel
indices. Subclassing NNI's mixed ops would mean overriding their private ``_freeze_weight_impl``
and registering our own mutation hooks for each class; instead one small module of ours holds the
full-width convolutions and BatchNorms and gathers the active channels itself. It is an NNI
``BaseSuperNetModule`` (so NNI's one-shot modules resample it, and ``freeze`` hands back a plain
block carrying the selected channels' weights) and an ordinary module in an un-mutated space.

The searched width is the *hidden* (expanded) width of a MobileNetV2 inverted-residual block, as
Channel-Bench-Macro searches its MobileNet blocks: the block's input and output widths stay
fixed, so residual connections and the next block are unaffected by the choice, and the cost is
a sum of per-layer terms.

BatchNorm over a channel subset: a contiguous selection (prefix, right side, the full width)
is a slice, whose running statistics PyTorch updates in place; any other set is gathered,
normalised, and its updated statistics written back to their channels.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import nni
import numpy as np
import torch
import torch.nn.functional as F
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import nn

from search_spaces.macro import InvertedResidual


def as_selection(channels: torch.Tensor) -> slice | torch.Tensor:
    """A slice when the indices are consecutive (views share storage), else the index tensor."""
    first, n = int(channels[0]), len(channels)
    if bool((channels == torch.arange(first, first + n, device=channels.device)).all()):
        return slice(first, first + n)
    return channels


def batch_norm_on(bn: nn.BatchNorm2d, x: torch.Tensor, sel: slice | torch.Tensor) -> torch.Tensor:
    """``bn`` applied to ``x``, whose channels are ``bn``'s channels ``sel``; running statistics follow."""
    weight, bias = (None, None) if bn.weight is None else (bn.weight[sel], bn.bias[sel])
    if not (bn.training and bn.track_running_stats):
        return F.batch_norm(x, bn.running_mean[sel], bn.running_var[sel], weight, bias, False, 0.0, bn.eps)
    bn.num_batches_tracked.add_(1)
    factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    mean, var = bn.running_mean[sel], bn.running_var[sel]  # views for a slice, copies for an index
    out = F.batch_norm(x, mean, var, weight, bias, True, factor, bn.eps)
    if not isinstance(sel, slice):
        with torch.no_grad():
            bn.running_mean[sel] = mean
            bn.running_var[sel] = var
    return out


class ChannelChoice(BaseSuperNetModule):
    """A module whose width (label ``label``, among ``widths``) is a set of active channel indices.

    Every module with the same label (a stage's blocks and its stem, a head's layers, the online and
    momentum branches) is given the same channels by the width strategies (``use_channels``); ``freeze``
    hands back a plain module carrying the active channels' weights. Subclasses build the weights at
    ``max_width`` and define ``forward`` and ``freeze``.
    """

    def __init__(self, widths: Sequence[int], label: str):
        super().__init__()
        widths = sorted({int(w) for w in widths})
        if widths[0] < 1:
            raise ValueError(f"{label}: widths must be >= 1, got {widths}")
        self.max_width, self.label = widths[-1], label
        self.width = self.add_mutable(nni.choice(label, widths))
        self.channels: torch.Tensor = torch.arange(self.max_width)

    @property
    def widths(self) -> list[int]:
        return list(self.width.values)

    def use_channels(self, channels: Sequence[int] | torch.Tensor) -> None:
        """Make ``channels`` (distinct channel indices, sorted here) the active ones."""
        channels = torch.as_tensor(channels, dtype=torch.long).sort().values
        if len(channels) == 0 or int(channels[0]) < 0 or int(channels[-1]) >= self.max_width \
                or len(channels.unique()) != len(channels):
            raise ValueError(f"{self.label}: channels must be distinct indices in [0, {self.max_width}), got "
                             f"{channels.tolist()}")
        self.channels = channels

    def selection(self, device, sample: Optional[dict] = None) -> slice | torch.Tensor:
        """The active channels as a slice or index tensor; with ``sample``, those of its width (the active
        ones when there are that many, which a strategy sets, else the first ones)."""
        channels = self.channels
        if sample is not None:
            width = int(sample[self.label])
            channels = channels if len(channels) == width else torch.arange(width)
        return as_selection(channels.to(device))

    # --- NNI: a one-shot supernet module (uniform draws, prefix channels, as NNI's own mixed ops) ----------
    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label not in memo:
            memo[self.label] = self.widths[int(np.random.randint(len(self.widths)))]
        self.use_channels(range(int(memo[self.label])))
        return {self.label: memo[self.label]}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {} if self.label in memo else {self.label: len(self.channels)}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        """NNI's mutation hook: a module of ours is already a supernet module; keep it as it is."""
        return isinstance(module, ChannelChoice) or None


class WidthChoiceBlock(ChannelChoice):
    """1x1 expand + BN + ReLU, kxk depth-wise + BN + ReLU, 1x1 project + BN [+ x], hidden width a choice.

    ``widths`` are the candidate hidden widths (channels), the largest being the weights' width;
    ``use_channels(indices)`` sets which hidden channels compute (default: all of them).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int, widths: Sequence[int],
                 label: str):
        super().__init__(widths, label)
        hidden = self.max_width
        self.in_channels, self.out_channels, self.stride, self.kernel = in_channels, out_channels, stride, kernel
        self.expand, self.bn1 = nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project, self.bn3 = nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        self.use_shortcut = in_channels == out_channels and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = as_selection(self.channels.to(x.device))
        h = F.conv2d(x, self.expand.weight[sel])
        h = F.relu(batch_norm_on(self.bn1, h, sel))
        n = h.shape[1]
        h = F.conv2d(h, self.depthwise.weight[sel], None, self.stride, self.kernel // 2, 1, n)
        h = F.relu(batch_norm_on(self.bn2, h, sel))
        out = self.bn3(F.conv2d(h, self.project.weight[:, sel]))
        return out + x if self.use_shortcut else out

    @torch.no_grad()
    def freeze(self, sample: dict[str, Any]) -> InvertedResidual:
        """The plain block at ``sample``'s width, with the weights of the active channels when there are that
        many (a strategy sets them: BCNet's right side, CafeNet's placement), else of the first ones."""
        width = int(sample[self.label])
        sel = self.selection(self.expand.weight.device, sample)
        block = InvertedResidual(self.in_channels, self.out_channels, self.stride, 1, self.kernel, hidden=width)
        block.to(self.expand.weight.device)
        expand, bn1, depthwise, bn2, project, bn3 = (block.conv[i] for i in (0, 1, 3, 4, 6, 7))
        expand.weight.copy_(self.expand.weight[sel])
        depthwise.weight.copy_(self.depthwise.weight[sel])
        project.weight.copy_(self.project.weight[:, sel])
        for mine, theirs, s in ((self.bn1, bn1, sel), (self.bn2, bn2, sel), (self.bn3, bn3, slice(None))):
            copy_batch_norm(mine, theirs, s)
        block.train(self.training)
        return block


@torch.no_grad()
def copy_batch_norm(mine: nn.modules.batchnorm._BatchNorm, theirs: nn.modules.batchnorm._BatchNorm,
                    sel: slice | torch.Tensor) -> None:
    """``theirs`` (a plain BatchNorm) takes ``mine``'s channels ``sel``: affine and running statistics."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(theirs, name) is not None:
            getattr(theirs, name).copy_(getattr(mine, name)[sel])
    if theirs.num_batches_tracked is not None:
        theirs.num_batches_tracked.copy_(mine.num_batches_tracked)


def width_blocks(model: nn.Module, label: Optional[str] = None) -> list[ChannelChoice]:
    """Every channel-choice module of ``model`` (online and momentum branches alike), or those of ``label``."""
    return [m for m in model.modules() if isinstance(m, ChannelChoice) and (label is None or m.label == label)]


def use_channels(model: nn.Module, placement: dict[str, Sequence[int]]) -> None:
    """Set the active channels of every block by its label (``{label: indices}``); other blocks keep theirs."""
    for block in width_blocks(model):
        if block.label in placement:
            block.use_channels(placement[block.label])


__all__ = ["ChannelChoice", "WidthChoiceBlock", "as_selection", "batch_norm_on", "copy_batch_norm", "use_channels",
           "width_blocks"]
