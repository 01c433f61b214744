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
