"""Negatives from every rank (``evaluators.distributed``) on a real two-process gloo group.

NT-Xent on each rank's half must be the single-process loss of the concatenated batch
restricted to that rank's anchors (so the ranks' mean is the whole loss), and each rank's
gradient must make DDP's average the single-process gradient. MoCo's queue must receive
every rank's keys in rank order, the same on every rank. WCL's whole ``ssl_loss`` (NT-Xent,
the weak-label graph, the multi-crop term) on each rank's half of the images must average to
its single-process loss on all of them, and so must its parameter gradients. One pair of
processes computes everything; the tests read what it saved.
"""
from __future__ import annotations

import datetime
import math
import os

import pytest
import torch

import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from evaluators.losses import NTXentLoss
from evaluators.moco import MoCo
from evaluators.wcl import WCL
from tests.conftest import free_port
from tests.test_wiring import differ, fixed_map, network, views

WORLD, N, DIM, TEMPERATURE = 2, 3, 4, 0.5
WCL_IMAGES = 8  # per rank: enough for nearest neighbours on the other rank


def full_batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(WORLD * N, DIM, generator=g), torch.randn(WORLD * N, DIM, generator=g)


def rank_keys(rank: int) -> torch.Tensor:
    """Two keys per rank, told apart by their direction: rank 0 along axes 0 and 1, rank 1 along 2 and 3."""
    return torch.eye(DIM)[2 * rank: 2 * rank + 2] * (rank + 2)


def per_anchor_ntxent(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """By the formula, one anchor at a time: -log exp(s_ip/T) / sum_{j != i} exp(s_ij/T)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z1.shape[0]
    losses = []
    for i in range(2 * m):
        positive = (i + m) % (2 * m)
        s = [float(z[i] @ z[j]) / TEMPERATURE for j in range(2 * m)]
        denominator = sum(math.exp(s[j]) for j in range(2 * m) if j != i)
        losses.append(-(s[positive] - math.log(denominator)))
    return torch.tensor(losses)


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        z1, z2 = full_batch()
        mine = slice(rank * N, (rank + 1) * N)
        z1, z2 = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
        loss = NTXentLoss(TEMPERATURE)(z1, z2)
        loss.backward()
        local_only = NTXentLoss(TEMPERATURE, gather_distributed=False)(z1.detach(), z2.detach())
        torch.manual_seed(0)  # the queue starts the same on both ranks, as DDP's broadcast would leave it
        moco = MoCo(queue_size=2 * WORLD + 1, embedding_dim=DIM)
        initial = moco.queue.clone()
        moco.enqueue(rank_keys(rank))
        torch.save({"loss": loss.detach(), "local_only": local_only, "grad1": z1.grad, "grad2": z2.grad,
                    "queue": moco.queue, "initial": initial, "ptr": int(moco.queue_ptr)},
                   os.path.join(out, f"rank{rank}.pt"))
        mine = slice(rank * WCL_IMAGES, (rank + 1) * WCL_IMAGES)
        torch.save(wcl_results([v[mine] for v in wcl_views()]), os.path.join(out, f"wcl{rank}.pt"))
    finally:
        dist.destroy_process_group()


def wcl_views() -> list[torch.Tensor]:
    """Two views and three low-resolution crops of ``WORLD * WCL_IMAGES`` images (float64 rows)."""
    return views(seed=5, count=5, rows=WORLD * WCL_IMAGES)


def wcl_results(images: list[torch.Tensor]) -> dict:
    """WCL's loss on ``images`` (fixed linear maps, no batch norm) and its parameter gradients; then
    the loss again with the graph term, or the multi-crop term, left to the local batch."""
    model = network(backbone=fixed_map(1), projector=fixed_map(2), projector2=fixed_map(6))
    module = WCL(temperature=0.1, knn_crops=2)
    module.set_model(model)
    loss = module.ssl_loss(images, arch_step=False)
    loss.backward()
    result = {"loss": loss.detach(), **{name: p.grad for name, p in model.named_parameters()}}
    with torch.no_grad():
        for term in ("graph_loss", "crop_loss"):
            getattr(module, term).gather_distributed = False
            result[f"{term}_local"] = module.ssl_loss(images, arch_step=False)
            getattr(module, term).gather_distributed = True
    return result


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of two gloo processes computed (one pair of processes for every test here)."""
    out = tmp_path_factory.mktemp("ranks")
    # fork, not spawn: the children start at once (see tests/test_ddp_average.py); a few tiny tensors each
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return out


def test_negatives_and_queue_keys_come_from_every_rank(ranks):
    results = [torch.load(ranks / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    z1, z2 = full_batch()
    per_anchor = per_anchor_ntxent(z1, z2)  # anchors: view 1 of images 0..5, then view 2 of images 0..5
    whole = NTXentLoss(TEMPERATURE)(z1, z2)  # one process, the concatenated batch
    torch.testing.assert_close(whole, per_anchor.mean())
    full1, full2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    NTXentLoss(TEMPERATURE)(full1, full2).backward()

    for rank, result in enumerate(results):
        anchors = [i for i in range(2 * WORLD * N) if (i % (WORLD * N)) // N == rank]  # this rank's images
        torch.testing.assert_close(result["loss"], per_anchor[anchors].mean())
        # the other rank's views really are negatives: the loss is not the one of the local half alone
        assert abs(float(result["loss"] - result["local_only"])) > 1e-3
        # DDP averages the ranks' gradients: each rank holds WORLD times the whole loss's gradient of its slice
        mine = slice(rank * N, (rank + 1) * N)
        torch.testing.assert_close(result["grad1"], WORLD * full1.grad[mine])
        torch.testing.assert_close(result["grad2"], WORLD * full2.grad[mine])
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), whole)

    # the queue (5 slots) got rank 0's two keys, then rank 1's, normalised; the fifth slot is untouched
    expected = torch.cat([F.normalize(rank_keys(r), dim=1) for r in range(WORLD)])
    assert torch.equal(expected[:2], torch.eye(DIM)[:2]) and torch.equal(expected[2:], torch.eye(DIM)[2:])
    for result in results:
        torch.testing.assert_close(result["queue"][:2 * WORLD], expected)
        torch.testing.assert_close(result["queue"][2 * WORLD:], result["initial"][2 * WORLD:])
        assert result["ptr"] == 2 * WORLD
    torch.testing.assert_close(results[0]["queue"], results[1]["queue"])


def test_wcl_graph_and_crops_use_every_ranks_embeddings(ranks):
    results = [torch.load(ranks / f"wcl{r}.pt", weights_only=True) for r in range(WORLD)]
    whole = wcl_results(wcl_views())  # one process, the concatenated batch
    mean = lambda key: torch.stack([r[key] for r in results]).mean(0)  # noqa: E731 - what DDP averages
    torch.testing.assert_close(mean("loss"), whole["loss"])
    for term in ("graph_loss", "crop_loss"):  # a term left to the local batch would give another loss
        assert differ(float(mean(f"{term}_local")), float(whole["loss"])), term
    for name in ("backbone.weight", "projector.weight", "projector2.weight"):
        torch.testing.assert_close(mean(name), whole[name])
