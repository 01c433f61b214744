"""Backbone spaces: NAS-Bench-Macro's space and costs against its table, the ResNet family's points,
weight-preserving sub-networks of the supernets, expected costs, budgets."""
from __future__ import annotations

import pytest
import torch

from search_spaces.cost import BackboneCost, classifier_cost, count_fixed
from search_spaces.nas_bench_macro import (BenchmarkKeyError, NasBenchMacro, NasBenchMacroSpace, arch_to_key,
                                           canonical_key, default_table_path, key_to_arch)

KEYS = ["00000000", "11111111", "22222222", "22212220", "10210201", "02120021"]


@pytest.fixture(scope="module")
def nbm_space():
    return NasBenchMacroSpace()


@pytest.fixture(scope="module")
def nbm_cost(nbm_space):
    return BackboneCost(nbm_space, 32)


@pytest.fixture(scope="module")
def table():
    if default_table_path() is None:
        pytest.skip("../shared/data/nas-bench-macro is not present")
    return NasBenchMacro()


def test_costs_equal_the_benchmarks_params_and_flops(nbm_space, nbm_cost, table):
    head = classifier_cost(nbm_space.feature_dim, 10)
    for key in KEYS:
        arch = key_to_arch(key)
        c = nbm_cost(arch)
        assert (c.flops + head.flops, c.params + head.params) == (table.record(key)["flops"],
                                                                  table.record(key)["params"]), key
        # and an independent hook count of the frozen network with the benchmark's classifier
        net = torch.nn.Sequential(nbm_space.freeze(arch), torch.nn.Linear(nbm_space.feature_dim, 10))
        hooked = count_fixed(net, 32)
        assert (hooked.flops, hooked.params) == (table.record(key)["flops"], table.record(key)["params"])


def test_keys_map_to_architectures_and_back(table):
    for key in KEYS:
        arch = key_to_arch(key)
        assert arch["backbone.layer3.op"] == ("identity", "mb3_k3", "mb6_k5")[int(key[2])]
        assert arch_to_key(arch) == key
    # an identity after a stage's first layer does nothing wherever it sits: the benchmark's rule
    assert canonical_key("10210201") == "10210210"
    assert table.record("10210201") == table.record("10210210")
    assert canonical_key("00000000") == "00000000"


@pytest.mark.parametrize("bad", ["12345678", "1111111", "abc", "111111112"])
def test_a_key_that_does_not_exist_is_one_clear_error(bad):
    with pytest.raises(BenchmarkKeyError, match="NAS-Bench-Macro has no key"):
        key_to_arch(bad)


def test_unknown_operation_is_not_a_benchmark_network():
    arch = dict(key_to_arch("11111111"), **{"backbone.layer2.op": "mb6_k3"})
    with pytest.raises(BenchmarkKeyError, match="not a NAS-Bench-Macro operation"):
        arch_to_key(arch)


def test_the_smallest_network_is_all_identity(nbm_cost):
    arch, c = nbm_cost.smallest()
    assert set(arch.values()) == {"identity"}
    assert c == nbm_cost(key_to_arch("00000000"))


def test_expected_cost_is_exact_on_one_hot_weights_and_differentiable(nbm_cost):
    arch = key_to_arch("21012012")
    alphas = {label: torch.zeros(3, requires_grad=True) for label in nbm_cost.labels}
    one_hot = {label: torch.nn.functional.one_hot(torch.tensor(values.index(arch[label])), 3).float()
               for label, values in nbm_cost.labels.items()}
    assert nbm_cost.expected(one_hot).item() == pytest.approx(nbm_cost(arch).flops)
    assert nbm_cost.expected(one_hot, "params").item() == pytest.approx(nbm_cost(arch).params)
    expected = nbm_cost.expected({k: torch.softmax(a, 0) for k, a in alphas.items()})
    expected.backward()
    grad = alphas["backbone.layer4.op"].grad
    assert grad[2] > grad[1] > grad[0]  # mb6_k5 costs more than mb3_k3, which costs more than identity


def test_macro_space_plans():
    from search_spaces.macro import MACRO_OPS, MacroBackboneSpace

    cifar = MacroBackboneSpace(width=0.25)
    assert len(cifar.labels) == 8 and cifar(torch.zeros(2, 3, 32, 32)).shape == (2, cifar.feature_dim)
    imagenet = MacroBackboneSpace(plan="imagenet", width=0.125)
    assert len(imagenet.labels) == 14
    arch = {label: "mb6_k7" for label in imagenet.labels}
    frozen = imagenet.freeze(arch)
    assert frozen(torch.zeros(1, 3, 224, 224)).shape == (1, imagenet.feature_dim)
    assert set(imagenet.simplify()["backbone.layer5.op"].values) == set(MACRO_OPS)
    with pytest.raises(ValueError, match="unknown channel plan"):
        MacroBackboneSpace(plan="mnist")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet18_and_resnet50_are_points_of_the_resnet_space(name):
    from search_spaces.backbones import build_backbone
    from search_spaces.resnet_space import ResNetSpace, resnet_point

    width = 0.25
    space = ResNetSpace(width=width)
    arch = resnet_point(name, width)
    frozen = space.freeze(arch)
    reference = count_fixed(build_backbone(name, width), 32)
    assert count_fixed(frozen, 32) == reference
    assert BackboneCost(space, 32)(arch) == reference
    features = frozen(torch.randn(2, 3, 32, 32))
    live = 512 * width * (4 if name == "resnet50" else 1)
    assert features.shape == (2, space.feature_dim)
    assert features[:, int(live):].abs().sum() == 0  # zero-padded to the widest output


def test_resnet_closed_form_cost_matches_a_hook_count():
    from search_spaces.resnet_space import ResNetSpace

    space = ResNetSpace(width=0.125)
    cost = BackboneCost(space, 16)
    torch.manual_seed(0)
    for _ in range(4):
        arch = {label: values[torch.randint(len(values), ()).item()] for label, values in cost.labels.items()}
        assert cost(arch) == count_fixed(space.freeze(arch), 16)


@pytest.mark.parametrize("space_name", ["nas_bench_macro", "resnet"])
def test_a_frozen_subnetwork_computes_what_the_supernet_computes(space_name):
    """SPOS scores a sub-network frozen from the supernet: same weights, same function."""
    from nni.nas.strategy import RandomOneShot

    from search_spaces.backbone_spaces import build_backbone_space

    torch.manual_seed(0)
    space = build_backbone_space(space_name, width=0.125)
    RandomOneShot().mutate_model(space)
    labels = {k: list(m.values) for k, m in space.simplify().items()}
    for trial in range(3):
        arch = {label: values[(trial + i) % len(values)] for i, (label, values) in enumerate(labels.items())}
        for module in space.modules():
            if hasattr(module, "resample") and module is not space:
                module.resample(memo=dict(arch))
        x = torch.randn(4, 3, 16, 16)
        space.eval()
        frozen = space.freeze(arch).eval()
        assert torch.allclose(space(x), frozen(x), atol=1e-5)
