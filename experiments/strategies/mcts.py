"""The Monte-Carlo tree of MCT-NAS (Su et al., "Prioritized Architecture Sampling with Monte-Carlo
Tree Search", CVPR 2021), kept pure: no framework and no project imports, so it can be tested by
hand and driven by any trainer.

The space is L layers, layer l with K_l candidate ops; a *path* is a tuple of op indices, one per
layer (``path_from_choice`` and ``choice_from_path`` convert to and from ``{label: value}`` given an
ordered ``[(label, values), ...]``). The tree's node at depth l is layer l's op given the ops before
it. A trainer calls ``sample()`` for each batch, trains that path, then ``update(path, loss)``;
after training, ``select(evaluate)`` picks the final architecture. ``state_dict()`` holds
everything, RNG included, so a killed search resumes exactly.

Rules and constants follow the paper and its released code (``xiusu/BCNetV2``,
``edgenn/algorithm/utils/mct.py``, ``sampler/mct_sampler.py``, ``searcher/mct_searcher.py`` and
the NAS-Bench-Macro and ImageNet configs); each place that departs from the code says so.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

EXPLORATION_WEIGHT = 0.1  # C1
COMMUNICATION_WEIGHT = 0.2  # C2
TEMPERATURE = 0.0025  # tau of the sampling softmax
MOMENTUM = 0.96  # of the loss average (the code's beta) and of node communication (its gamma)
VISIT_OFFSET = 0.1  # the exploration term divides by n + 0.1, so unvisited children stay finite
MIN_VISITS = 6  # hierarchical selection's visit threshold (the code's n_thrd)
NUM_LEAVES = 20  # candidate leaves hierarchical selection evaluates (the code's search_num)
THRESHOLDS = ("parent", "child")  # hierarchical selection's visit threshold: the code's, or per child
DESCENTS = ("softmax", "greedy")  # its descent: the code's softmax((Q/n + C2 G) / tau), or greedy on Q/n

Path = tuple[int, ...]
Space = Sequence[tuple[str, Sequence[Any]]]


def path_from_choice(choice: Mapping[str, Any], space: Space) -> Path:
    """The op indices of ``{label: value}``, in the order of ``space``."""
    path = []
    for label, values in space:
        values = list(values)
        if choice[label] not in values:
            raise ValueError(f"{label}: {choice[label]!r} is not one of {values}")
        path.append(values.index(choice[label]))
    return tuple(path)


def choice_from_path(path: Sequence[int], space: Space) -> dict[str, Any]:
    """``{label: value}`` of a path, the inverse of ``path_from_choice``."""
    if len(path) != len(space):
        raise ValueError(f"a path of {len(path)} ops for a space of {len(space)} layers")
    return {label: values[op] for (label, values), op in zip(space, path)}


@dataclass
class Node:
    """One layer's op given the ops before it: its visits n and the sum Q of its rewards."""

    visits: int = 0
    reward_sum: float = 0.0
    children: dict[int, Node] = field(default_factory=dict)

    @property
    def mean_reward(self) -> float:
        """Q/n, and 0 for an unvisited node, as the released code scores it."""
        return self.reward_sum / self.visits if self.visits else 0.0


def uct_scores(node: Optional[Node], communication: Sequence[float],
               exploration_weight: float = EXPLORATION_WEIGHT,
               communication_weight: float = COMMUNICATION_WEIGHT) -> list[float]:
    """Q/n + C1 sqrt(ln N / (n + 0.1)) + C2 G[o] for each op o of the layer below ``node``.

    N is ``node``'s visits, n and Q the child's, G the layer's row of node communication (its
    length is the number of ops). Unvisited children are scored as the released code does: Q/n
    counts as 0 and the exploration term stays finite thanks to the 0.1. Below a node that was
    never visited (``None`` or N = 0, where ln N has no value) the exploration term is 0 too, so
    only G ranks its children: node communication is the prior for unexplored parts of the tree.
    With rewards near 1, an unvisited child outscores a visited sibling only once
    0.1 sqrt(ln N / 0.1) nears 1, at N ~ e^10: sampling the tree refines the part of it that
    warm-up visited rather than exploring new children, and without warm-up it locks onto its
    first paths.
    """
    node = node or Node()
    scores = []
    for op, op_reward in enumerate(communication):
        child = node.children.get(op) or Node()
        exploration = (math.sqrt(math.log(node.visits) / (child.visits + VISIT_OFFSET))
                       if node.visits else 0.0)
        scores.append(child.mean_reward + exploration_weight * exploration
                      + communication_weight * op_reward)
    return scores


