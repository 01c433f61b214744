"""A DARTS-style cell backbone (NNI's ``Cell``), sized for a CPU: a stem, normal and reduction cells, pooling.

The skeleton is NNI's NDS/DARTS space (``nni.nas.hub.pytorch.nasnet``, CIFAR stem) with its
operations, preprocessors and postprocessor, shrunk: ``num_cells`` cells (reductions at a third
and two thirds of the depth, as in DARTS), ``channels`` per node in the first stage,
``num_nodes`` nodes per cell, each the sum of ``inputs_per_node`` (operation, input) pairs.
Every cell of one type shares its choices, under NNI's own cell labels:
``backbone.normal/op_<node>_<k>`` (an operation) and ``backbone.normal/input_<node>_<k>`` (a
one-element list: the predecessor it reads; 0 and 1 are the two previous cells' outputs).
The pooled output of the last cell is the feature vector (``feature_dim`` wide).

FLOPs and parameters of any sample come in closed form (``cost``): the stem, preprocessors and
pooling are fixed, and each chosen operation adds its own count, which depends only on the cell,
the operation and its stride (2 on a reduction cell's inputs). The per-operation counts are
measured once per input size by forward hooks (``search_spaces.cost.count_fixed``), so the total
equals the hook count of the frozen network exactly (``tests/test_cell_space.py``).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence

import torch
from nni.nas.hub.pytorch.nasnet import OPS, CellPostprocessor, CellPreprocessor
from nni.nas.nn.pytorch import Cell, ModelSpace
from torch import nn

from search_spaces.cost import Cost, count_fixed

#: a small DARTS operation set (DARTS has eight; the 5x5 convolutions cost most on a CPU)
CELL_OPS = ("sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
NUM_PREDECESSORS = 2  # the two previous cells' outputs, as in DARTS


def cell_op(node_index: int, op_index: int, input_index, *, op: str, channels: int, reduction: bool) -> nn.Module:
    """NNI's cell op factory signature: stride 2 on a reduction cell's own inputs (NDS's ``CellBuilder``)."""
    stride = 2 if reduction and (input_index is None or input_index < NUM_PREDECESSORS) else 1
    return OPS[op](channels, stride, True)


def reduction_cells(num_cells: int) -> set[int]:
    """DARTS puts its two reduction cells at a third and two thirds of the depth."""
    return {num_cells // 3, 2 * num_cells // 3} if num_cells >= 3 else {num_cells - 1}


class CellBackboneSpace(ModelSpace):
    """Stem, ``num_cells`` NNI ``Cell`` s (normal and reduction, sharing choices by type), pooling."""

    space_name = "cells"
    choice_kinds = frozenset({"cell"})  # only the cell strategies (darts, gdarts, toponas, entrannas) search it

    def __init__(self, ops: Sequence[str] = CELL_OPS, num_cells: int = 5, channels: int = 16, num_nodes: int = 4,
                 inputs_per_node: int = 2, width: float = 1.0, in_channels: int = 3, prefix: str = "backbone"):
        super().__init__()
        if isinstance(ops, str) or not isinstance(ops, (list, tuple)) or not ops or len(set(ops)) != len(ops):
            raise ValueError(f"cell operations must be a non-empty list of distinct names, got {ops!r}")
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown cell operation(s) {unknown}; choose from {sorted(OPS)}")
        if [op for op in ops if op != "none"] == []:
            raise ValueError("cell operations need one besides 'none'")
        for name, value, low in (("num_cells", num_cells, 1), ("channels", channels, 2), ("num_nodes", num_nodes, 1),
                                 ("inputs_per_node", inputs_per_node, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"cells: {name} must be an integer >= {low}, got {value!r}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"backbone width must be positive, got {width}")
        self.ops, self.num_nodes, self.inputs_per_node = tuple(ops), num_nodes, inputs_per_node
        c = max(2, 2 * round(channels * width / 2))  # even: FactorizedReduce halves it
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * c, 3, padding=1, bias=False), nn.BatchNorm2d(3 * c))
        reductions = reduction_cells(num_cells)
        c_pprev, c_prev, c_cur, previous_reduction = 3 * c, 3 * c, c, False
        self.cells = nn.ModuleList()
        self.cell_layout: list[tuple[str, bool, int]] = []  # (label, reduction, channels per node)
        for index in range(num_cells):
            reduction = index in reductions
            c_cur = c_cur * 2 if reduction else c_cur
            label = f"{prefix}.{'reduce' if reduction else 'normal'}"
            factory = {op: partial(cell_op, op=op, channels=c_cur, reduction=reduction) for op in ops}
            self.cells.append(Cell(factory, num_nodes, inputs_per_node, NUM_PREDECESSORS, "all",
                                   preprocessor=CellPreprocessor(c_pprev, c_prev, c_cur, previous_reduction),
                                   postprocessor=CellPostprocessor(), label=label))
            self.cell_layout.append((label, reduction, c_cur))
            c_pprev, c_prev, previous_reduction = c_prev, c_cur * num_nodes, reduction
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.feature_dim = c_prev
        self._cost_tables: dict[int, tuple[Cost, list[dict]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = cell([s0, s1])
        return self.pool(s1)

    # --- cost ------------------------------------------------------------------------------------------
    def node_labels(self, label: str):
        """``(node, slot, op label, input label)`` of every (operation, input) pair of a cell type."""
        for node in range(NUM_PREDECESSORS, NUM_PREDECESSORS + self.num_nodes):
            for slot in range(self.inputs_per_node):
                yield node, slot, f"{label}/op_{node}_{slot}", f"{label}/input_{node}_{slot}"

    def op_costs(self, input_size: int) -> list[dict]:
        """Per cell, ``{(operation, stride): Cost}`` at ``input_size`` inputs."""
        return self.cost_tables(input_size)[1]

    def cost(self, sample: Mapping[str, Any], input_size: int) -> tuple[int, int]:
        """(FLOPs, params) of the network ``sample`` picks: the fixed part plus each chosen operation."""
        fixed, tables = self.cost_tables(input_size)
        flops, params = fixed.flops, fixed.params
        for (label, reduction, _), table in zip(self.cell_layout, tables):
            for _, _, op_label, input_label in self.node_labels(label):
                c = table[(sample[op_label], self.stride(reduction, sample[input_label][0]))]
                flops, params = flops + c.flops, params + c.params
        return flops, params

    @staticmethod
    def stride(reduction: bool, input_index: int) -> int:
        return 2 if reduction and input_index < NUM_PREDECESSORS else 1

    def cost_tables(self, input_size: int) -> tuple[Cost, list[dict]]:
        if input_size not in self._cost_tables:
            tables, size = [], input_size
            for label, reduction, channels in self.cell_layout:
                table = {}
                for op in self.ops:
                    for stride in ((1, 2) if reduction else (1,)):
                        op_input = size if stride == 2 or not reduction else size // 2
                        table[(op, stride)] = count_fixed(OPS[op](channels, stride, True), op_input, channels)
                tables.append(table)
                size = size // 2 if reduction else size
            # the fixed part: one frozen network minus its operations
            reference = {}
            for label, _, _ in self.cell_layout:
                for _, _, op_label, input_label in self.node_labels(label):
                    reference[op_label], reference[input_label] = self.ops[0], [0]
            self._cost_tables[input_size] = (Cost(0, 0), tables)
            whole = count_fixed(self.freeze(reference), input_size, self.stem[0].in_channels)
            ops_flops, ops_params = self.cost(reference, input_size)
            self._cost_tables[input_size] = (Cost(whole.flops - ops_flops, whole.params - ops_params), tables)
        return self._cost_tables[input_size]


__all__ = ["CELL_OPS", "CellBackboneSpace", "cell_op", "reduction_cells"]
