"""The YAML config schema: dataclasses, validated field by field before anything runs.

Every error is one line that names the field (``data.batch_size: must be >= 1, got 0``);
an unknown key gets the closest valid name. ``--set a.b=value`` overrides use the same
checks, so do the parameters an NNI tuner sends to a trial.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from experiments.core.errors import ConfigError, existing_file


def _positive(x):
    return x > 0


def _non_negative(x):
    return x >= 0


def _probability(x):
    return 0.0 <= x <= 1.0


def _number(x) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _numbers(v, low: float, high: float, integer: bool = False) -> bool:
    """A non-empty list of numbers in (low, high] (integers in [low, high] when ``integer``)."""
    if not isinstance(v, list) or not v:
        return False
    if integer:
        return all(isinstance(x, int) and not isinstance(x, bool) and low <= x <= high for x in v)
    return all(_number(x) and low < x <= high for x in v)


def _path_text(v) -> bool:
    return v is None or (bool(v.strip()) and "\x00" not in v)


MAX_WIDTH = 16.0  # width multipliers above this do not fit any machine this package targets
MAX_SEED = 2 ** 32 - 1  # numpy's (and so Lightning's seed_everything) range


@dataclass
class DataConfig:
    dataset: str = "digits"
    root: Optional[str] = None
    image_size: Optional[int] = None
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    search_split: float = 0.5
    batch_size: int = 128
    num_workers: Optional[int] = None  # DataLoader worker processes; null: the thread policy's (core/machine.py)
    # augment whole uint8 batches in the training step (on the GPU if any): 1.3-3x the images a second on CPU
    # with channels-last (benchmarks/results/throughput-cpu.json); frameworks that make their own views fall back to per-image
    batched_augment: bool = True

    _checks = {
        "dataset": (lambda v: v in ("digits", "cifar10", "cifar100", "stl10", "imagefolder"),
                    "must be one of digits, cifar10, cifar100, stl10, imagefolder"),
        "root": (_path_text, "must be a path (not empty, no NUL character)"),
        "image_size": (lambda v: v is None or 8 <= v <= 1024, "must be between 8 and 1024"),
        "train_subset": (lambda v: v is None or v >= 2, "must be >= 2"),
        "test_subset": (lambda v: v is None or v >= 1, "must be >= 1"),
        "search_split": (lambda v: 0.0 < v < 1.0, "must be between 0 and 1 (exclusive)"),
        "batch_size": (lambda v: v >= 2, "must be >= 2"),
        "num_workers": (lambda v: v is None or 0 <= v <= 256, "must be between 0 and 256 or null"),
    }


@dataclass
class AugmentConfig:
    crop_min_scale: Optional[float] = None  # default: 0.2, or 0.5 for 8x8 digits
    hflip_p: Optional[float] = None  # default: 0.5, or 0 for digits (not mirror-symmetric)
    jitter: list = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: Optional[float] = None  # default: 0.5 for images of 64 px and more, else 0
    solarize_p: float = 0.0

    _checks = {
        "crop_min_scale": (lambda v: v is None or 0.0 < v <= 1.0, "must be in (0, 1]"),
        "hflip_p": (lambda v: v is None or _probability(v), "must be a probability in [0, 1]"),
        "jitter": (lambda v: len(v) == 4 and all(_number(x) and x >= 0 for x in v) and v[3] <= 0.5,
                   "must be four non-negative numbers (brightness, contrast, saturation, hue <= 0.5)"),
        "jitter_p": (_probability, "must be a probability in [0, 1]"),
        "grayscale_p": (_probability, "must be a probability in [0, 1]"),
        "blur_p": (lambda v: v is None or _probability(v), "must be a probability in [0, 1]"),
        "solarize_p": (_probability, "must be a probability in [0, 1]"),
    }


BACKBONES = ("resnet18", "resnet34", "resnet50")  # fixed ResNets
BACKBONE_SPACE_NAMES = ("nas_bench_macro", "macro", "resnet", "vit", "nas_bench_macro_width", "cells",
                        "resnet_width")  # search_spaces.backbone_spaces


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    backbone_width: float = 1.0
    backbone_options: dict = field(default_factory=dict)  # a backbone space's own options (e.g. plan)
    head_space: str = "nasiam"
    head_width: float = 1.0
    mlp_widths: list = field(default_factory=lambda: [1.0])
    mlp_depths: list = field(default_factory=lambda: [1, 2, 3])

    _checks = {
        "backbone": (lambda v: v in BACKBONES + BACKBONE_SPACE_NAMES,
                     "must be a fixed ResNet (resnet18, resnet34, resnet50) or a backbone space "
                     f"({', '.join(BACKBONE_SPACE_NAMES)})"),
        "backbone_width": (lambda v: 0 < v <= MAX_WIDTH, f"must be in (0, {MAX_WIDTH:g}]"),
        "head_space": (lambda v: v in ("fixed", "nasiam", "mlp", "width"), "must be one of fixed, nasiam, mlp, width"),
        "head_width": (lambda v: 0 < v <= MAX_WIDTH, f"must be in (0, {MAX_WIDTH:g}]"),
        "mlp_widths": (lambda v: _numbers(v, 0, MAX_WIDTH),
                       f"must be a non-empty list of width factors in (0, {MAX_WIDTH:g}]"),
        "mlp_depths": (lambda v: _numbers(v, 1, 16, integer=True),
                       "must be a non-empty list of integers between 1 and 16"),
    }


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0

    _checks = {
        "optimizer": (lambda v: v in ("sgd", "adamw"), "must be sgd or adamw"),
        "lr": (_positive, "must be > 0"),
        "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "weight_decay": (_non_negative, "must be >= 0"),
        "warmup_epochs": (_non_negative, "must be >= 0"),
    }


def _strategy_check(target: str) -> tuple:
    """A strategy name that the registry lists for ``target``, read when a config is checked."""
    def names() -> list[str]:
        from experiments.strategies import strategy_names  # the registry is the truth for strategy names

        return strategy_names(target)

    return (lambda v: v in names(), lambda: "must be one of " + ", ".join(names()))


@dataclass
class SearchConfig:
    strategy: str = "darts"
    epochs: int = 100
    warmup_epochs: int = 10
    arch_lr: float = 1e-3
    arch_every: int = 1  # DARTS family: an architecture step on every k-th batch only (the others train weights)
    param_free_penalty: float = 0.5
    gradient_clip: Optional[float] = 5.0
    fast_arch_step: bool = True
    gumbel_temperature: list = field(default_factory=lambda: [1.0, 0.33])
    collapse_threshold: float = 0.05

    _checks = {
        "strategy": _strategy_check("heads"),
        "epochs": (lambda v: v >= 1, "must be >= 1"),
        "warmup_epochs": (_non_negative, "must be >= 0"),
        "arch_lr": (_positive, "must be > 0"),
        "arch_every": (lambda v: v >= 1, "must be >= 1"),
        "param_free_penalty": (_non_negative, "must be >= 0"),
        "gradient_clip": (lambda v: v is None or v > 0, "must be > 0 or null"),
        "gumbel_temperature": (lambda v: len(v) == 2 and all(_number(x) for x in v) and v[0] >= v[1] > 0,
                               "must be [initial, final] with initial >= final > 0"),
        "collapse_threshold": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    }


@dataclass
class BackboneSearchConfig:
    """The backbone-search job (experiments/backbone_search.py); epochs and arch_lr come from ``search``."""

    strategy: str = "spos"
    max_flops: Optional[float] = None  # multiply-accumulates of the backbone at the data's image size
    max_params: Optional[float] = None  # parameters of the backbone
    budget_penalty: float = 2.0  # DARTS family: weight of max(0, E[cost] / budget - 1) in the architecture loss
    population: int = 16  # SPOS evolution (NNI RegularizedEvolution): population size
    tournament: int = 4  # ... individuals per tournament
    mutation_prob: float = 0.25  # ... per-label mutation probability
    trials: int = 64  # ... sub-networks scored in all
    bn_batches: int = 4  # BatchNorm recalibration batches before a sub-network is scored
    score_images: Optional[int] = 1000  # held-out images a sub-network is scored on (null: all)
    enas_batches_per_update: int = 10  # ENAS: rewards per controller update
    strategy_options: dict = field(default_factory=dict)  # the strategy's own options (its option_specs)

    _checks = {
        "strategy": _strategy_check("backbone"),
        "max_flops": (lambda v: v is None or v > 0, "must be > 0 or null"),
        "max_params": (lambda v: v is None or v > 0, "must be > 0 or null"),
        "budget_penalty": (_non_negative, "must be >= 0"),
        "population": (lambda v: v >= 2, "must be >= 2"),
        "tournament": (lambda v: v >= 1, "must be >= 1"),
        "mutation_prob": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "trials": (lambda v: v >= 1, "must be >= 1"),
        "bn_batches": (_non_negative, "must be >= 0"),
        "score_images": (lambda v: v is None or v >= 1, "must be >= 1 or null"),
        "enas_batches_per_update": (lambda v: v >= 1, "must be >= 1"),
    }


@dataclass
class TrainConfig:
    epochs: int = 200
    collapse_threshold: float = 0.05

    _checks = {"epochs": (lambda v: v >= 1, "must be >= 1"),
               "collapse_threshold": (lambda v: 0 <= v < 1, "must be in [0, 1)")}


@dataclass
class EvaluationConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_epochs: int = 100
    linear_lr: float = 0.1
    monitor_every_n_epochs: int = 1
    bank_subset: Optional[int] = None
    collapse_patience: int = 3  # monitored epochs in a row below the collapse threshold that stop a run

    _checks = {
        "collapse_patience": (lambda v: v >= 1, "must be >= 1"),
        "knn_k": (lambda v: v >= 1, "must be >= 1"),
        "knn_temperature": (_positive, "must be > 0"),
        "linear_epochs": (lambda v: v >= 1, "must be >= 1"),
        "linear_lr": (_positive, "must be > 0"),
        "monitor_every_n_epochs": (lambda v: v >= 1, "must be >= 1"),
        "bank_subset": (lambda v: v is None or v >= 1, "must be >= 1"),
    }


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    progress_bar: bool = True
    channels_last: bool = True  # backbone and views in NHWC memory layout (faster convolutions on CPU and GPU)
    compile: bool = False  # torch.compile the backbone (pays on long GPU runs; first steps compile)
    # torch's CPU threads; null: the thread policy's (OMP_NUM_THREADS if set, else one core left free; machine.py)
    threads: Optional[int] = None

    _checks = {
        "accelerator": (lambda v: v in ("auto", "cpu", "gpu", "cuda", "mps"), "must be auto, cpu, gpu, cuda or mps"),
        "devices": (lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1))
                    or (isinstance(v, list) and 0 < len(v) == len(set(v))
                        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)),
                    "must be a number of devices (>= 1, or -1 for all), auto, or a list of device indices"),
        "strategy": (lambda v: v in ("auto", "ddp", "ddp_spawn"), "must be auto, ddp or ddp_spawn"),
        "precision": (lambda v: v in ("32-true", "bf16-mixed", "16-mixed"), "must be 32-true, bf16-mixed or 16-mixed"),
        "threads": (lambda v: v is None or 1 <= v <= 1024, "must be between 1 and 1024 or null"),
    }


@dataclass
class Config:
    framework: str = "simsiam"
    framework_options: dict = field(default_factory=dict)
    seed: int = 0
    output_dir: str = "runs/search"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    backbone_search: BackboneSearchConfig = field(default_factory=BackboneSearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    _checks = {
        "seed": (lambda v: 0 <= v <= MAX_SEED, f"must be between 0 and {MAX_SEED}"),
        "output_dir": (_path_text, "must be a path (not empty, no NUL character)"),
    }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Check ``value`` against a field annotation; ints are accepted (and converted) for floats."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True, value
    if origin is Union:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, converted = _type_ok(value, arg)
            if ok:
                return True, converted
        return False, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                converted = float(value)
            except OverflowError:  # an integer beyond any float
                return False, value
            return math.isfinite(converted), converted
        if isinstance(value, str):  # PyYAML reads 2e6 and 1e-3 (no dot) as strings
            try:
                converted = float(value)
            except ValueError:
                return False, value
            return math.isfinite(converted), converted
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if annotation is list or origin is list:
        return isinstance(value, list), value
    if annotation is dict or origin is dict:
        return isinstance(value, dict), value
    return True, value


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Union:
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(names) + " or null"
    return {bool: "true/false", int: "an integer", float: "a finite number", str: "a string",
            list: "a list", dict: "a mapping"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _show(value: Any, limit: int = 80) -> str:
    """A value for an error line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, raw.get(name), where)
            continue
        if name not in raw:
            continue
        ok, value = _type_ok(raw[name], annotation)
        if not ok:
            raise ConfigError(f"{where}: must be {_type_name(annotation)}, got {_show(raw[name])}")
        check = getattr(cls, "_checks", {}).get(name)
        if check is not None:
            try:
                valid = value is None and typing.get_origin(annotation) is Union or check[0](value)
            except (TypeError, ValueError, OverflowError):  # e.g. a string compared with a number
                valid = False
            if not valid:
                rule = check[1]() if callable(check[1]) else check[1]  # a registry's names, read when needed
                raise ConfigError(f"{where}: {rule}, got {_show(value)}")
        values[name] = value
    return cls(**values)


