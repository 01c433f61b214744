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

from experiments.core.config import Config
from experiments.core.validation import config_from_dict, load_config
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


# --- issue 23: space sections, backbone options, nnictl search spaces, output directories ---------
# within the bounds but large, a width builds for long: the plausible ones stay small
widths = st.one_of(st.sampled_from([0.0625, 0.125, 0.25, 1e6, 17]),
                   scalars.filter(lambda v: not (isinstance(v, (int, float)) and 0.25 < v <= 16)))
backbone_options = st.one_of(
    st.none(), values,
    st.fixed_dictionaries({}, optional={"plan": st.one_of(st.sampled_from(["cifar", "imagenet", "tiny"]), values),
                                        "ops": st.one_of(st.sampled_from([["identity", "mb3_k3"], ["mb6_k5"],
                                                                          ["mb3_k4"], []]), values)}))


@st.composite
def space_sections(draw) -> dict:
    """The shipped simsiam/nasiam record's space with backbone fields as a searched backbone writes them,
    each one either plausible or anything JSON can hold."""
    space = {"framework": "simsiam", "head_space": "nasiam"}
    fields = {"backbone": st.one_of(st.sampled_from(["macro", "resnet18", "macro", "nas_bench_macro"]), scalars),
              "backbone_width": widths, "head_width": widths, "backbone_options": backbone_options,
              "num_classes": st.one_of(st.sampled_from([10, 3]), scalars)}
    for key in draw(st.lists(st.sampled_from(sorted(fields)), unique=True)):
        space[key] = draw(fields[key])
    return space


@settings(max_examples=40, **SETTINGS)
@given(space=space_sections())
def test_generated_space_sections_are_built_or_refused_in_one_line(spaces, space):
    from experiments.core.records import space_for

    cfg, _ = spaces
    record = json.loads((ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json").read_text())
    record["space"] = space
    try:
        built = space_for(json.loads(json.dumps(record)), cfg, "arch.json")
    except ConfigError as err:
        event("refused")
        assert_one_line(err)
        return
    event("accepted")
    if space.get("backbone") == "macro":  # accepted means the recorded options really built the backbone
        options = space.get("backbone_options") or {}
        assert built.backbone.ops == tuple(options.get("ops", built.backbone.ops))
        assert built.backbone.plan_name == options.get("plan", "cifar")


range_values = st.one_of(st.lists(st.one_of(st.integers(-5, 10), st.floats(-2, 2), scalars), max_size=4), scalars)
search_space_entries = st.one_of(
    st.fixed_dictionaries({"_type": st.sampled_from(["choice", "randint", "uniform", "quniform", "loguniform",
                                                     "qloguniform", "normal", "qnormal", "lognormal", "qlognormal",
                                                     "beta"]),
                           "_value": range_values}),
    values)
TRIAL = "python -m experiments search --nni --config configs/digits_simsiam.yml"


@settings(max_examples=15, **SETTINGS)
@given(entries=st.dictionaries(st.sampled_from(["optim.lr", "search.arch_lr", "seed", "data.batch_size"]),
                               search_space_entries, min_size=1, max_size=2),
       port=st.one_of(st.sampled_from([8080, 0, -1, 65535, 65536, 99999]), st.integers(-10, 70000)))
def test_generated_nnictl_search_spaces_pass_check_or_are_refused_in_one_line(tmp_path_factory, entries, port):
    """The whole check job (NNI's validation first, then ours), as the command line runs it."""
    import os
    import sys

    from experiments.jobs.check import check

    raw = yaml.safe_load((ROOT / "nni_configs" / "darts_simsiam.yml").read_text())
    raw.update(trialCodeDirectory=str(ROOT), trialCommand=TRIAL, searchSpace=entries)
    path = tmp_path_factory.mktemp("nni") / "exp.yml"
    path.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    try:
        notes = check(path, port, env)
    except ConfigError as err:
        event("refused")
        assert_one_line(err)
        if not 1 <= port <= 65535:
            assert f"--port {port}" in str(err)  # a bad port is the first thing said
        return
    event("accepted")
    assert 1 <= port <= 65535 and any("every choice and range end accepted" in note for note in notes)


DIR_KINDS = ["missing", "empty", "file", "under_file", "not_writable", "same_run", "finished_other_job",
             "unreadable_record", "finished_run"]


def _finished(out: Path, job: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"job": job, "fingerprint": "0" * 16, "config": {}}))
    (out / "status.json").write_text('{"state": "finished"}')
    (out / "best_architecture.json").write_text("{}")
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / "metrics.csv").write_text("epoch\n0\n")


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@settings(max_examples=40, **SETTINGS)
@given(kind=st.sampled_from(DIR_KINDS), job=st.sampled_from(["search", "retrain"]), overwrite=st.booleans())
def test_generated_output_directories_are_claimed_or_refused_in_one_line(tmp_path_factory, monkeypatch_session,
                                                                        kind, job, overwrite):
    """Each kind of --output-dir, claimed by a search or a retrain, with or without --overwrite: a claim
    or one line, and a finished run elsewhere (or there, but for --overwrite of its own job) is unchanged."""
    import os

    from experiments.core.run_dir import open_run

    root = tmp_path_factory.mktemp("dirs")
    cfg = load_config(ROOT / "configs" / "digits_simsiam.yml", {"trainer.accelerator": "cpu"})
    elsewhere = root / "elsewhere"
    _finished(elsewhere, "search")
    out = root / "out"
    if kind == "empty":
        out.mkdir()
    elif kind in ("file", "under_file"):
        out.write_text("a file")
        out = out if kind == "file" else out / "run"
    elif kind == "not_writable":  # root ignores chmod: the kernel's answer is patched in
        out.mkdir()
        real_access = os.access
        monkeypatch_session.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out
                                    else real_access(p, mode, **kw))
    elif kind == "same_run":
        with open_run(out, cfg, job, ("best_architecture.json",), log_fn=lambda line: None):
            pass
    elif kind == "finished_other_job":
        _finished(out, "retrain" if job == "search" else "search")
    elif kind == "unreadable_record":
        out.mkdir()
        (out / "run.json").write_text("{not json")
    elif kind == "finished_run":
        _finished(out, job)
    before = _files(root)
    try:
        with open_run(out, cfg, job, ("best_architecture.json",), overwrite=overwrite, log_fn=lambda line: None):
            pass
    except ConfigError as err:
        event(f"refused {kind}")
        assert_one_line(err)
        after = _files(root)  # a refusal changes nothing anywhere; only the lock it took may remain
        assert {k: after.get(k) for k in before} == before
        assert all(Path(k).name == ".lock" for k in set(after) - set(before)), sorted(set(after) - set(before))
        return
    finally:
        monkeypatch_session.undo()
    event(f"claimed {kind}")
    assert kind not in ("file", "under_file", "not_writable", "finished_other_job", "unreadable_record")
    assert kind != "finished_run" or overwrite
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert {k: v for k, v in _files(root).items() if k.startswith("elsewhere")} == \
        {k: v for k, v in before.items() if k.startswith("elsewhere")}


@pytest.fixture(scope="module")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as patch:
        yield patch
