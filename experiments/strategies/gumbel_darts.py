"""GumbelDARTS (SNAS-style, NNI's ``GumbelDARTS``): DARTS with Gumbel-softmax samples, annealed temperature."""
from __future__ import annotations

from evaluators.options import Option
from experiments.core.errors import ConfigError
from experiments.strategies.base import SECTIONS, SearchContext
from experiments.strategies.darts import DARTS, GumbelDartsStrategy


class GumbelDARTS(DARTS):
    name = "gdarts"
    summary = "DARTS with Gumbel-softmax sampling, temperature annealed linearly (NNI GumbelDARTS)"
    option_specs = {**DARTS.option_specs,
                    "temperature": Option([1.0, 0.33], "(0, 100]", "the Gumbel-softmax temperature, initial and "
                                                                   "final (annealed linearly)")}

    def check(self, cfg, target: str) -> None:
        super().check(cfg, target)
        temperature = self.settings(cfg, target)["temperature"]
        if len(temperature) != 2 or temperature[0] < temperature[1]:
            raise ConfigError(f"{SECTIONS[target]}.strategy_options.temperature: must be [initial, final] with "
                              f"initial >= final, got {temperature}")

    def nni_strategy(self, ctx: SearchContext):
        initial, final = self.settings(ctx.cfg, ctx.target)["temperature"]
        return GumbelDartsStrategy(temperature=(float(initial), float(final)), hooks=self.hooks(ctx),
                                   **self.nni_arguments(ctx))
