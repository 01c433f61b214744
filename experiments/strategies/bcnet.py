"""BCNet (Su et al., CVPR 2021): bilaterally coupled width search, then evolution from a prior population.

Rules taken from the paper and its authors' code (``xiusu/BCNetV2``, ``edgenn/algorithm``: the
``bcnet`` algorithm, sampler and searcher; no code copied):

* *Training.* Each weight step draws one width ``c`` per layer and trains it twice, on the left
  channels ``[0, c)`` and on the right channels ``[C - c, C)``, the two losses averaged; so
  every channel is trained by the same share of widths, ``(C + 1) / 2C``. The step's views,
  momentum update and queue push happen once (``width_sampling.WidthStep``).
* *Complementary widths.* The step after a drawn width trains its complement (the authors' code
  alternates a drawn and a complementary step): here the k-th smallest width's partner is the
  k-th largest, ``C + 1 - c`` in bins, which keeps every width equally often trained (the
  exact ``C - c`` would be width 0 for ``c = C``).
* *Loss records.* The ``loss_records`` (100, the code's ``loss_rec_num``) lowest step losses
  (mean over sides and ranks) are kept with their widths.
* *Prior initial population* (``searcher/bcnet_searcher.py``, ``BCNetSearcher._init_population``).
  The records give each (layer, width) its mean loss ``E`` (a width never recorded: 10, the
  code's ``1e-4 / 1e-5``). Per-layer logits ``P`` (standard normal start) are fitted by SGD
  (lr 0.01, 2000 steps) to ``mean_l sum_w softmax(P_l)_w E_lw + 1000 (1 - F / target)^2``, ``F``
  the expected FLOPs under the independent per-layer distributions; then ``population`` distinct
  widths are drawn from ``softmax(P)`` and kept when their FLOPs lie in ``[0.8, 1] x budget``
  (the code's ``is_legal``). ``F`` here is exact: the cost model's terms over one layer and over
  pairs of layers (the code's ``F`` is its own layer-FLOPs times the products of neighbouring
  widths). ``target`` is 0.9 of the budget, the window's middle and the value the code's log
  line prints; the objective's own constant, 0.4, suits the code's FLOPs model, not an exact one
  (``prior_target`` takes either). ``init: records`` seeds with the lowest-loss records instead.
* *Search.* An evolution (NNI's regularized evolution; the paper uses NSGA-II) within the
  FLOPs/parameter budget from that population; a width is scored by the mean of its left and
  right networks' scores (``eval_subnet``), each after BatchNorm recalibration (kNN top-1
  under SSL, classifier top-1 under ``supervised``).
* *Export.* The chosen widths; the supernet weights exported with them are the left side's.
"""
from __future__ import annotations

import itertools
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from evaluators.options import Option
from experiments.strategies.base import SearchContext
from experiments.strategies.spos import EVOLUTION_OPTIONS
from experiments.strategies.width_sampling import (LowestLosses, WidthSampler, WidthStep, WidthStrategy,
                                                   complementary, frozen_at, prefix, right_side)

LOSS_RECORDS = 100
#: the released searcher's constants (``BCNetSearcher._init_population`` and ``is_legal``)
UNSEEN_LOSS = 10.0  # a width never recorded: 1e-4 / (0 + 1e-5)
PRIOR_STEPS, PRIOR_LR, PRIOR_PENALTY = 2000, 0.01, 1000.0
WINDOW_LOW = 0.8  # a prior draw is legal with FLOPs in [0.8, 1] x budget
PRIOR_TARGET = 0.9  # the expected FLOPs aimed at, times the budget (the objective's own constant is 0.4)
MAX_DRAWS = 20_000  # the code draws until it finds a legal width; here it gives up (evolution fills the rest)
INITS = ("prior", "records")


def loss_table(records, space: Mapping[str, list]) -> dict[str, torch.Tensor]:
    """``label -> mean recorded loss of each width`` (``UNSEEN_LOSS`` where a width has no record)."""
    table = {}
    for label, widths in space.items():
        total, count = np.zeros(len(widths)), np.zeros(len(widths))
        for loss, chosen in records:
            k = widths.index(int(chosen[label]))
            total[k] += loss
            count[k] += 1
        table[label] = torch.tensor(np.where(count > 0, total / np.maximum(count, 1), UNSEEN_LOSS))
    return table


