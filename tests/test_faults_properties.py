"""Generated configs and architecture JSONs thrown at the validators (validation only, no training).

Every input is either accepted, or refused with a ConfigError of one line; nothing else
escapes. What is accepted is really valid: a config survives a second validation of its
own dump, and an accepted architecture builds through NNI's ``freeze``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from experiments.core.config import Config, config_from_dict, load_config
from experiments.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _sections() -> dict[str, list[str]]:
    hints = typing.get_type_hints(Config)
    out = {"": []}
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = [g.name for g in dataclasses.fields(hints[f.name])]
        else:
            out[""].append(f.name)
    return out


SECTIONS = _sections()
DEFAULTS = Config().to_dict()

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-2, max_value=2),
    st.text(max_size=12), st.sampled_from(["\x00", "auto", "cpu", "darts", "gdarts", "moco", "byol", "simclr",
                                           "mlp", "nasiam", "fixed", "sgd", "adamw", "~nobody/x", "digits",
                                           "imagefolder", "resnet18", ".", "16-mixed"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def _typo(name: str) -> st.SearchStrategy[str]:
    return st.integers(min_value=0, max_value=max(0, len(name) - 1)).map(lambda i: name[:i] + name[i + 1:])


def _plausible(default):
    """Values of the default's own kind, mostly in range: most such configs should pass."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(min_value=0, max_value=max(8, 2 * default))
    if isinstance(default, float):
        return st.floats(min_value=0.0, max_value=max(1.0, 2 * default))
    if isinstance(default, list):
        return st.lists(st.sampled_from(default), min_size=1, max_size=4) if default else st.just([])
    return st.just(default)


@st.composite
def raw_configs(draw) -> dict:
    """Half the time only plausible values; otherwise also garbage, wrong shapes and unknown keys."""
    chaos = draw(st.booleans())
    raw: dict = {}
    for section, names in SECTIONS.items():
        if chaos and section and draw(st.integers(0, 6)) == 0:
            raw[section] = draw(values)  # a whole section of the wrong shape
            continue
        node = raw if not section else raw.setdefault(section, {})
        for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            default = DEFAULTS[section][name] if section else DEFAULTS[name]
            if name in ("output_dir", "root", "framework", "dataset"):
                continue  # keep the run's identity; paths and names get garbage below
            node[name] = draw(st.one_of(_plausible(default), values) if chaos else _plausible(default))
        if chaos and draw(st.integers(0, 4)) == 0:  # an unknown key: a typo of a real one, or noise
            key = draw(st.one_of(_typo(draw(st.sampled_from(names))), st.text(max_size=10)))
            node[key] = draw(scalars)
    if chaos and draw(st.booleans()):
        raw[draw(st.sampled_from(["output_dir", "framework"]))] = draw(values)
    if draw(st.booleans()):
        raw["framework"] = draw(st.sampled_from(["moco", "byol", "simclr"]))
        raw["framework_options"] = draw(st.dictionaries(
            st.sampled_from(["temperature", "queue_size", "momentum", "tempreature"] if chaos else ["momentum"]),
            scalars if chaos else st.floats(min_value=0.5, max_value=0.999), max_size=3))
        if raw["framework"] == "simclr" and not chaos:
            raw["framework_options"] = {}
    return raw


def assert_one_line(err: ConfigError) -> None:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    assert len(text) < 600, text


def _finite_floats(node) -> bool:
    if isinstance(node, dict):
        return all(_finite_floats(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite_floats(v) for v in node)
    return not isinstance(node, float) or math.isfinite(node)


@settings(max_examples=100, **SETTINGS)
@given(raw_configs())
def test_generated_configs_are_accepted_or_refused_in_one_line(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError as err:
        event("refused")
        assert_one_line(err)
        return
    event("accepted")
    dumped = cfg.to_dict()
    assert config_from_dict(json.loads(json.dumps(dumped))).to_dict() == dumped  # valid means valid again
    assert _finite_floats(dumped)
    assert 0 <= cfg.seed < 2 ** 32


@settings(max_examples=60, **SETTINGS)
@given(st.one_of(st.text(max_size=200), st.builds(lambda raw: yaml.safe_dump(raw, allow_unicode=True),
                                                 raw_configs()),
                 st.binary(max_size=64).map(lambda b: b.decode("latin-1"))))
def test_generated_yaml_files_are_accepted_or_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yml"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    try:
        load_config(path)
    except ConfigError as err:
        assert_one_line(err)


dotted = [f"{section}.{name}" if section else name for section, names in SECTIONS.items() for name in names]


@settings(max_examples=80, **SETTINGS)
@given(st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(dotted), st.text(max_size=12)),
              st.one_of(st.text(max_size=20), scalars.map(str), values.map(json.dumps))),
    st.text(max_size=20)), max_size=4))
