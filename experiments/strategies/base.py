"""What a search strategy is: how it trains a supernet through NNI and how it picks the result.

After the seed authors' split (algorithm, sampler, searcher; ``../shared/STYLE.md``): a
strategy builds NNI's one-shot strategy (the sampler or relaxation that trains the supernet;
what it adds to a step, a penalty, a reward or a step over sampled paths, lives in its own
subclass of NNI's Lightning module) and selects the final architecture from the trained
supernet (the searcher). The SSL framework stays the objective. One module per strategy, one entry in ``experiments.strategies.STRATEGIES``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from evaluators.options import Option
from experiments.core.config import Config
from search_spaces.cost import BackboneCost

#: what a strategy can search: the head search job's heads, the backbone search job's backbones
TARGETS = ("heads", "backbone")
#: the config section that names a target's strategy and holds its ``strategy_options``
SECTIONS = {"heads": "search", "backbone": "backbone_search"}


@dataclass
class SearchContext:
    """What a strategy may read: the config, the job's target and, for a backbone, its cost and scorer."""

    cfg: Config
    target: str
    cost: Optional[BackboneCost] = None  # the backbone space's FLOPs/params model
    scorer: Any = None  # evaluators.subnet.SubnetScorer: a sub-network's held-out score
    out: Optional[Path] = None  # the run directory (NNI's own files go under out/nni)
    log_fn: Callable[[str], None] = print

    @property
    def budget(self) -> tuple[Optional[float], Optional[float]]:
        b = self.cfg.backbone_search
        return (b.max_flops, b.max_params) if self.target == "backbone" else (None, None)


@dataclass
class Selection:
    """The searcher's answer: the architecture, and what it saw on the way."""

    architecture: dict
    probabilities: dict = field(default_factory=dict)  # label -> value -> probability (relaxed strategies)
    evolution: list = field(default_factory=list)  # every sub-network scored (sampling strategies)


class Strategy:
    """One search strategy; subclasses set the attributes and override what they change."""

    name: str = ""
    summary: str = ""
    #: NNI calls ``training_step`` twice per batch, architecture step first (quirk 2)
    interleaved: bool = False
    targets: tuple[str, ...] = ("backbone",)
    #: the kinds of choice it can search (a backbone space declares ``choice_kinds``)
    handles: frozenset = frozenset({"layer"})
    #: the config fields it reads (beyond ``search.epochs``), for ``check`` and the README
    config_fields: tuple[str, ...] = ()
    #: its own options (``search.strategy_options`` for heads, ``backbone_search.strategy_options`` for backbones):
    #: name -> Option (default and range); every setting only this strategy reads is one
    option_specs: dict[str, Option] = {}
    #: its architecture loader carries labels (a reward computed against them)
    needs_labels: bool = False
    #: each weight step trains one sampled path, so the other paths' parameters get no gradient
    #: (Lightning DDP must then look for unused parameters, or it stops at the second step)
    trains_paths: bool = False

    def check(self, cfg: Config, target: str) -> None:
        """Refuse a config this strategy cannot run (raise ``ConfigError``); called at validation.

        A framework it cannot serve is refused here too, by what the framework declares (``uses_labels``,
        ``loss_floor``, ``heads``: ``evaluators.FRAMEWORKS[cfg.framework]``), never by its name.
        """

    def settings(self, cfg: Config, target: str = "backbone") -> dict:
        """Its options: the defaults of ``option_specs`` with the target's ``strategy_options`` over them."""
        section = getattr(cfg, SECTIONS[target])
        given = section.strategy_options if section.strategy == self.name else {}
        return {**{k: o.default for k, o in self.option_specs.items()}, **given}

    def module_options(self, ctx: SearchContext) -> dict:
        """Keyword arguments of the framework module this strategy needs (``build_module(**...)``)."""
        return {}

    def build(self, ctx: SearchContext) -> Any:
        """NNI's strategy object that trains the supernet."""
        raise NotImplementedError

    def select(self, ctx: SearchContext, nni_strategy: Any) -> Selection:
        """The final architecture from the trained supernet (both search jobs: heads and backbones)."""
        raise NotImplementedError

    def derive(self, nni_strategy: Any, architecture: dict) -> Any:
        """The selected network with the supernet's weights for it (what is scored, saved and retrained)."""
        return nni_strategy.supernet.freeze(architecture)  # NNI's weight-preserving freeze

    def describe(self) -> str:
        kinds = ", ".join(sorted(self.handles))
        reads = f"; reads {', '.join(self.config_fields)}" if self.config_fields else ""
        return f"{self.name}: {self.summary} (searches {', '.join(self.targets)}; {kinds} choices{reads})"
