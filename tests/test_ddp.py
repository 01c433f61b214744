"""One search on two CPU processes through Lightning DDP (gloo): ranks agree, one JSON is written.

The search makes its views from uint8 batches (data.batched_augment), one random stream per rank.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]




@pytest.mark.parametrize("strategy", ["ddp"])
def test_darts_search_under_ddp_on_two_cpu_processes(tmp_path, strategy):
    out = tmp_path / "run"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
               PL_DISABLE_FORK="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_search.py"), str(out), strategy],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # one architecture JSON, from global rank zero
    written = list(tmp_path.rglob("best_architecture.json"))
    assert written == [out / "best_architecture.json"]
    record = json.loads(written[0].read_text())
    assert record["status"] in ("ok", "collapsed")

    # both ranks trained and held bitwise-equal architecture weights after every epoch
    rank0 = json.loads((tmp_path / "ranks" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ranks" / "rank1.json").read_text())
    assert len(rank0) == len(rank1) == 2
    assert rank0 == rank1
    assert record["probabilities"] == rank0[-1]
    # the search moved them away from the uniform start
    probs = [p for choice in rank0[-1].values() for p in choice.values()]
    assert max(probs) - min(probs) > 1e-3


def test_quirk20_gradient_sync_is_paused_only_under_ddp():
    from types import SimpleNamespace

    import torch

    from experiments.nni_compat import pause_ddp_gradient_sync

    assert pause_ddp_gradient_sync(None) is False  # no trainer: nothing to pause
    plain = SimpleNamespace(strategy=SimpleNamespace(model=torch.nn.Linear(2, 2)))
    assert pause_ddp_gradient_sync(plain) is False  # single process: the module is not wrapped


def test_learning_rate_scales_with_the_global_batch_under_ddp():
    from types import SimpleNamespace

    from evaluators import SimSiam
    from evaluators import FRAMEWORKS
    from search_spaces import SSLNetworkSpace

    module = SimSiam(lr=0.06, batch_size=128)
    module.set_model(SSLNetworkSpace(FRAMEWORKS["simsiam"].heads, "fixed", "resnet18", 0.125, 3, 0.0625).freeze({}))
    single = module.configure_optimizers()["optimizer"].param_groups[0]["lr"]
    module._trainer = SimpleNamespace(world_size=4)  # four processes of 128 images each
    four = module.configure_optimizers()["optimizer"].param_groups[0]["lr"]
    assert single == 0.06 * 128 / 256 and four == 4 * single
