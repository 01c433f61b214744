"""Search spaces: labels, NASiam's candidates and adapter rules, fixed heads, backbones."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from evaluators import FRAMEWORKS
from search_spaces import SSLNetworkSpace, build_backbone
from search_spaces.nasiam import NASIAM_OPS, FeaturePool, nasiam_op

ROOT = Path(__file__).resolve().parents[1]


def _types(module):
    return [type(m).__name__ for m in (module if isinstance(module, nn.Sequential) else [module])]


def test_nasiam_candidates_follow_nasiam_adapter_rules():
    # same width: a pool is pool + BN, a linear op is Linear(no bias) -> BN -> act
    assert _types(nasiam_op("maxpool_3x3", 16, 16)) == ["FeaturePool", "BatchNorm1d"]
    assert _types(nasiam_op("identity", 16, 16)) == ["Identity"]
    assert _types(nasiam_op("linear_silu", 16, 16)) == ["Linear", "BatchNorm1d", "SiLU"]
    # narrowing: Linear -> BN -> ReLU in front of a pool or identity
    assert _types(nasiam_op("avgpool_3x3", 32, 16))[:3] == ["Linear", "BatchNorm1d", "ReLU"]
    # widening: a linear op is a bare Linear; a pool gets a bare Linear in front
    assert _types(nasiam_op("linear_elu", 16, 32)) == ["Linear"]
    assert _types(nasiam_op("identity", 16, 32)) == ["Linear", "Identity"]


@pytest.mark.parametrize("name", NASIAM_OPS)
@pytest.mark.parametrize("dims", [(16, 16), (32, 16), (16, 32)])
def test_every_candidate_maps_widths(name, dims):
    op = nasiam_op(name, *dims)
    assert op(torch.randn(4, dims[0])).shape == (4, dims[1])


def test_feature_pool_pools_along_the_feature_axis():
    x = torch.tensor([[1.0, 5.0, 2.0, 0.0]])
    assert FeaturePool("max")(x).tolist() == [[5.0, 5.0, 5.0, 2.0]]
    assert FeaturePool("avg")(x)[0].tolist() == pytest.approx([2.0, 8 / 3, 7 / 3, 2 / 3])  # zero padding counts


@pytest.mark.parametrize("framework,projector,predictor", [
    ("simsiam", 6, 4), ("moco", 4, 0), ("simclr", 6, 0), ("byol", 4, 4)])
def test_nasiam_layouts(framework, projector, predictor):
    space = SSLNetworkSpace(FRAMEWORKS[framework].heads, "nasiam", backbone_width=0.125, head_width=0.125)
    labels = list(space.simplify())
    assert labels == [f"projector.layer{i}.op" for i in range(1, projector + 1)] + \
        [f"predictor.layer{i}.op" for i in range(1, predictor + 1)]
    assert all(list(m.values) == list(NASIAM_OPS) for m in space.simplify().values())


def test_simsiam_nasiam_projector_ends_in_linear_to_2048_and_bn_without_affine():
    space = SSLNetworkSpace(FRAMEWORKS["simsiam"].heads, "nasiam", backbone_width=0.125)
    tail = list(space.projector.children())[1:]
    assert isinstance(tail[0], nn.Linear) and tail[0].out_features == 2048
    assert isinstance(tail[1], nn.BatchNorm1d) and not tail[1].affine


def test_shipped_nasiam_architecture_freezes_to_those_operations():
    record = json.loads((ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json").read_text())
    space = SSLNetworkSpace(FRAMEWORKS["simsiam"].heads, "nasiam", backbone_width=0.125, head_width=0.125)
    net = space.freeze(record["architecture"])
    proj = list(net.projector[0].children())
    assert [type(m[-1]).__name__ if isinstance(m, nn.Sequential) else type(m).__name__ for m in proj] == \
        ["ReLU", "SiLU", "ELU", "Identity", "Identity", "ReLU"]
    pred = list(net.predictor.children())
    assert type(pred[0][-1]).__name__ == "Hardswish"
    assert isinstance(pred[1][0], FeaturePool) and pred[1][0].kind == "avg"  # same width: pool -> BN
    assert isinstance(pred[3], nn.Linear)  # widening linear op: a bare Linear (NASiam's rule)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, space.feature_dim)


@pytest.mark.parametrize("framework,shapes", [
    ("simsiam", [(512, 2048), (2048, 2048)]), ("simclr", [(512, 2048), (2048, 128)]),
    ("moco", [(512, 2048), (2048, 128)]), ("byol", [(512, 4096), (4096, 256)])])
def test_fixed_heads_have_the_libraries_cifar_sizes(framework, shapes):
    net = SSLNetworkSpace(FRAMEWORKS[framework].heads, "fixed")
    linears = [(m.in_features, m.out_features) for m in net.projector.modules() if isinstance(m, nn.Linear)]
    assert linears == shapes
    if framework == "simsiam":
        assert [(m.in_features, m.out_features) for m in net.predictor.modules()
                if isinstance(m, nn.Linear)] == [(2048, 512), (512, 2048)]
    if framework == "byol":
        assert [(m.in_features, m.out_features) for m in net.predictor.modules()
                if isinstance(m, nn.Linear)] == [(256, 4096), (4096, 256)]


def test_mlp_space_labels_and_activations():
    space = SSLNetworkSpace(FRAMEWORKS["simsiam"].heads, "mlp", backbone_width=0.125, head_width=0.125, mlp_depths=(1, 2))
    mutables = space.simplify()
    assert "projector.depth" in mutables and list(mutables["projector.depth"].values) == [1, 2]
    assert list(mutables["projector.layer1.activation"].values) == [
        "relu", "leaky_relu", "elu", "gelu", "silu", "mish", "hardswish", "tanh", "identity"]
    net = space.freeze({k: m.values[-1] for k, m in mutables.items()})
    assert net(torch.randn(2, 3, 8, 8)).shape[0] == 2


def test_momentum_branch_shares_labels_and_starts_as_a_copy():
    space = SSLNetworkSpace(FRAMEWORKS["byol"].heads, "nasiam", backbone_width=0.125, head_width=0.125)
    for a, b in zip(space.backbone.state_dict().values(), space.momentum_backbone.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in space.momentum_projector.parameters())
    arch = {k: "linear_relu" for k in space.simplify()}
    net = space.freeze(arch)
    assert type(net.momentum_projector[0].layer1) is type(net.projector[0].layer1)


def test_cifar_stem_and_width_multiplier():
    r18 = build_backbone("resnet18")
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert isinstance(r18.maxpool, nn.Identity) and r18.feature_dim == 512
    assert build_backbone("resnet50").feature_dim == 2048
    small = build_backbone("resnet18", width=0.25)
    assert small.feature_dim == 128 and small(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg")
