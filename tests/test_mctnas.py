"""MCT-NAS as a backbone strategy, and distinct-network sampling (SPOS and MCT-NAS).

The tree itself is tested in tests/test_mcts.py; here: the reward it is fed under SSL (the
shifted, rank-averaged loss), distinct sampling's uniformity over networks, the strategy's
selection on hand-made scores, its errors, a search on digits that retrain rebuilds, and a
stopped search that resumes to the same architecture.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT
from tests.test_backbone_search import load, run, tiny_backbone_overrides

MCTNAS_CONFIG = ROOT / "configs" / "digits_backbone_mctnas.yml"
NUM_DISTINCT = 3969


def space():
    from search_spaces.nas_bench_macro import NAS_BENCH_MACRO_OPS, layer_labels

    return [(label, list(NAS_BENCH_MACRO_OPS)) for label in layer_labels()]


def shared_tree(uniform_steps=0, first_update=0, seed=0, distinct=False, loss_shift=1.0):
    from experiments.strategies.distinct import distinct_architectures
    from experiments.strategies.mctnas import SharedTree
    from experiments.strategies.mcts import MonteCarloTree, WarmupSchedule

    tree = MonteCarloTree([3] * 8, seed=seed, warmup=WarmupSchedule(uniform_steps, first_update))
    return SharedTree(tree, space(), loss_shift, distinct_architectures("nas_bench_macro") if distinct else None)


def network_counts(architectures) -> Counter:
    from search_spaces.nas_bench_macro import arch_to_key, canonical_key

    return Counter(canonical_key(arch_to_key(a)) for a in architectures)


def chi_square(counts: Counter, draws: int) -> float:
    expected = draws / NUM_DISTINCT
    return sum((counts.get(key, 0) - expected) ** 2 / expected for key in _distinct_keys())


def _distinct_keys():
    from search_spaces.nas_bench_macro import distinct_keys

    return distinct_keys()


# --- distinct-network sampling -----------------------------------------------------------------
DRAWS = 12 * NUM_DISTINCT
# chi-square with 3968 degrees of freedom: mean 3968, sd sqrt(2 * 3968) = 89; 5 sd above the mean
CHI_SQUARE_BOUND = 3968 + 5 * math.sqrt(2 * 3968)


def test_distinct_keys_are_one_canonical_key_per_network():
    from search_spaces.nas_bench_macro import canonical_key

    keys = _distinct_keys()
    assert len(keys) == NUM_DISTINCT == len(set(keys))
    assert all(canonical_key(k) == k for k in keys)
    assert "10110110" in keys and "10101101" not in keys  # the latter is the former's network


def test_distinct_spos_draws_every_network_equally_often_where_key_sampling_does_not():
    import numpy as np
    import pytorch_lightning as pl

    from experiments.strategies.sampling import distinct_spos

    module = distinct_spos("nas_bench_macro").configure_oneshot_module(pl.LightningModule())
    np.random.seed(0)
    distinct = network_counts(module.draw() for _ in range(DRAWS))
    assert set(distinct) <= set(_distinct_keys())
    assert chi_square(distinct, DRAWS) < CHI_SQUARE_BOUND
    # uniform over keys, as NNI's RandomOneShot draws: a network's frequency follows its keys (1, 2 or 4)
    from search_spaces.nas_bench_macro import canonical_key, key_to_arch

    rng = np.random.RandomState(0)
    keys = ("".join(map(str, rng.randint(3, size=8))) for _ in range(DRAWS))
    by_key = network_counts(key_to_arch(k) for k in keys)
    assert chi_square(by_key, DRAWS) > 3 * CHI_SQUARE_BOUND
    keys_of = Counter(canonical_key(k) for k in ("".join(d) for d in itertools.product("012", repeat=8)))

    def mean_count(counts, keys):  # over the networks that are ``keys`` keys
        networks = [n for n, m in keys_of.items() if m == keys]
        return sum(counts.get(n, 0) for n in networks) / len(networks)

    assert mean_count(by_key, 4) > 3.5 * mean_count(by_key, 1)  # expected 4
    assert mean_count(distinct, 4) == pytest.approx(mean_count(distinct, 1), rel=0.1)


def test_mctnas_warm_up_draws_distinct_networks_uniformly_and_trains_representatives_after():
    tree = shared_tree(uniform_steps=DRAWS, distinct=True)
    architectures = []
    for _ in range(DRAWS):
        architectures.append(tree.architecture(tree.draw()))
        tree.tree.steps_done += 1  # what update() counts, without backing anything up
    assert chi_square(network_counts(architectures), DRAWS) < CHI_SQUARE_BOUND
    # from the tree: every path drawn is its network's canonical key
    from search_spaces.nas_bench_macro import arch_to_key, canonical_key

    after = shared_tree(uniform_steps=0, distinct=True)
    for step in range(200):
        key = arch_to_key(after.architecture(path := after.draw()))
        assert canonical_key(key) == key
        after.back_up(path, torch.tensor(0.5 + 0.001 * step))
    plain = shared_tree(uniform_steps=200)
    drawn = [arch_to_key(plain.architecture(plain.draw())) for _ in range(200)]
    assert any(canonical_key(k) != k for k in drawn)  # without ``distinct``, keys as they come


# --- the reward ----------------------------------------------------------------------------------
def test_reward_is_the_loss_average_over_the_shifted_loss():
    tree = shared_tree(loss_shift=1.0)
    path = (0, 1, 2, 0, 1, 2, 0, 1)
    assert tree.back_up(path, torch.tensor(-0.5)) == pytest.approx(1.0)  # the first: exactly 1
    # average of the shifted losses 0.5 and 1.0 with momentum 0.96: 0.52; over 1.0
    assert tree.back_up(path, torch.tensor(0.0)) == pytest.approx(0.52)
    assert tree.tree.root.visits == 2 and tree.tree.root.reward_sum == pytest.approx(1.52)
    with pytest.raises(RuntimeError, match="loss_shift"):
        tree.back_up(path, torch.tensor(-1.0))  # SimSiam's floor: 1 + loss = 0


def test_greedy_path_follows_the_best_mean_reward_then_node_communication():
    from experiments.strategies.mctnas import greedy_path

    tree = shared_tree().tree
    tree.backup((1,) * 8, 0.5)
    tree.backup((2,) + (0,) * 7, 0.9)
    tree.backup((1, 2) + (0,) * 6, 0.1)
    # layer 1: op 2's Q/n 0.9 beats op 1's 0.3; below it every layer's only child is op 0
    assert greedy_path(tree) == (2,) + (0,) * 7
    fresh = shared_tree().tree
    fresh.communication[3][2] = 0.4  # no visits: communication decides
    assert greedy_path(fresh) == (0, 0, 0, 2, 0, 0, 0, 0)


def test_selection_scores_on_the_reward_scale_and_never_evaluates_over_budget():
    """MCTNAS.select on a hand-made supernet and scorer: a network's accuracy is its mb6_k5 count / 8."""
    from experiments.strategies.mctnas import MCTNAS

    cfg = load(ROOT / "unused", **{"backbone_search.strategy": "mctnas",
                                   "backbone_search.strategy_options": {"min_visits": 1, "num_leaves": 4}})
    budget = 5  # "FLOPs": the number of mb6_k5 layers

    class Cost:
        def __call__(self, arch):
            n = sum(v == "mb6_k5" for v in arch.values())
            return SimpleNamespace(flops=n, params=n, within=lambda f, p: f is None or n <= f)

    scored = []

    def scorer(network):
        scored.append(network)
        return sum(v == "mb6_k5" for v in network.values()) / 8

    shared = shared_tree()
    reference = shared.architecture((0,) * 8)  # the greedy path of an empty tree: accuracy 0 -> scale 1
    strategy = SimpleNamespace(oneshot_module=SimpleNamespace(shared=shared),
                               supernet=SimpleNamespace(freeze=dict))
    ctx = SimpleNamespace(cfg=cfg, cost=Cost(), scorer=scorer, budget=(budget, None), log_fn=lambda line: None)
    selection = MCTNAS().select(ctx, strategy)
    assert scored[0] == reference
    assert all(sum(v == "mb6_k5" for v in n.values()) <= budget for n in scored)
    assert sum(v == "mb6_k5" for v in selection.architecture.values()) <= budget
    assert selection.evolution and all(r["reward_scale"] == r["score"] for r in selection.evolution)  # scale 1
    assert selection.architecture in [r["architecture"] for r in selection.evolution]
    assert scorer(selection.architecture) > 0


