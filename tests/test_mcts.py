"""The Monte-Carlo tree of MCT-NAS against numbers worked out by hand."""
from __future__ import annotations

import io
import itertools
import json
import math
import random
from collections import Counter

import pytest
import torch

from experiments.strategies.mcts import (
    MonteCarloTree, Node, WarmupSchedule, choice_from_path, path_from_choice, softmax, uct_scores)

MACRO_OPS = ("identity", "mb3_k3", "mb6_k5")


def test_paths_convert_to_choices_and_back():
    space = [(f"layer{index}", MACRO_OPS) for index in range(3)]
    choice = choice_from_path((2, 0, 1), space)
    assert choice == {"layer0": "mb6_k5", "layer1": "identity", "layer2": "mb3_k3"}
    assert path_from_choice(choice, space) == (2, 0, 1)
    with pytest.raises(ValueError):
        path_from_choice({**choice, "layer1": "mb9_k9"}, space)
    with pytest.raises(ValueError):
        choice_from_path((2, 0), space)


def test_uct_scores_follow_the_formula():
    node = Node(visits=10, reward_sum=10.2,
                children={0: Node(visits=4, reward_sum=3.0), 1: Node(visits=6, reward_sum=7.2)})
    communication = [0.5, 0.25, 1.0]
    ln_parent = math.log(10)
    expected = [3.0 / 4 + 0.1 * math.sqrt(ln_parent / 4.1) + 0.2 * 0.5,
                7.2 / 6 + 0.1 * math.sqrt(ln_parent / 6.1) + 0.2 * 0.25,
                0.0 + 0.1 * math.sqrt(ln_parent / 0.1) + 0.2 * 1.0]  # op 2: never visited
    assert uct_scores(node, communication) == pytest.approx(expected, abs=1e-12)
    assert uct_scores(node, communication) == pytest.approx([0.924940, 1.311439, 0.679853], abs=1e-6)
    # Below an unvisited node only node communication ranks the ops.
    assert uct_scores(None, communication) == pytest.approx([0.1, 0.05, 0.2], abs=1e-12)


def test_softmax_with_temperature():
    assert softmax([1.0, 0.0], 1.0) == pytest.approx([math.e / (1 + math.e), 1 / (1 + math.e)])
    # Gap 0.01 at tau 0.0025 is a factor e^4; a gap of 0.5 is e^200, nothing.
    assert softmax([1.0, 0.99, 0.5], 0.0025) == pytest.approx(
        [1 / (1 + math.exp(-4)), math.exp(-4) / (1 + math.exp(-4)), 0.0], abs=1e-12)
    assert softmax([1.2, 1.0, 0.9], 0.0025)[1:] == pytest.approx([math.exp(-80), math.exp(-120)],
                                                                 rel=1e-9)
    assert softmax([1000.0, 0.0], 0.0025) == [1.0, 0.0]  # no overflow


def test_tree_sampling_draws_from_the_softmax_not_the_argmax():
    tree = MonteCarloTree([3, 2], seed=1, temperature=0.1)
    for path, reward in (((0, 0), 1.0), ((1, 0), 1.1), ((2, 1), 0.9), ((1, 1), 1.05)):
        tree.backup(path, reward)
    expected = tree.child_probabilities(())
    assert 0.2 < max(expected) < 0.6  # a real mixture, so argmax sampling would fail below
    draws = Counter(tree.sample()[0] for _ in range(6000))
    for op in range(3):
        assert draws[op] / 6000 == pytest.approx(expected[op], abs=0.025)


def test_backup_updates_only_the_path():
    tree = MonteCarloTree([3, 3, 3])
    tree.backup((0, 2, 1), 0.5)
    tree.backup((0, 1, 1), 2.0)
    visits_and_sums = {prefix: (tree.node(prefix).visits, tree.node(prefix).reward_sum)
                       for prefix in [(), (0,), (0, 2), (0, 2, 1), (0, 1), (0, 1, 1)]}
    assert visits_and_sums == {(): (2, 2.5), (0,): (2, 2.5), (0, 2): (1, 0.5), (0, 2, 1): (1, 0.5),
                               (0, 1): (1, 2.0), (0, 1, 1): (1, 2.0)}
    assert tree.node((0,)).mean_reward == 1.25
    for untouched in [(1,), (2,), (0, 0), (0, 2, 0), (0, 1, 2)]:
        assert tree.node(untouched) is None
    with pytest.raises(ValueError):
        tree.backup((0, 3, 1), 1.0)