def softmax(scores: Sequence[float], temperature: float) -> list[float]:
    """softmax(score / temperature), shifted by the maximum so a tiny temperature cannot overflow."""
    top = max(scores)
    weights = [math.exp((score - top) / temperature) for score in scores]
    total = sum(weights)
    return [weight / total for weight in weights]


@dataclass(frozen=True)
class WarmupSchedule:
    """When sampling stops being uniform (``uniform_until``) and when backups start (``updates_from``).

    Both count ``unit``: "steps" (``update`` calls, one per training batch) or "epochs" (each of
    ``steps_per_epoch`` steps). The released code has the same three stages: uniform sampling with
    no update at all until its ``warmup_iters``, uniform sampling that already builds the tree
    (backups, loss average and node communication) until its ``mct_start_iter``, then sampling from
    the tree; its NAS-Bench-Macro config starts backups at epoch 25 and tree sampling at epoch 30
    (196 steps each), its ImageNet config at epochs 60 and 85 (1203 steps each).
    """

    uniform_until: int = 0
    updates_from: int = 0
    unit: str = "steps"
    steps_per_epoch: Optional[int] = None

    def __post_init__(self) -> None:
        if self.unit not in ("steps", "epochs"):
            raise ValueError(f'unit must be "steps" or "epochs", not {self.unit!r}')
        if self.unit == "epochs" and not (self.steps_per_epoch and self.steps_per_epoch > 0):
            raise ValueError('unit "epochs" needs a positive steps_per_epoch')
        if not 0 <= self.updates_from <= self.uniform_until:
            raise ValueError("need 0 <= updates_from <= uniform_until: the tree must be built "
                             "before it is sampled")

    def _steps(self, amount: int) -> int:
        return amount * self.steps_per_epoch if self.unit == "epochs" else amount

    @property
    def uniform_steps(self) -> int:
        return self._steps(self.uniform_until)

    @property
    def first_update_step(self) -> int:
        return self._steps(self.updates_from)


@dataclass(frozen=True)
class Selection:
    """What hierarchical selection found: the best candidate, and every candidate in order found."""

    path: Path
    score: float
    candidates: list[tuple[Path, float]]


STATE_VERSION = 1


