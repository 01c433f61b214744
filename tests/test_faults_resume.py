"""Kill, interrupt and resume a real digits search through the CLI, and run two at once.

One module-scoped scenario (the processes run side by side to save time):
- A: an uninterrupted search (the reference);
- C: a claim of A's directory (as a second run of the same command would) while A runs:
  refused, nothing written (the CLI's answer to it is tested in test_faults_bad_input);
- B: the same search on another directory, SIGKILLed in the middle of its third epoch,
  then run again with the same command: it resumes and must end where A ended;
- T: the same with SIGTERM: exit status 143, one error line, status "interrupted".
An in-process GumbelDARTS search stopped by SIGINT at a known batch checks the mid-epoch
checkpoint and that resuming from it ends exactly where an uninterrupted run ends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.pause_at_batch import is_paused

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
TINY = {
    "search.epochs": EPOCHS, "search.warmup_epochs": 1, "search.collapse_threshold": 0.0,
    "model.backbone_width": 0.0625, "model.head_width": 0.0625,
    "data.train_subset": 256, "data.test_subset": 100, "data.batch_size": 32,
    "evaluation.linear_epochs": 5, "evaluation.bank_subset": 128, "evaluation.knn_k": 10,
    "trainer.progress_bar": False, "trainer.accelerator": "cpu",
}


def command(out: Path) -> list[str]:
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "experiments", "search", "--config", "configs/bench_digits_simsiam.yml", *sets,
            "--output-dir", str(out)]


def start(out: Path, pause_after: tuple[int, int] | None = None) -> subprocess.Popen:
    """Start the search; with ``pause_after=(epoch, batch)`` it stops itself (SIGSTOP) after that batch."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = command(out)
    if pause_after is not None:
        cmd = [sys.executable, "-m", "tests.pause_at_batch", *map(str, pause_after), "--", *cmd[3:]]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_state(out: Path) -> dict | None:
    path = out / "checkpoints" / "last.ckpt"
    try:
        return torch.load(path, weights_only=True)["callbacks"]["RunState"]
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return None


