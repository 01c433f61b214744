"""BCNet (Su et al., CVPR 2021): bilaterally coupled width search, then evolution seeded by the lowest losses.

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
* *Search.* An evolution (NNI's regularized evolution; the paper uses NSGA-II) within the
  FLOPs/parameter budget, its first population the recorded lowest-loss widths that fit the
  budget (lowest first); a width is scored by the mean of its left and right networks' scores,
  each after BatchNorm recalibration (kNN top-1 under SSL, classifier top-1 under ``supervised``).
  The authors fit a per-layer width distribution to the records under a FLOPs target before
  sampling the population; seeding with the records themselves is the simpler reading.
* *Export.* The chosen widths; the supernet weights exported with them are the left side's.
"""
from __future__ import annotations

from evaluators.options import Option
from experiments.strategies.base import SearchContext
from experiments.strategies.spos import EVOLUTION_OPTIONS
from experiments.strategies.width_sampling import (LowestLosses, WidthSampler, WidthStep, WidthStrategy,
                                                   complementary, frozen_at, prefix, right_side)

LOSS_RECORDS = 100


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
    }

    def sampler(self, settings: dict, space: dict) -> BilateralSampler:
        return BilateralSampler(space, settings["loss_records"], bool(settings["complementary"]))

    def score(self, scorer, nni_strategy, architecture: dict) -> float:
        """The mean of the left and right networks' scores (each recalibrates its own BatchNorm)."""
        supernet, max_width = nni_strategy.supernet, nni_strategy.oneshot_module.sampler.max_width
        sides = [{label: side(int(architecture[label]), c) for label, c in max_width.items()}
                 for side in (prefix, right_side)]
        return sum(scorer(frozen_at(supernet, architecture, placement)) for placement in sides) / 2

    def seeds(self, ctx: SearchContext, nni_strategy) -> list[dict]:
        """The recorded lowest-loss widths within the budget, distinct, lowest loss first."""
        records = nni_strategy.oneshot_module.sampler.records.lowest_first()
        seeds = [widths for _, widths in records if ctx.cost(widths).within(*ctx.budget)]
        return list({tuple(sorted(w.items())): w for w in seeds}.values())
