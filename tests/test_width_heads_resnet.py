"""Width search beyond nas_bench_macro_width: ResNet's stage widths (``resnet_width``) and the heads' hidden
widths (head space ``width``): cost by hand and by hooks, any channels against the frozen network, the
channel shares of a head's hidden layer under each strategy, and digits searches rebuilt by retrain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_backbone_search import load, run

RESNET_WIDTH = {"model.backbone": "resnet_width", "model.backbone_options": {"depths": [1, 1, 1, 1], "bins": 4},
                "model.head_space": "width", "model.mlp_widths": [0.25, 0.5, 0.75, 1.0]}
BUDGET = 150_000  # FLOPs at 8x8, backbone and heads: 52.7k to 292k at backbone width 0.125, head width 0.0625


def randomise_batch_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm affine and statistics (the residual branch's BN starts at zero weight)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            if m.weight is not None:
                m.weight.data.normal_()
                m.bias.data.normal_()


def test_resnet_width_cost_by_hand_equals_a_hook_count_and_resnet18():
    from search_spaces.cost import BackboneCost, count_fixed
    from search_spaces.resnet_space import ResNetSpace
    from search_spaces.resnet_width import ResNetWidthSpace, uniform_point

    # by hand: width 1/16 (planes 4, 8, 16, 32), one block per stage, 2 bins, 8x8 input, widths 2, 8, 8, 16
    tiny = ResNetWidthSpace(depths=[1, 1, 1, 1], bins=2, width=1 / 16)
    assert [s.widths for s in tiny.stages] == [[2, 4], [4, 8], [8, 16], [16, 32]]
    sample = dict(zip(tiny.labels, (2, 8, 8, 16)))
    stem = (3 * 2 * 9 * 64, 3 * 2 * 9 + 2 * 2)  # the stem has stage 1's width
    stage1 = (2 * 2 * 9 * 64 * 2, 2 * 2 * 9 * 2 + 4 * 2)  # identity shortcut
    stage2 = (2 * 8 * 9 * 16 + 8 * 8 * 9 * 16 + 2 * 8 * 16, 2 * 8 * 9 + 8 * 8 * 9 + 4 * 8 + 2 * 8 + 2 * 8)  # 8 -> 4
    stage3 = (8 * 8 * 9 * 4 + 8 * 8 * 9 * 4 + 8 * 8 * 4, 8 * 8 * 9 * 2 + 4 * 8 + 8 * 8 + 2 * 8)  # -> 2x2
    stage4 = (8 * 16 * 9 + 16 * 16 * 9 + 8 * 16, 8 * 16 * 9 + 16 * 16 * 9 + 4 * 16 + 8 * 16 + 2 * 16)  # -> 1x1
    parts = (stem, stage1, stage2, stage3, stage4)
    assert tiny.cost(sample, 8) == (sum(f for f, _ in parts), sum(p for _, p in parts)) == (28288, 5866)
    assert count_fixed(tiny.freeze(sample), 8) == BackboneCost(tiny, 8)(sample)
    space = ResNetWidthSpace(depths=[2, 1, 1, 2], bins=4, width=0.125)
    cost, rng = BackboneCost(space, 8), np.random.RandomState(0)
    for _ in range(3):
        sample = {label: values[rng.randint(len(values))] for label, values in cost.labels.items()}
        assert cost(sample) == count_fixed(space.freeze(sample), 8)
    # every stage at full width is ResNet-18 (the `resnet` space's count of it)
    resnet18 = ResNetSpace(depths=[[2]] * 4, widths=[1.0], blocks=["basic"], width=0.25)
    full = ResNetWidthSpace(bins=8, width=0.25)
    assert full.cost(uniform_point(full, 8), 32) == resnet18.cost({}, 32)
    assert uniform_point(full, 4) == dict(zip(full.labels, (8, 16, 32, 64)))


@pytest.mark.parametrize("placement", ["right", "scattered"])
def test_resnet_width_on_any_channels_equals_its_frozen_network(placement):
    from search_spaces.channels import use_channels
    from search_spaces.resnet_width import ResNetWidthSpace

    torch.manual_seed(0)
    space = ResNetWidthSpace(depths=[2, 1, 1, 1], bins=4, width=0.125)
    randomise_batch_norms(space)
    sample = {label: s.widths[1] for label, s in zip(space.labels, space.stages)}  # 4, 8, 16, 32 of 8 .. 64
    if placement == "right":
        channels = {label: list(range(s.max_width - w, s.max_width)) for (label, w), s in zip(sample.items(),
                                                                                               space.stages)}
    else:
        channels = {label: sorted(np.random.RandomState(1).choice(s.max_width, w, replace=False).tolist())
                    for (label, w), s in zip(sample.items(), space.stages)}
    use_channels(space, channels)
    before = space.stages[1].blocks[0].bn1.running_mean.clone()
    frozen = space.freeze(sample)
    x = torch.randn(5, 3, 8, 8)
    features = space(x)
    assert torch.allclose(features, frozen(x), atol=1e-5)  # train mode: batch statistics, both updated
    idle = [i for i in range(space.feature_dim) if i not in channels["backbone.stage4.width"]]
    assert features[:, idle].abs().max() == 0  # features sit at the last stage's channel positions
    moved = space.stages[1].blocks[0].bn1.running_mean
    others = [i for i in range(16) if i not in channels["backbone.stage2.width"]]
    assert torch.equal(moved[others], before[others]) and not torch.equal(moved, before)
    space.eval(), frozen.eval()
    assert torch.allclose(space(x), frozen(x), atol=1e-5)


def test_head_width_on_any_channels_equals_its_frozen_head_and_its_cost_is_counted():
    from evaluators import FRAMEWORKS
    from search_spaces.cost import Cost, count_fixed
    from search_spaces.head_widths import WidthChoiceMlp, width_predictor, width_projector
    from search_spaces.heads import fixed_predictor, fixed_projector

    torch.manual_seed(0)
    dims = FRAMEWORKS["wcl"].heads.scaled(1 / 64)  # two hidden layers: hidden 32, out 8
    head = width_projector(16, dims, [0.25, 0.5, 1.0])
    randomise_batch_norms(head)
    assert head.label == "projector.width" and head.widths == [8, 16, 32]
    head.use_channels([1, 5, 6, 9, 20, 21, 30, 31, 2, 3, 4, 7, 8, 10, 11, 12])
    frozen = head.freeze({"projector.width": 16})
    x = torch.randn(6, 16)
    assert torch.allclose(head(x), frozen(x), atol=1e-5)
    head.eval(), frozen.eval()
    assert torch.allclose(head(x), frozen(x), atol=1e-5)
    # at the hand-made width the head is the framework's own, and its cost is a hook count
    for framework, make, fixed in (("simsiam", lambda d: width_projector(16, d, [0.5, 1.0]), lambda d: fixed_projector(16, d)),
                                   ("simsiam", lambda d: width_predictor(d, [0.5, 1.0]), fixed_predictor),
                                   ("ressl", lambda d: width_projector(16, d, [0.5, 1.0]), lambda d: fixed_projector(16, d))):
        d = FRAMEWORKS[framework].heads.scaled(1 / 64)
        head: WidthChoiceMlp = make(d)
        plain = head.freeze({head.label: head.max_width})
        assert [tuple(t.shape) for t in plain.state_dict().values()] == \
            [tuple(t.shape) for t in fixed(d).state_dict().values()]
        for width in head.widths:
            hooked = count_fixed(nn.Sequential(nn.Flatten(), head.freeze({head.label: width})), 1, head.in_dim)
            assert head.cost(width) == hooked
    # by hand: SimSiam's projector (16 -> w -> 32, BN affine after the hidden Linear, BN without affine after
    # the output) at w = 16, and ReSSL's (16 -> w with bias -> 32 with bias, no BN) at w = 4
    assert width_projector(16, FRAMEWORKS["simsiam"].heads.scaled(1 / 64), [0.5, 1.0]).cost(16) == Cost(
        16 * 16 + 16 * 32, 16 * 16 + 2 * 16 + 16 * 32)
    assert width_projector(16, FRAMEWORKS["ressl"].heads.scaled(1 / 64), [0.5, 1.0]).cost(4) == Cost(
        16 * 4 + 4 * 8, 16 * 4 + 4 + 4 * 8 + 8)


def trained_rows(head, placement, x) -> np.ndarray:
    """Which hidden channels one training step on ``placement`` changes: the rows of the first Linear that get
    a gradient."""
    head.zero_grad()
    head.use_channels(placement)
    head(x).square().mean().backward()
    return (head.hidden[0].weight.grad.abs().sum(1) > 0).numpy()


def test_channel_shares_of_a_head_hidden_layer_prefix_skewed_bcnet_flat_cafenet_in_its_zone():
    from experiments.strategies.bcnet import BilateralSampler
    from experiments.strategies.cafenet import LocallyFreeSampler
    from experiments.strategies.width_sampling import WidthSampler, free_zone, prefix, right_side
    from search_spaces.head_widths import WidthChoiceMlp

    torch.manual_seed(0)
    C, label = 8, "projector.width"
    head = WidthChoiceMlp(4, 4, range(1, C + 1), label)  # widths 1..C: a bin is a channel
    x = torch.randn(16, 4)
    # exactly, over every width once, by the gradients of the head itself
    left = sum(trained_rows(head, prefix(c, C), x) for c in range(1, C + 1))
    right = sum(trained_rows(head, right_side(c, C), x) for c in range(1, C + 1))
    assert left.tolist() == [C - i for i in range(C)]  # channel i (1-based) by C - i + 1 of the C widths
    assert (left + right).tolist() == [C + 1] * C  # BCNet: by C + 1 of the 2C sides, flat
    # sampled: the strategies' own samplers on the head's label, 800 steps, counted by gradients
    space = {label: head.widths}

    def shares(sampler, steps=800):
        counts, sides = np.zeros(C), 0
        for _ in range(steps):
            step = sampler.next_step()
            for placement in (step.placements if step.combine == "mean" else step.placements[:1]):
                counts += trained_rows(head, placement[label], x)
                sides += 1
        return counts / sides

    np.random.seed(0)
    expected = np.array([(C - i + 1) / C for i in range(1, C + 1)])
    assert np.abs(shares(WidthSampler(space)) - expected).max() < 0.04
    assert np.abs(shares(BilateralSampler(space)) - (C + 1) / (2 * C)).max() < 0.03
    cafenet = LocallyFreeSampler({label: [2, 4, 6, 8]}, free_bins=1, placements=3)  # r = 2 channels
    seen: dict[int, set] = {}
    for _ in range(200):
        step = cafenet.next_step()
        c = step.widths[label]
        base, zone = free_zone(c, C, 2)
        for placement in step.placements:
            rows = set(np.flatnonzero(trained_rows(head, placement[label], x)).tolist())
            assert set(range(base)) <= rows and rows - set(range(base)) <= set(zone) and len(rows) == c
            seen.setdefault(c, set()).update(rows - set(range(base)))
    assert seen[4] == {2, 3, 4, 5} and seen[8] == {6, 7}  # every zone channel used, none outside


@pytest.mark.parametrize("strategy", ["autoslim", "bcnet", "cafenet"])
def test_resnet_and_head_widths_search_within_budget_and_retrain_rebuilds(tmp_path, strategy):
    from experiments.core.records import build_fixed, read_architecture
    from search_spaces.cost import count_fixed

    out = tmp_path / strategy
    cfg = load(out, **RESNET_WIDTH, **{"backbone_search.strategy": strategy, "backbone_search.max_flops": BUDGET})
    record = run(cfg, out)
    arch = record["architecture"]
    assert set(arch) == {f"backbone.stage{s}.width" for s in range(1, 5)} | {"projector.width", "predictor.width"}
    assert record["cost"]["flops"] <= BUDGET and all(r["flops"] <= BUDGET for r in record["evolution"])
    network, rebuilt = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert rebuilt == arch
    network.load_state_dict(torch.load(out / "search_model.pt", weights_only=True)["state_dict"])
    assert network.projector[0].out_features == arch["projector.width"]
    assert network.predictor[0].out_features == arch["predictor.width"]
    backbone = count_fixed(network.backbone, 8)
    heads = [count_fixed(nn.Sequential(nn.Flatten(), h), 1, h[0].in_features)
             for h in (network.projector, network.predictor)]
    assert record["cost"]["flops"] == backbone.flops + sum(h.flops for h in heads)  # the budget counts the heads
    assert record["cost"]["params"] == backbone.params + sum(h.params for h in heads)
    if strategy == "bcnet":  # and the retrain job trains that network from scratch
        from experiments.jobs.retrain import run_retrain

        result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                             log_fn=lambda line: None)
        assert result["architecture"] == arch and result["space"]["backbone"] == "resnet_width"


def test_head_widths_are_refused_where_they_cannot_be_searched(tmp_path):
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import prepare, validate
    from experiments.jobs.search import run_search

    with pytest.raises(ConfigError, match=r"darts cannot search space nas_bench_macro \(its width choices"):
        validate(load(tmp_path / "a", **{"model.head_space": "width", "backbone_search.strategy": "darts"}))
    with pytest.raises(ConfigError, match="model.head_space: width is searched by the backbone-search job"):
        run_search(load(tmp_path / "b", **{"model.backbone": "resnet18", "model.head_space": "width"}),
                   tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="model: resnet_width bins must be an integer in"):
        prepare(load(tmp_path / "c", **{**RESNET_WIDTH, "model.backbone_options": {"bins": 0}}))


def test_the_width_study_results_page_table_is_the_mean_over_seeds_of_each_network(tmp_path):
    import json

    from experiments.studies import width as width_study
    from experiments.studies import run_study

    def run(name, seed, knn, linear, flops):
        return {"name": name, "seed": seed, "knn_top1": knn, "linear_top1": linear, "flops": flops, "max_flops": 100,
                "params": 1, "collapse": 0.5, "cpu_seconds": 1.0}

    rows = {line.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in width_study.summary([run("uniform", 0, 0.5, 0.6, 90), run("bcnet", 0, 0.2, 0.3, 80),
                                             run("uniform", 1, 0.7, 0.8, 90)]).splitlines()}
    assert rows["uniform"] == ["2", "90; 100", "0.600 ± 0.141 (0.500 / 0.700)", "0.700 ± 0.141"]
    assert rows["bcnet"] == ["1", "80; 100", "0.200 (0.200)", "0.300"]
    # the script writes it from cached runs only (--table-only trains nothing), between the results page's markers
    out = tmp_path / "runs"
    out.mkdir()
    (out / "uniform_seed3.json").write_text(json.dumps({**run("uniform", 3, 0.5, 0.6, 90), "architecture": {}}))
    page = tmp_path / "results.md"
    page.write_text(f"a\n{width_study.SUMMARY_BEGIN}\nold\n{width_study.SUMMARY_END}\nb\n")
    assert run_study("width", ["--seeds", "3", "--table-only", "--out", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and "| uniform | 1 | 90; 100 | 0.500 (0.500) | 0.600 |" in text and text.endswith("\nb\n")
