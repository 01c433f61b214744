"""The ViT backbone space: a frozen sample has the searched dimensions and the hand-counted FLOPs and
parameters, identity shifting gives one sample per network, and every framework trains on it."""
from __future__ import annotations

import warnings

import pytest
import torch

SAMPLE = {"backbone.patch_size": "2", "backbone.embed_dim": 48, "backbone.depth": 2,
          "backbone.layer1.heads": "4", "backbone.layer1.mlp_ratio": 2,
          "backbone.layer2.heads": "1", "backbone.layer2.mlp_ratio": 4,
          "backbone.layer3.heads": "2", "backbone.layer3.mlp_ratio": 1,  # past the depth: no effect
          "backbone.layer4.heads": "1", "backbone.layer4.mlp_ratio": 4}


def attention_products(network, image_size: int) -> int:
    """QK^T and AV multiply-accumulates, read from the attention inputs' shapes by forward hooks."""
    from search_spaces.vit import Attention

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        _, tokens, width = inputs[0].shape
        total += 2 * tokens * tokens * width

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, Attention)]
    try:
        with torch.no_grad():
            network.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
    return total


def test_a_frozen_sample_has_the_searched_dimensions_and_the_hand_counted_cost():
    from search_spaces.cost import count_fixed
    from search_spaces.vit import ViTSpace, layer_signature

    space = ViTSpace(image_size=8)
    network = space.freeze(SAMPLE)
    # patch 2 on 8 px: 16 patches + the class token = 17 tokens N; E = 48; hidden = 96 and 192
    assert layer_signature(network) == (2, 48, ((4, 96), (1, 192)))
    assert network.patch_embedding.projection.kernel_size == (2, 2)
    assert network.patch_embedding.tokens.position.shape == (1, 17, 48)
    assert network.patch_embedding.tokens.class_token.shape == (1, 1, 48)
    first = network.layers[0]
    assert [tuple(m.weight.shape) for m in (first.attention.query_key.query, first.attention.query_key.key,
                                            first.attention.value, first.attention.projection)] == [(48, 48)] * 4
    assert (first.fc1.in_features, first.fc1.out_features, first.fc2.out_features) == (48, 96, 48)
    assert tuple(network.norm.normalized_shape) == (48,)
    # FLOPs by hand: patches 16 * (3*2*2) * 48 = 9,216
    #   per layer 4*N*E^2 (Q K V proj) + 2*N^2*E (QK^T, AV) + 2*N*E*hidden (fc1, fc2), N = 17:
    #   layer 1: 156,672 + 27,744 + 156,672 = 341,088;  layer 2: 156,672 + 27,744 + 313,344 = 497,760
    flops = 9_216 + 341_088 + 497_760
    # params by hand: projection 12*48 + 48, class token 48, positions 17*48   = 1,488
    #   layer: 4*(48*48 + 48) = 9,408, fc1+fc2 2*48*h + h + 48, two norms 4*48 = 192
    #   layer 1 (h 96): 9,408 + 9,360 + 192 = 18,960; layer 2 (h 192): 9,408 + 18,672 + 192 = 28,272; final norm 96
    params = 1_488 + 18_960 + 28_272 + 96
    assert space.cost(SAMPLE, 8) == (flops, params) == (848_064, 48_816)
    assert sum(p.numel() for p in network.parameters()) == params
    # an independent count of the frozen network: conv/linear hooks plus the attention products
    assert count_fixed(network, 8).flops + attention_products(network, 8) == flops
    features = network(torch.randn(3, 3, 8, 8))
    assert features.shape == (3, space.feature_dim) == (3, 64)
    assert torch.all(features[:, 48:] == 0) and torch.any(features[:, :48] != 0)


def test_the_space_counts_like_the_frozen_networks_across_samples():
    import random

    from search_spaces.cost import BackboneCost, count_fixed
    from search_spaces.vit import ViTSpace

    space = ViTSpace(image_size=32, embed_dims=(16, 32), max_depth=3, heads=(1, 2), mlp_ratios=(1, 3))
    cost, rng = BackboneCost(space, 32), random.Random(0)
    assert space.patch_sizes == [8, 16] and set(cost.labels) == set(space.labels())
    for _ in range(6):
        sample = {label: rng.choice(values) for label, values in cost.labels.items()}
        network = space.freeze(sample)
        c = cost(sample)
        assert c.params == sum(p.numel() for p in network.parameters())
        assert c.flops == count_fixed(network, 32).flops + attention_products(network, 32)


