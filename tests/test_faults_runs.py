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


def diverging(monkeypatch) -> None:
    """SimSiam's loss turns NaN, as a run that diverged gives it (a learning rate beyond optim.lr's range would)."""
    from evaluators.simsiam import SimSiam

    loss = SimSiam.ssl_loss
    monkeypatch.setattr(SimSiam, "ssl_loss", lambda self, views, arch_step: loss(self, views, arch_step) * float("nan"))


def test_nan_loss_fails_the_run_with_the_reason(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    diverging(monkeypatch)
    rc, lines = run_main(["search", "--config", CONFIG, *sets(**{"search.epochs": 2, "search.gradient_clip": "null"}),
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
    from experiments.core.validation import load_config

    cfg = load_config(CONFIG, TINY)
    space = space_for({"space": {"framework": "byol", "head_space": "nasiam"}, "architecture": {}}, cfg)
    arch = {label: ("linear_relu" if "linear_relu" in m.values else m.values[0]) for label, m in space.simplify().items()}
    path = tmp_path_factory.mktemp("arch") / "byol.json"
    path.write_text(json.dumps({"format_version": 1, "kind": "ssl_head_search", "framework": "byol",
                                "space": {"framework": "byol", "head_space": "nasiam"}, "architecture": arch}))
    return path


def signal_retrain_at(monkeypatch, epoch: int, batch: int, signals: tuple, rank: int | None = None):
    """Every retrain built from now on sends itself ``signals`` after batch ``batch`` of epoch ``epoch`` (0-based);
    under DDP only the process of global rank ``rank``, when given (as ``kill`` of one pid would).

    Returns the unpatched ``build_trainer``, to put back for a resumed run."""
    from pytorch_lightning import Callback

    from experiments.jobs import retrain

    class SignalAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch_out, batch_idx):
            if trainer.current_epoch == epoch and batch_idx == batch and rank in (None, trainer.global_rank):
                for signum in signals:
                    os.kill(os.getpid(), signum)

    build_trainer = retrain.build_trainer
    monkeypatch.setattr(retrain, "build_trainer", lambda c, e, o, callbacks, **kw: build_trainer(
        c, e, o, [*callbacks, SignalAt()], **kw))
    return build_trainer


def test_retrain_interrupted_mid_epoch_resumes_exactly(tmp_path, byol_arch, monkeypatch):
    from experiments.jobs import retrain
    from experiments.core.records import read_architecture
    from experiments.core.validation import load_config
    from experiments.core.errors import RunInterrupted

    overrides = {**TINY, "train.epochs": 2, "framework": "byol", "train.collapse_threshold": 0.0}
    record = read_architecture(byol_arch)
    quiet = dict(log_fn=lambda line: None)
    reference = tmp_path / "reference"
    retrain.run_retrain(load_config(CONFIG, overrides), record, reference, **quiet)

    build_trainer = signal_retrain_at(monkeypatch, epoch=1, batch=1, signals=(signal.SIGTERM,))
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


# --- issue 23: a fault mid-run ends with a true status and one line ------------------------------
SHIPPED = ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json"


def _retrain(out: Path, epochs: int = 2) -> list[str]:
    return ["retrain", "--config", CONFIG, *sets(**{"train.epochs": epochs, "train.collapse_threshold": 0.0}),
            "--arch", str(SHIPPED), "--output-dir", str(out)]


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.tmp"))


def test_disk_full_at_a_checkpoint_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    """ENOSPC from a monkeypatched writer (honest: the same OSError the kernel gives), half-way
    through the second epoch's checkpoint."""
    import errno

    from experiments.core import files

    out = tmp_path / "out"
    saves = []
    real = files.atomic_write

    def full_at_the_second(path, write, binary=False, durable=False):
        if Path(path).name == "last.ckpt":
            saves.append(path)
            if len(saves) == 2:  # half a checkpoint is written, then the disk is full
                return real(path, lambda fh: (fh.write(b"half a checkpoint"),
                                              _raise(OSError(errno.ENOSPC, "No space left on device"))),
                            binary, durable)
        return real(path, write, binary, durable)

    monkeypatch.setattr(files, "atomic_write", full_at_the_second)
    rc, lines = run_main(_retrain(out), capsys)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0] == f"error: no space left on device under {out}", lines
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == f"no space left on device under {out}"
    assert _temporaries(out) == []
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RunState"]
    assert state["epoch"] == 0 and not state["mid_epoch"]  # epoch 1's checkpoint survived the failed save
    assert not (out / "retrain_results.json").exists()


def test_disk_full_at_the_first_save_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    import errno

    from experiments.core import files

    out = tmp_path / "out"
    real = files.atomic_write

    def full(path, write, binary=False, durable=False):
        if Path(path).name == "last.ckpt":
            return real(path, lambda fh: (fh.write(b"x"), _raise(OSError(errno.ENOSPC, "No space left on device"))),
                        binary, durable)
        return real(path, write, binary, durable)

    monkeypatch.setattr(files, "atomic_write", full)
    rc, lines = run_main(_retrain(out, epochs=1), capsys)
    assert rc == 1 and lines == [f"error: no space left on device under {out}"], lines
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert _temporaries(out) == [] and not (out / "checkpoints" / "last.ckpt").exists()


def _raise(err):
    raise err


def test_read_only_status_file_still_ends_in_one_line(tmp_path, capsys, monkeypatch):
    """The directory turns read-only mid-run (EROFS from the patched writer, root ignores chmod): the
    status cannot be written either, and the error line still says what happened."""
    import errno

    from experiments.core import files

    out = tmp_path / "out"
    real = files.atomic_write
    state = {"read_only": False}

    def writer(path, write, binary=False, durable=False):
        if Path(path).name == "last.ckpt":
            state["read_only"] = True
        if state["read_only"]:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, write, binary, durable)

    monkeypatch.setattr(files, "atomic_write", writer)
    rc, lines = run_main(_retrain(out, epochs=1), capsys)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0] == f"error: read-only file system under {out} ({out / 'checkpoints' / 'last.ckpt'})", lines
    assert json.loads((out / "status.json").read_text())["state"] == "running"  # written before; cannot change now
    assert _temporaries(out) == []


