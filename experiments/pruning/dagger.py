"""DAGGER (Su et al., arXiv 2010.15041): filter gates learned from a layer's pretrained weights, not its data.

The paper gives the idea, not the code (none is public); the details below are our choices
(docs/pruning.md lists them):

- **Dagger module.** One small network per filter group maps the producer conv's weights
  ``W`` (one row of ``in x k x k`` numbers per filter, divided by the layer's RMS so that the
  scale of a layer does not decide) to one gate per filter: a shared linear + ReLU encodes each
  filter, the mean code of the layer is appended (each filter is judged against its layer), and
  a linear scorer gives a logit; the gate is its sigmoid. Biases start the gates at 0.9, so
  gate learning starts from (almost) the pretrained network. Nothing else enters: the gates are
  a function of the weights alone, the same for every batch.
- **Gating.** Each gate multiplies its channel after every BatchNorm of the group (before the
  ReLU), so a gate of 0 is exactly a removed filter and a kept gate folds into the BN.
- **FLOPs-aware regulariser.** The gated cost counts a group's channels as the sum of its gates
  (``CostModel.cost`` with real counts: exact for 0/1 gates, bilinear where groups meet); the
  penalty is ``weight * |gated / full - target|``, which pushes with a constant force until the
  gated cost sits at the target.
- **Training.** The SSL loss of the framework (unlabelled views only) plus the penalty; the
  pretrained network is frozen (weights and BN statistics), only the Dagger module learns.
- **Selection.** Filters are removed in order of their gate, lowest first across all layers,
  each group keeping at least one (or the ``min_keep`` fraction of its filters), until the
  exact cost is within the target; the kept gates fold into the BN (``prune_filters(scale=...)``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from experiments.pruning.filter_groups import CostModel, FilterGroup


class DaggerModule(nn.Module):
    """Weights of each group's producer conv -> one gate in (0, 1) per filter."""

    def __init__(self, root: nn.Module, groups: Sequence[FilterGroup], hidden: int = 16, initial_gate: float = 0.9):
        super().__init__()
        self.names = [g.name for g in groups]
        self.producers = [g.producer for g in groups]
        self.encoders = nn.ModuleList()
        self.scorers = nn.ModuleList()
        for g in groups:
            fan_in = root.get_submodule(g.producer).weight[0].numel()
            self.encoders.append(nn.Sequential(nn.Linear(fan_in, hidden), nn.ReLU()))
            scorer = nn.Linear(2 * hidden, 1)
            nn.init.normal_(scorer.weight, std=0.1)
            nn.init.constant_(scorer.bias, math.log(initial_gate / (1 - initial_gate)))
            self.scorers.append(scorer)

    def forward(self, root: nn.Module) -> dict[str, torch.Tensor]:
        """Gates per group name, read from ``root``'s conv weights only (detached: they are not trained here)."""
        gates = {}
        for name, producer, encode, score in zip(self.names, self.producers, self.encoders, self.scorers):
            w = root.get_submodule(producer).weight.detach().flatten(1)
            w = w / w.pow(2).mean().sqrt().clamp_min(1e-12)
            codes = encode(w)
            context = codes.mean(0, keepdim=True).expand_as(codes)
            gates[name] = torch.sigmoid(score(torch.cat([codes, context], 1)).squeeze(1))
        return gates


