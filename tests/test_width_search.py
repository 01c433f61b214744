"""Width search: the space's channel selection and cost, how often each strategy trains each channel,
one weight step's momentum and queue, and each strategy's CI-sized search on digits, rebuilt by retrain."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_backbone_search import assert_picks_the_most_flops, load, run, score_by_flops

WIDTH_SPACE = {"model.backbone": "nas_bench_macro_width"}
BUDGET = 40_000  # FLOPs at 8x8: the width space spans 19.3k to 68.2k at backbone width 0.125


def one_layer_space(channels: int = 8) -> dict:
    """One layer whose widths are 1..C channels: a bin is a channel, so shares are in channels."""
    return {"backbone.layer1.width": list(range(1, channels + 1))}


def channel_shares(sampler, steps: int) -> np.ndarray:
    """How often each channel of layer 1 is trained, per trained side (the sampler's placements)."""
    label = "backbone.layer1.width"
    counts, sides = np.zeros(sampler.max_width[label]), 0
    for _ in range(steps):
        step = sampler.next_step()
        trained = step.placements if step.combine == "mean" else step.placements[:1]
        for placement in trained:
            counts[placement[label]] += 1
            sides += 1
    return counts / sides


def test_prefix_sharing_is_skewed_as_the_formula_and_bcnet_is_flat():
    from experiments.strategies.bcnet import BilateralSampler
    from experiments.strategies.width_sampling import WidthSampler, prefix, right_side

    C = 8
    # exactly, over every width once: channel i (1-based) is in the prefix of (C - i + 1) of the C widths,
    # and in BCNet's left or right side of C + 1 of the 2C sides
    widths = range(1, C + 1)
    left = np.array([sum(i in prefix(c, C) for c in widths) for i in range(C)])
    both = left + np.array([sum(i in right_side(c, C) for c in widths) for i in range(C)])
    assert left.tolist() == [C - i for i in range(C)]  # (C - i + 1) with i 1-based
    assert both.tolist() == [C + 1] * C
    # sampled: the strategies' own samplers, 4000 steps (BCNet with its complementary steps)
    np.random.seed(0)
    autoslim = channel_shares(WidthSampler(one_layer_space(C)), 4000)
    bcnet = channel_shares(BilateralSampler(one_layer_space(C)), 4000)
    expected = np.array([(C - i + 1) / C for i in range(1, C + 1)])
    assert np.abs(autoslim - expected).max() < 0.03
    assert np.abs(bcnet - (C + 1) / (2 * C)).max() < 0.02
    assert autoslim[0] == 1.0 and autoslim[-1] < 0.2


def test_bcnet_trains_each_width_then_its_complement():
    from experiments.strategies.bcnet import BilateralSampler
    from experiments.strategies.width_sampling import complementary

    assert [complementary(range(1, 9), c) for c in (1, 3, 8)] == [8, 6, 1]
    np.random.seed(1)
    sampler = BilateralSampler(one_layer_space(8))
    for _ in range(20):
        drawn, partner = sampler.next_step(), sampler.next_step()
        c = drawn.widths["backbone.layer1.width"]
        assert partner.widths["backbone.layer1.width"] == 9 - c
        assert drawn.placements == [{"backbone.layer1.width": list(range(c))},
                                    {"backbone.layer1.width": list(range(8 - c, 8))}]


def test_cafenet_free_channels_move_within_their_zone_only():
    from experiments.strategies.cafenet import LocallyFreeSampler

    np.random.seed(2)
    C, label = 16, "backbone.layer1.width"
    sampler = LocallyFreeSampler({label: [2, 4, 6, 8, 10, 12, 14, 16]}, free_bins=1, placements=3)
    assert sampler.free[label] == 2  # one width step of the layer
    seen: dict[int, set] = {}
    for _ in range(600):
        step = sampler.next_step()
        c = step.widths[label]
        for placement in step.placements:
            channels = placement[label]
            assert len(channels) == c and channels[:c - 2] == list(range(c - 2))  # the base: first c - r
            free = set(channels[c - 2:])
            assert free <= set(range(c - 2, min(C, c + 2)))  # the zone [c - r, c + r)
            seen.setdefault(c, set()).update(free)
    assert seen[8] == {6, 7, 8, 9} and seen[16] == {14, 15}  # every zone channel is used; none outside


def test_min_min_trains_only_the_lowest_loss_placement_and_remembers_it():
    from experiments.strategies.cafenet import LocallyFreeSampler
    from experiments.strategies.width_sampling import WidthSamplingModule, WidthStep

    label = "backbone.layer1.width"
    trained = []

    class Probe:  # a framework module whose loss is the placement's first free channel
        model = torch.nn.Module()
        queue_frozen = staticmethod(lambda: torch.no_grad())

        def ssl_loss(self, views, arch_step):
            trained.append(torch.is_grad_enabled())
            return torch.tensor(float(self.current), requires_grad=True)

    probe = Probe()
    placements = [{label: [0, 3]}, {label: [0, 1]}, {label: [0, 2]}]
    step = WidthStep({label: 2}, placements, "min")
    import experiments.strategies.width_sampling as ws
    original = ws.use_channels
    ws.use_channels = lambda model, placement: setattr(probe, "current", placement[label][1])
    try:
        loss = step.loss(probe, None)
    finally:
        ws.use_channels = original
    assert step.losses == [3.0, 1.0, 2.0] and step.chosen == 1 and float(loss) == 1.0
    assert trained == [False, False, False, True]  # probes without gradient, then one trained forward
    sampler = LocallyFreeSampler({label: [1, 2, 3, 4]})
    sampler.after_step(step)
    assert sampler.placement_of({label: 2}) == {label: [0, 1]}
    assert sampler.placement_of({label: 3}) == {label: [0, 1, 2]}  # never trained: the prefix


@pytest.mark.parametrize("channels", [[0, 1, 2], [5, 6, 7, 8], [1, 4, 7, 10, 11]])
def test_a_block_on_any_channels_equals_its_frozen_network_and_keeps_its_statistics(channels):
    from search_spaces.channels import WidthChoiceBlock

    torch.manual_seed(0)
    block = WidthChoiceBlock(4, 4, 1, 3, [3, 4, 5, 12], "backbone.layer1.width")
    for bn in (block.bn1, block.bn2):
        bn.running_mean.normal_()
    before = block.bn1.running_mean.clone()
    block.use_channels(channels)
    frozen = block.freeze({"backbone.layer1.width": len(channels)})
    x = torch.randn(6, 4, 5, 5)
    assert torch.allclose(block(x), frozen(x), atol=1e-6)  # train mode: batch statistics, both updated
    after = block.bn1.running_mean
    assert torch.allclose(after[channels], frozen.conv[1].running_mean)  # the selected channels moved ...
    others = [i for i in range(12) if i not in channels]
    assert torch.equal(after[others], before[others])  # ... and no other
    block.eval(), frozen.eval()
    assert torch.allclose(block(x), frozen(x), atol=1e-6)


def test_width_space_cost_equals_a_hook_count_of_its_frozen_networks():
    from search_spaces.cost import BackboneCost, count_fixed
    from search_spaces.macro_width import MacroWidthSpace, width_choices

    assert width_choices(96, 8) == [12, 24, 36, 48, 60, 72, 84, 96]
    space = MacroWidthSpace(width=0.25)
    cost = BackboneCost(space, 8)
    assert len(cost.labels) == 8 and cost.labels["backbone.layer8.width"] == width_choices(64 * 3, 8)
    rng = np.random.RandomState(0)
    for _ in range(3):
        sample = {label: values[rng.randint(len(values))] for label, values in cost.labels.items()}
        assert cost(sample) == count_fixed(space.freeze(sample), 8)
    # by hand: width 1/16 (stem 4, stages 4, 8, 16 channels, head 80), three layers, two bins, 8x8 input
    tiny = MacroWidthSpace(width=1 / 16, stages=[1, 1, 1], bins=2)
    assert [block.widths for block in tiny.layers] == [[6, 12], [6, 12], [12, 24]]
    stem = (3 * 4 * 9 * 8 * 8, 3 * 4 * 9 + 2 * 4)
    layer1 = (4 * 6 * 8 * 8 + 6 * 9 * 4 * 4 + 6 * 4 * 4 * 4, 4 * 6 + 6 * 9 + 6 * 4 + 2 * (6 + 6 + 4))  # 8x8 -> 4x4
    layer2 = (4 * 6 * 4 * 4 + 6 * 9 * 2 * 2 + 6 * 8 * 2 * 2, 4 * 6 + 6 * 9 + 6 * 8 + 2 * (6 + 6 + 8))  # -> 2x2
    layer3 = (8 * 12 * 2 * 2 + 12 * 9 + 12 * 16, 8 * 12 + 12 * 9 + 12 * 16 + 2 * (12 + 12 + 16))  # -> 1x1
    head = (16 * 80, 16 * 80 + 2 * 80)
    sample = {"backbone.layer1.width": 6, "backbone.layer2.width": 6, "backbone.layer3.width": 12}
    parts = (stem, layer1, layer2, layer3, head)
    assert tiny.cost(sample, 8) == (sum(f for f, _ in parts), sum(p for _, p in parts)) == (12452, 2332)
    assert count_fixed(tiny.freeze(sample), 8) == BackboneCost(tiny, 8)(sample)


def test_two_sides_push_the_queue_and_update_the_momentum_encoder_once(monkeypatch):
    from evaluators.moco import MoCo
    from experiments.strategies.width_sampling import WidthSamplingModule, WidthStep
    from search_spaces.network import SSLNetworkSpace

    torch.manual_seed(0)
    network = SSLNetworkSpace(MoCo.heads, "fixed", "nas_bench_macro_width", 0.125, head_width=0.0625,
                              backbone_options={"stages": [1, 1, 1]})
    module = MoCo(queue_size=64, embedding_dim=8, batch_size=4)
    module.set_model(network)
    updates = []
    monkeypatch.setattr(module, "momentum_step", lambda *a, **k: updates.append(1))
    labels = [b.label for b in network.backbone.layers]
    sides = [{label: [0, 1] for label in labels}, {label: [2, 3] for label in labels}]
    views = (torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))
    step = WidthStep({label: 2 for label in labels}, sides)
    sampler = SimpleNamespace(next_step=lambda: step, after_step=lambda finished: None)
    loss = WidthSamplingModule(module, lambda: sampler).training_step(views, 0)
    assert updates == [1] and module.weight_steps == 1
    assert int(module.queue_ptr) == 8  # the two views' keys of one side: 2 x batch 4
    assert len(step.losses) == 2 and torch.isclose(loss, torch.tensor(sum(step.losses) / 2))
    # the momentum branch ran on the same channels as the online one
    assert all(len(b.channels) == 2 for b in network.momentum_backbone.layers)


