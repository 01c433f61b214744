"""The prunable filters of every backbone here, their cost, and channel surgery that removes them.

A *filter group* is a set of channels that one conv makes and one conv reads, with only
BatchNorm, ReLU and (MobileNetV2) a depth-wise conv in between: the inner channels of a ResNet
block (``conv1`` -> ``conv2``; a bottleneck has two such groups) and the hidden channels of an
inverted residual (expand -> depth-wise -> project). Channels on a residual path (a block's
output, the stem) are left whole: removing one would have to remove it from every block that
adds into it, and the pruning literature that DAGGER compares with (L1-norm, FPGM) prunes the
same inner channels.

Removing filters is our own surgery, not NNI's ``ModelSpeedup``: NNI 3.0's speed-up traces the
network with its ``concrete_trace``, which fails under torch 2.13 (``func.__module__`` is None
for some torch functions). With every group known by construction, surgery is a few index
selections, and a pruned network is exactly the masked one (``tests/test_pruning.py``).

The cost of a network with ``counts[g]`` channels left in each group is exact and linear in
each count (bilinear where two groups meet, as in a bottleneck): the FLOPs (multiply-accumulates
of convs and linear layers, as ``search_spaces.cost.count_fixed`` counts them) and parameters.
Given real-valued counts (a sum of gates), it is the differentiable "gated cost" of DAGGER.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from search_spaces import macro, resnet_space
from search_spaces.cost import count_fixed

QUANTITIES = ("flops", "params")


@dataclass(frozen=True)
class FilterGroup:
    """Channels made by ``producer`` (with ``norm`` after it), passed through ``depthwise`` convs, read by ``consumer``.

    Paths are module names under the root the groups were found in; ``name`` is the producer's.
    """

    producer: str
    norm: str
    consumer: str
    depthwise: tuple = ()  # (conv path, norm path) pairs of depth-wise convs between the two
    size: int = 0

    @property
    def name(self) -> str:
        return self.producer

    @property
    def norms(self) -> list[str]:
        """Every BatchNorm over these channels: the producer's and each depth-wise conv's."""
        return [self.norm, *(n for _, n in self.depthwise)]


def _block_groups(path: str, block: nn.Module) -> list[FilterGroup]:
    p = f"{path}." if path else ""
    if isinstance(block, (tv_resnet.Bottleneck, resnet_space.Bottleneck)):
        return [FilterGroup(f"{p}conv1", f"{p}bn1", f"{p}conv2", size=block.conv1.out_channels),
                FilterGroup(f"{p}conv2", f"{p}bn2", f"{p}conv3", size=block.conv2.out_channels)]
    if isinstance(block, (tv_resnet.BasicBlock, resnet_space.BasicBlock)):
        return [FilterGroup(f"{p}conv1", f"{p}bn1", f"{p}conv2", size=block.conv1.out_channels)]
    if isinstance(block, macro.InvertedResidual):
        return [FilterGroup(f"{p}conv.0", f"{p}conv.1", f"{p}conv.6", depthwise=((f"{p}conv.3", f"{p}conv.4"),),
                            size=block.conv[0].out_channels)]
    return []


def find_groups(root: nn.Module, under: Optional[str] = None) -> list[FilterGroup]:
    """Every filter group in ``root`` (only under the module path ``under``, e.g. ``backbone``), in module order."""
    groups: list[FilterGroup] = []
    for path, module in root.named_modules():
        if under is not None and not (path == under or path.startswith(under + ".")):
            continue
        groups.extend(_block_groups(path, module))
    return groups


# --- cost -------------------------------------------------------------------------------------------
@dataclass
class _ConvTerm:
    coefficient: dict  # quantity -> multiplier of (input count x output count), or of the count (depth-wise)
    in_group: Optional[str]
    out_group: Optional[str]
    depthwise: bool
    full_in: int
    full_out: int


@dataclass
class CostModel:
    """Exact FLOPs / parameters of ``root`` as a function of each group's channel count.

    ``cost(counts, quantity)`` takes ints or (differentiable) tensors; groups missing from
    ``counts`` count at full size. Built from one forward pass at ``input_size``.
    """

    groups: list
    terms: list = field(default_factory=list)
    norm_params: dict = field(default_factory=dict)  # group -> affine parameters a channel has in its norms
    fixed: dict = field(default_factory=dict)  # quantity -> the part no group changes
    full: dict = field(default_factory=dict)  # quantity -> the unpruned network's

    @classmethod
    def build(cls, root: nn.Module, groups: Sequence[FilterGroup], input_size: int, in_channels: int = 3):
        modules = dict(root.named_modules())
        produced = {g.producer: g.name for g in groups}
        read = {g.consumer: g.name for g in groups}
        inside = {conv: g.name for g in groups for conv, _ in g.depthwise}
        sizes: dict[str, int] = {}

        def hook_for(name):
            def hook(module, inputs, output):
                sizes[name] = output.shape[-1] * output.shape[-2]
            return hook

        handles = [modules[n].register_forward_hook(hook_for(n)) for n in (*produced, *read, *inside)]
        try:
            full = count_fixed(root, input_size, in_channels)
        finally:
            for h in handles:
                h.remove()
        model = cls(list(groups))
        for name in dict.fromkeys((*produced, *read, *inside)):
            conv = modules[name]
            if not isinstance(conv, nn.Conv2d) or type(conv) is not nn.Conv2d:
                raise TypeError(f"{name} is a {type(conv).__name__}, not a plain Conv2d: it cannot be pruned")
            k = conv.kernel_size[0] * conv.kernel_size[1]
            depthwise = name in inside
            if not depthwise and conv.groups != 1:
                raise TypeError(f"{name} is a grouped conv outside a depth-wise position: it cannot be pruned")
            model.terms.append(_ConvTerm({"flops": k * sizes[name], "params": k}, inside.get(name, read.get(name)),
                                         inside.get(name, produced.get(name)), depthwise, conv.in_channels,
                                         conv.out_channels))
        for g in groups:
            model.norm_params[g.name] = sum(2 for n in g.norms if modules[n].affine)
        model.full = {"flops": full.flops, "params": full.params}
        full_counts = {g.name: g.size for g in groups}
        model.fixed = {q: model.full[q] - float(model._variable(full_counts, q)) for q in QUANTITIES}
        return model

    def _variable(self, counts: Mapping[str, object], quantity: str):
        def count(group: Optional[str], full: int):
            return full if group is None else counts.get(group, full)

        total = 0
        for t in self.terms:
            if t.depthwise:
                total = total + t.coefficient[quantity] * count(t.out_group, t.full_out)
            else:
                total = total + t.coefficient[quantity] * count(t.in_group, t.full_in) * count(t.out_group, t.full_out)
        if quantity == "params":
            for g in self.groups:
                total = total + self.norm_params[g.name] * counts.get(g.name, g.size)
        return total

    def cost(self, counts: Mapping[str, object], quantity: str = "flops"):
        """The network's ``quantity`` with ``counts[g]`` channels in group ``g`` (an int, or a tensor to differentiate)."""
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
        return self.fixed[quantity] + self._variable(counts, quantity)


