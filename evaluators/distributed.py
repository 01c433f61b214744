"""Negatives from every rank under DDP: an all-gather that keeps the local part's gradient.

Each rank's contrastive loss takes its own samples as anchors and every rank's samples as
negatives (SimCLR's large-batch recipe; solo-learn and lightly do the same). DDP averages
the ranks' parameter gradients, so the gather's backward sums, over the ranks, the gradient
each rank's loss sends to a sample: the averaged gradient is then the gradient of the
single-process loss on the concatenated batch. Without a process group (or with one rank)
every function here is the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGradient(torch.autograd.Function):
    """All ranks' ``x`` in rank order; backward: the sum over ranks of the gradient of this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss sent a gradient to every rank's samples
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_gradient(x: torch.Tensor) -> torch.Tensor:
    """``cat`` over the ranks (rank order) of ``x``; gradients flow back to this rank's ``x``.

    Every rank must pass a tensor of the same shape (the training loaders drop the last
    incomplete batch).
    """
    return _GatherWithGradient.apply(x) if world_size() > 1 else x


def gather_rows(x: torch.Tensor, enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's rows of ``x`` (``gather_with_gradient``) and the positions of this rank's rows in them.

    With ``enabled`` false, or without several ranks: ``x`` itself and ``0..n-1``.
    """
    n = x.shape[0]
    gathered = enabled and world_size() > 1
    offset = rank() * n if gathered else 0
    return (gather_with_gradient(x) if gathered else x), torch.arange(n, device=x.device) + offset


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """``cat`` over the ranks (rank order) of ``x``, without gradient (MoCo's keys for the queue)."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def average_gradients(params: list, missing_as_zero: bool) -> None:
    """Each parameter's gradient replaced by its mean over the ranks, in one all-reduce (DDP's averaging by hand).

    ``missing_as_zero``: a parameter without a gradient counts as zeros (an alpha whose candidates a
    rank did not reach); otherwise it is left without one, as the optimiser then skips it (a
    weight off the sampled path, the same on every rank), and must be missing on every rank alike.
    """
    if not missing_as_zero:
        params = [p for p in params if p.grad is not None]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset:offset + grad.numel()].view_as(param).clone()
            offset += grad.numel()