def test_loss_average_and_reward_over_three_steps():
    tree = MonteCarloTree([3, 3])
    rewards = [tree.update(path, loss) for path, loss in (((0, 1), 2.0), ((0, 2), 1.0), ((1, 2), 4.0))]
    # Average: 2 (the first loss), 0.96*2 + 0.04*1 = 1.96, 0.96*1.96 + 0.04*4 = 2.0416.
    assert rewards == pytest.approx([2.0 / 2.0, 1.96 / 1.0, 2.0416 / 4.0], abs=1e-12)
    assert tree.loss_average == pytest.approx(2.0416, abs=1e-12)
    assert (tree.losses_seen, tree.steps_done) == (3, 3)
    assert tree.node(()).reward_sum == pytest.approx(1.0 + 1.96 + 0.5104, abs=1e-12)
    assert tree.node((0,)).visits == 2 and tree.node((1, 2)).reward_sum == pytest.approx(0.5104)


def test_node_communication_is_a_moving_average_per_layer_and_op():
    tree = MonteCarloTree([3, 3])
    for path, loss in (((0, 1), 2.0), ((0, 2), 1.0), ((1, 2), 4.0)):  # rewards 1, 1.96, 0.5104
        tree.update(path, loss)
    expected = [[0.96 * (0.04 * 1.0) + 0.04 * 1.96, 0.04 * 0.5104, 0.0],
                [0.0, 0.04 * 1.0, 0.96 * (0.04 * 1.96) + 0.04 * 0.5104]]
    assert sum(expected, []) == pytest.approx([0.1168, 0.020416, 0.0, 0.0, 0.04, 0.09568], abs=1e-12)
    assert sum(tree.communication, []) == pytest.approx(sum(expected, []), abs=1e-12)


def test_bad_losses_are_refused_and_change_nothing():
    tree = MonteCarloTree([3, 3])
    tree.update((0, 0), 1.0)
    before = tree.state_dict()
    for loss in (0.0, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError):
            tree.update((1, 1), loss)
    assert tree.state_dict() == before


def test_backups_wait_for_updates_from():
    tree = MonteCarloTree([3, 3], warmup=WarmupSchedule(uniform_until=3, updates_from=2))
    assert [tree.update((0, 0), 5.0), tree.update((0, 0), 5.0)] == [None, None]
    assert (tree.root.visits, tree.losses_seen, tree.steps_done) == (0, 0, 2)
    assert tree.update((1, 2), 3.0) == 1.0  # the first loss backed up sets the average
    assert (tree.root.visits, tree.loss_average) == (1, 3.0)


def test_warmup_schedule_units_and_checks():
    schedule = WarmupSchedule(uniform_until=30, updates_from=25, unit="epochs", steps_per_epoch=196)
    assert (schedule.uniform_steps, schedule.first_update_step) == (5880, 4900)
    assert WarmupSchedule(uniform_until=7, updates_from=3).uniform_steps == 7
    for bad in (dict(uniform_until=3, unit="minutes"), dict(uniform_until=3, unit="epochs"),
                dict(uniform_until=2, updates_from=3)):
        with pytest.raises(ValueError):
            WarmupSchedule(**bad)


def _favour_op_two(path):
    """A loss that falls with each layer on op 2: the all-2 path is by far the best."""
    return 1.0 / (1.0 + 0.5 * sum(op == 2 for op in path) / len(path))


