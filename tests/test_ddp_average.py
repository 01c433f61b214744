"""The fast architecture step's gradient sync (quirk 20) on a real two-process gloo group.

The fast architecture step runs its backward without DDP's sync and averages the alphas'
gradients by hand. tests/test_ddp.py checks that the ranks end up agreeing, which a sum
would satisfy too; here the ranks hold different gradients and each must end with their mean,
and DDP's sync must be switched back on.
"""
from __future__ import annotations

import datetime
import os
from types import SimpleNamespace

import torch

import torch.distributed as dist
import torch.multiprocessing as mp

from evaluators.distributed import average_gradients
from experiments.strategies.darts import sync_architecture_gradients
from tests.conftest import free_port

WORLD = 2


def rank_gradients(rank: int) -> list:
    """What rank ``rank`` holds before the sync: three alphas of different shapes; the third has
    no gradient on rank 0 (its candidates were not reached there) and counts as zeros."""
    a = torch.tensor([1.0, -2.0, 3.0]) * (rank + 1) + 10 * rank  # rank 0: 1 -2 3, rank 1: 12 6 16
    b = torch.tensor([[0.5, 4.0], [-1.0, 2.0]]) * (1 - 3 * rank)  # rank 1: -2 times rank 0's
    c = None if rank == 0 else torch.tensor([6.0, -8.0])
    return [a, b, c]


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank that fails before the all-reduce must not leave the other waiting for half an hour
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        alphas = []
        for grad in rank_gradients(rank):
            alpha = torch.nn.Parameter(torch.zeros(2 if grad is None else grad.shape))
            alpha.grad = None if grad is None else grad.clone()
            alphas.append(alpha)
        model = SimpleNamespace(require_backward_grad_sync=False)  # what pause_ddp_gradient_sync left
        sync_architecture_gradients(SimpleNamespace(strategy=SimpleNamespace(model=model)), alphas)
        bare = SimpleNamespace(require_backward_grad_sync=False)  # a network without relaxed choices
        sync_architecture_gradients(SimpleNamespace(strategy=SimpleNamespace(model=bare)), [])
        # weights off the sampled path (no gradient on every rank) stay without one: the optimiser skips them
        weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
        weights[0].grad = torch.tensor([2.0, -4.0]) * (rank + 1)  # rank 0: 2 -4, rank 1: 4 -8
        average_gradients(weights, missing_as_zero=False)
        torch.save({"grads": [a.grad for a in alphas], "sync": model.require_backward_grad_sync,
                    "weight_grads": [w.grad for w in weights],
                    "sync_without_alphas": bare.require_backward_grad_sync,
                    "shapes": [tuple(a.shape) for a in alphas]}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()




def test_architecture_gradients_are_averaged_over_the_ranks_not_summed(tmp_path):
    # torch.multiprocessing's spawn API with the fork start method: a spawned child re-imports torch
    # and NNI, about 35 s on a busy 2-core machine; a forked one
    # starts at once. The children run no parallel kernels (a few tiny tensors), so fork is safe here.
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    per_rank = [rank_gradients(r) for r in range(WORLD)]
    mean = [sum(torch.zeros(2) if g[i] is None else g[i] for g in per_rank) / WORLD for i in range(3)]
    assert torch.equal(mean[0], torch.tensor([6.5, 2.0, 9.5]))  # by hand: (1 + 12) / 2, (-2 + 6) / 2, (3 + 16) / 2
    assert torch.equal(mean[1], torch.tensor([[-0.25, -2.0], [0.5, -1.0]]))
    assert torch.equal(mean[2], torch.tensor([3.0, -4.0]))
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["sync"] is True, f"rank {rank}: DDP's gradient sync was not switched back on"
        assert result["sync_without_alphas"] is True, f"rank {rank}: not switched back on without alphas"
        assert result["shapes"] == [(3,), (2, 2), (2,)]
        assert torch.equal(result["weight_grads"][0], torch.tensor([3.0, -6.0])) and result["weight_grads"][1] is None
        for got, want in zip(result["grads"], mean):
            assert got.shape == want.shape and torch.allclose(got, want), (rank, got, want)