@pytest.mark.parametrize("strategy", ["autoslim", "bcnet", "cafenet"])
def test_each_width_strategy_searches_within_budget_and_exports_what_retrain_rebuilds(tmp_path, strategy,
                                                                                    monkeypatch):
    from experiments.core.records import build_fixed, read_architecture
    from search_spaces.cost import count_fixed

    score_by_flops(monkeypatch)
    out = tmp_path / strategy
    cfg = load(out, **WIDTH_SPACE, **{"backbone_search.strategy": strategy, "backbone_search.max_flops": BUDGET})
    record = run(cfg, out)
    assert record["status"] == "ok" and record["strategy"] == strategy
    assert set(record["architecture"]) == {f"backbone.layer{i}.width" for i in range(1, 9)}
    assert record["cost"]["flops"] <= BUDGET
    assert record["evolution"] and all(r["flops"] <= BUDGET for r in record["evolution"])
    assert_picks_the_most_flops(record)
    saved = torch.load(out / "search_model.pt", weights_only=True)
    network, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert arch == record["architecture"]
    network.load_state_dict(saved["state_dict"])  # the searched weights fit the rebuilt widths
    assert count_fixed(network.backbone, 8) == type(count_fixed(network.backbone, 8))(
        record["cost"]["flops"], record["cost"]["params"])
    assert [layer.conv[0].out_channels for layer in network.backbone.layers] == list(arch.values())
    if strategy == "cafenet":  # and the retrain job itself trains that network from scratch
        from experiments.jobs.retrain import run_retrain

        result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                             log_fn=lambda line: None)
        assert result["architecture"] == record["architecture"]
        assert result["space"]["backbone"] == "nas_bench_macro_width"