def test_selection_options_reach_the_tree_and_an_unknown_rule_is_refused(tmp_path, monkeypatch):
    from experiments.core.errors import ConfigError
    from experiments.strategies.mctnas import MCTNAS
    from experiments.strategies.mcts import MonteCarloTree, Selection

    seen = []
    monkeypatch.setattr(MonteCarloTree, "select", lambda tree, evaluate, **options: seen.append(options) or
                        Selection((0,) * 8, 1.0, [((0,) * 8, 1.0)]))
    shared = shared_tree()
    strategy = SimpleNamespace(oneshot_module=SimpleNamespace(shared=shared), supernet=SimpleNamespace(freeze=dict))
    budget_of = []

    class Cost:
        def __call__(self, arch):
            return SimpleNamespace(flops=1, params=1, within=lambda f, p: budget_of.append(f) or True)

    for options, rules in (({}, ("parent", "softmax")), ({"threshold": "child", "descent": "greedy"},
                                                         ("child", "greedy"))):
        cfg = load(tmp_path / str(len(options)), **{"backbone_search.strategy": "mctnas",
                                                    "backbone_search.strategy_options": options})
        ctx = SimpleNamespace(cfg=cfg, cost=Cost(), scorer=lambda network: 0.5, budget=(7, None),
                              log_fn=lambda line: None)
        MCTNAS().select(ctx, strategy)
        assert (seen[-1]["threshold"], seen[-1]["descent"]) == rules
        assert seen[-1]["within"]((1,) * 8) and budget_of[-1] == 7  # the budget reaches the tree as ``within``
    with pytest.raises(ConfigError, match=r"strategy_options.descent: must be one of softmax, greedy, got 'uniform'"):
        load(tmp_path / "bad", **{"backbone_search.strategy": "mctnas",
                                  "backbone_search.strategy_options": {"descent": "uniform"}})