def test_warmup_samples_uniformly_while_building_the_tree_then_uses_it():
    warmup_steps = 30 * 100
    tree = MonteCarloTree([3] * 8, seed=3, warmup=WarmupSchedule(
        uniform_until=30, unit="epochs", steps_per_epoch=100))
    counts = [[0, 0, 0] for _ in range(8)]
    for _ in range(warmup_steps):
        assert tree.samples_uniformly
        path = tree.sample()
        for layer, op in enumerate(path):
            counts[layer][op] += 1
        tree.update(path, _favour_op_two(path))
    assert tree.root.visits == warmup_steps  # the tree was built meanwhile
    expected = warmup_steps / 3
    chi_square = sum((count - expected) ** 2 / expected for row in counts for count in row)
    assert chi_square < 39.25  # 16 degrees of freedom: P(chi2 > 39.25) = 0.001
    assert not tree.samples_uniformly
    late_ops = []
    for _ in range(500):
        path = tree.sample()
        tree.update(path, _favour_op_two(path))
        late_ops.extend(path)
    assert late_ops.count(2) / len(late_ops) > 0.7  # uniform: 1/3


def _stepped_score(path):
    """Layer 0 on op 2 is worth 4, layer 1 on op 0 is worth 2, layer 2 on op 1 is worth 1: a
    choice above outweighs everything below it, so a correct greedy descent must find (2, 0, 1)."""
    return 4.0 * (path[0] == 2) + 2.0 * (path[1] == 0) + 1.0 * (path[2] == 1)


def test_hierarchical_selection_descends_to_the_known_best_leaf():
    calls = Counter()

    def evaluate(path):
        calls[path] += 1
        return _stepped_score(path)

    tree = MonteCarloTree([3, 3, 3], seed=5)
    selection = tree.select(evaluate, num_leaves=1, threshold="child", descent="greedy")  # the earlier rule, an option
    assert (selection.path, selection.score) == ((2, 0, 1), 7.0)
    for prefix in [(), (2,), (2, 0)]:  # the descent's nodes: each child it compared was topped up
        assert [tree.node(prefix + (op,)).visits >= 6 for op in range(3)] == [True] * 3
    assert set(calls.values()) == {1}
    assert sum(calls.values()) <= 1 + 6 * (3 + 3 + 3)

    selection = MonteCarloTree([3, 3, 3], seed=6).select(_stepped_score, threshold="child", descent="greedy")
    paths = [path for path, _ in selection.candidates]
    assert len(paths) == len(set(paths)) == 20
    assert paths[0] == (2, 0, 1) and selection.path == (2, 0, 1)
    assert all(score == _stepped_score(path) for path, score in selection.candidates)


def test_hierarchical_selection_completes_paths_uniformly():
    tree = MonteCarloTree([2, 4], seed=8)
    tree.select(lambda path: float(path[0]), min_visits=800, num_leaves=1, threshold="child", descent="greedy")
    # Root op 0 lost the descent, so its visits are the 800 completions alone: ~200 per op below.
    below_the_loser = [tree.node((0, op)).visits for op in range(4)]
    assert sum(below_the_loser) == 800
    chi_square = sum((visits - 200) ** 2 / 200 for visits in below_the_loser)
    assert chi_square < 16.27  # 3 degrees of freedom: P(chi2 > 16.27) = 0.001


def test_hierarchical_selection_evaluates_within_the_documented_bound():
    calls = Counter()

    def evaluate(path):
        calls[path] += 1
        return sum(path) / 10

    tree = MonteCarloTree([5, 5, 5, 5], seed=2)
    selection = tree.select(evaluate, num_leaves=3, threshold="child", descent="greedy")
    assert len({path for path, _ in selection.candidates}) == 3
    assert set(calls.values()) == {1}
    assert sum(calls.values()) <= 3 * (1 + 6 * 20)
    assert selection.path == (4, 4, 4, 4)


def test_hierarchical_selection_trusts_training_visits():
    tree = MonteCarloTree([2, 2], seed=0)
    rewards = {(0, 0): 1.0, (0, 1): 1.3, (1, 0): 1.1, (1, 1): 1.2}  # best mean: op 0, then op 1
    for path, reward in rewards.items():
        for _ in range(6):
            tree.backup(path, reward)
    calls = []
    selection = tree.select(lambda path: calls.append(path) or 0.0, num_leaves=1, threshold="child", descent="greedy")
    assert calls == [(0, 1)]  # no top-up: only the candidate was evaluated
    assert selection.path == (0, 1)


