"""kNN, linear probe and collapse score on real data and hand-made cases."""

import pytest
import torch

from evaluators.downstream import collapse_score, knn_accuracy, knn_predict, linear_probe_accuracy
from experiments.core.data import load_images


def _digits_pixels():
    train, test = load_images("digits", "train"), load_images("digits", "test")
    return (train.images.flatten(1).float(), train.labels, test.images.flatten(1).float(), test.labels)


def test_knn_on_raw_digits_pixels_scores_above_0_9():
    xtr, ytr, xte, yte = _digits_pixels()
    assert knn_accuracy(xtr, ytr, xte, yte, num_classes=10, k=20, temperature=0.1) > 0.9


def test_linear_probe_on_raw_digits_pixels_scores_above_0_9():
    xtr, ytr, xte, yte = _digits_pixels()
    assert linear_probe_accuracy(xtr, ytr, xte, yte, num_classes=10, epochs=30) > 0.9


def test_knn_vote_is_weighted_by_similarity():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    # The query is closest to class 0's single point; with k=3 and a sharp temperature it wins.
    assert knn_predict(torch.tensor([[1.0, 0.05]]), bank, labels, 2, k=3, temperature=0.05).item() == 0
    # With a flat temperature the two class-1 points outvote it.
    assert knn_predict(torch.tensor([[1.0, 0.05]]), bank, labels, 2, k=3, temperature=100.0).item() == 1


def test_collapse_score_is_about_one_when_spread_and_zero_when_collapsed():
    torch.manual_seed(0)
    assert collapse_score(torch.randn(4096, 64)) == pytest.approx(1.0, abs=0.05)
    assert collapse_score(torch.ones(128, 64) + 1e-6 * torch.randn(128, 64)) < 0.01


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_images("digits", "train"), load_images("digits", "test")
    assert len(a) + len(b) == 1797 and len(b) == pytest.approx(1797 * 0.2, abs=10)
    assert a.images.dtype == torch.uint8 and a.images.shape[1:] == (3, 8, 8)
    again = load_images("digits", "test")
    assert torch.equal(b.images, again.images)
