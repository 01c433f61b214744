"""ProxylessNAS (Cai et al. 2019, NNI's ``Proxyless``): binarised paths, one candidate active per step."""
from __future__ import annotations

from experiments.strategies.base import SearchContext
from experiments.strategies.darts import DARTS, ProxylessStrategy


class Proxyless(DARTS):
    name = "proxyless"
    summary = "binarised paths with a gradient estimate of the architecture weights (NNI Proxyless)"
    targets = ("backbone",)
    trains_paths = True
    handles = frozenset({"layer"})  # NNI's Proxyless has no cell

    def cell_hooks(self, ctx: SearchContext) -> list:
        return []

    def nni_strategy(self, ctx: SearchContext):
        return ProxylessStrategy(hooks=self.hooks(ctx), **self.nni_arguments(ctx))
