"""ViTAS (Su et al., ECCV 2022): a ViT superformer trained with cyclic channel sharing and identity shifting,
then evolution within a FLOPs budget. Searches the ``vit`` backbone space (``search_spaces/vit.py``).

Rules taken from the paper and its released code (``xiusu/ViTAS``: no licence, so none of its code):

* *Cyclic weight sharing* (the paper's name for it, in its abstract: "a cyclic weight-sharing
  mechanism for token embeddings"). A sampled width D takes the first channels [0, D) of every
  sliced weight (patch projection, class token, position embedding, norms, linear layers) and the
  last channels [E - D, E), so every channel of the embedding is trained about equally often. NNI's
  mixed layers are replaced by the left/right ones of ``vitas_slicing`` (``CYCLIC_HOOKS``).
  ``sides_per_step: both`` (default) is the released trainer's step (``tools/trainer/imagenet/
  trainer.py``, ``side_scheme: BCNet``): the path runs on its left and on its right slices in the
  same step, the two outputs (here the backbone's features) are summed, one loss, one backward.
  ``sides_per_step: alternate`` takes the left on even steps and the right on odd ones (half the
  cost a step; the package's earlier rule, kept to compare). ``sharing: prefix`` keeps the left
  side always (NNI's own slicing, the baseline).
* *Private class tokens; V shared, Q/K private.* Both live in the space: each patch size's
  embedding is its own ``LayerChoice`` candidate (its own class token and position embedding),
  and Q/K are a ``LayerChoice`` keyed by the head count while V is one ``MutableLinear``.
* *Identity shifting.* A training path is drawn as ViTAS draws it: patch size and E uniformly,
  then each of the ``max_depth`` layers is an identity with probability ``identity_prob``, else a
  block with uniform heads and MLP ratio. The identities are shifted to the end
  (``ViTSpace.shift_identities``): the blocks become layers 1..depth, so each network is one
  sample and layer i's weights always serve the network's i-th block. Were every layer an
  identity, the layer drawn last to be one stays a block.
* *Identity probability tuned to the budget.* With ``max_flops`` set, ``identity_prob`` is chosen
  so that the mean FLOPs of ``tuning_samples`` draws lies in [``min_flops_ratio`` x max_flops,
  max_flops] (the code: 1000 draws, 0.9). The code walks from 0.5 in steps of 0.01; here the same
  draws are reused for every probability (the mean then falls as it rises) and bisected.
* *Evolution.* NNI's regularized evolution (``spos.evolve``) over the trained superformer,
  ``population`` x ``generations`` networks scored (the code's NSGA-Net: 50 and 40), each the
  mean held-out score of its left and right slices (prefix: left only), every one within
  [min_flops_ratio x max_flops, max_flops]. Networks are scored once per identity-shifted sample.
"""
from __future__ import annotations

from typing import Callable

from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SearchContext, Selection, Strategy
from experiments.strategies.spos import EVOLUTION_OPTIONS, check_evolution
from search_spaces.backbone_spaces import shifts_identities, spaces_where
from search_spaces.head_spaces import HEAD_SPACES, fixed_head_spaces

SHARING = ("cyclic", "prefix")
SIDES_PER_STEP = ("both", "alternate")
TUNING_TOLERANCE = 1e-4  # bisection stops when the identity probability is known to this


def identity_draws(space, count: int, rng) -> list[tuple[dict, list[tuple[float, tuple]]]]:
    """``count`` ViTAS draws before the identity decision: (patch size and E, [(u, (heads, ratio)) per layer]).

    A layer is an identity when its ``u`` < the identity probability, so one set of draws serves every
    probability (common random numbers: the mean FLOPs falls as the probability rises).
    """
    draws = []
    for _ in range(count):
        common = {}
        for name, values in (("patch_size", [str(p) for p in space.patch_sizes]), ("embed_dim", space.embed_dims)):
            if len(values) > 1:
                common[f"{space.prefix}.{name}"] = values[int(rng.randint(len(values)))]
        layers = [(float(rng.random_sample()), (space.heads[int(rng.randint(len(space.heads)))],
                                                space.mlp_ratios[int(rng.randint(len(space.mlp_ratios)))]))
                  for _ in range(space.max_depth)]
        draws.append((common, layers))
    return draws


