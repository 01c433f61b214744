"""Each loss equals its formula on hand-made tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from evaluators.losses import NegativeCosineSimilarity, NTXentLoss, QueueInfoNCELoss


def test_simsiam_loss_is_minus_one_for_identical_predictions_and_targets():
    p = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
    assert NegativeCosineSimilarity()(p, p, p, p).item() == pytest.approx(-1.0)


def test_simsiam_loss_is_zero_for_orthogonal_and_plus_one_for_opposite():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert NegativeCosineSimilarity()(a, a, b, b).item() == pytest.approx(0.0, abs=1e-7)
    assert NegativeCosineSimilarity()(a, a, -a, -a).item() == pytest.approx(1.0)


def test_simsiam_loss_stops_the_gradient_of_the_targets():
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    NegativeCosineSimilarity()(p1, p2, z1, z2).backward()
    assert p1.grad is not None and z1.grad is None and z2.grad is None


def test_ntxent_equals_cross_entropy_over_the_similarity_matrix():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(3, 5), torch.randn(3, 5), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.t()) / t
    n = 3
    expected = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(sim[i, j].item()) for j in range(2 * n) if j != i)
        expected += -math.log(math.exp(sim[i, positive].item()) / denominator)
    expected /= 2 * n
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(expected, rel=1e-5)


def test_queue_infonce_equals_its_formula():
    torch.manual_seed(1)
    q, k, queue, t = torch.randn(2, 4), torch.randn(2, 4), F.normalize(torch.randn(5, 4), dim=1), 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expected = 0.0
    for i in range(2):
        pos = math.exp((qn[i] @ kn[i]).item() / t)
        neg = sum(math.exp((qn[i] @ queue[j]).item() / t) for j in range(5))
        expected += -math.log(pos / (pos + neg))
    assert QueueInfoNCELoss(t)(q, k, queue).item() == pytest.approx(expected / 2, rel=1e-5)


def test_temperatures_must_be_positive():
    with pytest.raises(ValueError):
        NTXentLoss(0.0)
    with pytest.raises(ValueError):
        QueueInfoNCELoss(-1.0)
