"""CafeNet (Su et al., ICLR 2021): locally free weight sharing for width search, min-min placement.

Rules taken from the paper ("Locally Free Weight Sharing for Network Width Search"); no code of
the authors' used:

* *Locally free channels.* Width ``c`` of a layer is ``c - r`` base channels (the first ones)
  plus ``r`` free channels anywhere in the zone ``[c - r, c + r)`` around the width's boundary
  (clipped to the layer), ``r = free_bins`` times the layer's width step (one bin by default).
* *Min-min.* Each weight step draws one width per layer and ``placements`` joint placements of
  the free channels (uniformly, every layer independently); each placement's loss is computed
  without gradient (no queue push, BatchNorm statistics kept), and only the lowest-loss one is
  trained. The placement that last won for a layer's width is remembered, and at search time it
  is the one that scores that width (the minimum loss both trains and evaluates).
* *Search.* NNI's regularized evolution within the FLOPs/parameter budget, each network scored on
  its remembered placements (prefix where a width was never trained) after BatchNorm recalibration.
  The export's supernet weights are those placements' channels.
* *FLOPs-sensitive bins* are a property of the space's width choices:
  ``nas_bench_macro_width`` with ``bins_by: flops`` gives every bin about the same FLOPs (a layer's
  bin count in proportion to its FLOPs); ``r`` is then one such bin.
"""
from __future__ import annotations

import numpy as np

from evaluators.options import Option
from experiments.strategies.spos import EVOLUTION_OPTIONS
from experiments.strategies.width_sampling import WidthSampler, WidthStep, WidthStrategy, free_placement, frozen_at


class LocallyFreeSampler(WidthSampler):
    """Base channels plus free ones in a local zone; the lowest-loss placement trains and is remembered."""

    combine = "min"

    def __init__(self, space, free_bins: int = 1, placements: int = 3):
        super().__init__(space)
        self.free = {label: max(1, free_bins * max(1, values[-1] // len(values))) for label, values in self.space.items()}
        self.num_placements = int(placements)
        self.best: dict[str, dict[int, list[int]]] = {label: {} for label in self.space}

    def placements(self, widths: dict) -> list:
        return [{label: free_placement(w, self.max_width[label], self.free[label], np.random)
                 for label, w in widths.items()} for _ in range(self.num_placements)]

    def after_step(self, step: WidthStep) -> None:
        for label, channels in step.placements[step.chosen].items():
            self.best[label][int(step.widths[label])] = list(channels)

    def placement_of(self, architecture: dict) -> dict:
        """The remembered (lowest-loss) channels of each layer's width; the prefix where none is."""
        return {label: self.best[label].get(int(architecture[label]), list(range(int(architecture[label]))))
                for label in self.space}

    def state_dict(self) -> dict:
        return {"best": {label: {str(w): c for w, c in table.items()} for label, table in self.best.items()}}

    def load_state_dict(self, state: dict) -> None:
        for label, table in state.get("best", {}).items():
            self.best[label] = {int(w): list(c) for w, c in table.items()}


class CafeNet(WidthStrategy):
    name = "cafenet"
    summary = "locally free channels per width, min-min placement (lowest loss trains and scores), evolution"
    option_specs = {
        **EVOLUTION_OPTIONS,
        "free_bins": Option(1, "[1, 64]", "free channels r, in width steps of the layer"),
        "placements": Option(3, "[1, 64]", "placements of the free channels probed per step (min-min)"),
    }

    def sampler(self, settings: dict, space: dict) -> LocallyFreeSampler:
        return LocallyFreeSampler(space, settings["free_bins"], settings["placements"])

    def score(self, scorer, nni_strategy, architecture: dict) -> float:
        return scorer(self.derive(nni_strategy, architecture))

    def derive(self, nni_strategy, architecture: dict):
        """The network on each width's remembered lowest-loss channels (the export's weights too)."""
        sampler = nni_strategy.oneshot_module.sampler
        return frozen_at(nni_strategy.supernet, architecture, sampler.placement_of(architecture))