def test_identity_shifting_maps_distinct_samples_to_distinct_networks():
    import itertools

    from search_spaces.cost import BackboneCost
    from search_spaces.vit import ViTSpace, layer_signature

    # three layers, each an identity or a block of 1 or 2 heads: ViTAS's encoding has 3^3 - 1 = 26 codes
    space = ViTSpace(image_size=8, patch_sizes=[4], embed_dims=[16], max_depth=3, heads=(1, 2), mlp_ratios=(1,))
    codes = [ops for ops in itertools.product([None, (1, 1), (2, 1)], repeat=3) if any(ops)]
    assert len(codes) == 26
    networks = {}
    for ops in codes:
        sample = space.shift_identities({}, list(ops))
        signature = layer_signature(space.freeze(sample))
        # the network is the code's blocks in order (its identities removed)
        assert signature == (4, 16, tuple((op[0], 16) for op in ops if op is not None))
        networks.setdefault(tuple(sorted(sample.items())), set()).add(signature)
    # 2 + 4 + 8 = 14 networks of depth 1, 2, 3; each is one shifted sample, and each sample one network
    assert len(networks) == 14 and all(len(s) == 1 for s in networks.values())
    assert len({next(iter(s)) for s in networks.values()}) == 14
    # NNI's own samples (depth + every layer's heads: 3 * 8 = 24) are many-to-one; canonical ones are not
    cost = BackboneCost(space, 8)
    raw = list(cost.enumerate())
    canonical = {tuple(sorted(space.canonical(s).items())) for s in raw}
    assert len(raw) == 24 and canonical == set(networks)
    for s in raw:
        assert layer_signature(space.freeze(s)) == layer_signature(space.freeze(space.canonical(s)))


@pytest.mark.parametrize("framework", ["simsiam", "simclr", "moco", "byol", "ressl", "wcl", "supervised"])
def test_every_framework_trains_a_vit_backbone(framework):
    from evaluators import FRAMEWORKS
    from search_spaces import SSLNetworkSpace

    torch.manual_seed(0)
    heads = FRAMEWORKS[framework].heads
    space = SSLNetworkSpace(heads, "fixed", "vit", head_width=0.0625, backbone_options={"image_size": 8})
    network = space.freeze(SAMPLE)
    options = {"queue_size": 64} if framework == "moco" else {}
    module = FRAMEWORKS[framework](embedding_dim=heads.scaled(0.0625).projector_out, **options)
    module.set_model(network)
    module.train()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 3, 8, 8, generator=g)
    batch = (x1, torch.arange(16) % 10) if framework == "supervised" else (x1, x2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a trainer warns
        loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    backbone = dict(network.backbone.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.values()), \
        [n for n, p in backbone.items() if p.grad is None or p.grad.abs().sum() == 0]


def test_an_image_size_the_space_was_not_built_for_is_refused():
    from search_spaces.vit import ViTSpace

    space = ViTSpace(image_size=8)
    with pytest.raises(ValueError, match=r"built for 8 px images \(model.backbone_options.image_size\)"):
        space(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="patch_sizes must divide image_size 8"):
        ViTSpace(image_size=8, patch_sizes=[3])


def test_a_deit_tiny_shaped_network_scaled_to_a_flops_budget():
    from search_spaces.vit import ViTSpace, deit_shaped, layer_signature

    space = ViTSpace(image_size=8)
    options, arch = deit_shaped(space, 848_064)
    # uniform layers, MLP ratio 4, patch 2 (the finest grid), the space's 4 layers, heads of ~64 channels (one
    # below 96), E the widest within budget: FLOPs = 192 E (patches) + 4 (204 E^2 + 578 E) at N = 17,
    #   E 30: 5,760 + 4 (183,600 + 17,340) = 809,520;  E 31: 861,800, over 848,064
    assert options == {"image_size": 8, "patch_sizes": [2], "embed_dims": [30], "max_depth": 4, "heads": [1],
                       "mlp_ratios": [4]}
    assert arch == {"backbone.depth": 4}
    deit = ViTSpace(**options)
    assert deit.cost(arch, 8)[0] == 809_520
    assert layer_signature(deit.freeze(arch)) == (2, 30, ((1, 120),) * 4)
    with pytest.raises(ValueError, match="no DeiT-shaped network"):
        deit_shaped(space, 1_000)


def test_building_and_freezing_a_vit_first_leaves_nnis_one_shot_strategies_importable():
    """Importing NNI's one-shot modules in the wrong order swaps nni.nas.strategy's for failure stand-ins."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("from experiments import nni_compat; nni_compat.apply()\n"
            "from search_spaces.backbone_spaces import build_backbone_space\n"
            "space = build_backbone_space('vit', options={'image_size': 8})\n"
            "space.freeze({label: values[0] for label, values in space.labels().items()})\n"
            "from nni.nas.strategy import RandomOneShot\n"
            "print(RandomOneShot.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "nni.nas.oneshot.pytorch.strategy", out.stderr[-2000:]
