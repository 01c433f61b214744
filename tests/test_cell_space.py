"""The cell backbone space: its closed-form cost equals a hook count of the frozen network, its choices validate,
and NNI's DARTS cell (dotted labels) freezes with the supernet's weights."""
from __future__ import annotations

import random

import pytest
import torch


def tiny_space(**options):
    from search_spaces.cells import CellBackboneSpace

    return CellBackboneSpace(**{"channels": 4, "num_cells": 3, "num_nodes": 2, **options})


def test_cells_are_placed_as_in_darts_and_labelled_by_type():
    from search_spaces.cells import reduction_cells

    assert reduction_cells(8) == {2, 5}  # DARTS's 8-cell search network
    assert reduction_cells(5) == {1, 3}
    space = tiny_space()
    assert [(label, reduction) for label, reduction, _ in space.cell_layout] == [
        ("backbone.normal", False), ("backbone.reduce", True), ("backbone.reduce", True)]
    labels = set(space.simplify())
    assert "backbone.normal/op_3_1" in labels and "backbone.reduce/input_3_0" in labels and len(labels) == 16
    assert space(torch.zeros(2, 3, 8, 8)).shape == (2, space.feature_dim)


def test_closed_form_cost_equals_the_hook_count_of_the_frozen_network():
    from search_spaces.cost import BackboneCost, count_fixed

    space = tiny_space()
    cost = BackboneCost(space, 8)
    assert cost.labels["backbone.normal/input_3_1"] == [[0], [1], [2]]  # a cell input: a one-element list
    rng = random.Random(0)
    for _ in range(2):
        sample = {label: rng.choice(values) for label, values in cost.labels.items()}
        assert cost(sample) == count_fixed(space.freeze(sample), 8)
    smallest, c = cost.smallest("flops")
    assert c == count_fixed(space.freeze(smallest), 8)
    assert all(v in ("max_pool_3x3", "avg_pool_3x3", "skip_connect") for k, v in smallest.items() if "/op_" in k)


def test_an_architecture_names_each_input_as_a_list_of_one_predecessor():
    from experiments.core.errors import ConfigError
    from experiments.core.records import validate_choices

    space = tiny_space()
    space.framework, space.head_space = "simsiam", "fixed"
    arch = {label: ([0] if "/input_" in label else "skip_connect") for label in space.simplify()}
    assert validate_choices(space, arch) == arch
    with pytest.raises(ConfigError, match=r"backbone.normal/input_3_0 = 3 is not one of its choices"):
        validate_choices(space, dict(arch, **{"backbone.normal/input_3_0": 3}))
    with pytest.raises(ConfigError, match="is not one of its choices"):
        validate_choices(space, dict(arch, **{"backbone.normal/input_3_0": [3]}))


def test_darts_cell_with_a_dotted_label_freezes_with_the_supernets_weights():
    from nni.nas.strategy import DARTS

    from experiments.strategies.cell_supernet import DartsCell, supernet_cells

    torch.manual_seed(0)
    supernet = DARTS(mutation_hooks=[DartsCell.mutate]).mutate_model(tiny_space())
    normal = supernet_cells(supernet)[0]
    assert isinstance(normal, DartsCell) and normal.label == "backbone.normal"
    assert "backbone.normal/3_2" in dict(normal._arch_alpha.items())  # quirk 27: the dotted key is kept
    sample = {}
    for cell in supernet_cells(supernet):
        sample.update(cell.derived_sample())  # NNI's top-2 rule
    frozen = supernet.freeze(sample)
    for name, param in frozen.cells[0].ops[1][0].named_parameters():
        j, op = sample["backbone.normal/input_3_0"][0], sample["backbone.normal/op_3_0"]
        assert torch.equal(param, dict(normal.ops[1][j][op].named_parameters())[name])


def test_darts_cells_expected_cost_lies_between_the_cheapest_and_dearest_cells():
    from nni.nas.strategy import DARTS

    from experiments.strategies.cell_supernet import DartsCell, expected_cost
    from search_spaces.cost import BackboneCost

    space = tiny_space()
    cost = BackboneCost(space, 8)
    dearest = {k: (v[-1] if "/input_" in k else "sep_conv_3x3") for k, v in cost.labels.items()}
    supernet = DARTS(mutation_hooks=[DartsCell.mutate]).mutate_model(space)
    flops = expected_cost(supernet, 8, "flops")
    assert flops.requires_grad  # a penalty on it reaches the architecture weights
    assert cost.smallest("flops")[1].flops < float(flops.detach()) < cost(dearest).flops
