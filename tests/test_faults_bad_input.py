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


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    from experiments.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("error:")]


def assert_refused(argv, capsys, watched: Path, expected: list[str]):
    before = snapshot(watched)
    rc, lines = run_main(argv, capsys)
    assert rc == 2, lines
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(watched) == before, "a refused run changed its directory"


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("search.epoch=3", ["search.epoch: unknown field", "did you mean 'epochs'"]),
    ("data.batch_size=abc", ["data.batch_size: must be an integer, got 'abc'"]),
    ("optim.lr=-1", ["optim.lr: must be > 0, got -1.0"]),
    ("optim.lr=.nan", ["optim.lr: must be a finite number"]),
    ("seed=99999999999", ["seed: must be between 0 and 4294967295"]),
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
    from experiments.core.config import load_config

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
    from experiments.core.checkpointing import open_run

    with open_run(out, cfg, job, (), extra, log_fn=lambda line: None):
        pass


def test_resume_with_another_config_is_refused(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "out"
    _claimed_dir(out, tiny_cfg(), "search")
    assert_refused(["search", "--config", CONFIG, *sets(**{"search.epochs": 3}), "--output-dir", str(out)],
                   capsys, out, ["holds a search run with another config", "search.epochs 3 here, 2 there"])
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
                   capsys, out, [str(last), "comes from a run with another architecture"])
    last.write_bytes(b"\x00garbage")
    assert_refused(["retrain", "--config", CONFIG, *sets(), "--arch", str(SHIPPED), "--output-dir", str(out)],
                   capsys, out, [str(last), "cannot load checkpoint"])


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
    from experiments.core.checkpointing import open_run

    out = tmp_path / "out"
    with open_run(out, tiny_cfg(), "search", ("best_architecture.json",), log_fn=lambda line: None):
        assert_refused(["search", "--config", CONFIG, *sets(), "--output-dir", str(out)], capsys, out,
                       [f"{out} is in use by another run (pid {os.getpid()})", "choose another --output-dir"])