@contextlib.contextmanager
def gated(root: nn.Module, groups: Sequence[FilterGroup], gates: Callable[[], Mapping[str, torch.Tensor]]
          ) -> Iterator[None]:
    """While inside, every norm of each group multiplies its output channels by ``gates()[group]``.

    ``gates`` is called once per forward pass of ``root`` (a pre-hook), so a fresh Dagger output
    flows into every layer with its gradient.
    """
    current: dict = {}

    def refresh(module, inputs):
        current.clear()
        current.update(gates())

    def scale(name):
        def hook(module, inputs, output):
            return output * current[name].view(1, -1, 1, 1).to(output.dtype)
        return hook

    handles = [root.register_forward_pre_hook(refresh)]
    for g in groups:
        for norm in g.norms:
            handles.append(root.get_submodule(norm).register_forward_hook(scale(g.name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def cost_penalty(gates: Mapping[str, torch.Tensor], cost: CostModel, target: float, quantity: str = "flops",
                 weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(``weight * |gated / full - target|``, gated / full): a group counts as the sum of its gates."""
    ratio = cost.cost({name: g.sum() for name, g in gates.items()}, quantity) / cost.full[quantity]
    return weight * (ratio - target).abs(), ratio


def minimum_counts(sizes: Mapping[str, int], min_keep: float = 0.0) -> dict[str, int]:
    """The fewest channels each group may keep: ``ceil(min_keep * size)``, and at least one."""
    return {name: max(1, math.ceil(min_keep * size - 1e-9)) for name, size in sizes.items()}


def select_filters(scores: Mapping[str, torch.Tensor], cost: CostModel, target: float,
                   quantity: str = "flops", min_keep: float = 0.0) -> dict[str, torch.Tensor]:
    """Kept channel indices per group: drop the lowest-scored filters (all groups together) until within target.

    Each group keeps at least ``minimum_counts`` channels (one, or the ``min_keep`` fraction of its filters: a
    floor against gates that choke a layer with no shortcut); ties go to the earlier group and channel.
    """
    budget = target * cost.full[quantity]
    keep = {name: torch.ones(len(s), dtype=torch.bool) for name, s in scores.items()}
    counts = {name: len(s) for name, s in scores.items()}
    floor = minimum_counts(counts, min_keep)
    order = sorted(((float(v), gi, i, name) for gi, (name, s) in enumerate(scores.items())
                    for i, v in enumerate(s.detach().cpu())))
    for _, _, i, name in order:
        if cost.cost(counts, quantity) <= budget:
            break
        if counts[name] <= floor[name]:
            continue
        keep[name][i] = False
        counts[name] -= 1
    return {name: mask.nonzero().flatten() for name, mask in keep.items()}


def train_gates(module, root: nn.Module, dagger: DaggerModule, groups: Sequence[FilterGroup], cost: CostModel,
                loader, epochs: int, target: float, quantity: str = "flops", weight: float = 5.0,
                lr: float = 0.02, log_fn: Callable[[str], None] = print) -> list[dict]:
    """Learn the Dagger module under ``module``'s SSL loss plus the cost penalty; the network stays frozen.

    ``module`` is the framework's Lightning module holding the network (``root`` is its backbone).
    Returns one line of history per epoch (mean SSL loss, gated cost ratio, mean gate).
    """
    network = module.model
    was_training = network.training
    frozen = [(p, p.requires_grad) for p in network.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    network.eval()  # BN uses (and keeps) the pretrained statistics
    optimizer = torch.optim.Adam(dagger.parameters(), lr=lr)
    history = []
    step = 0
    try:
        with gated(root, groups, lambda: dagger(root)):
            for epoch in range(epochs):
                loader.sampler.set_epoch(epoch)
                totals = {"ssl_loss": 0.0, "penalty": 0.0}
                batches = 0
                for batch in loader:
                    views = module.make_views(batch, position=step)
                    ssl = module.ssl_loss(views, arch_step=False)
                    penalty, ratio = cost_penalty(dagger(root), cost, target, quantity, weight)
                    optimizer.zero_grad(set_to_none=True)
                    (ssl + penalty).backward()
                    optimizer.step()
                    totals["ssl_loss"] += float(ssl.detach())
                    totals["penalty"] += float(penalty.detach())
                    batches += 1
                    step += 1
                with torch.no_grad():
                    gates = dagger(root)
                    _, ratio = cost_penalty(gates, cost, target, quantity)
                row = {"epoch": epoch, "ssl_loss": totals["ssl_loss"] / max(1, batches),
                       "penalty": totals["penalty"] / max(1, batches), f"gated_{quantity}": float(ratio),
                       "mean_gate": float(torch.cat(list(gates.values())).mean())}
                history.append(row)
                log_fn(f"gates epoch {epoch + 1}/{epochs}: ssl loss {row['ssl_loss']:.4f}, gated {quantity} "
                       f"{row[f'gated_{quantity}']:.3f} of full (target {target:g}), mean gate {row['mean_gate']:.3f}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        network.train(was_training)
    return history


__all__ = ["DaggerModule", "cost_penalty", "gated", "minimum_counts", "select_filters", "train_gates"]
