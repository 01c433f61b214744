"""WCL's weak-label loss (Zheng et al., ICCV 2021): a 1-nearest-neighbour graph gives labels for SupCon."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from evaluators.distributed import gather_rows
from evaluators.losses.supcon import SupConLoss


@torch.no_grad()
def weak_labels(z: torch.Tensor) -> torch.Tensor:
    """Connected components of the batch's 1-nearest-neighbour graph (cosine), as labels ``0..C-1``.

    Each embedding is joined to its nearest other embedding; edges are undirected, so every
    component has at least two members and every sample gets at least one weak positive.
    """
    n = z.shape[0]
    z = F.normalize(z.detach().float(), dim=1)
    similarity = z @ z.t()
    similarity.fill_diagonal_(float("-inf"))
    nearest = similarity.argmax(dim=1).cpu().numpy()
    rows = torch.arange(n).numpy()
    graph = csr_matrix((torch.ones(n).numpy(), (rows, nearest)), shape=(n, n))
    _, labels = connected_components(graph, directed=False, return_labels=True)
    return torch.as_tensor(labels, dtype=torch.long, device=z.device)


class WeakLabelSupConLoss(nn.Module):
    """WCL's second head: the weak labels of one view supervise a SupCon loss on the other.

    ``(SupCon(z1 vs z1, labels of z2) + SupCon(z2 vs z2, labels of z1)) / 2``, each sample
    excluded from its own positives and denominator, as in the paper's code.

    Under DDP (``gather_distributed``, the default) the graph is built on every rank's
    embeddings and this rank's samples are anchors against all of them, so the mean of the
    ranks' losses (and DDP's averaged gradient) is the single-process loss on the
    concatenated batch; each rank computes the same labels from the same gathered rows.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True):
        super().__init__()
        self.supcon = SupConLoss(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        all1, local = gather_rows(z1, self.gather_distributed)
        all2, _ = gather_rows(z2, self.gather_distributed)
        labels1, labels2 = weak_labels(all1), weak_labels(all2)
        self_mask = local[:, None] == torch.arange(all1.shape[0], device=z1.device)[None, :]
        same2 = labels2[local, None] == labels2[None, :]
        same1 = labels1[local, None] == labels1[None, :]
        return (self.supcon(z1, all1, same2, self_mask) + self.supcon(z2, all2, same1, self_mask)) / 2