def test_width_strategies_refuse_other_spaces_and_searched_heads(tmp_path):
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import validate

    with pytest.raises(ConfigError, match=r"bcnet cannot search space nas_bench_macro \(its layer choices"):
        validate(load(tmp_path / "a", **{"backbone_search.strategy": "bcnet"}))
    with pytest.raises(ConfigError, match=r"model.head_space: cafenet searches widths: use heads whose choices "
                                          r"are widths or none \(fixed, width\), got nasiam"):
        load(tmp_path / "b", **WIDTH_SPACE, **{"backbone_search.strategy": "cafenet", "model.head_space": "nasiam"})
    with pytest.raises(ConfigError, match=r"strategy_options.placements: must be in \[1, 64\]"):
        load(tmp_path / "c", **WIDTH_SPACE, **{"backbone_search.strategy": "cafenet",
                                                "backbone_search.strategy_options": {"placements": 0}})


def test_every_ddp_rank_trains_the_same_widths_and_placements(tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT, ddp_env

    out = tmp_path / "run"
    env = ddp_env()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_width_search.py"), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) >= 2  # 128 images per rank, batches of 32
    assert rank0 == rank1  # widths, the probed placements and the one trained: identical on both ranks


def test_flops_sensitive_bins_give_every_bin_about_the_same_flops():
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace, flops_sensitive_bins

    assert flops_sensitive_bins([1, 2, 1], [100, 100, 100], 4) == [3, 6, 3]  # 12 bins shared 1 : 2 : 1
    assert flops_sensitive_bins([1, 10], [100, 2], 4) == [1, 2]  # at least 1, at most the layer's channels

    def bin_flops(space) -> list[float]:  # the FLOPs of each layer's top bin at 32x32
        cost = BackboneCost(space, 32)
        widest = {label: values[-1] for label, values in cost.labels.items()}
        return [cost(widest).flops - cost(dict(widest, **{label: values[-2]})).flops
                for label, values in cost.labels.items()]

    uniform, sensitive = bin_flops(MacroWidthSpace()), bin_flops(MacroWidthSpace(bins_by="flops"))
    spread = lambda values: max(values) / min(values)  # noqa: E731
    assert spread(sensitive) < 1.2 < 1.4 < spread(uniform)  # 1.17 (rounding to whole bins) against 1.41
    # by hand at 32x32: layer FLOPs at full width 4.94M, 6.73M, 4.83M, 6.51M, 6.51M, 4.77M, 6.40M, 6.40M of
    # 47.1M, times 64 bins: 6.71, 9.15, 6.56, 8.85, 8.85, 6.49, 8.70, 8.70
    assert [len(b.widths) for b in MacroWidthSpace(bins_by="flops").layers] == [7, 9, 7, 9, 9, 6, 9, 9]


def test_the_samplers_state_survives_a_safe_checkpoint_load(tmp_path):
    from types import SimpleNamespace

    from experiments.strategies.bcnet import BilateralSampler
    from experiments.strategies.cafenet import LocallyFreeSampler
    from experiments.strategies.width_sampling import width_space
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace

    space = width_space(SimpleNamespace(cost=BackboneCost(MacroWidthSpace(width=0.125, stages=[1, 1, 1]), 8)))
    for make in (lambda: BilateralSampler(space), lambda: LocallyFreeSampler(space)):
        np.random.seed(3)
        sampler = make()
        for i in range(5):  # an odd number: BCNet has a complement pending
            step = sampler.next_step()
            step.losses = [float(i), float(i) + 1.0]
            sampler.after_step(step)
        torch.save({"width_sampler": sampler.state_dict()}, tmp_path / "last.ckpt")
        restored = make()  # NNI's labels are str subclasses that a safe load refuses (quirk 6)
        restored.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=True)["width_sampler"])
        assert restored.state_dict() == sampler.state_dict()
        np.random.seed(4)
        ahead = sampler.next_step()
        np.random.seed(4)
        assert restored.next_step().placements == ahead.placements


