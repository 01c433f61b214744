"""EnTranNAS (Yang, You et al., CVPR 2021, arXiv 2101.11342): engine cells search, transit cells carry the derived cell.

DARTS trains a supernet that sums every candidate and derives a much smaller network from it.
EnTranNAS keeps the gap small: the first cell of each type (normal, reduction) is an *engine*
cell, differentiable, where the architecture weights are learned; every other cell of that type
is a *transit* cell, which computes only the sub-graph derived from the engine cell's current
weights, as a plain sum, exactly as the derived network will (and so costs what it does).

- Standard: the engine cell is DARTS's (one softmax per edge over the operations and a zero);
  the derived cell is DARTS's rule: on each edge the strongest real operation, per node the
  ``inputs_per_node`` edges whose strongest operation weighs most.
- DST (``dst: true``, differentiable sparsification), ``dst_rule: pairs`` (default): the paper's
  rule as the differentiable-NAS survey of Heuillet et al. (arXiv 2304.05405, ACM CSUR 2024)
  restates it: node j has one distribution p over all its (edge, operation) pairs (a softmax of
  the pairs' weights over the temperature ``dst_temperature``) and a learnable threshold
  ``t_j = sigmoid(beta_j)``; ``q = relu(p / max p - t_j)``, normalised to sum 1. The engine node
  is ``sum q_(i,o) * o(x_i)`` over the pairs with ``q > 0`` (the others are not computed), and the
  derived node keeps every such pair, however many (the strongest first), so a node takes any
  number of inputs, two operations on one edge included. ``dst_rule: edges`` is the package's
  earlier reading: a softmax over the k predecessors, cut at the fixed ``dst_threshold / k``, the
  kept edges' strongest operations, at most ``inputs_per_node`` of them.
- Feature sharing (``feature_sharing: true``): an operation on a predecessor is one module for
  all the node's successors in the cell, computed once per forward pass and shared.

The details the paper leaves to us, or that we could not consult, are in docs/topology-search.md.
"""
from __future__ import annotations

import torch

from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext
from experiments.strategies.cell_supernet import RelaxedCell, Topology, darts_edge_inclusion, supernet_cells
from experiments.strategies.darts import CellDARTS

DST_RULES = ("pairs", "edges")