def wait_for(condition, proc: subprocess.Popen, timeout: float = 900.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 300.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def interrupt_mid_epoch(out: Path, signum: int, epochs_done: int = 2, batch: int = 1) -> tuple[int, str, str, dict]:
    """Start a search that pauses itself after batch ``batch`` of epoch ``epochs_done`` (from 0: the
    middle of the epoch after ``epochs_done`` finished ones), then signal it there.

    The signal waits for that pause, an event, so it lands after the same batch on any machine,
    however fast or busy.
    """
    proc = start(out, pause_after=(epochs_done, batch))
    wait_for(lambda: is_paused(proc.pid), proc, what=f"the pause after batch {batch} of epoch {epochs_done + 1}")
    saved = checkpoint_state(out)
    proc.send_signal(signum)
    if signum != signal.SIGKILL:
        proc.send_signal(signal.SIGCONT)  # a stopped process handles its other signals once it runs again
    rc, stdout, stderr = finish(proc)
    return rc, stdout, stderr, saved


def claim_while_running(out: Path, pid: int) -> dict:
    """Claim ``out`` here, as a second run would (same config), while process ``pid`` holds it."""
    from experiments.core.run_dir import open_run
    from experiments.core.errors import ConfigError
    from experiments.core.validation import load_config

    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml", {**TINY, "output_dir": str(out)})
    os.kill(pid, signal.SIGSTOP)  # paused, it keeps its lock however long this takes
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    try:
        with open_run(out, cfg, "search", ("best_architecture.json",), log_fn=lambda line: None):
            return {"refused": None}
    except ConfigError as err:
        return {"refused": str(err), "unchanged": before == sorted((p.name, p.stat().st_mtime_ns)
                                                                    for p in out.iterdir())}
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    a_dir, b_dir = base / "a", base / "b"
    a = start(a_dir)
    wait_for(lambda: (a_dir / "run.json").exists(), a, what="A to claim its directory")
    c_result = claim_while_running(a_dir, a.pid)  # a second run on A's directory while A runs
    b_rc, b_out, b_err, b_saved = interrupt_mid_epoch(b_dir, signal.SIGKILL)
    b_state_after_kill = checkpoint_state(b_dir)
    a_result = finish(a)
    b2 = finish(start(b_dir))
    t_dir = base / "t"
    t = start(t_dir)
    wait_for(lambda: checkpoint_state(t_dir) is not None, t, what="T's first checkpoint")
    t.send_signal(signal.SIGTERM)
    t_result = finish(t)
    return {"t_dir": t_dir, "t": t_result, "a_dir": a_dir, "b_dir": b_dir, "a": a_result, "c": c_result,
            "b_kill": (b_rc, b_out, b_err), "b_saved": b_saved, "b_after_kill": b_state_after_kill, "b2": b2}


def read(out: Path) -> dict:
    return json.loads((out / "best_architecture.json").read_text())


def test_uninterrupted_reference_finishes(scenario):
    rc, _, err = scenario["a"]
    assert rc == 0, err[-2000:]
    assert json.loads((scenario["a_dir"] / "status.json").read_text())["state"] == "finished"
    assert len(read(scenario["a_dir"])["history"]) == EPOCHS


def test_second_run_on_same_dir_is_refused(scenario):
    result = scenario["c"]
    assert result["refused"] is not None, "a second run was let into a directory in use"
    assert "in use by another run" in result["refused"] and "\n" not in result["refused"]
    assert result["unchanged"]  # the refused claim wrote nothing there


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(scenario):
    rc, _, _ = scenario["b_kill"]
    assert rc == -signal.SIGKILL
    # killed after the checkpoint of epoch 2 and before that of epoch 3
    assert scenario["b_saved"]["epoch"] == 1 and not scenario["b_saved"]["mid_epoch"]
    assert scenario["b_after_kill"]["epoch"] == 1
    rc, out, err = scenario["b2"]
    assert rc == 0, err[-3000:]
    assert "resuming the search" in out
    a, b = read(scenario["a_dir"]), read(scenario["b_dir"])
    assert a["architecture"] == b["architecture"]
    for label, probs in a["probabilities"].items():
        for choice, p in probs.items():
            assert b["probabilities"][label][choice] == pytest.approx(p, abs=1e-6)
    assert [r["epoch"] for r in b["history"]] == list(range(1, EPOCHS + 1))
    assert [r["ssl_loss"] for r in b["history"]] == pytest.approx([r["ssl_loss"] for r in a["history"]], abs=1e-6)
    assert b["metrics"]["knn_top1"] == pytest.approx(a["metrics"]["knn_top1"])


def test_sigterm_saves_and_exits_143(scenario):
    rc, _, err = scenario["t"]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    # saved at the stop, or (a signal between epochs) the epoch's own checkpoint is kept: the line names it
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0], lines
    assert f"checkpoint saved to {scenario['t_dir']}" in lines[0] or "the last epoch's checkpoint" in lines[0], lines
    status = json.loads((scenario["t_dir"] / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert checkpoint_state(scenario["t_dir"]) is not None
    assert not (scenario["t_dir"] / "best_architecture.json").exists()


class _SignalAt:
    """A Lightning callback that sends this process a signal after a given batch."""

    def __init__(self, epoch: int, batch: int, signum: int):
        from pytorch_lightning import Callback

        outer = self

        class Send(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.current_epoch == outer.epoch and batch_idx == outer.batch:
                    os.kill(os.getpid(), outer.signum)

        self.epoch, self.batch, self.signum = epoch, batch, signum
        self.callback = Send()


def test_sigint_mid_epoch_checkpoint_resumes_exactly_under_gumbel_darts(tmp_path, monkeypatch):
    """GumbelDARTS draws noise from the global RNG every step and anneals its temperature per
    epoch: a mid-epoch resume must restore both (see nni_compat quirk 23)."""
    from experiments.jobs import search
    from experiments.core.validation import load_config
    from experiments.core.errors import RunInterrupted

    torch.set_num_threads(1)
    overrides = {**TINY, "search.epochs": 2, "search.strategy": "gdarts", "data.train_subset": 192}
    quiet = dict(log_fn=lambda line: None)
    reference = search.run_search(load_config(ROOT / "configs" / "bench_digits_simsiam.yml", overrides),
                                  tmp_path / "reference", **quiet)
    out = tmp_path / "interrupted"
    build_trainer = search.build_trainer
    signal_at = _SignalAt(epoch=1, batch=1, signum=signal.SIGINT)
    monkeypatch.setattr(search, "build_trainer", lambda c, e, o, callbacks, **kw: build_trainer(
        c, e, o, [*callbacks, signal_at.callback], **kw))
    with pytest.raises(RunInterrupted) as info:
        search.run_search(load_config(ROOT / "configs" / "bench_digits_simsiam.yml", overrides), out, **quiet)
    assert info.value.exit_code == 128 + signal.SIGINT
    assert "interrupted by SIGINT" in str(info.value) and "checkpoint saved" in str(info.value)
    state = checkpoint_state(out)
    assert state["epoch"] == 1 and state["mid_epoch"] and state["batches_done"] == 2
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"

    monkeypatch.setattr(search, "build_trainer", build_trainer)
    record = search.run_search(load_config(ROOT / "configs" / "bench_digits_simsiam.yml", overrides), out, **quiet)
    assert record["architecture"] == reference["architecture"]
    assert [r["ssl_loss"] for r in record["history"]] == pytest.approx(
        [r["ssl_loss"] for r in reference["history"]], abs=1e-6)
    for label, probs in reference["probabilities"].items():
        for choice, p in probs.items():
            assert record["probabilities"][label][choice] == pytest.approx(p, abs=1e-6)