def test_sigterm_during_the_final_evaluation_is_a_true_interruption(tmp_path, capsys, monkeypatch):
    from experiments.jobs import retrain

    out = tmp_path / "out"
    real = retrain.downstream_metrics

    def evaluate_then_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain, "downstream_metrics", evaluate_then_terminated)
    rc, lines = run_main(_retrain(out, epochs=1), capsys)
    assert rc == 143 and lines == ["error: interrupted by SIGTERM; run the same command again to resume"], lines
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["reason"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the claim's handler went with the claim
    # the training had ended: the same command resumes from the final checkpoint and only evaluates
    monkeypatch.setattr(retrain, "downstream_metrics", real)
    rc, lines = run_main(_retrain(out, epochs=1), capsys)
    assert rc == 0, lines
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_a_second_ctrl_c_stops_at_once_with_130(tmp_path, capsys, monkeypatch):
    signal_retrain_at(monkeypatch, epoch=1, batch=0, signals=(signal.SIGINT, signal.SIGINT))
    out = tmp_path / "out"
    rc, lines = run_main(_retrain(out), capsys)
    assert rc == 130 and len(lines) == 1 and "stopped at once by a second SIGINT, without saving" in lines[0], lines
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and "second SIGINT" in status["reason"]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RunState"]
    assert state["epoch"] == 0 and not state["mid_epoch"]  # epoch 1's; nothing saved at the second signal


def test_a_mid_epoch_resume_says_which_epoch(tmp_path, capsys, monkeypatch):
    from experiments.jobs import retrain

    build_trainer = signal_retrain_at(monkeypatch, epoch=1, batch=1, signals=(signal.SIGTERM,))
    out = tmp_path / "out"
    rc, lines = run_main(_retrain(out), capsys)
    assert rc == 143 and "checkpoint saved" in lines[0], lines
    monkeypatch.setattr(retrain, "build_trainer", build_trainer)
    from experiments.cli import main

    assert main(_retrain(out)) == 0
    printed = capsys.readouterr().out
    assert f"resuming the retrain from {out / 'checkpoints' / 'last.ckpt'} (in epoch 2, after its batch 2)" in printed


def test_retrain_nan_hint_names_the_settings_retrain_reads(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    diverging(monkeypatch)
    rc, lines = run_main(["retrain", "--config", CONFIG, *sets(**{"train.epochs": 1}),
                          "--arch", str(SHIPPED), "--output-dir", str(out)], capsys)
    assert rc == 3 and len(lines) == 1 and "is nan at epoch 1" in lines[0], lines
    assert "lower optim.lr or raise optim.warmup_epochs" in lines[0] and "search.arch_lr" not in lines[0], lines


def test_sigterm_in_an_nnictl_trial_is_a_true_interruption_and_the_trial_resumes(tmp_path, capsys, monkeypatch):
    """``retrain --nni --arch`` as nnictl runs it (``as_nni_trial``: NNI's trial environment and a channel
    that records what would reach the manager), SIGTERM after batch 2 of epoch 2."""
    from experiments.cli import main
    from experiments.jobs import retrain
    from tests.test_nni_trial import as_nni_trial

    def trial_command(config, overrides, log_fn):
        return main(["retrain", "--nni", "--config", config, *[a for o in overrides for a in ("--set", o)],
                     "--arch", str(SHIPPED)])

    overrides = {**TINY, "train.epochs": 2, "train.collapse_threshold": 0.0}
    build_trainer = signal_retrain_at(monkeypatch, epoch=1, batch=1, signals=(signal.SIGTERM,))
    rc, channel = as_nni_trial(trial_command, "bench_digits_simsiam.yml", overrides, {}, tmp_path, monkeypatch)
    out = tmp_path / "trial"  # $NNI_OUTPUT_DIR
    last = out / "checkpoints" / "last.ckpt"
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 143 and errors == [f"error: interrupted by SIGTERM; checkpoint saved to {last}; run the same "
                                    f"command again to resume"], errors
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["checkpoint"] == str(last)
    state = torch.load(last, weights_only=True)["callbacks"]["RunState"]
    assert state["epoch"] == 1 and state["mid_epoch"] and state["batches_done"] == 2
    assert [kind for kind, *_ in channel.sent] == ["PERIODICAL"]  # epoch 1 reported; no final result

    monkeypatch.setattr(retrain, "build_trainer", build_trainer)
    rc, channel = as_nni_trial(trial_command, "bench_digits_simsiam.yml", overrides, {}, tmp_path, monkeypatch)
    assert rc == 0
    assert "resuming the retrain" in capsys.readouterr().out
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert [kind for kind, *_ in channel.sent] == ["PERIODICAL", "FINAL"]  # epoch 2, then the result
    result = json.loads((out / "retrain_results.json").read_text())
    assert channel.sent[-1][3]["default"] == pytest.approx(result["metrics"]["knn_top1"])


def test_a_trial_hands_a_failed_run_a_signal_and_a_failing_disk_to_the_cli():
    """Outside nnictl these end with their own line and status (3, 128 + signal, 1); a trial must not turn
    them into a traceback and 1."""
    from experiments.core.errors import NonFiniteLoss, OutputUnwritable, RunInterrupted
    from experiments.jobs.trial import guarded

    for err in (NonFiniteLoss("train/ssl_loss is nan"), RunInterrupted(signal.SIGTERM), OutputUnwritable("disk full")):
        with pytest.raises(type(err)):
            guarded(lambda: _raise(err))


def test_sigterm_in_the_last_batch_stops_before_the_evaluation(tmp_path, capsys, monkeypatch):
    from experiments.jobs import retrain

    build_trainer = signal_retrain_at(monkeypatch, epoch=0, batch=3, signals=(signal.SIGTERM,))  # 4 batches of 32
    out = tmp_path / "out"
    rc, lines = run_main(_retrain(out, epochs=1), capsys)
    assert rc == 143 and len(lines) == 1 and "interrupted by SIGTERM" in lines[0], lines
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RunState"]
    assert state["epoch"] == 0 and not state["mid_epoch"]  # the whole training is in the checkpoint
    assert not (out / "retrain_results.json").exists()  # the evaluation did not run
    monkeypatch.setattr(retrain, "build_trainer", build_trainer)
    rc, lines = run_main(_retrain(out, epochs=1), capsys)
    assert rc == 0 and lines == []
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