# --- DDP -----------------------------------------------------------------------------------------
WORLD, DDP_STEPS = 2, 40


def _loss(path, rank):  # each rank sees another loss for the same path
    return 0.2 + 0.05 * sum(path) + 0.3 * rank


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    from experiments.strategies.sampling import broadcast_from_rank_zero, mean_over_ranks

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        tree = shared_tree(uniform_steps=10, first_update=5, seed=rank)  # rank 1's own draws would differ
        tree.broadcast, tree.mean = broadcast_from_rank_zero, mean_over_ranks
        paths = []
        for _ in range(DDP_STEPS):
            path = tree.draw()
            paths.append(list(path))
            tree.back_up(path, torch.tensor(_loss(path, rank)))
        state = tree.tree.state_dict()
        state.pop("rng_state")  # each rank's own generator (seeded apart here, alike under Lightning)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"paths": paths, "state": state}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_train_rank_zeros_path_and_keep_the_same_tree(tmp_path):
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    # fork, as tests/test_ddp_average.py: a forked child starts at once, a spawned one re-imports NNI
    mp.start_processes(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["paths"] == ranks[1]["paths"]
    assert ranks[0]["state"] == ranks[1]["state"]
    # ... and it is the tree of one process fed the mean loss over the ranks
    alone = shared_tree(uniform_steps=10, first_update=5, seed=0)
    for path in ranks[0]["paths"]:
        assert list(alone.draw()) == path
        summed = sum(torch.tensor(_loss(path, r)) for r in range(WORLD))  # all_reduce's float32 sum
        alone.back_up(tuple(path), torch.tensor(float(summed) / WORLD, dtype=torch.float64))
    state = alone.tree.state_dict()
    state.pop("rng_state")
    assert json.loads(json.dumps(state)) == ranks[0]["state"]
    assert ranks[0]["state"]["losses_seen"] == DDP_STEPS - 5


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"backbone_search.strategy_options": {"distinct": True}, "model.backbone": "macro"},
     "backbone_search.strategy_options.distinct: mctnas samples distinct networks of nas_bench_macro only"),
    ({"backbone_search.strategy_options": {"loss_shift": 0.5}}, "needs loss_shift >= 1"),
    ({"backbone_search.strategy_options": {"temperature": 0}}, "temperature: must be in (0, 100]"),
    ({"backbone_search.strategy_options": {"min_visit": 2}}, "did you mean 'min_visits'"),
    ({"model.head_space": "nasiam"}, "mctnas searches the backbone only"),
])
def test_bad_mctnas_input_is_one_clear_error(tmp_path, capsys, overrides, message):
    from experiments.cli import main

    out = tmp_path / "run"
    argv = ["backbone-search", "--config", str(MCTNAS_CONFIG), "--output-dir", str(out)]
    for key, value in tiny_backbone_overrides(out, **overrides).items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() or not (out / "best_architecture.json").exists()


def test_spos_refuses_distinct_outside_nas_bench_macro(tmp_path):
    from experiments.core.errors import ConfigError

    with pytest.raises(ConfigError, match="spos samples distinct networks of nas_bench_macro only"):
        load(tmp_path, **{"model.backbone": "resnet", "backbone_search.max_params": 60_000,
                          "backbone_search.max_flops": None, "backbone_search.strategy_options": {"distinct": True}})


