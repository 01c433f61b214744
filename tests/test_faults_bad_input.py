"""Bad input: one ``error:`` line, exit status 2, and not a file written or changed.

Every case goes through the CLI's ``main`` in this process (the same code as
``python -m experiments``, without paying for the imports each time); a few run as real
subprocesses, side by side, to pin the process-level behaviour.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "bench_digits_simsiam.yml")
SHIPPED = ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json"
TINY = {"model.backbone_width": 0.0625, "model.head_width": 0.0625, "data.train_subset": 128,
        "data.test_subset": 50, "data.batch_size": 32, "search.epochs": 2, "search.warmup_epochs": 0,
        "train.epochs": 1, "trainer.progress_bar": False, "trainer.accelerator": "cpu"}


def sets(**extra) -> list[str]:
    return [arg for key, value in {**TINY, **extra}.items() for arg in ("--set", f"{key}={value}")]


def snapshot(root: Path) -> dict:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def png(path: Path, size: int = 8) -> None:
    from torchvision.io import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(torch.randint(0, 255, (3, size, size), dtype=torch.uint8)).numpy().tobytes())


def arch_file(path: Path, change=None) -> Path:
    record = json.loads(SHIPPED.read_text())
    if change:
        change(record)
    path.write_text(json.dumps(record))
    return path


def run_printed(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    """The exit status, what went to stdout, and the ``error:`` lines of stderr."""
    from experiments.cli import main

    rc = main(argv)
    printed = capsys.readouterr()
    return rc, printed.out, [line for line in printed.err.splitlines() if line.startswith("error:")]


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    rc, _, lines = run_printed(argv, capsys)
    return rc, lines


def assert_refused(argv, capsys, watched: Path, expected: list[str]):
    before = snapshot(watched)
    rc, printed, lines = run_printed(argv, capsys)
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert printed == "", printed  # a refused job says nothing else: no start line, no notes before its refusal
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(watched) == before, "a refused run changed its directory"


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("search.epoch=3", ["search.epoch: unknown field", "did you mean 'epochs'"]),
    ("data.batch_size=abc", ["data.batch_size: must be an integer, got 'abc'"]),
    ("optim.lr=-1", ["optim.lr: must be in (0, 1000], got -1"]),
    ("optim.lr=.nan", ["optim.lr: must be a finite number"]),
    ("seed=99999999999", ["seed: must be in [0, 4294967295]"]),
    ("trainer.devices=[0, 0]", ["trainer.devices: must be a number of devices"]),
    ("framework_options.temprature=0.1", ["framework_options.temprature: simsiam has no such option"]),
])
def test_bad_config_fields(tmp_path, capsys, override, expected):
    out = tmp_path / "out"
    assert_refused(["search", "--config", CONFIG, *sets(), "--set", override, "--output-dir", str(out)],
                   capsys, tmp_path, expected)
    assert not out.exists()


def test_missing_and_malformed_config_files(tmp_path, capsys):
    assert_refused(["search", "--config", str(tmp_path / "nope.yml")], capsys, tmp_path, ["does not exist"])
    bad = tmp_path / "bad.yml"
    bad.write_text("data: [\n  - 1\nsearch: {")
    assert_refused(["search", "--config", str(bad), "--output-dir", str(tmp_path / "o")], capsys, tmp_path,
                   ["malformed YAML (line"])
    binary = tmp_path / "binary.yml"
    binary.write_bytes(bytes(range(256)))
    assert_refused(["search", "--config", str(binary)], capsys, tmp_path, ["cannot read the config as text"])


# --- datasets ------------------------------------------------------------------------------------
def imagefolder(root: Path, train: dict, test: dict) -> Path:
    for split, files in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = root / split / name
            if content is None:
                png(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
    return root


def test_dataset_path_missing(tmp_path, capsys):
    out = tmp_path / "out"
    assert_refused(["search", "--config", CONFIG, *sets(**{"data.dataset": "imagefolder",
                                                           "data.root": str(tmp_path / "nowhere")}),
                    "--output-dir", str(out)], capsys, tmp_path, ["data.root: dataset path", "does not exist"])


@pytest.mark.parametrize("layout, expected", [
    ({"train": {}, "test": {}}, "no images under"),  # no class folders at all
    ({"train": {"cat/notes.txt": b"x"}, "test": {"cat/notes.txt": b"x"}}, "no images under"),  # no image files
])
def test_dataset_empty(tmp_path, capsys, layout, expected):
    root = imagefolder(tmp_path / "data", layout["train"], layout["test"])
    out = tmp_path / "out"
    assert_refused(["search", "--config", CONFIG, *sets(**{"data.dataset": "imagefolder", "data.root": str(root),
                                                           "data.train_subset": "null"}),
                    "--output-dir", str(out)], capsys, tmp_path, [expected, str(root / "train")])


def test_a_one_class_imagefolder_is_refused_for_a_labelled_evaluation(tmp_path, capsys):
    root = imagefolder(tmp_path / "data", {f"cat/{i}.png": None for i in range(4)}, {"cat/0.png": None})
    assert_refused(["search", "--config", CONFIG, *sets(**{"data.dataset": "imagefolder", "data.root": str(root),
                                                           "data.train_subset": "null", "data.batch_size": 2}),
                    "--output-dir", str(tmp_path / "out")], capsys, tmp_path,
                   [f"{root / 'train'} has 1 class folder (cat)", "need at least two classes"])


def test_dataset_unreadable_image_names_the_first_bad_file(tmp_path, capsys):
    train = {f"a/{i}.png": None for i in range(3)}
    train.update({"a/3.png": b"\x89PNG but not really", "b/0.png": b"", "b/1.png": None})
    root = imagefolder(tmp_path / "data", train, {"a/0.png": None, "b/0.png": None})
    out = tmp_path / "out"
    assert_refused(["search", "--config", CONFIG, *sets(**{"data.dataset": "imagefolder", "data.root": str(root),
                                                           "data.train_subset": "null"}),
                    "--output-dir", str(out)], capsys, tmp_path, ["cannot read image", str(root / "train/a/3.png")])


def test_dataset_images_of_different_sizes(tmp_path, capsys):
    root = imagefolder(tmp_path / "data", {"a/0.png": None, "b/0.png": None}, {"a/0.png": None})
    png(root / "train" / "b" / "1.png", size=12)
    assert_refused(["search", "--config", CONFIG, *sets(**{"data.dataset": "imagefolder", "data.root": str(root),
                                                           "data.train_subset": "null"}),
                    "--output-dir", str(tmp_path / "out")], capsys, tmp_path,
                   ["differ in size", "b/1.png", "data.image_size"])


# --- architecture JSON ---------------------------------------------------------------------------
def _set_op(label, value):
    return lambda r: r["architecture"].__setitem__(label, value)


@pytest.mark.parametrize("change, expected", [
    ("malformed", ["malformed architecture JSON (line 2, column 1)"]),
    (_set_op("projector.layer9.op", "identity"), ["label 'projector.layer9.op' is not in the nasiam space for simsiam"]),
    (_set_op("projector.layer1.op", "linear_tanh"), ["projector.layer1.op = 'linear_tanh' is not one of its choices"]),
    (lambda r: r["architecture"].pop("predictor.layer4.op"), ["missing choice(s) for predictor.layer4.op"]),
    (lambda r: r.update(framework="simclr") or r["space"].update(framework="simclr"),  # simsiam's labels
     ["label 'predictor.layer1.op' is not in the nasiam space for simclr", "another framework or head space"]),
    (lambda r: r["space"].update(head_space="mlp"), ["is not in the mlp space for simsiam"]),
    (lambda r: r.update(framework="dino") or r["space"].update(framework="dino"),
     ["framework 'dino', which this package lacks"]),
    (lambda r: r["space"].update(framework="moco"), ["framework 'simsiam' disagrees with space.framework 'moco'"]),
    (lambda r: r.update(format_version=9), ["made by a newer version of this package"]),
    (lambda r: r.pop("space"), ["not an architecture file"]),
])
def test_bad_architecture_files(tmp_path, capsys, change, expected):
    path = tmp_path / "arch.json"
    if change == "malformed":
        path.write_text('{"space": {"framework": "simsiam",\n')
    else:
        arch_file(path, change)
    out = tmp_path / "out"
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(path), "--output-dir", str(out)],
                   capsys, tmp_path, expected)
    assert not out.exists()


# --- checkpoints and output directories ----------------------------------------------------------
@pytest.fixture
def tiny_cfg():
    from experiments.core.validation import load_config

    def make(**extra):
        return load_config(CONFIG, {**TINY, **extra})
    return make


def test_model_file_from_another_architecture(tmp_path, capsys, tiny_cfg):
    from experiments.core.records import build_fixed

    record = json.loads(SHIPPED.read_text())
    network, _ = build_fixed(record, tiny_cfg())
    other = dict(record["architecture"], **{"projector.layer1.op": "identity"})  # a layer with weights gone
    space = dict(record["space"], backbone="resnet18", backbone_width=0.0625, head_width=0.0625)
    model = tmp_path / "model.pt"
    torch.save({"space": space, "architecture": other, "state_dict": network.state_dict()}, model)
    assert_refused(["evaluate", "--config", CONFIG, *sets(), "--checkpoint", str(model)], capsys, tmp_path,
                   ["weights do not fit the architecture", "Unexpected key(s)"])
    model.write_bytes(b"not a checkpoint")
    assert_refused(["evaluate", "--config", CONFIG, "--checkpoint", str(model)], capsys, tmp_path,
                   ["not a model file of this package"])


def _claimed_dir(out: Path, cfg, job: str, extra=None) -> None:
    """An output directory as a run of ``cfg`` leaves it (run.json), without training."""
    from experiments.core.run_dir import open_run

    with open_run(out, cfg, job, (), extra, log_fn=lambda line: None):
        pass


def test_resume_with_another_config_is_refused(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "out"
    _claimed_dir(out, tiny_cfg(), "search")
    assert_refused(["search", "--config", CONFIG, *sets(**{"search.epochs": 3}), "--output-dir", str(out)],
                   capsys, out, ["holds a search run with another config", "search.epochs 3 here, 2 there",
                                 "pass --overwrite (discards it)"])  # a refused resume names --overwrite
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED), "--output-dir", str(out)],
                   capsys, out, ["holds a search run, not a retrain run"])


def test_resume_with_another_architecture_is_refused(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "out"
    record = json.loads(SHIPPED.read_text())
    other = dict(record["architecture"], **{"projector.layer1.op": "identity"})
    _claimed_dir(out, tiny_cfg(), "retrain", {"space": record["space"], "architecture": other})
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED), "--output-dir", str(out)],
                   capsys, out, ["holds a retrain run with another config",
                                 "architecture.projector.layer1.op 'linear_relu' here, 'identity' there"])


def test_checkpoint_from_another_run_is_refused(tmp_path, capsys, tiny_cfg):
    from experiments.core.files import atomic_torch_save

    out = tmp_path / "out"
    record = json.loads(SHIPPED.read_text())
    _claimed_dir(out, tiny_cfg(), "retrain", {"space": {k: record["space"][k] for k in ("framework", "head_space")},
                                              "architecture": record["architecture"]})
    last = out / "checkpoints" / "last.ckpt"
    atomic_torch_save({"epoch": 0, "state_dict": {}, "callbacks": {"RunState": {"format": 1, "fingerprint": "0" * 16}}},
                      last)
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED), "--output-dir", str(out)],
                   capsys, out, [str(last), "comes from a run with another architecture", "pass --overwrite to start over"])
    last.write_bytes(b"\x00garbage")
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED), "--output-dir", str(out)],
                   capsys, out, [str(last), "cannot load checkpoint", "pass --overwrite to start over"])


def test_finished_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "best_architecture.json").write_text("{}")
    assert_refused(["search", "--config", CONFIG, *sets(), "--output-dir", str(out)], capsys, tmp_path,
                   ["best_architecture.json exists: this run is finished", "--overwrite"])


# --- the same, as real processes -----------------------------------------------------------------
def test_cli_subprocesses_exit_2_with_one_error_line(tmp_path):
    path = arch_file(tmp_path / "arch.json", _set_op("projector.layer1.op", "linear_tanh"))
    cases = {
        "config": (["search", "--config", CONFIG, "--set", "search.epoch=3"], "did you mean 'epochs'"),
        "architecture": (["retrain", "--config", CONFIG, *sets(), "--arch", str(path)], "is not one of its choices"),
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(name):
        argv, _ = cases[name]
        out = tmp_path / f"out-{name}"
        proc = subprocess.run([sys.executable, "-m", "experiments", *argv, "--output-dir", str(out)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        return name, proc, out

    before = snapshot(tmp_path)
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(run, cases))
    for name, proc, out in results:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert len(lines) == 1 and cases[name][1] in lines[0], (name, lines)
        assert not out.exists()
    assert snapshot(tmp_path) == before


def test_directory_in_use_by_another_run(tmp_path, capsys, tiny_cfg):
    from experiments.core.run_dir import open_run

    out = tmp_path / "out"
    with open_run(out, tiny_cfg(), "search", ("best_architecture.json",), log_fn=lambda line: None):
        assert_refused(["search", "--config", CONFIG, *sets(), "--output-dir", str(out)], capsys, out,
                       [f"{out} is in use by another run (pid {os.getpid()})", "choose another --output-dir"])


# --- issue 23: every bad input one line, and an existing finished run untouched -----------------
@pytest.fixture
def finished_run(tmp_path):
    """A finished search's directory beside the test's own: no refusal may change a byte of it."""
    done = tmp_path / "finished"
    (done / "checkpoints").mkdir(parents=True)
    (done / "logs").mkdir()
    (done / "run.json").write_text(json.dumps({"job": "search", "fingerprint": "0123456789abcdef", "config": {}}))
    (done / "status.json").write_text(json.dumps({"state": "finished", "job": "search"}))
    (done / "best_architecture.json").write_text(SHIPPED.read_text())
    (done / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (done / "logs" / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    return done


BACKBONE_SPACE = {"backbone": "macro", "backbone_width": 0.0625, "head_width": 0.0625, "backbone_options": {}}


@pytest.mark.parametrize("space, expected", [
    ({"backbone_width": "wide"}, "space.backbone_width must be a number in (0, 16], got 'wide'"),
    ({"backbone_width": None}, "space.backbone_width must be a number in (0, 16], got None"),
    ({"head_width": "0.5"}, "space.head_width must be a number in (0, 16], got '0.5'"),
    ({"head_width": None}, "space.head_width must be a number in (0, 16], got None"),
    ({"backbone_options": [1, 2]}, "space.backbone_options must be a mapping"),
    ({"backbone_options": "plan=cifar"}, "space.backbone_options must be a mapping"),
    ({"backbone": 7}, "space.backbone must be a backbone name"),
    ({"num_classes": "ten"}, "space.num_classes must be an integer from 1 to 100000"),
    ({"backbone_width": 1e6}, "space.backbone_width must be a number in (0, 16], got 1000000.0"),
])
def test_architecture_space_of_the_wrong_type(tmp_path, capsys, finished_run, space, expected):
    path = arch_file(tmp_path / "arch.json", lambda r: r["space"].update({**BACKBONE_SPACE, **space}))
    out = tmp_path / "out"
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(path), "--output-dir", str(out)],
                   capsys, tmp_path, [str(path), expected])
    assert not out.exists()
    # the same space inside a model file, read by evaluate --checkpoint
    model = tmp_path / "model.pt"
    record = json.loads(path.read_text())
    torch.save({"space": record["space"], "architecture": record["architecture"], "state_dict": {}}, model)
    before = snapshot(tmp_path)
    rc, lines = run_main(["evaluate", "--config", CONFIG, *sets(), "--checkpoint", str(model)], capsys)
    assert rc == 2 and len(lines) == 1 and str(model) in lines[0], lines
    assert snapshot(tmp_path) == before


def test_retrain_refuses_a_config_of_another_framework(tmp_path, capsys, finished_run):
    wcl = str(ROOT / "configs" / "digits_wcl.yml")
    out = tmp_path / "out"
    for extra in ([], ["--set", "framework_options={}"]):  # with its options, and with none: never a silent SimSiam
        assert_refused(["retrain", "--config", wcl, *sets(), *extra, "--arch", str(SHIPPED), "--output-dir", str(out)],
                       capsys, tmp_path, ["is a simsiam architecture but the config is for wcl"])
    assert not out.exists()


@pytest.mark.parametrize("options, expected", [
    ("{plan: [[1, 2], [3, 4]]}", "unknown channel plan [[1, 2], [3, 4]]"),
    ("{ops: null}", "macro operations must be a list of operation names, got None"),
    ("{ops: mb3_k3}", "macro operations must be a list of operation names, got 'mb3_k3'"),
    ("{ops: [1, 2]}", "macro operations must be a list of operation names"),
])
def test_backbone_options_of_the_wrong_type(tmp_path, capsys, finished_run, options, expected):
    out = tmp_path / "out"
    argv = ["backbone-search", "--config", str(ROOT / "configs" / "digits_backbone_spos.yml"), *sets(),
            "--set", "model.backbone=macro", "--set", f"model.backbone_options={options}", "--output-dir", str(out)]
    assert_refused(argv, capsys, tmp_path, ["error: model: ", expected])
    assert not out.exists()


def _nni_config(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "nni_configs" / "darts_simsiam.yml").read_text())
    raw["trialCodeDirectory"] = str(ROOT)
    raw["trialCommand"] = "python -m experiments search --nni --config configs/digits_simsiam.yml"
    raw.update(changes)
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def trial_python(monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "0"])
def test_check_refuses_a_port_out_of_range(tmp_path, capsys, trial_python, finished_run, port):
    assert_refused(["check", str(_nni_config(tmp_path)), "--port", port], capsys, tmp_path,
                   [f"--port {port}: a port is 1 to 65535"])


@pytest.mark.parametrize("entry, expected", [
    ({"_type": "randint", "_value": ["a", "b"]}, "randint needs a list of 2 numbers, got ['a', 'b']"),
    ({"_type": "randint", "_value": [5, 5]}, "randint needs [lower, upper) integers with lower < upper"),
    ({"_type": "randint", "_value": [1.5, 4]}, "randint needs [lower, upper) integers"),
    ({"_type": "choice", "_value": 5}, "choice needs a non-empty list of values, got 5"),
    ({"_type": "choice", "_value": []}, "choice needs a non-empty list of values, got []"),
    ({"_type": "uniform", "_value": [0.1]}, "uniform needs a list of 2 numbers"),
    ({"_type": "uniform", "_value": [0.5, 0.1]}, "uniform needs low <= high"),
    ({"_type": "loguniform", "_value": [0, 0.1]}, "loguniform needs low <= high and low > 0"),
    ({"_type": "quniform", "_value": [0.1, 0.5, 0]}, "quniform's q must be > 0"),
    ({"_type": "normal", "_value": [0.1, -1]}, "normal's sigma must be > 0"),
])
def test_check_refuses_a_search_space_entry_nni_lets_through(tmp_path, capsys, trial_python, finished_run,
                                                             entry, expected):
    path = _nni_config(tmp_path, searchSpace={"optim.lr": entry})
    assert_refused(["check", str(path), "--port", "8080"], capsys, tmp_path, [f"searchSpace.optim.lr: {expected}"])


@pytest.mark.parametrize("kind", ["file", "under_file", "not_writable"])
def test_output_dir_that_cannot_be_one(tmp_path, capsys, monkeypatch, finished_run, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"file": blocker, "under_file": blocker / "run", "not_writable": tmp_path / "locked" / "run"}[kind]
    expected = {"file": f"--output-dir {blocker} is a file, not a directory",
                "under_file": f"lies under {blocker}, which is a file",
                "not_writable": f"{tmp_path / 'locked'} is not writable"}[kind]
    if kind == "not_writable":  # tests run as root, whom chmod does not stop: the kernel's answer is patched in
        (tmp_path / "locked").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "locked"
                            else real_access(p, mode, **kw))
    for argv in (["search", "--config", CONFIG, *sets()],
                 ["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED)]):
        assert_refused([*argv, "--output-dir", str(out)], capsys, tmp_path, [expected])


def test_empty_output_dir_is_refused_not_read_as_the_configs(tmp_path, capsys, monkeypatch, finished_run):
    """``--output-dir "$OUT"`` with OUT unset: argparse's one line and 2, not a run in the config's directory."""
    monkeypatch.chdir(tmp_path)  # where the config's relative output_dir would be made
    before = snapshot(tmp_path)
    for argv in (["search", "--config", CONFIG, *sets()], ["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED)]):
        rc, lines = run_main([*argv, "--output-dir", " "], capsys)
        assert rc == 2 and lines == [
            f"error: {argv[0]}: argument --output-dir: must be a path (not empty, no NUL character) "
            f"(see python -m experiments {argv[0]} --help)"], lines
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, expected", [
    ([], "error: the following arguments are required: JOB (see python -m experiments --help)"),
    (["serch"], "error: argument JOB: invalid choice: 'serch' (choose from 'search', "),
    (["retrain", "--arch"], "error: retrain: argument --arch: expected one argument (see python -m experiments "
                            "retrain --help)"),
    (["check", "x.yml", "--port", "http"], "error: check: argument --port: invalid int value: 'http'"),
    (["check"], "error: check: the following arguments are required: nni_config"),
    (["search", "--no-such-flag"], "error: unrecognized arguments: --no-such-flag"),
])
def test_argparse_errors_are_one_line_and_exit_2_without_a_usage_block(tmp_path, capsys, monkeypatch, argv,
                                                                       expected):
    from experiments.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert "usage:" not in err[0] and not list(tmp_path.iterdir())


def test_an_nnictl_trial_command_that_argparse_refuses_is_one_line_naming_the_trial_command(tmp_path):
    from experiments.core.errors import ConfigError
    from experiments.jobs.check import trial_arguments

    with pytest.raises(ConfigError) as refused:
        trial_arguments("python -m experiments search --nni --epochs 3", {})
    assert str(refused.value) == "trialCommand: unrecognized arguments: --epochs 3 (see python -m experiments --help)"


@pytest.mark.parametrize("flag", ["--config", "--arch", "--checkpoint"])
def test_a_path_that_is_empty_or_a_directory_is_named_so(tmp_path, capsys, finished_run, flag):
    job = ["evaluate", "--config", CONFIG] if flag == "--checkpoint" else \
        ["retrain", "--config", CONFIG, "--arch", str(SHIPPED), "--output-dir", str(tmp_path / "out")]
    what = {"--config": "config file", "--arch": "architecture file", "--checkpoint": "checkpoint"}[flag]
    empty = "error: retrain: --arch is required (except with --nni, where the tuner gives the architecture)" \
        if flag == "--arch" else f"error: {what}: an empty path was given"
    for value, expected in (("", empty),
                            (str(tmp_path), f"error: {what} {str(tmp_path)!r} is a directory, not a file")):
        argv = [a for a in job if a not in (flag, dict(zip(job, job[1:])).get(flag))] + [flag, value]
        rc, lines = run_main(argv, capsys)
        assert rc == 2 and lines == [expected], lines
    assert not (tmp_path / "out").exists()


def test_output_dir_on_a_read_only_file_system(tmp_path, capsys, finished_run):
    """A real read-only mount (tmpfs, remounted ro), where the machine lets a test mount one."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "kept.txt").write_text("kept")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        assert_refused(["search", "--config", CONFIG, *sets(), "--output-dir", str(mount / "run")], capsys, tmp_path,
                       [f"{mount} is not writable"])
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.parametrize("setting, expected", [
    ("trainer.accelerator=gpu", "trainer.accelerator: gpu asked for, but this machine has no GPU"),
    ("trainer.accelerator=cuda", "trainer.accelerator: cuda asked for, but this machine has no GPU"),
    ("trainer.accelerator=mps", "trainer.accelerator: mps asked for, but this machine has no Apple GPU"),
    ("trainer.devices=[3]", "trainer.devices: [3] are GPU indices, but the run is on the CPU"),
    ("trainer.devices=-1", "trainer.devices: -1 (every GPU) asked for, but the run is on the CPU"),
])
def test_trainer_that_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, capsys, finished_run,
                                                                               setting, expected):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--set", setting, "--arch", str(SHIPPED),
                    "--output-dir", str(out)], capsys, tmp_path, [expected])
    assert not out.exists()  # so the corrected command is not refused as "another config"


