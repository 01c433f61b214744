"""The baselines: NNI 3.0's own filter pruners (``nni.compression.pruning``) at the same cost target.

NNI 3.0 moved its pruners from ``nni.compression.pytorch.pruning`` (which no longer imports) to
``nni.compression.pruning``. We use them for what they decide, which filters a layer loses
(``L1NormPruner``: smallest L1 norm, Li et al. 2017; ``FPGMPruner``: nearest the layer's
geometric median, He et al. 2019; ``TaylorPruner``: smallest accumulated ``(w * dL/dw)^2``,
Molchanov et al. 2019, here with ``L`` the framework's SSL loss on unlabelled views, so it is
the data-driven counterpart of DAGGER), on exactly the producer convs of our filter groups. Each
group keeps the same fraction of its filters (NNI's usual uniform ``sparse_ratio``); the
largest such fraction whose exact cost is within the target is found here, by bisection.
The filters are then removed by our channel surgery (NNI's ``ModelSpeedup`` fails to trace
under torch 2.13, see ``experiments.pruning.filter_groups``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from experiments.pruning.filter_groups import CostModel, FilterGroup

NNI_PRUNERS = ("l1", "fpgm", "taylor")


def uniform_counts(groups: Sequence[FilterGroup], cost: CostModel, target: float, quantity: str = "flops") -> dict:
    """Channels per group when every group keeps the same fraction (rounded, at least one), within the target."""
    def counts(keep: float) -> dict:
        return {g.name: max(1, int(keep * g.size)) for g in groups}

    budget = target * cost.full[quantity]
    low, high = 0.0, 1.0  # cost(counts(low)) <= budget is kept true (one channel a group at low = 0)
    if cost.cost(counts(high), quantity) <= budget:
        return counts(high)
    for _ in range(50):
        mid = (low + high) / 2
        if cost.cost(counts(mid), quantity) <= budget:
            low = mid
        else:
            high = mid
    return counts(low)


def taylor_evaluator(module, loader):
    """NNI's ``TorchEvaluator`` whose training step is ``module``'s SSL loss, at learning rate 0.

    The Taylor pruner only needs the gradients of the pretrained network, so its optimiser
    must not move the weights; BatchNorm stays in eval mode (its statistics stay too).
    """
    import nni
    from nni.compression import TorchEvaluator

    positions = iter(range(1 << 62))

    def training_step(batch, model):
        return module.ssl_loss(module.make_views(batch, position=next(positions)), arch_step=False)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None,
                      *args, **kwargs):
        model.eval()
        steps, epoch = 0, 0
        while max_steps is None or steps < max_steps:
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    return
            epoch += 1
            if max_epochs is not None and epoch >= max_epochs:
                return

    optimizer = nni.trace(torch.optim.SGD)(module.model.parameters(), lr=0.0)
    return TorchEvaluator(training_func, optimizer, training_step)


def nni_keep(root: nn.Module, groups: Sequence[FilterGroup], counts: dict, method: str, module=None, loader=None,
             taylor_steps: int = 20) -> dict[str, torch.Tensor]:
    """The kept channel indices of each group, as NNI's pruner ``method`` picks ``counts[g]`` filters of it.

    ``taylor`` needs the framework's ``module`` (holding the network whose backbone is ``root``)
    and the unlabelled ``loader``: it scores filters over ``taylor_steps`` batches.
    """
    from nni.compression.pruning import FPGMPruner, L1NormPruner, TaylorPruner

    prefix = ""
    if method == "taylor":
        if module is None or loader is None:
            raise ValueError("the taylor pruner needs the framework module and a loader")
        prefix = next(name for name, m in module.model.named_modules() if m is root) + "."
    config = [{"op_names": [prefix + g.producer], "sparse_ratio": (g.size - counts[g.name]) / g.size}
              for g in groups if counts[g.name] < g.size]
    if not config:
        return {g.name: torch.arange(g.size) for g in groups}
    if method == "taylor":
        state = {k: v.clone() for k, v in module.model.state_dict().items()}
        pruner = TaylorPruner(module.model, config, taylor_evaluator(module, loader), training_steps=taylor_steps)
    else:
        pruner = {"l1": L1NormPruner, "fpgm": FPGMPruner}[method](root, config)
        state = None
    try:
        _, masks = pruner.compress()
    finally:
        pruner.unwrap_model()
        if state is not None:  # nothing of the pretrained network may change (NNI also counted BN batches)
            module.model.load_state_dict(state)
    masks = {name[len(prefix):]: mask for name, mask in masks.items()}
    keep = {}
    for g in groups:
        if g.producer not in masks:
            keep[g.name] = torch.arange(g.size)
            continue
        alive = masks[g.producer]["weight"].flatten(1).abs().sum(1) > 0
        idx = alive.nonzero().flatten().cpu()
        if len(idx) != counts[g.name]:  # NNI rounds the ratio its own way: take its best-ranked count
            raise RuntimeError(f"NNI's {method} pruner kept {len(idx)} filters of {g.producer}, "
                               f"not {counts[g.name]}")
        keep[g.name] = idx
    return keep


__all__ = ["NNI_PRUNERS", "nni_keep", "uniform_counts"]