# --- surgery ------------------------------------------------------------------------------------------
def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    (root.get_submodule(parent) if parent else root)._modules[child] = module


def _conv_like(conv: nn.Conv2d, in_idx: Optional[torch.Tensor], out_idx: Optional[torch.Tensor],
               depthwise: bool = False) -> nn.Conv2d:
    weight = conv.weight.detach()
    if out_idx is not None:
        weight = weight[out_idx]
    if in_idx is not None and not depthwise:
        weight = weight[:, in_idx]
    out_channels = weight.shape[0]
    in_channels = out_channels if depthwise else weight.shape[1] * conv.groups
    new = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    out_channels if depthwise else conv.groups, conv.bias is not None, conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    new.train(conv.training)
    return new


def _norm_like(norm: nn.BatchNorm2d, idx: torch.Tensor, scale: Optional[torch.Tensor]) -> nn.BatchNorm2d:
    """The norm over the kept channels; ``scale`` (a gate per kept channel) folded into its affine output."""
    new = nn.BatchNorm2d(len(idx), norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
                         device=norm.running_mean.device if norm.running_mean is not None else None)
    with torch.no_grad():
        if norm.affine:
            new.weight.copy_(norm.weight.detach()[idx])
            new.bias.copy_(norm.bias.detach()[idx])
            if scale is not None:
                new.weight.mul_(scale)
                new.bias.mul_(scale)
        elif scale is not None:
            raise ValueError("a gate cannot be folded into a BatchNorm without affine parameters")
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean[idx])
            new.running_var.copy_(norm.running_var[idx])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    new.train(norm.training)
    return new


def prune_filters(root: nn.Module, groups: Sequence[FilterGroup], keep: Mapping[str, torch.Tensor],
                  scale: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Keep only the channels ``keep[g]`` (indices, or a boolean mask) of each group ``g``, in place.

    ``scale[g]`` (one value per kept channel) multiplies each kept channel after every norm of
    the group (its gate), folded into the norms' affine weights, so the smaller network computes
    exactly what the gated one does. Groups absent from ``keep`` are left whole.
    """
    for g in groups:
        if g.name not in keep:
            continue
        idx = torch.as_tensor(keep[g.name])
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.long).sort().values
        if len(idx) == 0:
            raise ValueError(f"{g.name}: a group keeps at least one channel")
        if int(idx[-1]) >= g.size or int(idx[0]) < 0 or len(idx.unique()) != len(idx):
            raise ValueError(f"{g.name}: channel indices must be distinct and below {g.size}")
        s = None if scale is None or g.name not in scale else torch.as_tensor(scale[g.name]).detach()
        _set(root, g.producer, _conv_like(root.get_submodule(g.producer), None, idx))
        for norm in g.norms:
            _set(root, norm, _norm_like(root.get_submodule(norm), idx, s))
        for conv, _ in g.depthwise:
            _set(root, conv, _conv_like(root.get_submodule(conv), None, idx, depthwise=True))
        _set(root, g.consumer, _conv_like(root.get_submodule(g.consumer), idx, None))


def shrink_to(root: nn.Module, counts: Mapping[str, int]) -> list[FilterGroup]:
    """Give the groups named in ``counts`` that many channels (the first ones), so a pruned state dict loads.

    Raises ``ValueError`` for a name that is not a group of ``root`` or a count out of range.
    """
    groups = {g.name: g for g in find_groups(root)}
    unknown = [name for name in counts if name not in groups]
    if unknown:
        raise ValueError(f"no filter group {unknown[0]!r} in this network")
    for name, n in counts.items():
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= groups[name].size):
            raise ValueError(f"{name}: {n!r} channels is not between 1 and {groups[name].size}")
    prune_filters(root, list(groups.values()), {name: torch.arange(n) for name, n in counts.items()})
    return list(groups.values())


def channel_counts(root: nn.Module, under: Optional[str] = None) -> dict[str, int]:
    """Each group's channel count now (what a pruned model file records)."""
    return {g.name: g.size for g in find_groups(root, under)}


__all__ = ["CostModel", "FilterGroup", "QUANTITIES", "channel_counts", "find_groups", "prune_filters", "shrink_to"]
