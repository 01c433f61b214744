"""MCT-NAS (Su et al., CVPR 2021): supernet paths sampled from a Monte-Carlo tree, then hierarchical node selection.

Each weight step draws a path from the tree (``experiments/strategies/mcts.py``): uniformly
while it warms up, then layer by layer by UCT; trains it SPOS-style (NNI's single-path module
with the path preset, ``sampling.PresetPathModule``) and backs the step's reward up the tree.
After training, ``MonteCarloTree.select`` descends the tree, scoring candidate leaves on
held-out images, and the best leaf within the budget is the result.

Choices this module makes, each because of the SSL objective or the run's scale:

* *Reward under SSL.* The tree's reward is (moving average of the loss) / (this loss), which
  needs a positive loss. SimSiam's negative cosine lies in [-1, 1], so the tree is given
  ``loss + loss_shift`` (default 1: SimSiam's 1 - cos >= 0, zero only for identical views'
  embeddings). The shift is applied to every framework for one rule: BYOL's 2 - 2cos, InfoNCE
  and cross-entropy are already positive, where it only bounds the ratio as the loss nears 0
  (set ``loss_shift`` 0 for the paper's exact reward on ``supervised``). A loss the shift
  does not make positive stops the search with an error saying so.
* *Warm-up.* The released code samples NAS-Bench-Macro uniformly for 30 of its epochs, backing
  rewards up from epoch 25. Short runs cannot spare 30 epochs: ``warmup_fraction`` (0.5) of
  ``search.epochs`` is uniform, and backups start after ``backup_fraction`` (5/6, the code's
  25 of 30) of the warm-up; both counted in steps, so a 2-epoch run warms up for one.
* *Selection scale.* ``select`` backs its held-out scores up the tree beside the training
  rewards, so they must be on the reward scale (near 1). The held-out kNN top-1 (classifier
  accuracy for ``supervised``) of a path is divided by that of the tree's greedy path before
  selection (Q/n descent): 1.05 means 5 % better than the network the tree rated best. A leaf
  over the FLOPs/parameter budget is removed from the tree's selection without being evaluated
  or backed up, as the released searcher's ``remove_leaf_node`` does; if every leaf is over the
  budget the result is the space's smallest network. The visit threshold and the descent follow
  the released code by default (``threshold: parent``, ``descent: softmax``); ``child`` and
  ``greedy`` are the earlier rules, kept to compare. The released searcher tops nodes up with a
  training-loss evaluator and ranks the candidates with a validation one; here one evaluator,
  the held-out score, does both (``MonteCarloTree.select`` takes a separate ``rank``).
* *Budget.* The supernet trains only paths within the FLOPs/parameter budget (the tree's draws
  are repeated until one is, as NNI's ``RandomOneShot(filter=...)`` would): the tree then holds
  rewards of feasible networks only, and selection descends where the result may lie.
* *Distinct networks* (``distinct``, NAS-Bench-Macro): warm-up draws a canonical key
  uniformly with the tree's generator, and a path drawn from the tree is trained and backed up
  as its network's representative, so one network's rewards are not split between its keys.
* *DDP.* Every rank holds the tree; every rank draws (the tree's generator stays in step),
  rank zero's path is trained everywhere and the mean loss over ranks is backed up, so the
  tree is the same on every rank. The tree is saved in every checkpoint (``mctnas_tree``) and
  restored on resume.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

from evaluators import FRAMEWORKS
from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.distinct import DISTINCT_OPTION, canonical_architecture, check_distinct, \
    distinct_architectures
from experiments.strategies.mcts import COMMUNICATION_WEIGHT, DESCENTS, EXPLORATION_WEIGHT, MIN_VISITS, MOMENTUM, \
    NUM_LEAVES, TEMPERATURE, THRESHOLDS, MonteCarloTree, Path, WarmupSchedule, choice_from_path, path_from_choice
from search_spaces.head_spaces import HEAD_SPACES, fixed_head_spaces

SAMPLING_PATIENCE = 10_000  # draws from the tree before a step gives up finding a path within budget


class SharedTree:
    """The tree and the space's labels, kept identical on every rank: what a training step draws and backs up.

    ``space`` is ``[(label, values), ...]``; ``distinct`` the architectures of the distinct
    networks (None: sample keys); ``within(architecture)`` the budget (None: none). ``broadcast``
    and ``mean`` are the rank-zero broadcast and the mean over ranks (identities outside DDP).
    """

    def __init__(self, tree: MonteCarloTree, space: Sequence[tuple[str, Sequence[Any]]], loss_shift: float,
                 distinct: Optional[Sequence[Mapping[str, Any]]] = None,
                 within: Optional[Callable[[dict], bool]] = None,
                 broadcast: Callable[[Any], Any] = lambda value: value, mean: Callable[[Any], float] = float):
        self.tree, self.space, self.loss_shift, self.within = tree, list(space), float(loss_shift), within
        self.distinct_paths = None if distinct is None else [path_from_choice(a, self.space) for a in distinct]
        self.broadcast, self.mean = broadcast, mean

    def architecture(self, path: Sequence[int]) -> dict:
        return choice_from_path(path, self.space)

    def draw(self) -> Path:
        """The path every rank trains this step (rank zero's): the tree's draws until one is within budget."""
        for _ in range(SAMPLING_PATIENCE):
            path = self._draw_once()
            if self.within is None or self.within(self.architecture(path)):
                return tuple(self.broadcast(path))
        raise RuntimeError(f"mctnas: no path within the budget in {SAMPLING_PATIENCE} draws from the tree")

    def _draw_once(self) -> Path:
        if self.distinct_paths is None:
            return self.tree.sample()
        if self.tree.samples_uniformly:
            return self.distinct_paths[self.tree.rng.randrange(len(self.distinct_paths))]
        return path_from_choice(canonical_architecture(self.architecture(self.tree.sample())), self.space)

    def back_up(self, path: Sequence[int], loss) -> Optional[float]:
        """Back the reward of the step's mean loss over ranks up ``path``; returns the reward (None in warm-up)."""
        shifted = self.mean(loss) + self.loss_shift
        if not (math.isfinite(shifted) and shifted > 0):
            raise RuntimeError(f"mctnas: the loss + loss_shift ({self.loss_shift}) is {shifted}; the tree's reward "
                               f"needs it positive: raise backbone_search.strategy_options.loss_shift")
        return self.tree.update(path, shifted)


def greedy_path(tree: MonteCarloTree) -> Path:
    """The tree's best path before selection: at each depth the visited child with the best Q/n
    (node communication G where no child is visited), the lowest op on a tie."""
    path: list[int] = []
    for depth in range(len(tree.num_ops)):
        node = tree.node(path)
        visited = {op: child.mean_reward for op, child in (node.children.items() if node else ()) if child.visits}
        ranked = visited or dict(enumerate(tree.communication[depth]))
        path.append(max(sorted(ranked), key=lambda op: ranked[op]))
    return tuple(path)


class MCTNAS(Strategy):
    name = "mctnas"
    summary = "Monte-Carlo tree path sampling (UCT, loss-ratio reward), then hierarchical node selection"
    handles = frozenset({"layer"})
    config_fields = ("backbone_search.bn_batches", "backbone_search.score_images")
    trains_paths = True
    option_specs = {
        "exploration": Option(EXPLORATION_WEIGHT, "[0, 100]", "UCT's C1"),
        "communication": Option(COMMUNICATION_WEIGHT, "[0, 100]", "UCT's C2, node communication"),
        "temperature": Option(TEMPERATURE, "(0, 100]", "the sampling softmax divides by it"),
        "momentum": Option(MOMENTUM, "[0, 1)", "of the loss average and node communication"),
        "warmup_fraction": Option(0.5, "[0, 1]", "the fraction of search.epochs sampled uniformly"),
        "backup_fraction": Option(5 / 6, "[0, 1]", "the fraction of the warm-up before rewards are backed up"),
        "min_visits": Option(MIN_VISITS, "[1, 1000]", "hierarchical selection's visits per node"),
        "threshold": Option("parent", why="parent (a node's visits per op, the released rule) or child "
                                          "(every child's visits)"),
        "descent": Option("softmax", why="softmax (softmax((Q/n + C2 G) / tau), the released rule) or greedy "
                                         "(the best Q/n)"),
        "num_leaves": Option(NUM_LEAVES, "[1, 100000]", "hierarchical selection's candidate leaves"),
        "loss_shift": Option(1.0, "[0, 1000]", "the reward divides by loss + loss_shift, which must be positive"),
        "distinct": DISTINCT_OPTION,
    }

    def check(self, cfg, target: str) -> None:
        settings = self.settings(cfg)
        check_distinct(cfg, self.name, settings)
        for key, allowed in (("threshold", THRESHOLDS), ("descent", DESCENTS)):
            if cfg.backbone_search.strategy == self.name and settings[key] not in allowed:
                raise ConfigError(f"backbone_search.strategy_options.{key}: must be one of {', '.join(allowed)}, "
                                  f"got {settings[key]!r}")
        if HEAD_SPACES[cfg.model.head_space].choice_kinds(cfg.model.mlp_widths):
            raise ConfigError(f"model.head_space: mctnas searches the backbone only (its tree holds the backbone's "
                              f"layers); use heads without choices ({', '.join(fixed_head_spaces())}), got "
                              f"{cfg.model.head_space}")
        floor = FRAMEWORKS[cfg.framework].loss_floor
        if settings["loss_shift"] < -floor:
            raise ConfigError(f"backbone_search.strategy_options.loss_shift: {cfg.framework}'s loss reaches {floor:g}, "
                              f"so mctnas needs loss_shift >= {-floor:g} for a positive reward, got "
                              f"{settings['loss_shift']}")

    def tree_factory(self, ctx: SearchContext) -> Callable[[int, Optional[dict]], SharedTree]:
        """``make(steps_per_epoch, saved_state)``: the run's tree, new or restored from a checkpoint."""
        from experiments.strategies.sampling import broadcast_from_rank_zero, mean_over_ranks

        settings, cfg = self.settings(ctx.cfg), ctx.cfg
        space = list(ctx.cost.labels.items())
        distinct = distinct_architectures(cfg.model.backbone) if settings["distinct"] else None

        def within(architecture: dict) -> bool:
            return ctx.cost(architecture).within(*ctx.budget)

        def make(steps_per_epoch: int, state: Optional[dict] = None) -> SharedTree:
            if state is not None:
                tree = MonteCarloTree.from_state_dict(state)
            else:
                uniform = round(settings["warmup_fraction"] * cfg.search.epochs * steps_per_epoch)
                warmup = WarmupSchedule(uniform, math.floor(settings["backup_fraction"] * uniform))
                tree = MonteCarloTree([len(values) for _, values in space], seed=cfg.seed, warmup=warmup,
                                      exploration_weight=settings["exploration"],
                                      communication_weight=settings["communication"],
                                      temperature=settings["temperature"], momentum=settings["momentum"])
            return SharedTree(tree, space, settings["loss_shift"], distinct, within, broadcast_from_rank_zero,
                              mean_over_ranks)
        return make

    def build(self, ctx: SearchContext):
        from experiments.strategies.sampling import PresetPathOneShot, TreeSamplingModule

        make = self.tree_factory(ctx)
        return PresetPathOneShot(lambda training_module: TreeSamplingModule(training_module, make))

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        settings, cost, scorer = self.settings(ctx.cfg), ctx.cost, ctx.scorer
        shared: SharedTree = nni_strategy.oneshot_module.shared
        supernet, tree = nni_strategy.supernet, shared.tree
        history: list[dict] = []

        def accuracy(path: Path) -> float:
            return scorer(supernet.freeze(shared.architecture(path)))

        reference = accuracy(greedy_path(tree)) or 1.0

        def evaluate(path: Path) -> float:
            architecture = shared.architecture(path)
            c = cost(architecture)
            score = accuracy(path)
            history.append({"architecture": architecture, "score": score, "reward_scale": score / reference,
                            "flops": c.flops, "params": c.params})
            ctx.log_fn(f"[{len(history):3d}] score {score:.4f}  {c.flops:,} FLOPs  {c.params:,} params")
            return score / reference

        found = tree.select(evaluate, min_visits=settings["min_visits"], num_leaves=settings["num_leaves"],
                            within=lambda path: cost(shared.architecture(path)).within(*ctx.budget),
                            threshold=settings["threshold"], descent=settings["descent"])
        if found.candidates:
            return Selection(shared.architecture(found.path), evolution=history)
        ctx.log_fn("mctnas: every candidate leaf is over the budget; taking the space's smallest network")
        return Selection(dict(cost.smallest("flops")[0]), evolution=history)
