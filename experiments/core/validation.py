"""The config's checks that need the registries, in one place: names, options and what they may pair with.

``experiments.core.config`` checks a config against its schema and imports no registry; here
the names it holds are looked up (frameworks, strategies, backbone and head spaces, datasets),
each framework's and strategy's options checked against its ``option_specs`` (the same range
language), and the spaces' and strategies' own rules applied. ``load_config`` is the one door:
a config that passes it can run.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

from evaluators import FRAMEWORKS
from evaluators.options import Option
from experiments.core.config import Config, _show, parse_config, read_config
from experiments.core.data import DATASETS
from experiments.core.errors import ConfigError
from experiments.core.loggers import LOGGERS
from experiments.strategies import SECTIONS, STRATEGIES, strategy_names
from search_spaces.backbone_spaces import BACKBONE_SPACES, is_backbone_space, space_options
from search_spaces.backbones import BACKBONE_LAYOUTS
from search_spaces.head_spaces import HEAD_SPACES, fixed_head_spaces


def _one_of(where: str, value: str, names, what: str, kinds: str = "") -> None:
    if value not in names:
        close = difflib.get_close_matches(str(value), list(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown {what} {_show(value)}{kinds}; choose one of {', '.join(names)}{hint}")


def check_options(where: str, owner: str, specs: Mapping[str, Option], values: dict) -> None:
    """Each value against its ``Option``; a number given as text (``--set ...=1e-3``) becomes the number."""
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            known = list(specs)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(known) or 'none'}"
            raise ConfigError(f"{where}.{key}: {owner} has no such option{hint}")
        wrong, parsed = spec.parse(value)
        if wrong:
            raise ConfigError(f"{where}.{key}: {wrong}, got {_show(value)}")
        if isinstance(value, str):  # else kept as given: a run's record says what its config said
            values[key] = parsed


def validate(cfg: Config) -> Config:
    """Raise ``ConfigError`` (one line) for a config no job can run; returns it, its options converted."""
    _one_of("framework", cfg.framework, sorted(FRAMEWORKS), "framework")
    framework = FRAMEWORKS[cfg.framework]
    check_options("framework_options", cfg.framework, framework.option_specs, cfg.framework_options)
    d, m = cfg.data, cfg.model
    _one_of("data.dataset", d.dataset, DATASETS, "dataset")
    if not DATASETS[d.dataset].embedded and not d.root:
        raise ConfigError(f"data.root: dataset {d.dataset!r} needs a path on disk")
    _one_of("model.backbone", m.backbone, [*BACKBONE_LAYOUTS, *BACKBONE_SPACES], "backbone",
            " (a fixed ResNet or a backbone space)")
    _one_of("model.head_space", m.head_space, HEAD_SPACES, "head space")
    head_space = HEAD_SPACES[m.head_space]
    if framework.heads.classifier and head_space.choice_kinds(m.mlp_widths):
        raise ConfigError(f"model.head_space: the {cfg.framework} framework trains a linear classifier; set it to "
                          f"{' or '.join(fixed_head_spaces())}, got {m.head_space!r}")
    problem = head_space.problem(m.mlp_widths, framework.heads.scaled(m.head_width))
    if problem:
        raise ConfigError(f"{problem[0]}: {problem[1]}")
    if m.backbone_options:
        if not is_backbone_space(m.backbone):
            raise ConfigError(f"model.backbone_options: backbone {m.backbone} is a fixed ResNet and takes none")
        allowed = space_options(m.backbone)
        for key in m.backbone_options:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(allowed) or 'none'}"
                raise ConfigError(f"model.backbone_options.{key}: backbone space {m.backbone} has no such option{hint}")
    for target, section in SECTIONS.items():
        settings = getattr(cfg, section)
        names = strategy_names(target)
        if settings.strategy not in names:
            raise ConfigError(f"{section}.strategy: must be one of {', '.join(names)}, got {_show(settings.strategy)}")
        strategy = STRATEGIES[settings.strategy]
        for sections, option, value in getattr(cfg, "moved", ()):  # an old config's field, now an option
            if section in sections and option in strategy.option_specs:
                settings.strategy_options.setdefault(option, value)
        check_options(f"{section}.strategy_options", settings.strategy, strategy.option_specs,
                      settings.strategy_options)
    missing = LOGGERS[cfg.trainer.logger].missing()
    if missing and cfg.trainer.logger != "tensorboard":  # the default falls back to CSV alone
        raise ConfigError(f"trainer.logger: {cfg.trainer.logger} {missing}")
    STRATEGIES[cfg.search.strategy].check(cfg, "heads")
    STRATEGIES[cfg.backbone_search.strategy].check(cfg, "backbone")
    return cfg


def config_from_dict(raw: Any) -> Config:
    """A raw mapping (YAML, JSON, an NNI trial's parameters) as a valid Config; else ConfigError."""
    return validate(parse_config(raw))


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> Config:
    """Read, override and validate a YAML config; raises ConfigError with one clear line."""
    return validate(read_config(path, overrides))


__all__ = ["check_options", "config_from_dict", "load_config", "validate"]