class PairwiseCost:
    """A cost's expectation under independent per-label distributions, exact for a cost whose terms
    each involve at most two labels (a convolution's FLOPs: its input width times its output width).

    ``cost(sample) = base + sum_l a_l[w_l] + sum_{l<m} b_lm[w_l, w_m]``: the terms by inclusion and
    exclusion from the all-narrowest sample; a pair is kept where it interacts.
    """

    def __init__(self, cost: Callable[[dict], float], space: Mapping[str, list]):
        self.labels = list(space)
        base_sample = {label: widths[0] for label, widths in space.items()}
        self.base = float(cost(base_sample))
        one = {label: [float(cost(dict(base_sample, **{label: w}))) for w in widths]
               for label, widths in space.items()}
        self.single = {label: torch.tensor(values, dtype=torch.float64) - self.base for label, values in one.items()}
        self.pairs = {}
        for l, m in itertools.combinations(self.labels, 2):
            table = torch.tensor([[float(cost(dict(base_sample, **{l: u, m: v}))) - one[l][i] - one[m][j] + self.base
                                   for j, v in enumerate(space[m])] for i, u in enumerate(space[l])],
                                 dtype=torch.float64)
            if table.abs().max() > 1e-9 * max(abs(self.base), 1.0):
                self.pairs[(l, m)] = table

    def expected(self, probabilities: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = torch.tensor(self.base, dtype=torch.float64)
        for label, p in probabilities.items():
            total = total + (p * self.single[label]).sum()
        for (l, m), table in self.pairs.items():
            total = total + probabilities[l] @ table @ probabilities[m]
        return total


def fit_prior(table: Mapping[str, torch.Tensor], expected_cost: Optional[Callable] = None,
              target: Optional[float] = None, steps: int = PRIOR_STEPS, lr: float = PRIOR_LR,
              penalty: float = PRIOR_PENALTY, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-label width probabilities: softmax logits fitted to low mean loss at the target expected cost."""
    generator = torch.Generator().manual_seed(int(seed))
    logits = {label: torch.randn(len(e), generator=generator, dtype=torch.float64).requires_grad_()
              for label, e in table.items()}
    optimizer = torch.optim.SGD(list(logits.values()), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        probabilities = {label: torch.softmax(p, 0) for label, p in logits.items()}
        objective = torch.stack([(probabilities[label] * e).sum() for label, e in table.items()]).mean()
        if expected_cost is not None and target:
            objective = objective + penalty * (1.0 - expected_cost(probabilities) / target) ** 2
        objective.backward()
        optimizer.step()
    return {label: torch.softmax(p.detach(), 0).numpy() for label, p in logits.items()}


def prior_population(prior: Mapping[str, np.ndarray], space: Mapping[str, list], size: int,
                     legal: Callable[[dict], bool], seed: int = 0, max_draws: int = MAX_DRAWS) -> list[dict]:
    """Up to ``size`` distinct widths drawn from the prior, each ``legal`` (within the FLOPs window)."""
    rng = np.random.default_rng(seed)
    population, seen = [], set()
    for _ in range(max_draws):
        if len(population) == size:
            break
        widths = {label: int(rng.choice(space[label], p=prior[label] / prior[label].sum())) for label in space}
        key = tuple(widths.values())
        if key not in seen:  # the code's is_legal marks a candidate seen before it tests its FLOPs
            seen.add(key)
            if legal(widths):
                population.append(widths)
    return population


class BilateralSampler(WidthSampler):
    """Left and right channels of each width; drawn and complementary widths on alternate steps."""

    def __init__(self, space, loss_records: int = LOSS_RECORDS, complementary_steps: bool = True):
        super().__init__(space)
        self.records = LowestLosses(loss_records)
        self.complementary_steps = complementary_steps
        self.pending = None  # the complement of the last drawn widths, trained next step

    def draw_widths(self) -> dict:
        if self.pending is not None:
            widths, self.pending = self.pending, None
            return widths
        widths = super().draw_widths()
        if self.complementary_steps:
            self.pending = {label: complementary(self.space[label], w) for label, w in widths.items()}
        return widths

    def placements(self, widths: dict) -> list:
        return [{label: side(w, self.max_width[label]) for label, w in widths.items()}
                for side in (prefix, right_side)]

    def after_step(self, step: WidthStep) -> None:
        self.records.push(sum(step.losses) / len(step.losses), step.widths)

    def state_dict(self) -> dict:
        return {"records": self.records.state_dict(), "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.records.load_state_dict(state.get("records", {}))
        self.pending = state.get("pending")


class BCNet(WidthStrategy):
    name = "bcnet"
    summary = "bilateral (left and right) channels per width, complementary widths, evolution seeded by lowest losses"
    option_specs = {
        **EVOLUTION_OPTIONS,
        "loss_records": Option(LOSS_RECORDS, "[1, 100000]", "lowest-loss widths kept to seed the evolution"),
        "complementary": Option(True, None, "train each drawn width's complement on the next step"),
        "init": Option("prior", why="prior (the population drawn from the fitted prior) or records "
                                    "(the lowest-loss records themselves)"),
        "prior_target": Option(PRIOR_TARGET, "(0, 1]", "the prior's expected FLOPs as a share of the budget"),
    }

    def check(self, cfg, target: str) -> None:
        from experiments.core.errors import ConfigError

        super().check(cfg, target)
        if cfg.backbone_search.strategy == self.name and self.settings(cfg)["init"] not in INITS:
            raise ConfigError(f"backbone_search.strategy_options.init: must be one of {', '.join(INITS)}, "
                              f"got {self.settings(cfg)['init']!r}")

    def sampler(self, settings: dict, space: dict) -> BilateralSampler:
        return BilateralSampler(space, settings["loss_records"], bool(settings["complementary"]))

    def score(self, scorer, nni_strategy, architecture: dict) -> float:
        """The mean of the left and right networks' scores (each recalibrates its own BatchNorm)."""
        supernet, max_width = nni_strategy.supernet, nni_strategy.oneshot_module.sampler.max_width
        sides = [{label: side(int(architecture[label]), c) for label, c in max_width.items()}
                 for side in (prefix, right_side)]
        return sum(scorer(frozen_at(supernet, architecture, placement)) for placement in sides) / 2

    def seeds(self, ctx: SearchContext, nni_strategy) -> list[dict]:
        """The first population: drawn from the prior fitted to the records (``init: prior``), or the
        recorded lowest-loss widths within the budget, distinct, lowest loss first (``init: records``)."""
        records = nni_strategy.oneshot_module.sampler.records.lowest_first()
        settings = self.settings(ctx.cfg)
        if settings["init"] == "prior":
            return self.prior_seeds(ctx, records, settings)
        seeds = [widths for _, widths in records if ctx.cost(widths).within(*ctx.budget)]
        return list({tuple(sorted(w.items())): w for w in seeds}.values())

    def prior_seeds(self, ctx: SearchContext, records: list, settings: dict) -> list[dict]:
        from experiments.strategies.width_sampling import width_space

        space = width_space(ctx)
        max_flops, max_params = ctx.budget
        quantity, limit = ("flops", max_flops) if max_flops else ("params", max_params)
        expected = target = None
        if limit:
            expected = PairwiseCost(lambda sample: getattr(ctx.cost(sample), quantity), space).expected
            target = settings["prior_target"] * limit
        prior = fit_prior(loss_table(records, space), expected, target, seed=ctx.cfg.seed)
        ctx.log_fn("BCNet prior: " + "; ".join(f"{label} " + " ".join(f"{p:.2f}" for p in prior[label])
                                               for label in space))

        def legal(widths: dict) -> bool:
            c = ctx.cost(widths)
            return c.within(max_flops, max_params) and (not limit or getattr(c, quantity) >= WINDOW_LOW * limit)

        return prior_population(prior, space, settings["population"], legal, seed=ctx.cfg.seed)
