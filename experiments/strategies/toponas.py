"""TopoNAS (Huang, You et al., arXiv 2011.09300): learn each node's set of inputs, jointly with its operations.

DARTS keeps each node's two strongest edges by a hand-made rule after the search. TopoNAS gives
every node with k predecessors and m input slots (the cell space's ``inputs_per_node``) a
categorical distribution over its C(k, m) input sets (topology weights ``beta``, a softmax),
learned with the operation weights on the architecture step. An edge's topology weight is the
marginal probability that the node's input set contains it (the weights of a node sum to m), and
the node is the sum of its edges' DARTS mixed operations, each weighted so. The derived cell
takes, per node, the most probable input set, and on each of its edges the strongest operation.

The passive-aggressive regulariser (our reading of the paper's, whose exact form we could not
consult: docs/topology-search.md) suppresses what the derived cell would not contain: an edge
outside the node's current most probable set is an invalid one; while its topology weight is
at most ``pa_margin`` it costs nothing (passive), above that the excess is penalised linearly
(aggressive); ``topology_penalty`` scales the sum over nodes and is added to the architecture
step's loss.
"""
from __future__ import annotations

import itertools
from functools import partial

import torch

from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext
from experiments.strategies.cell_supernet import RelaxedCell, Topology, supernet_cells
from experiments.strategies.darts import CellDARTS


def input_sets(num_inputs: int, size: int) -> list[tuple[int, ...]]:
    """Every set of ``size`` distinct predecessors out of ``num_inputs`` (all of them when fewer), in order."""
    return list(itertools.combinations(range(num_inputs), min(size, num_inputs)))


def membership(sets: list[tuple[int, ...]], num_inputs: int) -> torch.Tensor:
    """``M[s, j] = 1`` when set ``s`` contains predecessor ``j``."""
    m = torch.zeros(len(sets), num_inputs)
    for s, members in enumerate(sets):
        m[s, list(members)] = 1.0
    return m


def edge_marginals(set_probs: torch.Tensor, sets: list[tuple[int, ...]], num_inputs: int) -> torch.Tensor:
    """Each edge's topology weight: the probability of the sets that contain it."""
    return set_probs @ membership(sets, num_inputs).to(set_probs)


def passive_aggressive(set_probs: torch.Tensor, sets: list[tuple[int, ...]], num_inputs: int,
                       margin: float) -> torch.Tensor:
    """Sum over edges outside the most probable set of ``max(0, topology weight - margin)``."""
    best = sets[int(torch.argmax(set_probs))]
    outside = torch.tensor([j not in best for j in range(num_inputs)], dtype=set_probs.dtype)
    return (torch.relu(edge_marginals(set_probs, sets, num_inputs) - margin) * outside).sum()


class TopoCell(RelaxedCell):
    """NNI's one-shot cell graph with TopoNAS's topology weights (one distribution per node over its input sets)."""

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
        self.input_sets = {node: input_sets(node, num_ops_per_node) for node in self.node_indices()}
        for node, sets in self.input_sets.items():
            self._arch_alpha[self.topology_key(node)] = self.shared_alpha(memo, self.topology_key(node), len(sets))

    def topology_key(self, node: int) -> str:
        return f"{self.label}/{node}/inputs"

    def set_probabilities(self, node: int) -> torch.Tensor:
        return self._softmax(self._arch_alpha[self.topology_key(node)])

    def edge_weights(self, node: int) -> torch.Tensor:
        return edge_marginals(self.set_probabilities(node), self.input_sets[node], node)

    def edge_inclusion(self, node: int) -> torch.Tensor:
        return self.edge_weights(node)  # exactly P(edge in the derived input set)

    def node_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        w = self.edge_weights(node)
        return sum(w[j] * self.mixed_edge(node, j, states[j]) for j in range(node))

    @torch.no_grad()
    def derived_topology(self) -> Topology:
        """Per node, the most probable input set, each edge with its strongest operation."""
        return {node: [(j, self.best_op(node, j)) for j in sets[int(torch.argmax(self.set_probabilities(node)))]]
                for node, sets in self.input_sets.items()}

    @torch.no_grad()
    def top2_topology(self) -> Topology:
        """DARTS's rule on the same weights: the m edges whose strongest operation weighs most (with the edge)."""
        topology = {}
        for node, sets in self.input_sets.items():
            w = self.edge_weights(node)
            strength = [float(w[j] * self.op_probabilities(node, j).max()) for j in range(node)]
            chosen = sorted(sorted(range(node), key=lambda j: -strength[j])[:len(sets[0])])
            topology[node] = [(j, self.best_op(node, j)) for j in chosen]
        return topology

    def regulariser(self, margin: float) -> torch.Tensor:
        return sum(passive_aggressive(self.set_probabilities(node), sets, node, margin)
                   for node, sets in self.input_sets.items())

    def export_probs(self, memo):
        probs = super().export_probs(memo)
        for node, sets in self.input_sets.items():
            p = self.set_probabilities(node).detach().cpu().tolist()
            probs[self.topology_key(node)] = {"+".join(map(str, s)): v for s, v in zip(sets, p)}
        return probs


def topology_regulariser(module, scale: float, margin: float) -> torch.Tensor:
    """The architecture-step penalty: ``scale`` times the passive-aggressive term of every cell type."""
    cells = [c for c in supernet_cells(module.model) if isinstance(c, TopoCell)]
    return scale * sum((c.regulariser(margin) for c in cells), torch.zeros(()))


class TopoNAS(CellDARTS):
    name = "toponas"
    summary = "TopoNAS: a learned distribution over each node's input sets, with a passive-aggressive regulariser"
    option_specs = {
        "topology_penalty": Option(0.1, "[0, 1000]", "the passive-aggressive regulariser's weight"),
        "pa_margin": Option(0.05, "[0, 1]", "an invalid edge's topology weight that costs nothing"),
    }

    def check(self, cfg, target: str) -> None:
        options = cfg.model.backbone_options
        if options.get("inputs_per_node", 2) > 2 and "none" not in options.get("ops", ()):
            raise ConfigError("model.backbone_options: toponas with inputs_per_node above 2 needs 'none' among the "
                              "ops (the first node has two predecessors only)")

    def cell_hooks(self, ctx: SearchContext) -> list:
        return [TopoCell.mutate]

    def penalties(self, ctx: SearchContext) -> dict:
        penalties = super().penalties(ctx)
        s = self.settings(ctx.cfg)
        if s["topology_penalty"] > 0:
            penalties["topology"] = partial(topology_regulariser, scale=float(s["topology_penalty"]),
                                            margin=float(s["pa_margin"]))
        return penalties


__all__ = ["TopoCell", "TopoNAS", "edge_marginals", "input_sets", "passive_aggressive", "topology_regulariser"]
