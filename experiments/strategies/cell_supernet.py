"""Supernet cells for the cell space (``search_spaces/cells.py``): NNI's one-shot cell graph, relaxed, frozen.

NNI turns a ``Cell`` into a fully connected graph for one-shot search (``PathSamplingCell``: one
module per node, predecessor and operation). Three relaxations of that graph live on it:

- ``DartsCell``: NNI's own ``DifferentiableMixedCell`` (DARTS: one softmax per edge over the
  operations and a zero, the top-2 export), given what it lacks here: labels with a dot
  (quirk 27) and a ``freeze`` that keeps the supernet's weights;
- ``RelaxedCell``, the base of TopoNAS's and EnTranNAS's cells (``toponas.py``, ``entrannas.py``):
  a softmax over the real operations of each edge, shared by every cell of a type, plus whatever
  topology the subclass learns (``node_output``) and derives (``derived_topology``).

A derived topology is ``{node: [(predecessor, operation), ...]}``; ``sample_of`` writes it as the
space's choices (``<cell>/op_<node>_<slot>``, ``<cell>/input_<node>_<slot>``), padding a node with
fewer inputs than slots by ``none`` operations. ``select_with_cells`` is the selection every cell
strategy shares: the cells' derived choices, the argmax of any other relaxed choice, then the
budget (``experiments/strategies/budget.py``).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from nni.nas.nn.pytorch import Cell
from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell
from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell
from nni.nas.space import model_context
from torch import nn

from experiments import nni_compat
from experiments.strategies.base import SearchContext, Selection
from experiments.strategies.budget import fit_to_budget
from search_spaces.supernet import architecture_probabilities, derived_architecture_from

Topology = dict[int, list[tuple[int, str]]]


class FreezesWithWeights:
    """``freeze(sample)``: the fixed NNI ``Cell`` of ``sample`` with the supernet's weights for it."""

    op_factory: Any

    def edge_op(self, node: int, predecessor: int, name: str) -> nn.Module:
        """The module of operation ``name`` on the edge predecessor -> node."""
        return self.ops[node - self.num_predecessors][predecessor][name]

    def node_indices(self) -> range:
        return range(self.num_predecessors, self.num_predecessors + self.num_nodes)

    def freeze(self, sample: dict) -> Cell:
        with model_context(sample):
            cell = Cell(self.op_factory, self.num_nodes, self.num_ops_per_node, self.num_predecessors, "all",
                        copy.deepcopy(self.preprocessor), copy.deepcopy(self.postprocessor), self.concat_dim,
                        label=self.label)
        for node in self.node_indices():
            for slot in range(self.num_ops_per_node):
                name = sample[f"{self.label}/op_{node}_{slot}"]
                predecessor = sample[f"{self.label}/input_{node}_{slot}"][0]
                cell.ops[node - self.num_predecessors][slot].load_state_dict(
                    self.edge_op(node, predecessor, name).state_dict())
        return cell

    def sample_of(self, topology: Topology) -> dict:
        """The space's choices for ``topology``; a node with fewer inputs than slots gets ``none`` on the rest."""
        sample = {}
        for node, pairs in topology.items():
            pairs = list(pairs)[:self.num_ops_per_node]
            if len(pairs) < self.num_ops_per_node:
                if "none" not in self.op_names:
                    raise ValueError(f"{self.label}: node {node} keeps {len(pairs)} input(s) of "
                                     f"{self.num_ops_per_node} slots and the space has no 'none' operation")
                pairs += [(pairs[0][0], "none")] * (self.num_ops_per_node - len(pairs))
            for slot, (predecessor, name) in enumerate(pairs):
                sample[f"{self.label}/op_{node}_{slot}"] = name
                sample[f"{self.label}/input_{node}_{slot}"] = [predecessor]
        return sample