def test_hierarchical_selection_stops_when_every_leaf_is_a_candidate():
    selection = MonteCarloTree([2, 2], seed=4).select(lambda path: path[0] - path[1], num_leaves=20)
    assert sorted(path for path, _ in selection.candidates) == list(itertools.product(range(2), repeat=2))
    assert (selection.path, selection.score) == ((1, 0), 1)


def _q(tree, prefix):
    node = tree.node(prefix)
    return (node.visits, node.reward_sum)


def test_released_selection_never_selects_an_over_budget_leaf_and_leaves_its_ancestors_q_unchanged():
    tree = MonteCarloTree([2, 2], seed=0)
    rewards = {(0, 0): 2.0, (0, 1): 1.3, (1, 0): 1.1, (1, 1): 1.2}  # the over-budget leaf is the tree's best
    for path, reward in rewards.items():
        for _ in range(6):
            tree.backup(path, reward)
    before = {prefix: _q(tree, prefix) for prefix in [(), (0,), (1,), (0, 0)]}
    calls = []
    selection = tree.select(lambda path: calls.append(path) or rewards[path], num_leaves=4,
                            within=lambda path: path != (0, 0))
    assert (0, 0) not in calls and (0, 0) not in [path for path, _ in selection.candidates]
    assert sorted(path for path, _ in selection.candidates) == [(0, 1), (1, 0), (1, 1)]
    assert selection.path == (0, 1)
    assert {prefix: _q(tree, prefix) for prefix in before} == before  # no reward of 0 backed up anywhere

    # top-ups too: a fresh tree, every visit from selection; the over-budget leaf is never evaluated nor backed up
    tree, calls = MonteCarloTree([2, 2], seed=1), []
    tree.select(lambda path: calls.append(path) or rewards[path], num_leaves=4, within=lambda path: path != (0, 0))
    assert (0, 0) not in calls and tree.node((0, 0)) is None
    assert tree.node((0,)).mean_reward == pytest.approx(rewards[(0, 1)])  # Q/n of its parent: its sibling's alone


def test_released_selection_tops_a_node_up_to_min_visits_per_op_of_the_parent():
    tree = MonteCarloTree([3, 3], seed=3)
    backed_up = []
    backup = tree.backup
    tree.backup = lambda path, reward: backed_up.append(tuple(path)) or backup(path, reward)
    selection = tree.select(lambda path: 1.0 + path[0] / 10 + path[1] / 100, min_visits=2, num_leaves=1)
    first = selection.path[0]
    assert len(backed_up) == tree.root.visits
    # the root's top-ups stop at 6 visits (2 per op), the chosen child's at 6 of its own
    at_root = backed_up[:6]
    assert tree.node((first,)).visits == 6
    assert tree.root.visits == 6 + 6 - sum(path[0] == first for path in at_root)


def test_released_descent_draws_from_the_softmax_of_mean_reward_plus_communication():
    def tree_with(communication_weight, row):
        tree = MonteCarloTree([2], seed=7, temperature=0.1, communication_weight=communication_weight)
        for op, reward in ((0, 1.0), (1, 1.1)):
            for _ in range(6):
                tree.backup((op,), reward)
        tree.communication[0] = row
        return tree

    def share_of_op_one(tree, **options):
        return sum(tree.select(lambda path: 1.0, num_leaves=1, **options).path == (1,) for _ in range(2000)) / 2000

    # exp(1.1 / 0.1) / (exp(1.0 / 0.1) + exp(1.1 / 0.1)) = 0.731; the tree is unchanged by each selection
    assert share_of_op_one(tree_with(0.0, [0.0, 0.0])) == pytest.approx(0.731, abs=0.04)
    # C2 G = 0.2 x 0.5 evens the two: 0.5
    assert share_of_op_one(tree_with(0.2, [0.5, 0.0])) == pytest.approx(0.5, abs=0.04)
    assert share_of_op_one(tree_with(0.2, [0.5, 0.0]), descent="greedy") == 1.0  # the earlier rule: best Q/n


