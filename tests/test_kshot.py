"""K-shot weights over the backbone spaces: the combination, K = 1 as SPOS, gradients, materialised paths."""
from __future__ import annotations

import copy

import pytest
import torch
from nni.nas.strategy import RandomOneShot
from torch.nn.utils import parametrize

from search_spaces.backbone_spaces import build_backbone_space
from experiments.strategies.kshot_weights import KShotWeights, SimplexNet, path_encoding
from search_spaces.nas_bench_macro import NasBenchMacroSpace, key_to_arch

WIDTH = 0.125
#: the channel dimension: every searched width's full-width weights are K-shot (macro_width's blocks build the first)
WIDTH_SPACES = ["nas_bench_macro_width", "resnet_width"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small run faster on one thread than on two contending for a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spos_supernet(name: str = "nas_bench_macro"):
    from search_spaces.channels import ChannelChoice

    torch.manual_seed(0)
    strategy = RandomOneShot()
    strategy.extra_mutation_hooks = [ChannelChoice.mutate]  # the width spaces' blocks are supernet modules already
    return strategy.mutate_model(build_backbone_space(name, width=WIDTH))


def sample(supernet, architecture):
    """What RandomOneShot's ``resample()`` does, with the path chosen by the test."""
    for module in supernet.modules():
        if hasattr(module, "resample") and module is not supernet:
            module.resample(memo=dict(architecture))


def diverge(kshot: KShotWeights, scale: float = 0.1) -> None:
    """Copies as after some K-shot training: no longer equal."""
    with torch.no_grad():
        for copies in kshot.copies:
            copies.add_(scale * torch.randn_like(copies))


def candidate(space, label: str, op: str):
    return next(m for m in space.modules() if getattr(m, "label", None) == label)[op]


def some_path(choices: dict, shift: int = 0) -> dict:
    return {label: values[(i + shift) % len(values)] for i, (label, values) in enumerate(choices.items())}


def test_combined_weights_are_the_hand_computed_convex_combination():
    space = NasBenchMacroSpace(width=WIDTH)
    stem_weight = space.stem[0].weight
    block = candidate(space, "backbone.layer2.op", "mb3_k3").conv
    conv_weight = block[0].weight.detach().clone()
    kshot = KShotWeights(space, k=3)

    # copies start as the supernet's weights; only candidate operations are copied
    copies = block[0].parametrizations.weight.original
    assert copies.shape == (3, *conv_weight.shape)
    assert all(torch.equal(copies[i], conv_weight) for i in range(3))
    assert space.stem[0].weight is stem_weight and not parametrize.is_parametrized(space.head[0])

    bn_copies = block[1].parametrizations.weight.original
    with torch.no_grad():
        bn_copies.copy_(torch.tensor([1.0, 2.0, 4.0]).view(3, 1).expand_as(bn_copies))
        copies.copy_(torch.arange(copies.numel(), dtype=torch.float32).view_as(copies))
    kshot.use_code(torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(block[1].weight, torch.full_like(block[1].weight, 0.5 * 1 + 0.25 * 2 + 0.25 * 4))
    assert torch.allclose(block[0].weight, 0.5 * copies[0] + 0.25 * copies[1] + 0.25 * copies[2])
    kshot.use_code(torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(block[1].weight, torch.full_like(block[1].weight, 4.0))
    with pytest.raises(ValueError, match="shape"):
        kshot.use_code(torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("space_name", ["nas_bench_macro", *WIDTH_SPACES])
def test_k1_is_exactly_spos(space_name):
    supernet = spos_supernet(space_name)
    spos = copy.deepcopy(supernet).eval()
    kshot = KShotWeights(supernet, k=1)
    assert kshot.copies and all(c.shape[0] == 1 for c in kshot.copies)
    simplex_net = SimplexNet(kshot.encoding_dim, 1)
    supernet.eval()
    x = torch.randn(2, 3, 8, 8)
    for shift in range(3):  # on nas_bench_macro: the keys 01201201, 12012012, 20120120
        arch = some_path(kshot.choices, shift)
        sample(supernet, arch)
        sample(spos, arch)
        assert torch.equal(kshot.use_path(arch, simplex_net), torch.ones(1))
        assert torch.equal(supernet(x), spos(x))
        materialized = kshot.materialize(arch, simplex_net).state_dict()
        reference = spos.freeze(arch).state_dict()
        assert materialized.keys() == reference.keys()
        assert all(torch.equal(materialized[name], reference[name]) for name in reference)


def test_warm_started_copies_compute_the_spos_supernet_for_any_code():
    supernet = spos_supernet()
    spos = copy.deepcopy(supernet).eval()
    kshot = KShotWeights(supernet, k=4)
    supernet.eval()
    arch = key_to_arch("21021021")
    sample(supernet, arch)
    sample(spos, arch)
    x = torch.randn(2, 3, 8, 8)
    for code in ([0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 1.0]):
        kshot.use_code(torch.tensor(code))
        assert torch.allclose(supernet(x), spos(x), atol=1e-5)


def test_gradients_reach_each_copy_in_proportion_to_its_code():
    supernet = spos_supernet()
    kshot = KShotWeights(supernet, k=3)
    diverge(kshot)
    arch = key_to_arch("12121212")
    sample(supernet, arch)
    code = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    kshot.use_code(code)
    supernet(torch.randn(4, 3, 8, 8)).square().mean().backward()

    on_path = {id(p) for label, op in arch.items() for p in candidate(supernet, label, op).parameters()}
    expected_code_grad = torch.zeros(3)
    reached = 0
    for copies in kshot.copies:
        if id(copies) not in on_path:
            assert copies.grad is None  # an operation off the sampled path is not touched
            continue
        weight_grad = copies.grad.sum(0)  # sum_k lambda_k = 1, so this is dL/dW
        assert weight_grad.abs().sum() > 0
        for i in range(3):
            assert torch.allclose(copies.grad[i], code[i].detach() * weight_grad, atol=1e-7)
            expected_code_grad[i] += (weight_grad * copies[i].detach()).sum()
        reached += 1
    assert reached > 0
    assert torch.allclose(code.grad, expected_code_grad, rtol=1e-4, atol=1e-6)  # dL/dlambda_k = <dL/dW, Theta_k>


def test_the_simplex_net_learns_only_once_the_copies_differ():
    supernet = spos_supernet()
    kshot = KShotWeights(supernet, k=3)
    simplex_net = SimplexNet(kshot.encoding_dim, 3)
    arch = key_to_arch("12121212")
    sample(supernet, arch)
    x = torch.randn(4, 3, 8, 8)

    def simplex_gradient() -> float:
        simplex_net.zero_grad()
        kshot.use_path(arch, simplex_net)
        supernet(x).square().mean().backward()
        return sum(p.grad.abs().sum().item() for p in simplex_net.parameters())

    equal_copies = simplex_gradient()  # every code gives the same weights: no gradient but rounding
    diverge(kshot)
    assert simplex_gradient() > 1e4 * equal_copies
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        supernet(x).square().mean().backward()  # a step that forgot use_path fails instead of reusing a stale code


@pytest.mark.parametrize("space_name", ["nas_bench_macro", "resnet", *WIDTH_SPACES])
def test_a_materialized_path_rebuilds_the_kshot_network_exactly(space_name):
    supernet = spos_supernet(space_name)
    kshot = KShotWeights(supernet, k=3)
    diverge(kshot)
    simplex_net = SimplexNet(kshot.encoding_dim, 3)
    x = torch.randn(2, 3, 8, 8)
    supernet.eval()
    for shift in range(2):
        arch = some_path(kshot.choices, shift)
        sample(supernet, arch)
        training_code = kshot.use_path(arch, simplex_net)  # with its graph, as in a training step
        expected = supernet(x)
        supernet.freeze(arch)  # NNI deep-copies around the candidates: the shared code must survive it

        network = kshot.materialize(arch, simplex_net).eval()
        assert torch.equal(supernet(x), expected)  # materialising leaves the supernet's weights working
        assert not any(parametrize.is_parametrized(m) for m in network.modules())
        assert torch.allclose(network(x), expected, rtol=0, atol=1e-6)
        fresh = build_backbone_space(space_name, width=WIDTH).freeze(arch)
        fresh.load_state_dict(network.state_dict())
        assert torch.allclose(fresh.eval()(x), expected, rtol=0, atol=1e-6)
        assert kshot.code.value is training_code  # the training code is left in place
        assert all(c.shape[0] == 3 for c in kshot.copies)  # and the supernet keeps its copies


def test_simplex_net_codes_lie_on_the_simplex_and_follow_the_path():
    choices = {"a": ["x", "y"], "b": [1, 2, 3]}
    assert torch.equal(path_encoding({"a": "y", "b": 1, "head": "z"}, choices), torch.tensor([0.0, 1, 1, 0, 0]))
    with pytest.raises(ValueError, match="not one of"):
        path_encoding({"a": "q", "b": 1}, choices)
    with pytest.raises(KeyError):
        path_encoding({"a": "x"}, choices)

    torch.manual_seed(0)
    kshot = KShotWeights(NasBenchMacroSpace(width=WIDTH), k=5)
    assert kshot.encoding_dim == 8 * 3
    simplex_net = SimplexNet(kshot.encoding_dim, 5)
    keys = ("00000000", "12012012", "22222222")
    codes = torch.stack([simplex_net(kshot.encode(key_to_arch(key))) for key in keys])
    assert codes.shape == (3, 5)
    assert (codes >= 0).all() and torch.allclose(codes.sum(-1), torch.ones(3))
    assert not torch.allclose(codes[0], codes[1]) and not torch.allclose(codes[1], codes[2])
    assert torch.equal(simplex_net(kshot.encode(key_to_arch(keys[1]))), codes[1])
    batch = torch.stack([kshot.encode(key_to_arch(key)) for key in keys])
    assert torch.allclose(simplex_net(batch), codes)


def test_a_space_is_made_kshot_once():
    space = NasBenchMacroSpace(width=WIDTH)
    KShotWeights(space, k=2)
    with pytest.raises(ValueError, match="already parametrized"):
        KShotWeights(space, k=2)
    with pytest.raises(ValueError, match="k >= 1"):
        KShotWeights(NasBenchMacroSpace(width=WIDTH), k=0)

