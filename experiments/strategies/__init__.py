"""The search strategies: the one registry the jobs, the config validation and ``check`` read.

A new strategy is one module with a ``Strategy`` subclass (``experiments/strategies/base.py``)
and one entry in ``STRATEGIES`` below.
"""
from __future__ import annotations

from experiments.strategies.autoslim import AutoSlim
from experiments.strategies.base import SECTIONS, TARGETS, SearchContext, Selection, Strategy
from experiments.strategies.bcnet import BCNet
from experiments.strategies.cafenet import CafeNet
from experiments.strategies.darts import DARTS
from experiments.strategies.enas import ENAS
from experiments.strategies.entrannas import EnTranNAS
from experiments.strategies.gumbel_darts import GumbelDARTS
from experiments.strategies.kshot import KShot
from experiments.strategies.mctnas import MCTNAS
from experiments.strategies.proxyless import Proxyless
from experiments.strategies.spos import SPOS
from experiments.strategies.toponas import TopoNAS
from experiments.strategies.vitas import ViTAS

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (DARTS(), GumbelDARTS(), Proxyless(), SPOS(), KShot(), ENAS(),
                                                       MCTNAS(), ViTAS(), AutoSlim(), BCNet(), CafeNet(), TopoNAS(),
                                                       EnTranNAS())}


def strategy_names(target: str) -> list[str]:
    """The strategies that can search ``target`` (``heads`` or ``backbone``), in registry order."""
    return [name for name, s in STRATEGIES.items() if target in s.targets]


__all__ = ["SECTIONS", "STRATEGIES", "TARGETS", "SearchContext", "Selection", "Strategy", "strategy_names"]