class DartsCell(FreezesWithWeights, DifferentiableMixedCell):
    """NNI's DARTS cell unchanged in what it computes and exports (its top-2 rule), freezable, dotted labels."""

    def __init__(self, op_factory, *args, **kwargs):
        with nni_compat.dotted_cell_labels() as labels:
            super().__init__(op_factory, *args, **kwargs)
        labels.keep(self._arch_alpha)
        self.op_factory = op_factory

    def derived_sample(self) -> dict:
        return DifferentiableMixedCell.export(self, {})

    def op_distribution(self, node: int, predecessor: int) -> tuple[torch.Tensor, list[str]]:
        p = self._softmax(self._arch_alpha[f"{self.label}/{node}_{predecessor}"])[:len(self.op_names)]
        return p / p.sum(), list(self.op_names)

    def edge_inclusion(self, node: int) -> torch.Tensor:
        return darts_edge_inclusion(
            [self._softmax(self._arch_alpha[f"{self.label}/{node}_{j}"]) for j in range(node)], self.num_ops_per_node)

    def choice_probabilities(self, sample: dict) -> dict:
        """Per chosen pair: the softmax over operations of its edge (NNI's zero left out of the names)."""
        probs = {}
        for node in self.node_indices():
            for slot in range(self.num_ops_per_node):
                j = sample[f"{self.label}/input_{node}_{slot}"][0]
                p = self._softmax(self._arch_alpha[f"{self.label}/{node}_{j}"]).detach().float()
                probs[f"{self.label}/op_{node}_{slot}"] = dict(zip(self.op_names, p.tolist()))
        return probs


class RelaxedCell(FreezesWithWeights, PathSamplingCell):
    """NNI's one-shot cell graph with a softmax over the real operations of each edge; subclasses add a topology.

    Cells with one label share every architecture weight through NNI's memo (the first cell of a
    label creates them). ``none`` is never a candidate of an edge: it only pads a derived node.
    """

    #: architecture weights per edge beyond the operations (EnTranNAS's DARTS engine: one zero)
    extra_op_weights = 0

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
        self.op_factory = op_factory
        self.real_ops = [name for name in self.op_names if name != "none"]
        self._softmax = mutate_kwargs.get("softmax", nn.Softmax(-1))
        self.first_of_label = f"{label}/created" not in memo
        memo[f"{label}/created"] = True
        self._arch_alpha = nni_compat.LabelParameterDict()
        for node in self.node_indices():
            for j in range(node):
                self._arch_alpha[self.edge_key(node, j)] = self.shared_alpha(
                    memo, self.edge_key(node, j), len(self.real_ops) + self.extra_op_weights)

    def edge_key(self, node: int, predecessor: int) -> str:
        return f"{self.label}/{node}_{predecessor}"

    @staticmethod
    def shared_alpha(memo: dict, key: str, size: int) -> nn.Parameter:
        """The architecture weight ``key`` of this cell type (created once, as NNI's DARTS cell does)."""
        memo_key = f"{key}/in_cell"
        if memo_key not in memo:
            memo[memo_key] = nn.Parameter(torch.randn(size) * 1e-3)
        return memo[memo_key]

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        if type(module) is Cell and module.op_candidates_factory is not None:
            return cls(module.op_candidates_factory, module.num_nodes, module.num_ops_per_node,
                       module.num_predecessors, module.preprocessor, module.postprocessor, module.concat_dim, memo,
                       mutate_kwargs, module.label)
        return None

    def arch_parameters(self):
        yield from self._arch_alpha.values()

    def op_probabilities(self, node: int, predecessor: int) -> torch.Tensor:
        """Softmax over the real operations (and the extra weights) of one edge."""
        return self._softmax(self._arch_alpha[self.edge_key(node, predecessor)])

    def mixed_edge(self, node: int, predecessor: int, state: torch.Tensor, cache: Optional[dict] = None):
        """DARTS's mixed operation on one edge: the operations' outputs weighted by their softmax."""
        weights = self.op_probabilities(node, predecessor)
        return sum(w * self.run_op(node, predecessor, name, state, cache) for w, name in zip(weights, self.real_ops))

    def run_op(self, node: int, predecessor: int, name: str, state: torch.Tensor, cache: Optional[dict] = None):
        return self.edge_op(node, predecessor, name)(state)

    def node_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        raise NotImplementedError

    def derived_topology(self) -> Topology:
        raise NotImplementedError

    def op_distribution(self, node: int, predecessor: int) -> tuple[torch.Tensor, list[str]]:
        """The derived operation's distribution on one edge, over ``real_ops``."""
        p = self.op_probabilities(node, predecessor)[:len(self.real_ops)]
        return p / p.sum(), self.real_ops

    def edge_inclusion(self, node: int) -> torch.Tensor:
        """How likely each edge is in the derived node (summing to the node's inputs), differentiable."""
        raise NotImplementedError

    def best_op(self, node: int, predecessor: int) -> str:
        p = self.op_probabilities(node, predecessor)[:len(self.real_ops)]
        return self.real_ops[int(torch.argmax(p))]

    def derived_sample(self) -> dict:
        return self.sample_of(self.derived_topology())

    def choice_probabilities(self, sample: dict) -> dict:
        probs = {}
        for node in self.node_indices():
            for slot in range(self.num_ops_per_node):
                j = sample[f"{self.label}/input_{node}_{slot}"][0]
                p = self.op_probabilities(node, j).detach().float()[:len(self.real_ops)]
                probs[f"{self.label}/op_{node}_{slot}"] = dict(zip(self.real_ops, p.tolist()))
        return probs

    def resample(self, memo):
        return {}

    def export(self, memo):
        return {k: v for k, v in self.derived_sample().items() if k not in memo}

    def export_probs(self, memo):
        return {key: dict(zip(self.real_ops, self._softmax(alpha).detach().cpu().tolist()))
                for key, alpha in self._arch_alpha.items() if key not in memo and key.count("/") == 1}

    def forward(self, *inputs):
        processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states = self.preprocessor(processed)
        cache: dict = {}
        for node in self.node_indices():
            states.append(self.node_output(node, states, cache))
        return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed)