def sparsify(weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """DST's edge weights: the softmax minus ``threshold / k``, negatives cut to zero, renormalised.

    With ``threshold < 1`` the largest weight (at least ``1 / k``) always survives.
    """
    kept = torch.relu(weights - threshold / weights.numel())
    return kept / kept.sum()


class EnTranCell(RelaxedCell):
    """Engine (the first cell of its label) or transit cell; standard EnTranNAS (DARTS engine, top-m rule)."""

    extra_op_weights = 1  # DARTS's zero operation on every edge

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
        self.engine = self.first_of_label
        self.share_features = bool(mutate_kwargs.get("feature_sharing", True))
        self.add_node_weights(memo, mutate_kwargs)

    def add_node_weights(self, memo: dict, mutate_kwargs: dict) -> None:
        """The architecture weights a node has beyond its edges' (DST's); none for the standard cell."""

    # --- feature sharing ---------------------------------------------------------------------------
    def edge_op(self, node: int, predecessor: int, name: str):
        if self.share_features:  # one module per (predecessor, operation): the first successor's
            node = max(predecessor + 1, self.num_predecessors)
        return super().edge_op(node, predecessor, name)

    def run_op(self, node, predecessor, name, state, cache=None):
        if not self.share_features or cache is None:
            return super().run_op(node, predecessor, name, state, cache)
        if (predecessor, name) not in cache:
            cache[(predecessor, name)] = self.edge_op(node, predecessor, name)(state)
        return cache[(predecessor, name)]

    # --- engine and transit --------------------------------------------------------------------------
    def node_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        if self.engine:
            return self.engine_output(node, states, cache)
        if "topology" not in cache:  # the engine's current derived cell, once per forward pass
            with torch.no_grad():
                cache["topology"] = self.transit_topology()
        return sum(self.run_op(node, j, name, states[j], cache) for j, name in cache["topology"][node])

    def engine_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        return sum(self.mixed_edge(node, j, states[j], cache) for j in range(node))

    def edge_inclusion(self, node: int) -> torch.Tensor:
        return darts_edge_inclusion([self.op_probabilities(node, j) for j in range(node)], self.num_ops_per_node)

    def transit_topology(self) -> Topology:
        """The cell a transit cell computes: the derived one, as the export writes it."""
        return self.derived_topology()

    @torch.no_grad()
    def derived_topology(self) -> Topology:
        """DARTS's rule: per node the edges whose strongest real operation weighs most."""
        topology = {}
        for node in self.node_indices():
            strength = [float(self.op_probabilities(node, j)[:len(self.real_ops)].max()) for j in range(node)]
            chosen = sorted(sorted(range(node), key=lambda j: -strength[j])[:self.num_ops_per_node])
            topology[node] = [(j, self.best_op(node, j)) for j in chosen]
        return topology


class EnTranDSTCell(EnTranCell):
    """EnTranNAS-DST, ``dst_rule: edges``: sparsified edge weights per node; the derived node keeps the edges whose
    weight is non-zero (the strongest ``inputs_per_node``)."""

    extra_op_weights = 0

    def add_node_weights(self, memo: dict, mutate_kwargs: dict) -> None:
        self.threshold = float(mutate_kwargs.get("dst_threshold", 0.9))
        for node in self.node_indices():
            self._arch_alpha[self.inputs_key(node)] = self.shared_alpha(memo, self.inputs_key(node), node)

    def inputs_key(self, node: int) -> str:
        return f"{self.label}/{node}/inputs"

    def edge_weights(self, node: int) -> torch.Tensor:
        return sparsify(self._softmax(self._arch_alpha[self.inputs_key(node)]), self.threshold)

    def edge_inclusion(self, node: int) -> torch.Tensor:
        w = self.edge_weights(node)  # kept edges count once each (up to the slots); the weights carry the gradient
        return w * min(int((w > 0).sum()), self.num_ops_per_node)

    def engine_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        w = self.edge_weights(node)
        return sum(w[j] * self.mixed_edge(node, j, states[j], cache) for j in range(node) if w[j] > 0)

    @torch.no_grad()
    def derived_topology(self) -> Topology:
        """The edges with non-zero sparsified weight (the strongest ``inputs_per_node`` of them), in order."""
        topology = {}
        for node in self.node_indices():
            w = self.edge_weights(node)
            kept = [j for j in range(node) if w[j] > 0]
            kept = sorted(sorted(kept, key=lambda j: -float(w[j]))[:self.num_ops_per_node])
            topology[node] = [(j, self.best_op(node, j)) for j in kept]
        return topology

    def export_probs(self, memo):
        probs = super().export_probs(memo)
        for node in self.node_indices():
            probs[self.inputs_key(node)] = dict(enumerate(self.edge_weights(node).detach().cpu().tolist()))
        return probs


class EnTranPairCell(EnTranCell):
    """EnTranNAS-DST as the survey restates it: a node's (edge, operation) pairs sparsified by a learnable threshold.

    The pairs' weights are the edges' operation weights (``<label>/<node>_<predecessor>``, one per
    real operation) read together; ``<label>/<node>/threshold`` is the node's beta.
    """

    extra_op_weights = 0

    def add_node_weights(self, memo: dict, mutate_kwargs: dict) -> None:
        self.temperature = float(mutate_kwargs.get("dst_temperature", 1.0))
        for node in self.node_indices():
            self._arch_alpha[self.threshold_key(node)] = self.shared_alpha(memo, self.threshold_key(node), 1)

    def threshold_key(self, node: int) -> str:
        return f"{self.label}/{node}/threshold"

    def pairs(self, node: int) -> list[tuple[int, str]]:
        """The node's (predecessor, operation) pairs, in the order of ``pair_weights``."""
        return [(j, name) for j in range(node) for name in self.real_ops]

    def pair_weights(self, node: int) -> torch.Tensor:
        """q over the node's pairs: ``relu(p / max p - sigmoid(beta))``, normalised (the largest pair always stays)."""
        alpha = torch.cat([self._arch_alpha[self.edge_key(node, j)] for j in range(node)])
        p = torch.softmax(alpha / self.temperature, -1)
        return sparsify_pairs(p, self._arch_alpha[self.threshold_key(node)])

    def engine_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        q = self.pair_weights(node)
        return sum(w * self.run_op(node, j, name, states[j], cache)
                   for w, (j, name) in zip(q, self.pairs(node)) if w > 0)

    def edge_inclusion(self, node: int) -> torch.Tensor:
        """Each edge's share of q times the pairs kept: with ``op_distribution``, E[cost] is the kept pairs'
        count times their q-weighted mean cost."""
        q = self.pair_weights(node)
        return q.view(node, len(self.real_ops)).sum(1) * int((q > 0).sum())

    def op_distribution(self, node: int, predecessor: int) -> tuple[torch.Tensor, list[str]]:
        q = self.pair_weights(node).view(node, len(self.real_ops))[predecessor]
        if float(q.sum()) <= 0:  # no kept pair on this edge: its inclusion is 0, any distribution will do
            return super().op_distribution(node, predecessor)
        return q / q.sum(), self.real_ops

    @torch.no_grad()
    def derived_topology(self) -> Topology:
        """Every pair with non-zero q, the strongest first (no cap: the space's slots are the export's room)."""
        topology = {}
        for node in self.node_indices():
            q = self.pair_weights(node)
            kept = [i for i in range(len(q)) if q[i] > 0]
            pairs = self.pairs(node)
            topology[node] = [pairs[i] for i in sorted(kept, key=lambda i: -float(q[i]))]
        return topology

    @torch.no_grad()
    def transit_topology(self) -> Topology:
        """What the export holds: the derived pairs, as many as the space's slots (``inputs_per_node``) take."""
        return {node: pairs[:self.num_ops_per_node] for node, pairs in self.derived_topology().items()}


def sparsify_pairs(p: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The survey's sparsification of one node: ``relu(p / max p - sigmoid(beta))``, normalised to sum 1."""
    q = torch.relu(p / p.max() - torch.sigmoid(beta))
    return q / q.sum()


def cut_pairs(supernet) -> list[str]:
    """One line per node that keeps more (edge, operation) pairs than the space has slots for (the export cuts)."""
    lines = []
    for cell in supernet_cells(supernet):
        if isinstance(cell, EnTranPairCell):
            for node, pairs in cell.derived_topology().items():
                if len(pairs) > cell.num_ops_per_node:
                    lines.append(f"entrannas: {cell.label} node {node} keeps {len(pairs)} (edge, operation) pairs "
                                 f"and the space has {cell.num_ops_per_node} slots "
                                 f"(model.backbone_options.inputs_per_node): the strongest are exported")
    return lines


class EnTranNAS(CellDARTS):
    name = "entrannas"
    summary = "EnTranNAS: engine cells search, transit cells carry the derived cell (DST: sparsified inputs)"
    trains_paths = True  # a transit cell runs its derived operations only: the others get no gradient
    option_specs = {
        "dst": Option(False, None, "differentiable sparsification: a node keeps its non-zero-weight inputs"),
        "dst_rule": Option("pairs", why="pairs (the survey's: a node's (edge, operation) pairs, learnable threshold, "
                                        "no cap) or edges (softmax over predecessors, fixed threshold, capped)"),
        "dst_temperature": Option(1.0, "(0, 100]", "pairs rule: the softmax temperature of the engine's weights"),
        "dst_threshold": Option(0.9, "[0, 1)", "edges rule: DST cuts edge weights below dst_threshold / predecessors"),
        "feature_sharing": Option(True, None, "one operation module per predecessor, its output shared"),
    }

    def check(self, cfg, target: str) -> None:
        s = self.settings(cfg)
        if s["dst_rule"] not in DST_RULES:
            raise ConfigError(f"backbone_search.strategy_options.dst_rule: must be one of {', '.join(DST_RULES)}, "
                              f"got {s['dst_rule']!r}")
        if s["dst"] and "none" not in cfg.model.backbone_options.get("ops", ()):
            raise ConfigError("model.backbone_options.ops: entrannas with dst needs 'none' among the ops (it pads a "
                              "node that keeps fewer inputs than inputs_per_node)")

    def select(self, ctx: SearchContext, nni_strategy):
        for line in cut_pairs(nni_strategy.supernet):
            ctx.log_fn(line)
        return super().select(ctx, nni_strategy)

    def cell_hooks(self, ctx: SearchContext) -> list:
        s = self.settings(ctx.cfg)
        cell = (EnTranPairCell if s["dst_rule"] == "pairs" else EnTranDSTCell) if s["dst"] else EnTranCell

        def hook(module, name, memo, mutate_kwargs):
            return cell.mutate(module, name, memo, {**mutate_kwargs, **s})
        return [hook]


__all__ = ["DST_RULES", "EnTranCell", "EnTranDSTCell", "EnTranNAS", "EnTranPairCell", "cut_pairs", "sparsify", "sparsify_pairs"]