def test_selection_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="threshold must be one of"):
        MonteCarloTree([2]).select(lambda path: 1.0, descent="uniform")


def _only_plain_containers(value):
    if isinstance(value, dict):
        return all(isinstance(key, str) and _only_plain_containers(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_only_plain_containers(item) for item in value)
    return type(value) in (int, float, str)


def _run(tree, steps, seed):
    """Sample, train a fake loss, update; returns what was sampled and the rewards."""
    noise = random.Random(seed)
    trace = []
    for _ in range(steps):
        path = tree.sample()
        trace.append((path, tree.update(path, _favour_op_two(path) * (1 + 0.1 * noise.random()))))
    return trace


def test_tensors_from_a_trainer_are_stored_as_plain_numbers():
    tree = MonteCarloTree([3, 3])
    tree.update(torch.tensor([2, 1]), torch.tensor(0.5))
    assert tree.node((2, 1)).visits == 1
    assert _only_plain_containers(tree.state_dict())


def test_state_round_trips_through_torch_and_json():
    tree = MonteCarloTree([3] * 4, seed=7, warmup=WarmupSchedule(uniform_until=40, updates_from=10))
    _run(tree, 60, seed=0)
    state = tree.state_dict()
    assert _only_plain_containers(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = [MonteCarloTree.from_state_dict(torch.load(buffer, weights_only=True)),
                MonteCarloTree.from_state_dict(json.loads(json.dumps(state)))]
    for copy in restored:
        assert copy.state_dict() == state
    continued = _run(tree, 50, seed=1)
    for copy in restored:
        assert _run(copy, 50, seed=1) == continued
        assert copy.state_dict() == tree.state_dict()
    with pytest.raises(ValueError):
        MonteCarloTree.from_state_dict({**state, "version": 0})


def test_simulated_search_concentrates_on_good_paths_after_warmup():
    """8 layers x 3 ops, score additive per layer; the loss 1/score, times a falling training
    trend and 5% noise, is what the ratio reward sees."""
    world = random.Random(11)
    per_layer = [[world.uniform(0.0, 0.1) for _ in range(3)] for _ in range(8)]
    score = {path: 1.0 + sum(per_layer[layer][op] for layer, op in enumerate(path))
             for path in itertools.product(range(3), repeat=8)}
    top_percent = set(sorted(score, key=score.get, reverse=True)[:len(score) // 100])
    tree = MonteCarloTree([3] * 8, seed=11, warmup=WarmupSchedule(uniform_until=1000))
    late = []
    for step in range(4000):
        path = tree.sample()
        trend = 1.0 + 2.0 * math.exp(-step / 1000)
        tree.update(path, trend / score[path] * (1.0 + 0.05 * world.gauss(0.0, 1.0)))
        if step >= 3000:
            late.append(path)
    assert sum(path in top_percent for path in late) / len(late) > 0.3  # chance: 0.01


def test_the_simulation_feeds_the_tree_the_inverse_score_or_the_error(monkeypatch, capsys):
    from experiments.studies import mcts_simulation, run_study

    scores = {path: 0.9 - 0.1 * path[0] for path in itertools.product(range(3), repeat=8)}
    fed = []
    update = MonteCarloTree.update
    monkeypatch.setattr(MonteCarloTree, "update", lambda tree, path, loss: fed.append((path, loss)) or
                        update(tree, path, loss))
    for loss, expected in (("inverse", lambda s: 3.0 / s), ("error", lambda s: 3.0 * (1.0 - s))):
        fed.clear()
        mcts_simulation.simulate(scores, WarmupSchedule(), 1, 1, 0.0, 0, loss)
        (path, value), = fed  # step 0: trend 1 + 2 exp(0) = 3, no noise
        assert value == pytest.approx(expected(scores[path]))
    assert run_study("mcts-simulation", ["--space", "synthetic", "--loss", "error"]) == 2
    assert capsys.readouterr().err.startswith("error: --loss error needs --space nas-bench-macro")
