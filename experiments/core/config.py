"""The YAML config schema: dataclasses, checked field by field before anything runs.

Each field's annotation says its type and ``setting(...)`` what it may take, in the range
language that frameworks' and strategies' options use too (``experiments/ranges.py``):
every number has an interval. Every error is one line that names the field
(``data.batch_size: must be in [2, 1048576], got 0``); an unknown key gets the closest valid
name. ``--set a.b=value`` overrides use the same checks, so do the parameters an NNI tuner
sends to a trial. This module imports no registry: the names a registry holds (frameworks,
strategies, spaces, datasets) and their options are checked by ``experiments.core.validation``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from experiments import ranges
from experiments.core.errors import ConfigError, existing_file

MAX_WIDTH = 16.0  # width multipliers above this do not fit any machine this package targets
MAX_SEED = 2 ** 32 - 1  # numpy's (and so Lightning's seed_everything) range


def _path_text(v) -> bool:
    return bool(v.strip()) and "\x00" not in v


def _devices(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return 1 <= v <= 1024 or v == -1
    return v == "auto" or (isinstance(v, list) and 0 < len(v) == len(set(v)) <= 1024
                           and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1024 for x in v))


def setting(default: Any, interval: Optional[str] = None, why: str = "", *, one_of: Optional[tuple] = None,
            rule: Optional[tuple[Callable[[Any], bool], str]] = None):
    """A schema field: its default and what it may take (the field's type comes from its annotation).

    ``interval``: where a number (or each number of a list) must lie, in ``Option``'s range language
    (``experiments/ranges.py``); ``one_of``: the words a string may be; ``rule``: (test, words)
    for a shape no interval says (a list of four, a device list).
    """
    meta = {"interval": interval, "why": why, "one_of": one_of, "rule": rule}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


EPOCHS = "[1, 100000]"  # more epochs than any run of this package will see, far below an overflow
WIDTH = f"(0, {MAX_WIDTH:g}]"
PROBABILITY = "[0, 1]"
LEARNING_RATE = "(0, 1000]"


@dataclass
class DataConfig:
    dataset: str = "digits"  # experiments.core.data.DATASETS (checked at validation)
    root: Optional[str] = setting(None, rule=(_path_text, "must be a path (not empty, no NUL character)"))
    image_size: Optional[int] = setting(None, "[8, 1024]")
    train_subset: Optional[int] = setting(None, "[2, 100000000]")
    test_subset: Optional[int] = setting(None, "[1, 100000000]")
    search_split: float = setting(0.5, "(0, 1)")
    batch_size: int = setting(128, "[2, 1048576]")
    # DataLoader worker processes; null: the thread policy's (core/machine.py)
    num_workers: Optional[int] = setting(None, "[0, 256]")
    # augment whole uint8 batches in the training step (on the GPU if any): 1.3-3x the images a second on CPU
    # with channels-last (benchmarks/results/throughput-cpu.json); frameworks that make their own views fall
    # back to per-image
    batched_augment: bool = True


@dataclass
class AugmentConfig:
    crop_min_scale: Optional[float] = setting(None, "(0, 1]")  # default: 0.2, or 0.5 for 8x8 digits
    hflip_p: Optional[float] = setting(None, PROBABILITY)  # default: 0.5, or 0 for digits (not mirror-symmetric)
    jitter: list[float] = setting([0.4, 0.4, 0.4, 0.1], "[0, 100]", rule=(
        lambda v: len(v) == 4 and v[3] <= 0.5, "must be four numbers (brightness, contrast, saturation, hue <= 0.5)"))
    jitter_p: float = setting(0.8, PROBABILITY)
    grayscale_p: float = setting(0.2, PROBABILITY)
    blur_p: Optional[float] = setting(None, PROBABILITY)  # default: 0.5 for images of 64 px and more, else 0
    solarize_p: float = setting(0.0, PROBABILITY)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # a fixed ResNet or a backbone space (checked at validation)
    backbone_width: float = setting(1.0, WIDTH)
    backbone_options: dict = field(default_factory=dict)  # a backbone space's own options (e.g. plan)
    head_space: str = "nasiam"  # search_spaces.head_spaces.HEAD_SPACES (checked at validation)
    head_width: float = setting(1.0, WIDTH)
    mlp_widths: list[float] = setting([1.0], WIDTH, rule=(bool, "must not be empty"))
    mlp_depths: list[int] = setting([1, 2, 3], "[1, 16]", rule=(bool, "must not be empty"))


@dataclass
class OptimConfig:
    optimizer: str = setting("sgd", one_of=("sgd", "adamw"))
    lr: float = setting(0.06, LEARNING_RATE)
    momentum: float = setting(0.9, "[0, 1)")
    weight_decay: float = setting(5e-4, "[0, 10]")
    warmup_epochs: int = setting(0, "[0, 100000]")


@dataclass
class SearchConfig:
    """The search jobs' shared settings; a strategy's own are its ``strategy_options`` (its option_specs)."""

    strategy: str = "darts"  # a head strategy of experiments.strategies (checked at validation)
    epochs: int = setting(100, EPOCHS)
    warmup_epochs: int = setting(10, "[0, 100000]")
    arch_lr: float = setting(1e-3, LEARNING_RATE)
    # DARTS family: an architecture step on every k-th batch only (the others train weights)
    arch_every: int = setting(1, "[1, 100000]")
    param_free_penalty: float = setting(0.5, "[0, 1000000]")
    gradient_clip: Optional[float] = setting(5.0, "(0, 1000000000]")
    fast_arch_step: bool = True
    collapse_threshold: float = setting(0.05, "[0, 1)")
    strategy_options: dict = field(default_factory=dict)  # the head strategy's own options (its option_specs)


@dataclass
class BackboneSearchConfig:
    """The backbone-search job; epochs and arch_lr come from ``search``, a strategy's own settings from
    ``strategy_options`` (its option_specs: SPOS's population, GumbelDARTS's temperature, ...)."""

    strategy: str = "spos"  # a backbone strategy of experiments.strategies (checked at validation)
    # multiply-accumulates of the backbone at the data's image size
    max_flops: Optional[float] = setting(None, "(0, 1000000000000000000]")
    max_params: Optional[float] = setting(None, "(0, 1000000000000000000]")  # parameters of the backbone
    # a budget's penalty weight (DARTS family: max(0, E[cost] / budget - 1) in the architecture loss; ENAS: reward)
    budget_penalty: float = setting(2.0, "[0, 1000000]")
    trials: int = setting(64, "[1, 10000000]")  # sub-networks scored in all (the sampling strategies' evolution)
    bn_batches: int = setting(4, "[0, 100000]")  # BatchNorm recalibration batches before a sub-network is scored
    score_images: Optional[int] = setting(1000, "[1, 100000000]")  # held-out images a sub-network is scored on
    strategy_options: dict = field(default_factory=dict)  # the strategy's own options (its option_specs)


@dataclass
class TrainConfig:
    epochs: int = setting(200, EPOCHS)
    collapse_threshold: float = setting(0.05, "[0, 1)")


@dataclass
class EvaluationConfig:
    knn_k: int = setting(200, "[1, 100000]")
    knn_temperature: float = setting(0.1, "(0, 1000]")
    linear_epochs: int = setting(100, EPOCHS)
    linear_lr: float = setting(0.1, LEARNING_RATE)
    monitor_every_n_epochs: int = setting(1, "[1, 100000]")
    bank_subset: Optional[int] = setting(None, "[1, 100000000]")
    # monitored epochs in a row below the collapse threshold that stop a run
    collapse_patience: int = setting(3, "[1, 100000]")


@dataclass
class TrainerConfig:
    accelerator: str = setting("auto", one_of=("auto", "cpu", "gpu", "cuda", "mps"))
    devices: Any = setting(1, rule=(_devices, "must be a number of devices (1 to 1024, or -1 for all), auto, or a "
                                              "list of device indices"))
    strategy: str = setting("auto", one_of=("auto", "ddp", "ddp_spawn"))
    precision: str = setting("32-true", one_of=("32-true", "bf16-mixed", "16-mixed"))
    progress_bar: bool = True
    # the metrics logger beside logs/metrics.csv (experiments/core/loggers.py); its constructor's options
    logger: str = setting("tensorboard", one_of=("tensorboard", "csv", "wandb", "mlflow"))
    logger_options: dict = setting({}, rule=(lambda v: all(isinstance(k, str) for k in v),
                                             "must map option names to values"))
    channels_last: bool = True  # backbone and views in NHWC memory layout (faster convolutions on CPU and GPU)
    compile: bool = False  # torch.compile the backbone (pays on long GPU runs; first steps compile)
    # torch's CPU threads; null: the thread policy's (OMP_NUM_THREADS if set, else one core left free; machine.py)
    threads: Optional[int] = setting(None, "[1, 1024]")


@dataclass
class Config:
    framework: str = "simsiam"  # evaluators.FRAMEWORKS (checked at validation)
    framework_options: dict = field(default_factory=dict)
    seed: int = setting(0, f"[0, {MAX_SEED}]", "numpy's seed range")
    output_dir: str = setting("runs/search", rule=(_path_text, "must be a path (not empty, no NUL character)"))
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    backbone_search: BackboneSearchConfig = field(default_factory=BackboneSearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_intervals(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """``dotted field -> interval`` for every number of the schema (docs/config.md lists them)."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_intervals(hints[f.name], f"{prefix}{f.name}."))
        elif f.metadata.get("interval"):
            out[f"{prefix}{f.name}"] = f.metadata["interval"]
    return out


def _shape(annotation: Any) -> tuple[bool, Optional[type], Optional[type]]:
    """(may be null, kind, item kind) of a field's annotation: ``Optional[int]`` -> (True, int, None)."""
    nullable = typing.get_origin(annotation) is Union and type(None) in typing.get_args(annotation)
    if nullable:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is Any:
        return nullable, None, None
    origin = typing.get_origin(annotation) or annotation
    item = typing.get_args(annotation)[0] if origin is list and typing.get_args(annotation) else None
    return nullable, origin, item


def _show(value: Any, limit: int = 80) -> str:
    """A value for an error line: its repr, cut short (a 401-digit number too)."""
    if isinstance(value, int) and abs(value) >= 10 ** 60:
        try:
            return f"a {len(str(abs(value)))}-digit number"
        except ValueError:  # beyond Python's int-to-text limit (4300 digits)
            return "a number of thousands of digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _checked(f: dataclasses.Field, annotation: Any, value: Any, where: str) -> Any:
    """``value`` converted to the field's type once it passes the field's rules; else ConfigError."""
    nullable, kind, item = _shape(annotation)
    if value is None and nullable:
        return None
    rules = f.metadata
    wrong, converted = ranges.problem(value, kind, rules.get("interval"), rules.get("why", ""), item)
    if wrong is None and rules.get("one_of") and converted not in rules["one_of"]:
        wrong = "must be one of " + ", ".join(rules["one_of"])
    if wrong is None and rules.get("rule") and not rules["rule"][0](converted):
        wrong = rules["rule"][1]
    if wrong is not None:
        raise ConfigError(f"{where}: {wrong}{' or null' if nullable else ''}, got {_show(value)}")
    return converted


def _build(cls, raw: Any, path: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: must be a mapping of fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            name = str(key) if len(str(key)) <= 60 else str(key)[:57] + "..."
            where = f"{path}.{name}" if path else name
            close = difflib.get_close_matches(str(key)[:100], list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown field{hint}")
    values = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], raw.get(name), where)
        elif name in raw:
            values[name] = _checked(f, hints[name], raw[name], where)
    return cls(**values)


#: schema fields that became strategy options: (section, field) -> (the option, the sections whose strategy reads it)
MOVED_TO_OPTIONS = {
    ("search", "gumbel_temperature"): ("temperature", ("search", "backbone_search")),
    ("backbone_search", "population"): ("population", ("backbone_search",)),
    ("backbone_search", "tournament"): ("tournament", ("backbone_search",)),
    ("backbone_search", "mutation_prob"): ("mutation_prob", ("backbone_search",)),
    ("backbone_search", "enas_batches_per_update"): ("batches_per_update", ("backbone_search",)),
}


def _moved_out(raw: Any) -> tuple[Any, list[tuple[tuple[str, ...], str, Any]]]:
    """``raw`` without the fields that moved to strategy options, and those as (sections, option, value).

    An old config keeps running: validation gives each value to the strategy that takes the option
    (and drops it where the strategy never read it).
    """
    if not isinstance(raw, dict):
        return raw, []
    raw, moved = dict(raw), []
    for (section, name), (option, sections) in MOVED_TO_OPTIONS.items():
        if isinstance(raw.get(section), dict) and name in raw[section]:
            moved.append((sections, option, raw[section][name]))
            raw[section] = {k: v for k, v in raw[section].items() if k != name}
    return raw, moved


def parse_config(raw: Any) -> Config:
    """The schema's checks alone (types, ranges, the rules that need no registry); ``validation`` adds the rest."""
    raw, moved = _moved_out(raw)
    config = _build(Config, raw, "")
    config.moved = moved  # for validation, which knows the strategies' options
    if config.search.warmup_epochs >= config.search.epochs:
        raise ConfigError(f"search.warmup_epochs: must be below search.epochs ({config.search.epochs}), "
                          f"got {config.search.warmup_epochs}: the architecture would never move")
    if config.data.root and not _path_exists(config.data.root):
        raise ConfigError(f"data.root: dataset path {_show(config.data.root)} does not exist")
    return config


def _path_exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # "~nobody/x": no such home directory
        return False


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. search.epochs=3")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: the key before '=' is empty, e.g. search.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except (yaml.YAMLError, RecursionError, ValueError):  # ValueError: an integer beyond Python's 4300 digits
        parsed = value
    return key.strip().split("."), parsed


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``--set`` texts (``search.epochs=3``) as a dotted-key dict; a repeated key keeps its last value."""
    out: dict[str, Any] = {}
    for text in texts:
        keys, value = parse_override(text)
        out[".".join(keys)] = value
    return out


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``search.arch_lr``) in a raw config mapping; returns it."""
    for dotted, value in overrides.items():
        keys = dotted.split(".") if isinstance(dotted, str) else list(dotted)
        node = raw
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{dotted}: {k} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def read_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> Config:
    """Read and override a YAML config, checked against the schema; raises ConfigError with one clear line.

    ``experiments.core.validation.load_config`` adds the checks that need the registries: use that one.
    """
    raw: Any = {}
    if path is not None:
        p = existing_file(path, "config file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except (UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{p}: cannot read the config as text ({type(err).__name__})") from None
        except RecursionError:
            raise ConfigError(f"{p}: the YAML is nested too deeply") from None
        except ValueError as err:  # PyYAML's int() of a number beyond Python's 4300 digits
            raise ConfigError(f"{p}: a value cannot be read ({str(err).split(':')[0]})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ConfigError(f"{p}: malformed YAML{where}: {problem}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the config must be a YAML mapping, got {type(raw).__name__}")
    if isinstance(overrides, dict):
        apply_overrides(raw, overrides)
    else:
        for text in overrides or []:
            keys, value = parse_override(text)
            apply_overrides(raw, {".".join(keys): value})
    return parse_config(raw)
