"""EnTranNAS: transit cells carry exactly the sub-graph derived from the engine cells' current weights, and
DST's sparsification leaves a node with the inputs whose weights are non-zero (hand-made values)."""
from __future__ import annotations

import math

import pytest
import torch


def entran_supernet(dst: bool, sharing: bool = True, **space_options):
    from nni.nas.strategy import DARTS

    from experiments.strategies.entrannas import EnTranCell, EnTranDSTCell
    from search_spaces.cells import CellBackboneSpace

    cell = EnTranDSTCell if dst else EnTranCell

    def hook(module, name, memo, kwargs):
        return cell.mutate(module, name, memo, {**kwargs, "feature_sharing": sharing, "dst_threshold": 0.9})

    torch.manual_seed(0)
    space = CellBackboneSpace(**{"channels": 4, "num_cells": 5, "num_nodes": 3, **space_options})  # N R N R N
    return DARTS(mutation_hooks=[hook]).mutate_model(space).eval()


def set_alpha(cell, key, values):
    with torch.no_grad():
        cell._arch_alpha[key].copy_(torch.tensor(values, dtype=torch.float32))


def cell_io(supernet, index, x):
    """The inputs and output of cell ``index`` in a forward pass of the whole supernet."""
    seen = {}
    handle = supernet.cells[index].register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    with torch.no_grad():
        supernet(x)
    handle.remove()
    return seen["args"], seen["out"]


def test_transit_cells_carry_exactly_the_engines_derived_sub_graph():
    supernet = entran_supernet(dst=False)
    engine, transit = supernet.cells[0], supernet.cells[2]
    assert [c.engine for c in supernet.cells] == [True, True, False, False, False]
    assert transit._arch_alpha["backbone.normal/3_1"] is engine._arch_alpha["backbone.normal/3_1"]  # shared
    ops = engine.real_ops
    strong = lambda op, value: [value if name == op else 0.0 for name in ops] + [0.0]  # noqa: E731 (zero last)
    set_alpha(engine, "backbone.normal/3_0", strong("sep_conv_3x3", 3.0))
    set_alpha(engine, "backbone.normal/3_1", [0.0] * len(ops) + [5.0])  # the zero dominates: a weak edge
    set_alpha(engine, "backbone.normal/3_2", strong("max_pool_3x3", 4.0))
    topology = engine.derived_topology()
    assert topology[3] == [(0, "sep_conv_3x3"), (2, "max_pool_3x3")]  # DARTS's rule on the engine's weights
    x = torch.randn(2, 3, 8, 8)
    args, out = cell_io(supernet, 2, x)
    frozen = transit.freeze(engine.derived_sample()).eval()
    with torch.no_grad():
        assert torch.allclose(frozen(*args)[1], out[1], atol=1e-6)
    # the engine's weights move, the transit cell follows at the next forward pass
    set_alpha(engine, "backbone.normal/3_1", strong("skip_connect", 9.0))
    assert engine.derived_topology()[3][:1] == [(1, "skip_connect")]
    args, out = cell_io(supernet, 2, x)
    frozen = transit.freeze(engine.derived_sample()).eval()
    with torch.no_grad():
        assert torch.allclose(frozen(*args)[1], out[1], atol=1e-6)


def test_feature_sharing_runs_one_module_per_predecessor_and_operation():
    shared = entran_supernet(dst=False, sharing=True, num_cells=2).cells[0]
    separate = entran_supernet(dst=False, sharing=False, num_cells=2).cells[0]
    assert shared.edge_op(4, 1, "sep_conv_3x3") is shared.edge_op(2, 1, "sep_conv_3x3")
    assert shared.edge_op(4, 3, "sep_conv_3x3") is shared.edge_op(4, 3, "sep_conv_3x3")
    assert separate.edge_op(4, 1, "sep_conv_3x3") is not separate.edge_op(2, 1, "sep_conv_3x3")


def test_dst_sparsification_by_hand():
    from experiments.strategies.entrannas import sparsify

    # threshold .9 / 4 = .225: [.275, .075, 0, 0] / .35
    s = sparsify(torch.tensor([0.5, 0.3, 0.15, 0.05]), 0.9)
    assert s.tolist() == pytest.approx([0.275 / 0.35, 0.075 / 0.35, 0.0, 0.0])
    assert sparsify(torch.tensor([0.25] * 4), 0.9).tolist() == pytest.approx([0.25] * 4)  # uniform: all kept