def config_from_dict(raw: Any) -> Config:
    config = _build(Config, raw, "")
    _cross_checks(config)
    return config


def _cross_checks(config: Config) -> None:
    from evaluators import FRAMEWORKS  # the registry is the truth for framework names

    if config.framework not in FRAMEWORKS:
        close = difflib.get_close_matches(config.framework, list(FRAMEWORKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"framework: unknown framework {_show(config.framework)}; choose one of "
                          f"{', '.join(sorted(FRAMEWORKS))}{hint}")
    framework = FRAMEWORKS[config.framework]
    for key, problem in framework.option_problems(config.framework_options):
        if problem == "unknown":
            options = list(framework.option_specs)
            close = difflib.get_close_matches(str(key), options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else (
                f"; it takes {', '.join(options)}" if options else "; it takes none")
            raise ConfigError(f"framework_options.{key}: {config.framework} has no such option{hint}")
        raise ConfigError(f"framework_options.{key}: {problem}, got {_show(config.framework_options[key])}")
    if config.search.warmup_epochs >= config.search.epochs:
        raise ConfigError(f"search.warmup_epochs: must be below search.epochs ({config.search.epochs}), "
                          f"got {config.search.warmup_epochs}: the architecture would never move")
    if config.model.head_space == "mlp" and len(config.model.mlp_widths) > 1:
        raise ConfigError("model.mlp_widths: DARTS cannot relax a width choice (NNI has no differentiable "
                          "BatchNorm1d); give one width, or search widths with the multi-trial head search")
    _backbone_checks(config)
    if config.data.dataset != "digits" and not config.data.root:
        raise ConfigError(f"data.root: dataset {config.data.dataset!r} needs a path on disk")
    if config.model.head_space in ("mlp", "width"):
        hidden = framework.heads.scaled(config.model.head_width).projector_hidden
        if round(min(config.model.mlp_widths) * hidden) < 1:
            raise ConfigError(f"model.mlp_widths: {min(config.model.mlp_widths)} of a {hidden}-wide hidden layer "
                              f"is no unit at all; use a larger factor or model.head_width")
    if config.data.root and not _path_exists(config.data.root):
        raise ConfigError(f"data.root: dataset path {_show(config.data.root)} does not exist")


def _path_exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # "~nobody/x": no such home directory
        return False


def _backbone_checks(config: Config) -> None:
    m, b = config.model, config.backbone_search
    if config.framework == "supervised" and m.head_space != "fixed":
        raise ConfigError(f"model.head_space: the supervised framework trains a linear classifier; set it to "
                          f"fixed, got {m.head_space!r}")
    if m.backbone_options:
        if m.backbone not in BACKBONE_SPACE_NAMES:
            raise ConfigError(f"model.backbone_options: backbone {m.backbone} is a fixed ResNet and takes none")
        from search_spaces.backbone_spaces import space_options

        allowed = space_options(m.backbone)
        for key in m.backbone_options:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(allowed) or 'none'}"
                raise ConfigError(f"model.backbone_options.{key}: backbone space {m.backbone} has no such option{hint}")
    from evaluators.options import option_problems
    from experiments.strategies import STRATEGIES  # each strategy's own rules (SPOS: tournament <= population)

    strategy = STRATEGIES[b.strategy]
    for key, problem in option_problems(strategy.option_specs, b.strategy_options):
        if problem == "unknown":
            known = list(strategy.option_specs)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(known) or 'none'}"
            raise ConfigError(f"backbone_search.strategy_options.{key}: {b.strategy} has no such option{hint}")
        raise ConfigError(f"backbone_search.strategy_options.{key}: {problem}, got {_show(b.strategy_options[key])}")
    STRATEGIES[config.search.strategy].check(config, "heads")
    strategy.check(config, "backbone")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. search.epochs=3")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: the key before '=' is empty, e.g. search.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except (yaml.YAMLError, RecursionError):
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


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> Config:
    """Read, override and validate a YAML config; raises ConfigError with one clear line."""
    raw: Any = {}
    if path is not None:
        p = existing_file(path, "config file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except (UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{p}: cannot read the config as text ({type(err).__name__})") from None
        except RecursionError:
            raise ConfigError(f"{p}: the YAML is nested too deeply") from None
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
    return config_from_dict(raw)
