"""Shared fixtures: tiny configs that train in seconds on a 2-core CPU."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()  # the suite's entry, as the command line's: patch NNI before any test imports it

# In-process searches leave NNI's log handlers on pytest's capture streams, and NNI logs again at
# exit, after pytest closed them: keep logging from printing its own tracebacks then.
logging.raiseExceptions = False

SHARED_DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    """A loopback port nothing listens on now (tests never take 8080)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env() -> dict:
    """The environment of a command that starts a two-process DDP run on loopback (gloo, one thread each)."""
    import os

    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
               PL_DISABLE_FORK="1")
    env.pop("LOCAL_RANK", None)  # a rank's variable from an outer launcher would make this process a rank
    return env


def tiny_overrides(out: Path, **extra) -> dict:
    """A digits run small enough for a test: narrow nets, few epochs, no progress bar."""
    base = {
        "output_dir": str(out),
        "data.batch_size": 64,
        "data.train_subset": 512,
        "data.test_subset": 200,
        "model.backbone_width": 0.125,
        "model.head_width": 0.0625,
        "search.epochs": 2,
        "search.warmup_epochs": 0,
        "train.epochs": 1,
        "evaluation.knn_k": 20,
        "evaluation.linear_epochs": 20,
        "trainer.progress_bar": False,
        "trainer.accelerator": "cpu",
    }
    base.update(extra)
    return base


@pytest.fixture
def tiny_config(tmp_path):
    from experiments.core.validation import load_config

    def make(**extra):
        return load_config(ROOT / "configs" / "bench_digits_simsiam.yml", tiny_overrides(tmp_path / "run", **extra))

    return make


@pytest.fixture(scope="session")
def cifar10_root():
    path = SHARED_DATA / "cifar10"
    if not (path / "train").is_dir():
        pytest.skip("../shared/data/cifar10 is not present")
    return path


class OptimisedWeights:
    """The parameters each SSL module handed its optimiser (one entry per ``configure_optimizers``
    call, in order), each with its value at that moment."""

    def __init__(self):
        self.runs: list[dict] = []

    def names(self, prefix: str = "", run: int = -1) -> list[str]:
        """The watched parameters under ``prefix``, architecture weights left out."""
        chosen = [n for n in self.runs[run] if n.startswith(prefix) and "_arch_alpha" not in n]
        assert chosen, f"no parameter {prefix}* reached the optimiser"
        return chosen

    def moved(self, prefix: str = "", run: int = -1) -> list[str]:
        """Those of ``names`` that training changed since."""
        return [n for n in self.names(prefix, run)
                if not torch.equal(self.runs[run][n][0].detach(), self.runs[run][n][1])]


@pytest.fixture
def optimised_weights(monkeypatch):
    """Watch every ``SSLFramework.configure_optimizers``: did the run's optimiser really move its weights?"""
    from evaluators.base import SSLFramework

    watch, original = OptimisedWeights(), SSLFramework.configure_optimizers

    def recording(self):
        config = original(self)
        names = {id(p): n for n, p in self.model.named_parameters()}
        watch.runs.append({names[id(p)]: (p, p.detach().clone())
                           for group in config["optimizer"].param_groups for p in group["params"]})
        return config

    monkeypatch.setattr(SSLFramework, "configure_optimizers", recording)
    return watch