def darts_edge_inclusion(edge_probs: list[torch.Tensor], inputs: int) -> torch.Tensor:
    """A DARTS cell's edges as ``inputs`` draws: each edge's non-zero mass (its last weight is the zero), normalised."""
    strength = torch.stack([1 - p[-1] for p in edge_probs])
    return inputs * strength / strength.sum()


def expected_cost(backbone: nn.Module, input_size: int, quantity: str) -> torch.Tensor:
    """E[FLOPs or params] of the derived backbone under its cells' architecture weights (differentiable).

    The cell space's fixed part plus, per cell, node and edge, the edge's inclusion times its operations'
    expected cost (``search_spaces.cells.CellBackboneSpace.op_costs``). Exact for TopoNAS, whose input sets
    and operations are independent draws; for DARTS-like cells the inclusion is a proxy (docs/topology-search.md).
    """
    fixed, tables = backbone.cost_tables(input_size)
    total = torch.tensor(float(getattr(fixed, quantity)))
    for cell, (_, reduction, _), table in zip(backbone.cells, backbone.cell_layout, tables):
        for node in cell.node_indices():
            inclusion = cell.edge_inclusion(node)
            for j in range(node):
                p, names = cell.op_distribution(node, j)
                stride = backbone.stride(reduction, j)
                costs = torch.tensor([float(getattr(table[(name, stride)], quantity)) for name in names])
                total = total + inclusion[j] * (p * costs.to(p)).sum().cpu()
    return total


def cell_budget_penalty_fn(input_size: int, max_flops: Optional[float], max_params: Optional[float], scale: float):
    """``fn(module) -> scale * sum max(0, E[cost] / budget - 1)`` over the backbone's cells (as the macro spaces')."""
    def penalty(module) -> torch.Tensor:
        total = torch.zeros(())
        for quantity, limit in (("flops", max_flops), ("params", max_params)):
            if limit is not None:
                total = total + torch.relu(expected_cost(module.model.backbone, input_size, quantity) / limit - 1.0)
        return scale * total
    return penalty


def supernet_cells(model: nn.Module) -> list:
    """The relaxed cells of a supernet, the first of each label (the others share its weights)."""
    seen, cells = set(), []
    for module in model.modules():
        if isinstance(module, FreezesWithWeights) and module.label not in seen:
            seen.add(module.label)
            cells.append(module)
    return cells


def select_with_cells(ctx: SearchContext, supernet: nn.Module) -> Selection:
    """Each cell's derived choices, the argmax of every other relaxed choice, then fitted to the budget."""
    probabilities = architecture_probabilities(supernet)
    architecture = derived_architecture_from(probabilities)
    for cell in supernet_cells(supernet):
        with torch.no_grad():
            sample = cell.derived_sample()
            architecture.update(sample)
            probabilities.update(cell.choice_probabilities(sample))
    fitted = fit_to_budget(probabilities, architecture, ctx.cost, *ctx.budget)
    if fitted != architecture:
        ctx.log_fn(f"derived network {ctx.cost(architecture)} is over budget; changed the cheapest choices to fit it")
    return Selection(fitted, probabilities)


__all__ = ["DartsCell", "FreezesWithWeights", "RelaxedCell", "Topology", "cell_budget_penalty_fn", "expected_cost",
           "select_with_cells", "supernet_cells"]