def test_trainer_devices_beyond_the_gpus_there_are(monkeypatch, tiny_cfg):
    from experiments.core.machine import check_trainer
    from experiments.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_trainer(tiny_cfg(**{"trainer.accelerator": "gpu", "trainer.devices": [0, 1]}))
    check_trainer(tiny_cfg(**{"trainer.accelerator": "auto", "trainer.devices": 2}))
    with pytest.raises(ConfigError, match=r"asks for device 3, but this machine has 2 GPU\(s\) \(indices 0 to 1\)"):
        check_trainer(tiny_cfg(**{"trainer.accelerator": "gpu", "trainer.devices": [3]}))
    with pytest.raises(ConfigError, match="asks for device 2"):
        check_trainer(tiny_cfg(**{"trainer.accelerator": "auto", "trainer.devices": 3}))


def test_overwrite_refuses_the_directory_of_another_job(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "search-run"
    _claimed_dir(out, tiny_cfg(), "search")
    for name in ("logs", "tensorboard", "nni", "checkpoints"):
        (out / name).mkdir(exist_ok=True)
        (out / name / "kept").write_text(name)
    (out / "best_architecture.json").write_text(SHIPPED.read_text())
    assert_refused(["retrain", "--overwrite", "--config", CONFIG, *sets(), "--arch", str(SHIPPED),
                    "--output-dir", str(out)], capsys, out, ["holds a search run, not a retrain run",
                                                             "choose another --output-dir"])


def test_a_refused_overwrite_leaves_the_other_runs_lock_as_it_was(tmp_path, capsys, tiny_cfg):
    """The lock names the pid of the run that made the directory; a refused claim does not sign it."""
    out = tmp_path / "search-run"
    _claimed_dir(out, tiny_cfg(), "search")
    (out / ".lock").write_text("424242")  # the search's own process, not this one
    assert_refused(["retrain", "--overwrite", "--config", CONFIG, *sets(), "--arch", str(SHIPPED),
                    "--output-dir", str(out)], capsys, out, ["holds a search run, not a retrain run"])
    assert_refused(["search", "--config", CONFIG, *sets(**{"search.epochs": 3}), "--output-dir", str(out)],
                   capsys, out, ["holds a search run with another config"])
    assert (out / ".lock").read_text() == "424242"


@pytest.mark.parametrize("record", ["{not json", '{"config": {}}', ""])
def test_an_unreadable_run_record_is_a_foreign_claim_that_overwrite_does_not_clear(tmp_path, capsys, record):
    out = tmp_path / "out"
    for name in ("checkpoints", "logs"):
        (out / name).mkdir(parents=True)
        (out / name / "kept").write_text(name)
    (out / "run.json").write_text(record)
    (out / ".lock").write_text("424242")
    for job in (["search"], ["retrain", "--arch", str(SHIPPED)]):
        for overwrite in ([], ["--overwrite"]):
            assert_refused([*job, *overwrite, "--config", CONFIG, *sets(), "--output-dir", str(out)], capsys, out,
                           ["run.json is unreadable, so what made", "choose another --output-dir"])
            _, lines = run_main([*job, *overwrite, "--config", CONFIG, *sets(), "--output-dir", str(out)], capsys)
            assert "--overwrite" not in lines[0], lines  # it would not help: the claim stays foreign


def test_a_difference_of_configs_lists_real_differences_only(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "out"
    _claimed_dir(out, tiny_cfg(), "search")
    assert "created" in json.loads((out / "run.json").read_text())
    changed = {"search.epochs": 3, "optim.lr": 0.01, "seed": 7}
    assert_refused(["search", "--config", CONFIG, *sets(**changed), "--output-dir", str(out)], capsys, out,
                   ["(optim.lr 0.01 here, 0.06 there; search.epochs 3 here, 2 there; seed 7 here, 0 there);"])
    rc, lines = run_main(["search", "--config", CONFIG, *sets(**changed), "--output-dir", str(out)], capsys)
    assert "created" not in lines[0] and "more" not in lines[0], lines  # three differences, and only those


def test_unsafe_checkpoint_is_refused_in_a_whole_sentence_without_weights_only_advice(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "out"
    record = json.loads(SHIPPED.read_text())
    _claimed_dir(out, tiny_cfg(), "retrain", {"space": {k: record["space"][k] for k in ("framework", "head_space")},
                                              "architecture": record["architecture"]})
    last = out / "checkpoints" / "last.ckpt"
    last.parent.mkdir(exist_ok=True)
    torch.save({"epoch": 0, "an object": Path("x")}, last)  # a pickle of a class: weights_only refuses it
    before = snapshot(out)
    rc, lines = run_main(["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED), "--output-dir", str(out)],
                         capsys)
    assert rc == 2 and len(lines) == 1, lines
    line = lines[0]
    assert "it holds more than tensors, so it is not safe to load" in line and "PosixPath" in line, line
    assert "weights_only" not in line and "add_safe_globals" not in line, line
    assert line.endswith("pass --overwrite to start over or choose another --output-dir"), line
    assert snapshot(out) == before


@pytest.mark.parametrize("extra, expected", [
    ({}, ["data.batch_size: 128 is larger than a training split of 64 images; lower it"]),
    ({"trainer.strategy": "ddp", "trainer.devices": 2, "data.train_subset": 256},
     ["a training split of 128 images (64 per process of 2)"]),
])
def test_backbone_search_split_without_a_full_batch_is_refused_before_anything_is_written(
        tmp_path, capsys, extra, expected):
    out = tmp_path / "out"
    overrides = {"data.train_subset": 128, "data.batch_size": 128, "search.epochs": 1,
                 "trainer.accelerator": "cpu", **extra}
    argv = ["backbone-search", "--config", str(ROOT / "configs" / "digits_backbone_mctnas.yml"),
            "--output-dir", str(out)]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    assert_refused(argv, capsys, tmp_path, expected)
    assert not out.exists()


def test_prunes_start_line_states_the_finetune_epochs_it_was_given(tmp_path, capsys, monkeypatch):
    """``--finetune-epochs 3`` with a config of 1 training epoch: the start line says 3 (printed at the claim)."""
    from experiments.core import run_dir
    from experiments.jobs import prune

    seen = {}

    def claimed_then_stopped(cfg, checkpoint, out, method, target, quantity, finetune_epochs, **kwargs):
        seen["epochs"] = finetune_epochs
        run_dir._announce()  # what the claim does once every check passed
        raise run_dir.ConfigError("stopped after the claim")

    monkeypatch.setattr(prune, "run_prune", claimed_then_stopped)
    for given, said in (([], 1), (["--finetune-epochs", "3"], 3)):
        rc, printed, lines = run_printed(["prune", "--config", CONFIG, *sets(), "--checkpoint", "model.pt",
                                          "--flops", "0.5", *given, "--output-dir", str(tmp_path / "out")], capsys)
        assert rc == 2 and seen["epochs"] == said, lines
        assert printed.startswith("prune: simsiam on digits, architecture model.pt, ") and \
            f", {said} epochs, " in printed, printed


def _vit_record() -> dict:
    from experiments.core.assembly import build_space
    from experiments.core.validation import load_config
    from experiments.core.records import space_record
    from search_spaces.cost import exported_values

    cfg = load_config(ROOT / "configs" / "digits_backbone_vitas.yml", {})
    architecture = {label: exported_values(m)[0] for label, m in build_space(cfg).simplify().items()}
    return json.loads(json.dumps({"format_version": 1, "kind": "backbone_search", "space": space_record(cfg),
                                  "architecture": architecture}))  # plain JSON values, as a record file holds


def test_an_architecture_of_another_backbone_space_is_refused_naming_both(tmp_path, capsys, finished_run):
    """A ViT architecture with a nas_bench_macro config: retrain and evaluate refuse, naming both spaces."""
    macro = str(ROOT / "configs" / "digits_backbone_mctnas.yml")
    record = _vit_record()
    arch = tmp_path / "vit.json"
    arch.write_text(json.dumps(record))
    out = tmp_path / "out"
    expected = ["is an architecture of the vit backbone space, but the config is for the nas_bench_macro backbone "
                "space", "use a config for the vit space"]
    assert_refused(["retrain", "--config", macro, "--arch", str(arch), "--output-dir", str(out)], capsys, tmp_path,
                   [str(arch), *expected])
    assert not out.exists()
    model = tmp_path / "vit.pt"
    torch.save({"space": record["space"], "architecture": record["architecture"], "state_dict": {}}, model)
    assert_refused(["evaluate", "--config", macro, "--checkpoint", str(model)], capsys, tmp_path,
                   [str(model), *expected])
    # heads on a fixed ResNet under a backbone space's config: both named too, not a missing label
    assert_refused(["retrain", "--config", macro, "--arch", str(SHIPPED), "--output-dir", str(out)], capsys,
                   tmp_path, ["'nasiam' heads on a fixed ResNet backbone", "nas_bench_macro backbone space"])


def test_check_applies_the_jobs_budget_check_to_every_max_flops_choice(tmp_path, capsys, trial_python, finished_run):
    """A max_flops choice below the smallest network would make that trial exit 2: check refuses it (and passes
    the choices above it)."""
    raw = yaml.safe_load((ROOT / "nni_configs" / "spos_backbone_simsiam.yml").read_text())
    raw["trialCodeDirectory"] = str(ROOT)
    raw["trialCommand"] = ("python -m experiments backbone-search --nni --config configs/digits_backbone_spos.yml "
                           "--set trainer.progress_bar=false")
    path = tmp_path / "exp.yml"
    for choices, refused in (([2.5e5, 4e5], False), ([1000, 2.5e5], True)):
        raw["searchSpace"]["backbone_search.max_flops"] = {"_type": "choice", "_value": choices}
        path.write_text(yaml.safe_dump(raw))
        if refused:
            assert_refused(["check", str(path), "--port", "8080"], capsys, tmp_path,
                           ["searchSpace.backbone_search.max_flops = 1000: backbone_search.max_flops: 1000 is below "
                            "the smallest network of space nas_bench_macro (40,448 FLOPs at 8x8)"])
        else:
            from experiments.jobs.check import check

            assert any("every choice and range end accepted" in note for note in check(path, None))