def test_bcnet_loss_table_is_each_widths_mean_recorded_loss_and_ten_where_never_recorded():
    from experiments.strategies.bcnet import UNSEEN_LOSS, loss_table

    records = [(1.0, {"a": 1, "b": 2}), (3.0, {"a": 1, "b": 1}), (2.0, {"a": 2, "b": 1})]
    table = loss_table(records, {"a": [1, 2, 3], "b": [1, 2]})
    assert UNSEEN_LOSS == 10.0  # the released code's 1e-4 / 1e-5
    assert table["a"].tolist() == [2.0, 2.0, 10.0] and table["b"].tolist() == [2.5, 1.0]


def test_bcnet_pairwise_cost_expectation_is_exact_for_products_of_two_widths():
    from experiments.strategies.bcnet import PairwiseCost

    space = {"a": [1, 2, 4], "b": [1, 3], "c": [2, 5]}
    cost = PairwiseCost(lambda s: 7 + s["a"] * s["b"] + 2 * s["b"] * s["c"] + s["a"], space)
    assert set(cost.pairs) == {("a", "b"), ("b", "c")}  # a and c do not interact
    p = {"a": torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), "b": torch.tensor([0.6, 0.4], dtype=torch.float64),
         "c": torch.tensor([0.1, 0.9], dtype=torch.float64)}
    ea, eb, ec = 0.2 + 0.6 + 2.0, 0.6 + 1.2, 0.2 + 4.5  # 2.8, 1.8, 4.7
    assert float(cost.expected(p)) == pytest.approx(7 + ea * eb + 2 * eb * ec + ea)  # 31.76


