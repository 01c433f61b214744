"""TopoNAS on hand-made values: the distribution over input sets, the edges' marginals, the passive-aggressive
regulariser, and the derived cell (the most probable input set, where DARTS's top-2 rule would differ)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

# node 4 of a cell has predecessors 0..3: six input pairs, in this order
PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
PROBS = [0.4, 0.2, 0.1, 0.1, 0.1, 0.1]


def test_a_node_chooses_among_all_pairs_of_its_predecessors():
    from experiments.strategies.toponas import input_sets

    assert input_sets(4, 2) == PAIRS
    assert input_sets(2, 2) == [(0, 1)]  # the first node has one choice
    assert input_sets(3, 1) == [(0,), (1,), (2,)]
    assert input_sets(2, 3) == [(0, 1)]  # more slots than predecessors: all of them


def test_an_edges_topology_weight_is_the_probability_of_the_pairs_that_contain_it():
    from experiments.strategies.toponas import edge_marginals

    w = edge_marginals(torch.tensor(PROBS), PAIRS, 4)
    # edge 0: (0,1) (0,2) (0,3) = .4 + .2 + .1; edge 1: (0,1) (1,2) (1,3); edge 2: (0,2) (1,2) (2,3); edge 3: the rest
    assert w.tolist() == pytest.approx([0.7, 0.6, 0.4, 0.3])
    assert float(w.sum()) == pytest.approx(2.0)  # two inputs per node


@pytest.mark.parametrize("margin,expected", [(0.0, 0.4 + 0.3), (0.05, 0.35 + 0.25), (0.35, 0.05), (0.5, 0.0)])
def test_the_regulariser_is_passive_below_the_margin_and_linear_above_it(margin, expected):
    from experiments.strategies.toponas import passive_aggressive

    # the most probable pair is (0, 1): edges 2 and 3 (weights .4 and .3) are the invalid ones
    value = passive_aggressive(torch.tensor(PROBS), PAIRS, 4, margin)
    assert float(value) == pytest.approx(expected)


def topo_supernet():
    from nni.nas.strategy import DARTS

    from experiments.strategies.toponas import TopoCell
    from search_spaces.cells import CellBackboneSpace

    torch.manual_seed(0)
    space = CellBackboneSpace(channels=4, num_cells=3, num_nodes=3)  # nodes 2, 3, 4
    return DARTS(mutation_hooks=[TopoCell.mutate]).mutate_model(space)


def set_alpha(cell, key, values):
    with torch.no_grad():
        cell._arch_alpha[key].copy_(torch.tensor(values, dtype=torch.float32))


def test_the_derived_cell_takes_the_most_probable_pair_where_the_top2_rule_would_not():
    from experiments.strategies.cell_supernet import supernet_cells

    supernet = topo_supernet()
    normal = supernet_cells(supernet)[0]
    ops = normal.real_ops
    set_alpha(normal, "backbone.normal/4/inputs", [math.log(p) for p in PROBS])
    set_alpha(normal, "backbone.normal/3/inputs", [0.0, 0.0, math.log(3.0)])  # pairs (0,1) (0,2) (1,2): .2 .2 .6
    flat, peaked = [0.0] * len(ops), [0.0] * len(ops)
    peaked[ops.index("max_pool_3x3")] = 5.0
    for j, alpha in enumerate([flat, flat, peaked, peaked]):  # node 4: strong operations on the unlikely edges
        set_alpha(normal, f"backbone.normal/4_{j}", alpha)
    assert normal.set_probabilities(4).tolist() == pytest.approx(PROBS)
    assert normal.edge_weights(4).tolist() == pytest.approx([0.7, 0.6, 0.4, 0.3])
    topology = normal.derived_topology()
    assert [j for j, _ in topology[4]] == [0, 1] and [j for j, _ in topology[3]] == [1, 2]
    assert [j for j, _ in normal.top2_topology()[4]] == [2, 3]  # .4 * p_max and .3 * p_max beat .7 / 5 and .6 / 5
    sample = normal.derived_sample()
    assert sample["backbone.normal/input_4_0"] == [0] and sample["backbone.normal/input_4_1"] == [1]
    assert sample["backbone.normal/op_4_0"] == ops[0]  # a flat edge's argmax is its first operation
    # the regulariser: node 2 has one pair (nothing invalid), node 3 (.2+.2 - .05 on edge 0), node 4 (.35+.25)
    assert float(normal.regulariser(0.05).detach()) == pytest.approx(0.35 + 0.6)
    reduce = supernet_cells(supernet)[1]
    module = SimpleNamespace(model=supernet)
    from experiments.strategies.toponas import topology_regulariser

    assert float(topology_regulariser(module, 2.0, 0.05).detach()) == pytest.approx(
        2.0 * (0.95 + float(reduce.regulariser(0.05).detach())))


def test_a_node_is_the_sum_of_its_mixed_edges_weighted_by_their_marginals():
    from experiments.strategies.cell_supernet import supernet_cells

    supernet = topo_supernet().eval()
    normal = supernet_cells(supernet)[0]
    set_alpha(normal, "backbone.normal/4/inputs", [math.log(p) for p in PROBS])
    states = [torch.randn(1, 4, 8, 8) for _ in range(4)]
    with torch.no_grad():
        out = normal.node_output(4, states, {})
        expected = sum(w * normal.mixed_edge(4, j, states[j]) for j, w in enumerate([0.7, 0.6, 0.4, 0.3]))
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_budget_penalty_prices_the_expected_cell_and_is_exact_for_a_certain_one():
    from experiments.strategies.cell_supernet import cell_budget_penalty_fn, expected_cost, supernet_cells
    from search_spaces.cost import BackboneCost

    supernet = topo_supernet()
    cost = BackboneCost(supernet, 8)  # the supernet keeps the space's labels and cost tables
    sample = {}
    for cell in supernet_cells(supernet):  # make every distribution certain: the derived network's cost
        for key, alpha in cell._arch_alpha.items():
            with torch.no_grad():
                alpha.copy_(100.0 * torch.nn.functional.one_hot(alpha.argmax(), alpha.numel()))
        sample.update(cell.derived_sample())
    assert float(expected_cost(supernet, 8, "flops").detach()) == pytest.approx(cost(sample).flops, rel=1e-5)
    assert float(expected_cost(supernet, 8, "params").detach()) == pytest.approx(cost(sample).params, rel=1e-5)
    penalty = cell_budget_penalty_fn(8, cost(sample).flops / 2, None, 3.0)(SimpleNamespace(model=SimpleNamespace(
        backbone=supernet)))
    assert float(penalty.detach()) == pytest.approx(3.0 * (2 - 1), rel=1e-4)  # twice the budget