class MonteCarloTree:
    """MCT-NAS's sampler: the tree, node communication, the loss average, its own RNG, the step.

    Sampling depends only on these (``random.Random(seed)`` owned here), so trees fed the same
    losses sample the same paths on every rank, and a restored tree continues as the saved one.
    """

    def __init__(self, num_ops: Sequence[int], *, seed: int = 0,
                 warmup: WarmupSchedule = WarmupSchedule(),
                 exploration_weight: float = EXPLORATION_WEIGHT,
                 communication_weight: float = COMMUNICATION_WEIGHT,
                 temperature: float = TEMPERATURE, momentum: float = MOMENTUM) -> None:
        if not num_ops or any(count < 1 for count in num_ops):
            raise ValueError(f"every layer needs at least one op, got {list(num_ops)}")
        self.num_ops = tuple(num_ops)
        self.uniform_steps = warmup.uniform_steps
        self.first_update_step = warmup.first_update_step
        self.exploration_weight = exploration_weight
        self.communication_weight = communication_weight
        self.temperature = temperature
        self.momentum = momentum
        self.rng = random.Random(seed)
        self.root = Node()
        self.communication = [[0.0] * count for count in self.num_ops]
        self.loss_average = 0.0
        self.losses_seen = 0
        self.steps_done = 0

    def node(self, prefix: Sequence[int]) -> Optional[Node]:
        """The node reached by ``prefix`` (the root for ``()``); ``None`` while it has no visit."""
        node = self.root
        for op in prefix:
            node = node.children.get(op)
            if node is None:
                return None
        return node

    @property
    def samples_uniformly(self) -> bool:
        return self.steps_done < self.uniform_steps

    def child_probabilities(self, prefix: Sequence[int]) -> list[float]:
        """The probability of each op of the next layer after ``prefix`` when sampling the tree."""
        scores = uct_scores(self.node(prefix), self.communication[len(prefix)],
                            self.exploration_weight, self.communication_weight)
        return softmax(scores, self.temperature)

    def sample(self) -> Path:
        """A path to train: uniform during warm-up, then drawn layer by layer from the tree."""
        if self.samples_uniformly:
            return tuple(self.rng.randrange(count) for count in self.num_ops)
        path: list[int] = []
        for _ in self.num_ops:
            path.append(self._draw(self.child_probabilities(path)))
        return tuple(path)

    def _draw(self, probabilities: Sequence[float]) -> int:
        threshold = self.rng.random()
        cumulative = 0.0
        for op, probability in enumerate(probabilities):
            cumulative += probability
            if threshold < cumulative:
                return op
        return len(probabilities) - 1  # rounding left the sum a hair under the threshold

    def update(self, path: Sequence[int], loss: float) -> Optional[float]:
        """Close a training step: back up the reward of ``loss`` along ``path`` and return it.

        Steps before ``updates_from`` only count (the reward is ``None``). The reward is
        (moving average of the loss) / loss, the average taken after this loss joined it with
        momentum 0.96; the first loss backed up initialises the average, so the first reward is
        exactly 1. (The released code starts the average at 0, which makes the first rewards
        0.04, 0.078, ... whatever the path: a bias this module leaves out.) The ratio needs a
        positive loss: shift a loss that can be negative (SimSiam's -cos) before passing it.
        """
        self._check_path(path)
        loss = float(loss)
        if not (math.isfinite(loss) and loss > 0):
            raise ValueError(f"the reward ratio needs a positive finite loss, got {loss}")
        reward = None
        if self.steps_done >= self.first_update_step:
            if self.losses_seen == 0:
                self.loss_average = loss
            else:
                self.loss_average = self.momentum * self.loss_average + (1 - self.momentum) * loss
            self.losses_seen += 1
            reward = self.loss_average / loss
            self.backup(path, reward)
        self.steps_done += 1
        return reward

    def backup(self, path: Sequence[int], reward: float) -> None:
        """Add ``reward`` to the root and each node of ``path`` (creating those first visited), and
        fold it into node communication: G[l][op] <- 0.96 G[l][op] + 0.04 reward, G starting at 0
        as in the released code."""
        self._check_path(path)
        reward = float(reward)
        node = self.root
        node.visits += 1
        node.reward_sum += reward
        for depth, op in enumerate(map(int, path)):
            node = node.children.setdefault(op, Node())
            node.visits += 1
            node.reward_sum += reward
            row = self.communication[depth]
            row[op] = self.momentum * row[op] + (1 - self.momentum) * reward

    def _check_path(self, path: Sequence[int]) -> None:
        if len(path) != len(self.num_ops) or any(
                not 0 <= op < count for op, count in zip(path, self.num_ops)):
            raise ValueError(f"{tuple(path)} is not a path of a space with ops {self.num_ops}")

    def select(self, evaluate: Callable[[Path], float], *, min_visits: int = MIN_VISITS,
               num_leaves: int = NUM_LEAVES, within: Optional[Callable[[Path], bool]] = None,
               rank: Optional[Callable[[Path], float]] = None, threshold: str = "parent",
               descent: str = "softmax") -> Selection:
        """Hierarchical node selection (``MCTree.hierarchical_sample`` and ``MCTSearcher.search`` of the
        released code): the best of ``num_leaves`` candidate leaves, each found by one descent.

        One descent goes down from the root. At each depth it first tops the node up: while the
        node's visits per op are under ``min_visits`` (``threshold="parent"``, the code's
        ``visits / K < n_thrd``; ``"child"``: until every open child has ``min_visits``), a path
        completing the prefix with ops drawn uniformly by the tree's RNG among the open ones is
        evaluated and backed up like a reward (n, Q and G). Then it moves to a child drawn from
        softmax((Q/n + C2 G) / tau) over the open children (``descent="softmax"``, the code's
        ``sample_child`` with C1 = 0; ``"greedy"``: the best Q/n, the lowest op on a tie). The leaf
        it reaches is a candidate, scored by ``rank`` (the code's second evaluator; None:
        ``evaluate``), and is closed (the code's ``remove_leaf_node``), as is any node whose
        leaves all are. A leaf outside the budget (``within(path)`` false), reached by a top-up
        or by the descent, is closed the same way without being evaluated or backed up, so it
        changes no Q/n. A descent that finds a node with every child closed restarts from the
        root. Selection stops after ``num_leaves`` candidates, or when every leaf is closed, and
        returns the candidate with the highest score (the first found on a tie); with no
        candidate within the budget its path is ``()`` and its score ``-inf``.

        ``evaluate(path)`` is a held-out score, higher better, taken to be deterministic: it is
        called once per distinct path and a path drawn again backs its cached score up again.
        Scores are backed up as rewards, so keep them on the reward scale, e.g.
        ``tree.loss_average / held_out_loss``, for Q/n to stay comparable across nodes with many
        training visits and nodes with many evaluations.

        A departure kept from the code: its top-ups complete paths only through nodes the tree
        already holds, here through any open op.
        """
        if min_visits < 1 or num_leaves < 1:
            raise ValueError("min_visits and num_leaves must be at least 1")
        if threshold not in THRESHOLDS or descent not in DESCENTS:
            raise ValueError(f"threshold must be one of {THRESHOLDS} and descent one of {DESCENTS}")
        scores: dict[Path, float] = {}

        def score(path: Path) -> float:
            if path not in scores:
                scores[path] = float(evaluate(path))
            return scores[path]

        closed_below: Counter[Path] = Counter()  # closed leaves under each prefix
        leaves_below = [math.prod(self.num_ops[depth:]) for depth in range(len(self.num_ops) + 1)]

        def is_open(prefix: Path) -> bool:
            return closed_below[prefix] < leaves_below[len(prefix)]

        def open_ops(prefix: Path) -> list[int]:
            return [op for op in range(self.num_ops[len(prefix)]) if is_open(prefix + (op,))]

        def close(leaf: Path) -> None:
            for depth in range(len(leaf) + 1):
                closed_below[leaf[:depth]] += 1

        def visits(prefix: Path) -> int:
            return (self.node(prefix) or Node()).visits

        def top_up(prefix: Path) -> None:
            """One path through ``prefix``, evaluated and backed up, or closed if over the budget."""
            path = prefix
            while len(path) < len(self.num_ops):
                path += (self.rng.choice(open_ops(path)),)
            if within is not None and not within(path):
                close(path)
            else:
                self.backup(path, score(path))

        def needs_visits(prefix: Path) -> bool:
            if threshold == "parent":
                return visits(prefix) / self.num_ops[len(prefix)] < min_visits
            return any(visits(prefix + (op,)) < min_visits for op in open_ops(prefix))

        def step_down(prefix: Path) -> int:
            ops = open_ops(prefix)
            if descent == "greedy":
                return max(ops, key=lambda op: visits(prefix + (op,)) and self.node(prefix + (op,)).mean_reward)
            row = self.communication[len(prefix)]
            ucts = [(self.node(prefix + (op,)) or Node()).mean_reward + self.communication_weight * row[op]
                    for op in ops]
            return ops[self._draw(softmax(ucts, self.temperature))]

        candidates: list[tuple[Path, float]] = []
        while len(candidates) < num_leaves and is_open(()):
            prefix: Path = ()
            while len(prefix) < len(self.num_ops) and is_open(prefix):
                if threshold == "parent":
                    while is_open(prefix) and needs_visits(prefix):
                        top_up(prefix)
                else:
                    for op in open_ops(prefix):
                        while is_open(prefix + (op,)) and visits(prefix + (op,)) < min_visits:
                            top_up(prefix + (op,))
                if is_open(prefix):
                    prefix += (step_down(prefix),)
            if len(prefix) < len(self.num_ops) or not is_open(prefix):
                continue  # every leaf below was closed on the way: restart from the root
            if within is not None and not within(prefix):
                close(prefix)
                continue
            candidates.append((prefix, float(rank(prefix)) if rank is not None else score(prefix)))
            close(prefix)
        if not candidates:
            return Selection((), -math.inf, [])
        best_path, best_score = max(candidates, key=lambda candidate: candidate[1])
        return Selection(best_path, best_score, candidates)

    def state_dict(self) -> dict[str, Any]:
        """Everything the tree is, as ints, floats, strings and lists in a dict: it survives JSON
        and ``torch.load(weights_only=True)``. Nodes are listed parents first, by their paths."""
        node_paths, node_visits, node_reward_sums = [], [], []
        pending: list[tuple[list[int], Node]] = [([], self.root)]
        while pending:
            prefix, node = pending.pop()
            node_paths.append(prefix)
            node_visits.append(node.visits)
            node_reward_sums.append(node.reward_sum)
            pending.extend((prefix + [op], child) for op, child in sorted(node.children.items()))
        rng_version, rng_internal, _ = self.rng.getstate()  # gauss_next: never used here
        return {
            "version": STATE_VERSION,
            "num_ops": list(self.num_ops),
            "uniform_steps": self.uniform_steps,
            "first_update_step": self.first_update_step,
            "exploration_weight": self.exploration_weight,
            "communication_weight": self.communication_weight,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "rng_state": [rng_version, list(rng_internal)],
            "communication": [list(row) for row in self.communication],
            "loss_average": self.loss_average,
            "losses_seen": self.losses_seen,
            "steps_done": self.steps_done,
            "node_paths": node_paths,
            "node_visits": node_visits,
            "node_reward_sums": node_reward_sums,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> MonteCarloTree:
        """The tree that ``state_dict()`` described, continuing exactly where it stopped."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"a tree state of version {state.get('version')!r}, "
                             f"this module reads version {STATE_VERSION}")
        tree = cls(state["num_ops"],
                   warmup=WarmupSchedule(state["uniform_steps"], state["first_update_step"]),
                   exploration_weight=state["exploration_weight"],
                   communication_weight=state["communication_weight"],
                   temperature=state["temperature"], momentum=state["momentum"])
        rng_version, rng_internal = state["rng_state"]
        tree.rng.setstate((rng_version, tuple(rng_internal), None))
        tree.communication = [[float(value) for value in row] for row in state["communication"]]
        tree.loss_average = float(state["loss_average"])
        tree.losses_seen = int(state["losses_seen"])
        tree.steps_done = int(state["steps_done"])
        for prefix, visits, reward_sum in zip(state["node_paths"], state["node_visits"],
                                              state["node_reward_sums"]):
            node = tree.root
            for op in prefix:
                node = node.children.setdefault(int(op), Node())
            node.visits = int(visits)
            node.reward_sum = float(reward_sum)
        return tree