def test_bcnet_prior_fits_the_flops_target_and_then_the_lower_losses():
    from experiments.strategies.bcnet import PairwiseCost, fit_prior

    # eight layers of widths 1 and 3, FLOPs = the sum of widths, target 16 (a mean width of 2)
    space = {f"l{i}": [1, 3] for i in range(8)}
    flops = PairwiseCost(lambda s: sum(s.values()), space).expected
    wide_is_better = {f"l{i}": torch.tensor([1.0, 0.0] if i < 4 else [0.0, 1.0], dtype=torch.float64)
                      for i in range(8)}
    as_tensors = lambda prior: {label: torch.tensor(p) for label, p in prior.items()}  # noqa: E731
    prior = fit_prior(wide_is_better, flops, 16.0)  # the released constants: the FLOPs term (x1000) is met
    assert float(flops(as_tensors(prior))) == pytest.approx(16.0, rel=0.01)
    # fitted to the end, the losses decide within the target: width 3 in layers 0-3, width 1 in layers 4-7
    prior = fit_prior(wide_is_better, flops, 16.0, steps=3000, lr=0.1)
    assert all(prior[f"l{i}"][1] > 0.95 for i in range(4)) and all(prior[f"l{i}"][0] > 0.95 for i in range(4, 8))
    assert float(flops(as_tensors(prior))) == pytest.approx(16.0, rel=0.01)
    # no budget: the lower mean loss gets the higher probability in every layer
    prior = fit_prior({"a": torch.tensor([1.0, 0.0], dtype=torch.float64),
                       "b": torch.tensor([0.0, 1.0], dtype=torch.float64)}, steps=3000, lr=0.5)
    assert prior["a"][1] > 0.95 and prior["b"][0] > 0.95


def test_bcnet_prior_population_is_distinct_legal_and_drawn_from_the_prior():
    from experiments.strategies.bcnet import prior_population

    space = {"a": [1, 2, 3], "b": [1, 2, 3]}
    prior = {"a": np.array([0.5, 0.5, 0.0]), "b": np.array([0.2, 0.3, 0.5])}
    population = prior_population(prior, space, 4, legal=lambda w: w["a"] + w["b"] >= 3, seed=1)
    assert len(population) == 4 and len({tuple(w.values()) for w in population}) == 4
    assert all(w["a"] != 3 and w["a"] + w["b"] >= 3 for w in population)
    # only five legal widths exist with a in {1, 2}: asking for more returns those five
    assert len(prior_population(prior, space, 9, legal=lambda w: w["a"] + w["b"] >= 3, seed=1, max_draws=500)) == 5


def test_bcnet_seeds_come_from_the_prior_in_the_flops_window_or_from_the_records_by_option(tmp_path, monkeypatch):
    from experiments.strategies import bcnet
    from experiments.strategies.base import SearchContext
    from experiments.strategies.width_sampling import LowestLosses, width_space
    from search_spaces.cost import BackboneCost
    from search_spaces.macro_width import MacroWidthSpace

    cost = BackboneCost(MacroWidthSpace(width=0.125), 8)
    space = width_space(SimpleNamespace(cost=cost))
    narrow, wide = ({label: w[i] for label, w in space.items()} for i in (0, -1))
    records, rng = LowestLosses(40), np.random.default_rng(0)
    for loss, widths in ((2.0, wide), (1.0, narrow), (3.0, narrow)):
        records.push(loss, widths)
    for _ in range(37):  # lossier random widths, every width recorded somewhere
        records.push(4.0 + rng.random(), {label: int(rng.choice(w)) for label, w in space.items()})
    nni_strategy = SimpleNamespace(oneshot_module=SimpleNamespace(sampler=SimpleNamespace(records=records)))

    def seeds(**options):
        cfg = load(tmp_path / "-".join(map(str, options.values())), **WIDTH_SPACE, **{
            "backbone_search.strategy": "bcnet", "backbone_search.max_flops": BUDGET,
            "backbone_search.strategy_options": options})
        return bcnet.BCNet().seeds(SearchContext(cfg, "backbone", cost=cost, log_fn=lambda line: None), nni_strategy)

    assert seeds(init="records")[0] == narrow  # the lowest loss first, once; the wide one is over the budget
    assert wide not in seeds(init="records")
    targets = []
    fit = bcnet.fit_prior
    monkeypatch.setattr(bcnet, "fit_prior", lambda *a, **k: targets.append(a[2]) or fit(*a, **k))
    population = seeds(population=8)
    assert targets == [pytest.approx(0.9 * BUDGET)]  # the default target reaches the fit
    assert len(population) == 8 and len({tuple(w.values()) for w in population}) == 8  # the population option
    assert all(0.8 * BUDGET <= cost(w).flops <= BUDGET for w in population)
    seeds(prior_target=0.5, population=4)
    assert targets[-1] == pytest.approx(0.5 * BUDGET)
