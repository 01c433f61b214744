"""EnTranNAS (Yang, You et al., CVPR 2021, arXiv 2101.11342): engine cells search, transit cells carry the derived cell.

DARTS trains a supernet that sums every candidate and derives a much smaller network from it.
EnTranNAS keeps the gap small: the first cell of each type (normal, reduction) is an *engine*
cell, differentiable, where the architecture weights are learned; every other cell of that type
is a *transit* cell, which computes only the sub-graph derived from the engine cell's current
weights, as a plain sum, exactly as the derived network will (and so costs what it does).

- Standard: the engine cell is DARTS's (one softmax per edge over the operations and a zero);
  the derived cell is DARTS's rule: on each edge the strongest real operation, per node the
  ``inputs_per_node`` edges whose strongest operation weighs most.
- DST (``dst: true``, differentiable sparsification): each node also has edge weights, a softmax
  over its k predecessors, sparsified as ``s = relu(a - t) / sum(relu(a - t))`` with
  ``t = dst_threshold / k``; the engine node is ``sum_j s_j * mixed_edge_j`` (edges with
  ``s_j = 0`` are not computed) and the derived node keeps exactly the edges with non-zero
  weight, up to the ``inputs_per_node`` slots (the strongest), with ``none`` on the free slots,
  so a node may take one to all of its predecessors.
- Feature sharing (``feature_sharing: true``): an operation on a predecessor is one module for
  all the node's successors in the cell, computed once per forward pass and shared.

The details the paper leaves to us, or that we could not consult, are in docs/topology-search.md.
"""
from __future__ import annotations

import torch

from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext
from experiments.strategies.cell_supernet import RelaxedCell, Topology, darts_edge_inclusion
from experiments.strategies.darts import CellDARTS


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
                cache["topology"] = self.derived_topology()
        return sum(self.run_op(node, j, name, states[j], cache) for j, name in cache["topology"][node])

    def engine_output(self, node: int, states: list, cache: dict) -> torch.Tensor:
        return sum(self.mixed_edge(node, j, states[j], cache) for j in range(node))

    def edge_inclusion(self, node: int) -> torch.Tensor:
        return darts_edge_inclusion([self.op_probabilities(node, j) for j in range(node)], self.num_ops_per_node)

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
    """EnTranNAS-DST: sparsified edge weights per node; the derived node keeps the edges whose weight is non-zero."""

    extra_op_weights = 0

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
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


class EnTranNAS(CellDARTS):
    name = "entrannas"
    summary = "EnTranNAS: engine cells search, transit cells carry the derived cell (DST: sparsified inputs)"
    trains_paths = True  # a transit cell runs its derived operations only: the others get no gradient
    option_specs = {
        "dst": Option(False, None, "differentiable sparsification: a node keeps its non-zero-weight inputs"),
        "dst_threshold": Option(0.9, "[0, 1)", "DST cuts edge weights below dst_threshold / predecessors"),
        "feature_sharing": Option(True, None, "one operation module per predecessor, its output shared"),
    }

    def check(self, cfg, target: str) -> None:
        s = self.settings(cfg)
        if s["dst"] and "none" not in cfg.model.backbone_options.get("ops", ()):
            raise ConfigError("model.backbone_options.ops: entrannas with dst needs 'none' among the ops (it pads a "
                              "node that keeps fewer inputs than inputs_per_node)")

    def cell_hooks(self, ctx: SearchContext) -> list:
        s = self.settings(ctx.cfg)
        cell = EnTranDSTCell if s["dst"] else EnTranCell

        def hook(module, name, memo, mutate_kwargs):
            return cell.mutate(module, name, memo, {**mutate_kwargs, **s})
        return [hook]


__all__ = ["EnTranCell", "EnTranDSTCell", "EnTranNAS", "sparsify"]
