"""Real (tiny) runs that fail or stop: a NaN loss and a collapse end with exit status 3 and the
reason; a BYOL retrain interrupted mid-epoch resumes to exactly the uninterrupted weights
(momentum encoder included)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "bench_digits_simsiam.yml")
TINY = {"model.backbone_width": 0.0625, "model.head_width": 0.0625, "data.train_subset": 128,
        "data.test_subset": 100, "data.batch_size": 32, "search.warmup_epochs": 0,
        "evaluation.linear_epochs": 5, "evaluation.bank_subset": 128, "evaluation.knn_k": 10,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # as the CLI tests' subprocesses (OMP_NUM_THREADS=1): the same kernels, the same numbers


def sets(**extra) -> list[str]:
    return [arg for key, value in {**TINY, **extra}.items() for arg in ("--set", f"{key}={value}")]


def run_main(argv, capsys):
    from experiments.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("error:")]


def test_nan_loss_fails_the_run_with_the_reason(tmp_path, capsys):
    out = tmp_path / "out"
    rc, lines = run_main(["search", "--config", CONFIG, *sets(**{"search.epochs": 2, "optim.lr": "1.0e+30",
                                                                 "search.gradient_clip": "null"}),
                          "--output-dir", str(out)], capsys)
    assert rc == 3 and len(lines) == 1, lines
    assert "train/ssl_loss is nan at epoch 1" in lines[0] and "diverged" in lines[0]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "is nan" in status["reason"]
    assert not (out / "best_architecture.json").exists() and not (out / "checkpoints" / "last.ckpt").exists()


def test_collapse_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    # A threshold no tiny run reaches: two monitored epochs below it stop the run after epoch 2.
    rc, lines = run_main(["search", "--config", CONFIG, *sets(**{"search.epochs": 4, "search.collapse_threshold": 0.99,
                                                                 "evaluation.collapse_patience": 2}),
                          "--output-dir", str(out)], capsys)
    assert rc == 3 and len(lines) == 1, lines
    assert "representation collapsed" in lines[0] and "up to epoch 2" in lines[0]
    assert "search.collapse_threshold 0.99" in lines[0]
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RunState"]
    assert state["epoch"] == 0  # epoch 1's checkpoint; the collapsed epoch 2 was not saved
    assert not (out / "best_architecture.json").exists()


@pytest.fixture(scope="module")
def byol_arch(tmp_path_factory):
    from experiments.core.records import space_for
    from experiments.core.config import load_config

    cfg = load_config(CONFIG, TINY)
    space = space_for({"space": {"framework": "byol", "head_space": "nasiam"}, "architecture": {}}, cfg)
    arch = {label: ("linear_relu" if "linear_relu" in m.values else m.values[0]) for label, m in space.simplify().items()}
    path = tmp_path_factory.mktemp("arch") / "byol.json"
    path.write_text(json.dumps({"format_version": 1, "kind": "ssl_head_search", "framework": "byol",
                                "space": {"framework": "byol", "head_space": "nasiam"}, "architecture": arch}))
    return path


def test_retrain_interrupted_mid_epoch_resumes_exactly(tmp_path, byol_arch, monkeypatch):
    from pytorch_lightning import Callback

    from experiments.jobs import retrain
    from experiments.core.records import read_architecture
    from experiments.core.config import load_config
    from experiments.core.errors import RunInterrupted

    overrides = {**TINY, "train.epochs": 2, "framework": "byol", "train.collapse_threshold": 0.0}
    record = read_architecture(byol_arch)
    quiet = dict(log_fn=lambda line: None)
    reference = tmp_path / "reference"
    retrain.run_retrain(load_config(CONFIG, overrides), record, reference, **quiet)

    class SignalAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    build_trainer = retrain.build_trainer
    monkeypatch.setattr(retrain, "build_trainer", lambda c, e, o, callbacks, **kw: build_trainer(
        c, e, o, [*callbacks, SignalAt()], **kw))
    out = tmp_path / "interrupted"
    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM; checkpoint saved"):
        retrain.run_retrain(load_config(CONFIG, overrides), record, out, **quiet)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["callbacks"]["RunState"]["mid_epoch"] and state["callbacks"]["RunState"]["batches_done"] == 2
    assert any(".momentum_backbone." in k for k in state["state_dict"])  # the EMA target travels too
    assert state["weight_steps"] == 4 + 2  # the module's own checkpoint hook: 4 batches of epoch 1, 2 of epoch 2
    monkeypatch.setattr(retrain, "build_trainer", build_trainer)
    retrain.run_retrain(load_config(CONFIG, overrides), record, out, **quiet)

    a = torch.load(reference / "retrain_model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "retrain_model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    ra = json.loads((reference / "retrain_results.json").read_text())
    rb = json.loads((out / "retrain_results.json").read_text())
    assert [r["ssl_loss"] for r in rb["history"]] == pytest.approx([r["ssl_loss"] for r in ra["history"]], abs=1e-6)
    assert (out / "logs" / "metrics.1.csv").is_file()  # the interrupted part of the CSV log is kept