# --- on digits -----------------------------------------------------------------------------------
def mctnas_config(out, **extra):
    from experiments.core.validation import load_config

    overrides = tiny_backbone_overrides(out, **{
        "search.epochs": 2, "backbone_search.max_flops": 40_000,
        "backbone_search.strategy_options": {"min_visits": 1, "num_leaves": 2, "distinct": True}, **extra})
    return load_config(MCTNAS_CONFIG, overrides)


def test_mctnas_searches_digits_within_budget_and_retrain_rebuilds_the_export(tmp_path, optimised_weights):
    from experiments.core.records import build_fixed, read_architecture
    from experiments.jobs.retrain import run_retrain
    from search_spaces.cost import count_fixed

    out = tmp_path / "search"
    cfg = mctnas_config(out)
    record = run(cfg, out)
    assert record["strategy"] == "mctnas" and record["cost"]["flops"] <= 40_000
    assert math.isfinite(record["history"][-1]["ssl_loss"])
    moved = optimised_weights.moved()
    assert "backbone.stem.0.weight" in moved and any(n.startswith("backbone.layers.") for n in moved), moved
    assert record["evolution"] and all(r["flops"] <= 40_000 for r in record["evolution"])
    assert record["architecture"] in [r["architecture"] for r in record["evolution"]]
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    tree = checkpoint["mctnas_tree"]
    assert tree["steps_done"] == 2 * 2 and tree["uniform_steps"] == 2  # 2 epochs of 2 steps, half uniform
    assert tree["losses_seen"] == 3  # backups from 5/6 of the warm-up: step 1 on
    network, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    saved = torch.load(out / "search_model.pt", weights_only=True)
    network.load_state_dict(saved["state_dict"])
    assert arch == record["architecture"] and count_fixed(network.backbone, 8).flops == record["cost"]["flops"]
    retrained = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                            log_fn=lambda line: None)
    assert retrained["architecture"] == record["architecture"]


def test_a_stopped_mctnas_search_resumes_with_its_tree_to_the_same_architecture(tmp_path):
    from experiments.core.errors import RunInterrupted

    extra = {"search.epochs": 4, "data.train_subset": 256}  # 4 steps an epoch, the tree sampled in epochs 3-4
    whole = run(mctnas_config(tmp_path / "whole", **extra), tmp_path / "whole")

    def stop_after_third_epoch(record):
        if record["epoch"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # RunState stops before the next batch and checkpoints

    from experiments.jobs.backbone_search import run_backbone_search

    out = tmp_path / "stopped"
    with pytest.raises(RunInterrupted):
        run_backbone_search(mctnas_config(out, **extra), out, listeners=[stop_after_third_epoch],
                            log_fn=lambda line: None)
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["mctnas_tree"]
    assert saved["steps_done"] == 12 and saved["losses_seen"] > 0
    resumed = run(mctnas_config(out, **extra), out)
    assert resumed["architecture"] == whole["architecture"]
    assert [r["score"] for r in resumed["evolution"]] == pytest.approx([r["score"] for r in whole["evolution"]])
    assert resumed["history"][-1]["ssl_loss"] == pytest.approx(whole["history"][-1]["ssl_loss"], rel=1e-5)


def test_spos_with_distinct_trains_only_canonical_networks_then_evolves(tmp_path, monkeypatch):
    from experiments.strategies.sampling import PresetPathModule
    from search_spaces.nas_bench_macro import arch_to_key, canonical_key

    trained, preset = [], PresetPathModule.preset

    def recording_preset(self, architecture):
        trained.append(arch_to_key(architecture))
        return preset(self, architecture)

    monkeypatch.setattr(PresetPathModule, "preset", recording_preset)
    out = tmp_path / "spos"
    record = run(load(out, **{"backbone_search.strategy_options": {"distinct": True}, "data.train_subset": 512,
                              "backbone_search.max_flops": 40_000}), out)
    # one epoch of 8 steps; 3969 of the 6561 keys are canonical: 8 uniform keys all are 1 time in 57
    assert len(trained) == 8 and all(canonical_key(k) == k for k in trained)
    assert record["strategy"] == "spos" and record["cost"]["flops"] <= 40_000 and record["evolution"]


def test_mctnas_searches_the_macro_space_too(tmp_path):
    out = tmp_path / "macro"
    cfg = mctnas_config(out, **{"model.backbone": "macro", "backbone_search.max_flops": 60_000,
                                "backbone_search.strategy_options": {"min_visits": 1, "num_leaves": 2}})
    record = run(cfg, out)
    assert record["cost"]["flops"] <= 60_000 and set(record["architecture"]) == {
        f"backbone.layer{i}.op" for i in range(1, 9)}
    assert record["architecture"] in [r["architecture"] for r in record["evolution"]]