def shifted_sample(space, draw: tuple[dict, list], identity_prob: float) -> dict:
    """The identity-shifted sample of one draw at ``identity_prob`` (one block kept at least)."""
    common, layers = draw
    ops = [None if u < identity_prob else choice for u, choice in layers]
    if all(op is None for op in ops):
        last = max(range(len(layers)), key=lambda i: layers[i][0])  # the last to become an identity
        ops[last] = layers[last][1]
    return space.shift_identities(common, ops)


def tune_identity_prob(space, cost, max_flops: float, min_ratio: float, draws: list,
                       log_fn: Callable[[str], None] = print) -> tuple[float, float]:
    """The identity probability whose draws' mean FLOPs lies in [min_ratio x max_flops, max_flops]; and that mean.

    Bisection (the mean falls as the probability rises); 0 when even full-depth draws are below
    the band, the highest probability tried when even one-block draws are above it.
    """
    def mean_flops(p: float) -> float:
        return sum(cost(shifted_sample(space, d, p)).flops for d in draws) / len(draws)

    low_target, high_target = min_ratio * max_flops, max_flops
    low, high = 0.0, 1.0
    mean = mean_flops(low)
    if mean <= high_target:
        if mean < low_target:
            log_fn(f"vitas: full-depth draws average {mean:,.0f} FLOPs, under the band; identity probability 0")
        return 0.0, mean
    p = low
    while high - low > TUNING_TOLERANCE:
        p = (low + high) / 2
        mean = mean_flops(p)
        if mean > high_target:
            low = p
        elif mean < low_target:
            high = p
        else:
            return p, mean
    p = high
    mean = mean_flops(p)
    if mean > high_target:
        log_fn(f"vitas: even one-block draws average {mean:,.0f} FLOPs, over max_flops {max_flops:,.0f}")
    return p, mean


