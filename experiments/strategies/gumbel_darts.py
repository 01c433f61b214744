"""GumbelDARTS (SNAS-style, NNI's ``GumbelDARTS``): DARTS with Gumbel-softmax samples, annealed temperature."""
from __future__ import annotations

from experiments.strategies.base import SearchContext
from experiments.strategies.darts import DARTS, GumbelDartsStrategy


class GumbelDARTS(DARTS):
    name = "gdarts"
    summary = "DARTS with Gumbel-softmax sampling, temperature annealed linearly (NNI GumbelDARTS)"
    config_fields = DARTS.config_fields + ("search.gumbel_temperature",)

    def nni_strategy(self, ctx: SearchContext):
        return GumbelDartsStrategy(temperature=tuple(float(t) for t in ctx.cfg.search.gumbel_temperature),
                                   hooks=self.hooks(ctx), **self.nni_arguments(ctx))