def test_dst_keeps_a_node_with_its_non_zero_inputs_and_ignores_the_others():
    ops = ["sep_conv_3x3", "max_pool_3x3", "skip_connect", "none"]
    supernet = entran_supernet(dst=True, ops=ops, inputs_per_node=3, num_cells=2)
    engine = supernet.cells[0]
    set_alpha(engine, "backbone.normal/4/inputs", [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)])
    set_alpha(engine, "backbone.normal/3/inputs", [math.log(p) for p in (0.2, 0.2, 0.6)])  # t = .3: only 2 stays
    assert engine.edge_weights(4).tolist() == pytest.approx([0.275 / 0.35, 0.075 / 0.35, 0.0, 0.0])
    topology = engine.derived_topology()
    assert [j for j, _ in topology[4]] == [0, 1] and [j for j, _ in topology[3]] == [2]
    sample = engine.derived_sample()  # three slots: the free ones are 'none'
    assert sample["backbone.normal/op_3_1"] == sample["backbone.normal/op_3_2"] == "none"
    assert sample["backbone.normal/op_4_2"] == "none" and sample["backbone.normal/input_4_1"] == [1]
    # the engine's node 4 does not compute its zero-weight edges: changing their operations changes nothing
    states = [torch.randn(1, 4, 8, 8) for _ in range(4)]
    with torch.no_grad():
        before = engine.node_output(4, states, {})
        for name in engine.real_ops:  # predecessor 3's operations feed node 4 only
            for p in engine.edge_op(4, 3, name).parameters():
                p.add_(1.0)
        assert torch.equal(engine.node_output(4, states, {}), before)
        for p in engine.edge_op(4, 1, "sep_conv_3x3").parameters():  # a kept edge does matter
            p.add_(1.0)
        assert not torch.allclose(engine.node_output(4, states, {}), before)


def pair_supernet(temperature: float = 1.0, slots: int = 6):
    """One node (2, reading the cell inputs 0 and 1), three real operations, six slots: room for every pair."""
    from nni.nas.strategy import DARTS

    from experiments.strategies.entrannas import EnTranPairCell
    from search_spaces.cells import CellBackboneSpace

    def hook(module, name, memo, kwargs):
        return EnTranPairCell.mutate(module, name, memo, {**kwargs, "dst_temperature": temperature})

    torch.manual_seed(0)
    space = CellBackboneSpace(ops=["sep_conv_3x3", "max_pool_3x3", "skip_connect", "none"], channels=4, num_cells=2,
                              num_nodes=1, inputs_per_node=slots)
    supernet = DARTS(mutation_hooks=[hook]).mutate_model(space).eval()
    engine = supernet.cells[0]
    engine.supernet = [supernet]  # (a list: not a submodule) for the tests that need the whole network
    # p over the pairs (0, sep) (0, max) (0, skip) (1, sep) (1, max) (1, skip): softmax of log p at temperature 1
    set_alpha(engine, "backbone.normal/2_0", [math.log(v) for v in (0.4, 0.1, 0.05)])
    set_alpha(engine, "backbone.normal/2_1", [math.log(v) for v in (0.2, 0.15, 0.1)])
    return engine