def test_generated_overrides_are_accepted_or_refused_in_one_line(overrides):
    try:
        load_config(ROOT / "configs" / "bench_digits_simsiam.yml", overrides)
    except ConfigError as err:
        assert_one_line(err)


# --- architecture JSON ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spaces():
    from experiments.core.records import space_for

    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml",
                      {"model.backbone_width": 0.0625, "model.head_width": 0.0625})
    found = {}
    for framework in ("simsiam", "simclr", "moco", "byol"):
        for head_space in ("nasiam", "mlp"):
            space = space_for({"space": {"framework": framework, "head_space": head_space}, "architecture": {}}, cfg)
            found[(framework, head_space)] = {k: list(v.values) for k, v in space.simplify().items()}
    return cfg, found


FRAMEWORK_NAMES = ["simsiam", "simclr", "moco", "byol"]


@st.composite
def architecture_records(draw, spaces: dict):
    """A valid record for one of the spaces, then (half the time) one to three corruptions."""
    claimed = draw(st.sampled_from(sorted(spaces)))
    labels = spaces[claimed]
    arch = {label: draw(st.sampled_from(choices)) for label, choices in labels.items()}
    space = {"framework": claimed[0], "head_space": claimed[1]}
    record = {"format_version": 1, "kind": "ssl_head_search", "space": space, "architecture": arch}
    for _ in range(draw(st.integers(0, 3)) if draw(st.booleans()) else 0):
        how = draw(st.sampled_from(["drop", "extra", "typo", "value", "type", "other_space", "framework",
                                    "head_space", "mlp", "version", "top_framework", "not_a_record"]))
        label = draw(st.sampled_from(sorted(labels)))
        if how == "drop":
            arch.pop(label, None)
        elif how == "extra":
            arch[draw(st.text(max_size=20))] = draw(scalars)
        elif how == "typo":
            arch[draw(_typo(label))] = arch.pop(label, None)
        elif how == "value":
            arch[label] = draw(values)
        elif how == "type":  # 2 -> 2.0 or true, "relu" -> ["relu"]: equal-ish, not the same
            v = arch.get(label)
            arch[label] = float(v) if isinstance(v, int) else (v == 1) if isinstance(v, int) else [v]
        elif how == "other_space":  # the labels of another framework or head space
            other = draw(st.sampled_from(sorted(spaces)))
            arch.clear()
            arch.update({k: draw(st.sampled_from(c)) for k, c in spaces[other].items()})
        elif how == "framework":
            space["framework"] = draw(st.one_of(st.sampled_from(FRAMEWORK_NAMES + ["dino"]), scalars))
        elif how == "head_space":
            space["head_space"] = draw(st.one_of(st.sampled_from(["nasiam", "mlp", "fixed", "darts"]), scalars))
        elif how == "mlp":
            space[draw(st.sampled_from(["mlp_widths", "mlp_depths"]))] = draw(st.one_of(
                st.lists(st.one_of(st.integers(-2, 40), st.floats(allow_nan=True, allow_infinity=True)),
                         max_size=3), scalars))
        elif how == "version":
            record["format_version"] = draw(scalars)
        elif how == "top_framework":
            record["framework"] = draw(st.one_of(st.sampled_from(FRAMEWORK_NAMES), scalars))
        else:
            return draw(values)
    return record


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_generated_architecture_files_are_accepted_or_refused_in_one_line(spaces, tmp_path_factory, data):
    from experiments.core.records import read_architecture, space_for, validate_choices

    cfg, known = spaces
    record = data.draw(architecture_records(known))
    text = json.dumps(record)
    if data.draw(st.integers(0, 6)) == 0:  # malformed: cut short, or garbage appended
        text = data.draw(st.one_of(st.integers(0, max(0, len(text) - 1)).map(lambda i: text[:i]),
                                   st.text(max_size=5).map(lambda tail: text + "}" + tail)))
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    path.write_text(text)
    try:
        loaded = read_architecture(path)
        space = space_for(loaded, cfg)
        architecture = validate_choices(space, loaded["architecture"], str(path))
    except ConfigError as err:
        event("refused")
        assert_one_line(err)
        return
    event("accepted")
    network = space.freeze(architecture)  # accepted means NNI builds it
    assert network is not None
