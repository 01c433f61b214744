"""Zero-cost rankers (SynFlow, NASWOT): hand-computed values on tiny networks, the original network
left untouched, and finite, seeded, sensible scores on NAS-Bench-Macro's networks."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from evaluators.zero_cost import naswot, naswot_kernel, random_images, score_architectures, synflow
from search_spaces.backbones import build_backbone
from search_spaces.nas_bench_macro import NasBenchMacro, NasBenchMacroSpace, default_table_path, key_to_arch

WIDTH, INPUT_SHAPE, BATCH = 0.25, (3, 32, 32), 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are too small to gain from threads; on a shared CPU two threads spin-wait (10-40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def build_nas_bench_macro(key: str) -> nn.Module:
    return NasBenchMacroSpace(width=WIDTH).freeze(key_to_arch(key))


def test_synflow_of_two_linear_layers_is_the_hand_value():
    # |W1| = [[1, 2], [3, 4]], |W2| = [[1, 2]], x = ones: h = [3, 7], R = 3 + 14 = 17;
    # sum W2 * dR/dW2 = 1*3 + 2*7 = 17, sum W1 * dR/dW1 = (1 + 2)*1 + (3 + 4)*2 = 17: score 34.
    # With the signed weights the ReLU would zero h[0]: the abs is what makes it 34.
    network = nn.Sequential(linear([[1, -2], [3, 4]]), nn.ReLU(), linear([[-1, 2]]))
    assert synflow(network, (2,)) == pytest.approx(math.log(34.0), abs=1e-12)


def test_synflow_sums_only_weights_and_runs_batchnorm_in_eval_mode():
    # Abs everything: w = [1, 2], b = 1, BN mean 1, var 4, gamma 3, beta 0.5, eps 0.
    # pre = 3 + 1 = 4; R = 3 * (4 - 1) / 2 + 0.5 = 5; dR/dw = gamma / sqrt(var) * x = 1.5 each:
    # score = 1*1.5 + 2*1.5 = 4.5 (the bias would add 1.5, gamma 4.5, beta 0.5: none is summed).
    norm = nn.BatchNorm1d(1, eps=0.0)
    with torch.no_grad():
        norm.running_mean.fill_(-1.0)
        norm.running_var.fill_(4.0)
        norm.weight.fill_(-3.0)
        norm.bias.fill_(-0.5)
    network = nn.Sequential(linear([[1, -2]], bias=[-1.0]), norm).train()  # train-mode BN of one sample would fail
    assert synflow(network, (2,)) == pytest.approx(math.log(4.5), abs=1e-12)


def test_synflow_does_not_see_the_sign_of_the_weights():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3),
                            nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    flipped = copy.deepcopy(network)
    with torch.no_grad():
        for parameter in flipped.parameters():
            parameter.mul_(torch.randint(0, 2, parameter.shape) * 2 - 1)
    assert synflow(flipped, (3, 8, 8)) == pytest.approx(synflow(network, (3, 8, 8)), rel=1e-12)


def test_neither_ranker_changes_the_network_it_scores():
    torch.manual_seed(0)
    network = build_nas_bench_macro("21012201").train()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    modes = [m.training for m in network.modules()]
    synflow(network, INPUT_SHAPE)
    naswot(network, random_images(BATCH, INPUT_SHAPE, seed=0))  # its BatchNorm uses batch statistics
    assert all(torch.equal(state[k], v) and v.dtype == state[k].dtype for k, v in network.state_dict().items())
    assert [m.training for m in network.modules()] == modes
    assert all(p.grad is None for p in network.parameters())


@pytest.mark.parametrize("rectifier", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1)], ids=lambda m: type(m).__name__)
def test_naswot_kernel_and_score_are_the_hand_values(rectifier):
    # pre-activations W x: [1, 2, -1], [-1, 1, -2], [2, 0, 2] -> codes 110, 010, 101 (0 is not > 0).
    # Agreements: (1,2) units 2 and 3 -> 2; (1,3) unit 1 -> 1; (2,3) none -> 0; N_A = 3 on the diagonal.
    # det [[3,2,1],[2,3,0],[1,0,3]] = 3*9 - 2*6 + 1*(-3) = 12.
    network = nn.Sequential(linear([[1, 0], [0, 1], [1, -1]]), rectifier)
    images = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [2.0, 0.0]])
    expected = torch.tensor([[3.0, 2.0, 1.0], [2.0, 3.0, 0.0], [1.0, 0.0, 3.0]], dtype=torch.float64)
    assert torch.equal(naswot_kernel(network, images), expected)
    assert naswot(network, images) == pytest.approx(math.log(12.0), abs=1e-12)


def test_naswot_counts_a_rectifier_once_per_call():
    relu = nn.ReLU()  # torchvision's BasicBlock calls its one ReLU twice
    network = nn.Sequential(linear([[1, 0], [0, 1], [1, -1]]), relu, relu)
    images = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [2.0, 0.0]])
    assert torch.equal(naswot_kernel(network, images).diagonal(), torch.full((3,), 6.0, dtype=torch.float64))


def test_identical_images_give_a_singular_kernel_and_minus_infinity():
    network = nn.Sequential(linear([[1, 0], [0, 1], [1, -1]]), nn.ReLU())
    images = torch.tensor([[1.0, 2.0], [1.0, 2.0], [-1.0, 1.0]])
    kernel = naswot_kernel(network, images)
    assert torch.equal(kernel[0], kernel[1])
    assert naswot(network, images) == -math.inf


def test_naswot_without_a_rectifier_module_is_an_error():
    with pytest.raises(ValueError, match="rectifier"):
        naswot(nn.Linear(2, 2), torch.ones(3, 2))


def test_scores_are_finite_and_seeded_on_nas_bench_macro_and_resnet():
    keys = ["00000000", "10010010", "11111111", "22222222"]
    first = score_architectures(build_nas_bench_macro, keys, INPUT_SHAPE, BATCH, seed=0)
    assert score_architectures(build_nas_bench_macro, keys[::-1], INPUT_SHAPE, BATCH, seed=0) == first[::-1]
    assert score_architectures(build_nas_bench_macro, keys[:1], INPUT_SHAPE, BATCH, seed=1) != first[:1]
    assert all(math.isfinite(v) for scores in first for v in scores.values())
    resnet = score_architectures(lambda name: build_backbone(name, 0.125), ["resnet18"], INPUT_SHAPE, BATCH)[0]
    assert all(math.isfinite(v) for v in resnet.values())
    synflow_of = dict(zip(keys, (s["synflow"] for s in first)))
    # all-identity (a 1x1 conv per stage) < all mb6_k5; one mb3_k3 per stage < eight of them
    assert synflow_of["00000000"] < synflow_of["22222222"]
    assert synflow_of["10010010"] < synflow_of["11111111"]


def test_kendall_tau_against_the_benchmark_is_computed():
    if default_table_path() is None:
        pytest.skip("../shared/data/nas-bench-macro is not present")
    from scipy.stats import kendalltau

    from experiments.studies.ranking import sample_keys

    table = NasBenchMacro()
    keys = sample_keys(table, 50, seed=0)
    scores = score_architectures(build_nas_bench_macro, keys, INPUT_SHAPE, BATCH, seed=0)
    accuracy = [table.mean_acc(k) for k in keys]
    # Measured here (50 keys of seed 0; CPU): both proxies rank the benchmark's accuracy well. Scores paired with
    # the wrong keys (a shuffle) give about 0 (0.08 and 0.01).
    expected = {"synflow": 0.570, "naswot": 0.706}
    for proxy, tau_expected in expected.items():
        tau = kendalltau([s[proxy] for s in scores], accuracy).statistic
        assert tau == pytest.approx(tau_expected, abs=0.02), proxy
