"""SIGTERM under Lightning DDP (two CPU processes, gloo): a true status, exit 143, the last good
checkpoint kept, and a resume that continues.

The signal reaches rank zero only (``kill <pid>`` of the run; nnictl's SIGINT to the trial
process is the same case), after batch 1 of epoch 2: the ranks must agree to stop before the
same batch, or rank one would wait in the next gradient all-reduce until gloo's timeout. The
helper ``tests/ddp_interrupt.py`` runs the CLI; Lightning re-runs it for rank one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import ddp_env

ROOT = Path(__file__).resolve().parents[1]


def run_ddp(out: Path, *signal_at: int) -> tuple[int, list[str], str]:
    """(exit status of rank zero, the ``error:`` lines on stderr, all output); returns once every rank has ended.

    Rank one writes into the same pipes, so reading them to the end waits for it too."""
    env = ddp_env()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_interrupt.py"), str(out),
                             *map(str, signal_at)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started: rank zero and rank one
        proc.communicate()
        raise
    return proc.returncode, [line for line in stderr.splitlines() if "error:" in line], stdout + stderr


def test_sigterm_to_rank_zero_stops_both_ranks_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    rc, errors, output = run_ddp(out, 1, 0)  # after batch 1 of epoch 2 (of 2), on rank zero only
    last = out / "checkpoints" / "last.ckpt"
    assert rc == 143, output[-3000:]
    assert errors == [f"error: interrupted by SIGTERM; the last epoch's checkpoint {last} is kept; run the same "
                      f"command again to resume"], output[-3000:]  # one line: rank one says nothing
    assert "Traceback" not in output, output[-3000:]  # rank one stopped with rank zero, it did not crash
    assert "GLOBAL_RANK: 1" not in output and (out / "logs" / "run.rank1.log").is_file()  # its chatter: its log
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["reason"] and status["checkpoint"] == str(last)
    state = torch.load(last, weights_only=True)["callbacks"]["RunState"]
    assert state["epoch"] == 0 and not state["mid_epoch"]  # epoch 1's checkpoint, the last good one
    assert not (out / "retrain_results.json").exists()

    rc, errors, output = run_ddp(out)  # the same command, no signal
    assert rc == 0 and errors == [], output[-3000:]
    assert f"resuming the retrain from {last} (epoch 1 done)" in output
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    result = json.loads((out / "retrain_results.json").read_text())
    assert [r["epoch"] for r in result["history"]] == [1, 2]  # epoch 1 from the first run, epoch 2 from this one
    assert output.count("results: ") == 1  # rank zero alone evaluates and writes