def test_the_survey_rule_keeps_every_pair_above_the_nodes_learned_threshold():
    from experiments.strategies.entrannas import sparsify_pairs

    engine = pair_supernet()
    set_alpha(engine, "backbone.normal/2/threshold", [math.log(0.25)])  # t = sigmoid(beta) = 0.2
    # p / max p = [1, .25, .125, .5, .375, .25]; minus .2, cut at 0: [.8, .05, 0, .3, .175, .05], sum 1.375
    expected = [v / 1.375 for v in (0.8, 0.05, 0.0, 0.3, 0.175, 0.05)]
    assert engine.pair_weights(2).tolist() == pytest.approx(expected, abs=1e-6)
    assert sparsify_pairs(torch.tensor([0.4, 0.1, 0.05, 0.2, 0.15, 0.1]),
                          torch.tensor([math.log(0.25)])).tolist() == pytest.approx(expected, abs=1e-6)
    pairs = engine.derived_topology()[2]  # every non-zero pair, two on one edge allowed, the strongest first
    assert pairs[:3] == [(0, "sep_conv_3x3"), (1, "sep_conv_3x3"), (1, "max_pool_3x3")]
    assert sorted(pairs[3:]) == [(0, "max_pool_3x3"), (1, "skip_connect")] and len(pairs) == 5
    sample = engine.derived_sample()  # five pairs in six slots: the last is 'none'
    assert [sample[f"backbone.normal/op_2_{k}"] for k in range(6)][:3] == ["sep_conv_3x3", "sep_conv_3x3",
                                                                            "max_pool_3x3"]
    assert sample["backbone.normal/op_2_5"] == "none" and sample["backbone.normal/input_2_1"] == [1]
    # the engine node is the q-weighted sum of the kept pairs; the threshold's beta gets a gradient
    states = [torch.randn(1, 4, 8, 8) for _ in range(2)]
    names = engine.pairs(2)
    with torch.no_grad():
        by_hand = sum(w * engine.edge_op(2, j, name)(states[j]) for w, (j, name) in zip(expected, names))
    out = engine.node_output(2, states, {})
    assert torch.allclose(out, by_hand, atol=1e-5)
    out.sum().backward()
    assert float(engine._arch_alpha["backbone.normal/2/threshold"].grad.abs().sum()) > 0
    # a higher threshold (t = .5) keeps the strongest pair only
    set_alpha(engine, "backbone.normal/2/threshold", [0.0])
    assert engine.pair_weights(2).tolist() == pytest.approx([1, 0, 0, 0, 0, 0])
    assert engine.derived_topology()[2] == [(0, "sep_conv_3x3")]


def test_the_temperature_flattens_the_pairs_distribution_before_the_threshold():
    engine = pair_supernet(temperature=2.0)
    set_alpha(engine, "backbone.normal/2/threshold", [0.0])  # t = .5
    # p ~ sqrt of the above: p / max p = [1, .5, .354, .707, .612, .5]; minus .5: [.5, 0, 0, .207, .112, 0]
    kept = [(0, "sep_conv_3x3"), (1, "sep_conv_3x3"), (1, "max_pool_3x3")]
    assert engine.derived_topology()[2] == kept
    q = engine.pair_weights(2)
    raw = torch.tensor([1, 0.5 ** 0.5, 0.375 ** 0.5]) - 0.5
    assert q[[0, 3, 4]].tolist() == pytest.approx((raw / raw.sum()).tolist(), abs=1e-6)


def test_a_transit_cell_carries_the_pairs_the_export_has_room_for():
    engine = pair_supernet(slots=2)  # a space with two slots: the export and the transit cells take the strongest two
    set_alpha(engine, "backbone.normal/2/threshold", [math.log(0.25)])
    assert engine.transit_topology()[2] == [(0, "sep_conv_3x3"), (1, "sep_conv_3x3")]
    assert len(engine.derived_topology()[2]) == 5
    from experiments.strategies.entrannas import cut_pairs

    assert cut_pairs(engine.supernet[0]) == [  # the search says so, once per cell type and node
        "entrannas: backbone.normal node 2 keeps 5 (edge, operation) pairs and the space has 2 slots "
        "(model.backbone_options.inputs_per_node): the strongest are exported",
        # the reduction cell's weights are untouched: p is near uniform, so t = sigmoid(~0) keeps all six
        "entrannas: backbone.reduce node 2 keeps 6 (edge, operation) pairs and the space has 2 slots "
        "(model.backbone_options.inputs_per_node): the strongest are exported"]
    assert cut_pairs(pair_supernet().supernet[0]) == []  # six slots: room for every pair of every cell


def test_the_picture_draws_every_kept_pair_and_no_pad(tmp_path):
    from experiments.core.architecture_picture import cell_graphs, draw_architecture

    engine = pair_supernet()
    set_alpha(engine, "backbone.normal/2/threshold", [math.log(0.25)])
    sample = engine.derived_sample()  # five pairs and one 'none' pad in six slots
    assert sorted(cell_graphs(sample)["normal"][2]) == sorted(engine.derived_topology()[2])
    picture = draw_architecture({"architecture": sample}, tmp_path / "cell.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