class ViTAS(Strategy):
    name = "vitas"
    summary = ("ViT superformer with cyclic channel sharing and identity shifting, then evolution within the "
               "FLOPs budget")
    handles = frozenset({"layer", "width", "depth"})
    trains_paths = True
    config_fields = ("backbone_search.max_flops", "backbone_search.bn_batches", "backbone_search.score_images")
    option_specs = {
        "tournament": EVOLUTION_OPTIONS["tournament"],
        "mutation_prob": EVOLUTION_OPTIONS["mutation_prob"],
        "sharing": Option("cyclic", why="cyclic (left and right slices) or prefix (left only)"),
        "sides_per_step": Option("both", why="cyclic sharing: both (left and right outputs summed in one step, "
                                             "the released trainer) or alternate (one side a step)"),
        "identity_prob": Option(0.5, "[0, 1)", "a layer's chance to be an identity, when not tuned"),
        "tune_identity": Option(True, why="tune identity_prob to the FLOPs budget"),
        "min_flops_ratio": Option(0.9, "[0, 1]", "the budget band's floor, a fraction of max_flops"),
        "tuning_samples": Option(1000, "[1, 1000000]", "draws that tune identity_prob"),
        "population": Option(50, "[1, 100000]", "the evolution's population"),
        "generations": Option(40, "[1, 100000]", "the evolution scores population x generations networks"),
    }

    def check(self, cfg, target: str) -> None:
        if target != "backbone" or cfg.backbone_search.strategy != self.name:
            return
        settings = self.settings(cfg)
        if settings["sharing"] not in SHARING:
            raise ConfigError(f"backbone_search.strategy_options.sharing: must be one of {', '.join(SHARING)}, "
                              f"got {settings['sharing']!r}")
        if settings["sides_per_step"] not in SIDES_PER_STEP:
            raise ConfigError(f"backbone_search.strategy_options.sides_per_step: must be one of "
                              f"{', '.join(SIDES_PER_STEP)}, got {settings['sides_per_step']!r}")
        if not shifts_identities(cfg.model.backbone):
            raise ConfigError(f"model.backbone: vitas searches a space whose layers shift to identities "
                              f"({', '.join(spaces_where(shifts_identities))}), got {cfg.model.backbone}")
        if HEAD_SPACES[cfg.model.head_space].choice_kinds(cfg.model.mlp_widths):
            raise ConfigError(f"model.head_space: vitas searches the backbone only; use heads without choices "
                              f"({', '.join(fixed_head_spaces())}), got {cfg.model.head_space}")
        check_evolution(target, settings)

    def identity_prob(self, ctx: SearchContext, space) -> float:
        """ViTAS's identity probability for this run: tuned to max_flops, or the option as given."""
        import numpy as np

        settings, (max_flops, _) = self.settings(ctx.cfg), ctx.budget
        if max_flops is None or not settings["tune_identity"]:
            return float(settings["identity_prob"])
        draws = identity_draws(space, settings["tuning_samples"], np.random.RandomState(ctx.cfg.seed))
        p, mean = tune_identity_prob(space, ctx.cost, max_flops, settings["min_flops_ratio"], draws, ctx.log_fn)
        ctx.log_fn(f"vitas: identity probability {p:.4f}; draws average {mean:,.0f} FLOPs "
                   f"(band {settings['min_flops_ratio'] * max_flops:,.0f} - {max_flops:,.0f})")
        return p

    def build(self, ctx: SearchContext):
        from experiments.strategies.sampling import CyclicPathModule, PresetPathOneShot
        from experiments.strategies.vitas_slicing import CYCLIC_HOOKS

        space = ctx.cost.space
        probability = self.identity_prob(ctx, space)
        settings = self.settings(ctx.cfg)
        cyclic = settings["sharing"] == "cyclic"
        sides = settings["sides_per_step"] if cyclic else "left"

        def draw() -> dict:
            import numpy as np  # numpy's global generator: seeded by seed_everything, saved in checkpoints

            return shifted_sample(space, identity_draws(space, 1, np.random.mtrand._rand)[0], probability)

        strategy = PresetPathOneShot(lambda training_module: CyclicPathModule(training_module, draw, sides))
        if cyclic:
            strategy.extra_mutation_hooks = list(CYCLIC_HOOKS)  # before NNI's own mixed layers
        strategy.identity_prob = probability
        return strategy

    def score_function(self, ctx: SearchContext, supernet) -> Callable[[dict], float]:
        """``score_of(architecture)``: the mean held-out score of the network's slices (left and right under
        cyclic sharing, left under prefix), computed once per identity-shifted sample."""
        from experiments.strategies.vitas_slicing import SIDES, set_channel_side

        space = ctx.cost.space
        sides = SIDES if self.settings(ctx.cfg)["sharing"] == "cyclic" else SIDES[:1]
        scores: dict[tuple, float] = {}

        def score_of(architecture: dict) -> float:
            key = tuple(sorted(space.canonical(architecture).items()))
            if key not in scores:
                results = []
                for side in sides:
                    set_channel_side(supernet, side)
                    results.append(ctx.scorer(supernet.freeze(dict(key))))
                set_channel_side(supernet, "left")
                scores[key] = sum(results) / len(results)
            return scores[key]
        return score_of

    def select(self, ctx: SearchContext, nni_strategy) -> Selection:
        from experiments.strategies.spos import evolve
        from experiments.strategies.vitas_slicing import set_channel_side

        settings, cfg = self.settings(ctx.cfg), ctx.cfg
        space, supernet = ctx.cost.space, nni_strategy.supernet
        score_of = self.score_function(ctx, supernet)
        max_flops, max_params = ctx.budget
        floor = None if max_flops is None else settings["min_flops_ratio"] * max_flops

        def accept(architecture: dict) -> bool:
            c = ctx.cost(architecture)
            return c.within(max_flops, max_params) and (floor is None or c.flops >= floor)

        evolution = {**settings, "trials": settings["population"] * settings["generations"]}
        architecture, history = evolve(ctx, supernet, evolution, score_of=score_of, accept=accept)
        set_channel_side(supernet, "left")  # the derived network is the left slice
        return Selection(space.canonical(architecture), evolution=history)


__all__ = ["ViTAS", "identity_draws", "shifted_sample", "tune_identity_prob"]
