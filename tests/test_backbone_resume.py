"""The backbone search owns its output directory like the other jobs: lock, run.json, status.json,
exact resume after SIGKILL, refusal of a changed config, --overwrite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pause_at_batch import is_paused
from tests.test_faults_resume import checkpoint_state, finish, wait_for

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
TINY = {
    "search.epochs": EPOCHS, "data.batch_size": 32, "data.train_subset": 256, "data.test_subset": 100,
    "model.backbone_width": 0.125, "model.head_width": 0.0625, "evaluation.knn_k": 10,
    "evaluation.linear_epochs": 5, "backbone_search.trials": 6, "backbone_search.strategy_options.population": 4,
    "backbone_search.strategy_options.tournament": 2, "backbone_search.score_images": 64,
    "backbone_search.bn_batches": 2,
    "backbone_search.max_flops": 60000, "trainer.progress_bar": False, "trainer.accelerator": "cpu",
}


def command(out: Path, **extra) -> list[str]:
    sets = [arg for key, value in {**TINY, **extra}.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "experiments", "backbone-search", "--config", "configs/digits_backbone_spos.yml",
            *sets, "--output-dir", str(out)]


def start(out: Path, pause_after: tuple[int, int] | None = None, **extra) -> subprocess.Popen:
    """Start the search; with ``pause_after=(epoch, batch)`` it stops itself (SIGSTOP) after that batch."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = command(out, **extra)
    if pause_after is not None:
        cmd = [sys.executable, "-m", "tests.pause_at_batch", *map(str, pause_after), "--", *cmd[3:]]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(out: Path) -> dict:
    return json.loads((out / "best_architecture.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("backbone")
    a_dir, b_dir = base / "a", base / "b"
    a = start(a_dir)
    b = start(b_dir, pause_after=(2, 1))  # stops itself after the second batch of its third epoch
    wait_for(lambda: is_paused(b.pid), b, what="B's pause in its third epoch")
    b.send_signal(signal.SIGKILL)
    b.wait(timeout=60)
    killed_status = json.loads((b_dir / "status.json").read_text())
    killed_epoch = checkpoint_state(b_dir)["epoch"]
    a_rc, _, a_err = finish(a)
    assert a_rc == 0, a_err[-2000:]
    resumed = subprocess.run(command(b_dir), cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                             capture_output=True, text=True, timeout=600)
    return {"a": a_dir, "b": b_dir, "killed_status": killed_status, "killed_epoch": killed_epoch,
            "resumed": resumed}


def test_killed_backbone_search_resumes_to_the_same_architecture(runs):
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the backbone-search" in resumed.stdout
    assert runs["killed_status"]["state"] == "running" and runs["killed_epoch"] == 1
    a, b = result(runs["a"]), result(runs["b"])
    assert b["architecture"] == a["architecture"]
    assert [e["score"] for e in b["evolution"]] == pytest.approx([e["score"] for e in a["evolution"]], abs=1e-6)
    assert [e["architecture"] for e in b["evolution"]] == [e["architecture"] for e in a["evolution"]]
    assert json.loads((runs["b"] / "status.json").read_text())["state"] == "finished"
    assert json.loads((runs["b"] / "run.json").read_text())["job"] == "backbone-search"


def test_finished_backbone_search_is_refused_then_replaced_with_overwrite(runs):
    before = (runs["a"] / "best_architecture.json").read_bytes()
    refused = subprocess.run(command(runs["a"]), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error:")
    assert "this run is finished" in refused.stderr and "--overwrite" in refused.stderr
    assert (runs["a"] / "best_architecture.json").read_bytes() == before


def test_backbone_search_refuses_another_config_on_its_directory(runs, tmp_path):
    out = tmp_path / "changed"
    out.mkdir()
    for name in ("run.json",):  # an unfinished run of the reference config
        (out / name).write_bytes((runs["a"] / name).read_bytes())
    changed = subprocess.run(command(out, **{"backbone_search.max_flops": 70000}), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "another config" in changed.stderr and "backbone_search.max_flops" in changed.stderr
    assert (out / "run.json").read_bytes() == (runs["a"] / "run.json").read_bytes()
