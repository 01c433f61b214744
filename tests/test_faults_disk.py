"""A real full disk: a small tmpfs mounted by the test (as root; skipped where mounting is not allowed).

Each job (a head search, a backbone search, a retrain, a prune) runs on the small disk, and the
disk fills for real just before its second checkpoint (a ballast file written until the kernel
says ENOSPC): the job ends with exit status 1 and one ``error:`` line naming the full disk, no
traceback, a status.json that says so, and the first checkpoint kept. Once the ballast is gone,
the same command resumes to exactly the result of a run that never stopped. The disk also turns
read-only between the two (``mount -o remount,ro``; the kernel refuses that while a run holds its
lock): the resume is refused in one line and nothing is written, and resumes once it is writable.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "bench_digits_simsiam.yml")
BACKBONE_CONFIG = str(ROOT / "configs" / "digits_backbone_spos.yml")
SHIPPED = ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json"
TINY = {"model.backbone_width": 0.0625, "model.head_width": 0.0625, "data.train_subset": 64,
        "data.test_subset": 40, "data.batch_size": 32, "search.warmup_epochs": 0, "search.epochs": 2,
        "train.epochs": 2, "train.collapse_threshold": 0.0, "search.collapse_threshold": 0.0,
        "evaluation.linear_epochs": 2, "evaluation.bank_subset": 64, "evaluation.knn_k": 5,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu"}
BACKBONE = {**TINY, "model.backbone_width": 0.125, "backbone_search.trials": 2, "backbone_search.population": 2,
            "backbone_search.tournament": 2, "backbone_search.score_images": 32, "backbone_search.bn_batches": 1}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # the reference and the resumed run use the same kernels


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@contextlib.contextmanager
def small_disk(where: Path, size: str = "7m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``where``, unmounted (lazily, should a file stay open) when the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"this machine does not let a test mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int = 16 << 10) -> Path:
    """Write a ballast file on ``disk`` until the kernel refuses a single byte more, then give back ``leave``
    bytes: a checkpoint then starts to be written and meets the full disk part-way, as in a real run."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
        fh.truncate(max(0, fh.tell() - leave))
    return ballast


def fill_before_checkpoint(monkeypatch, disk: Path, nth: int = 2, leave: int = 16 << 10) -> list:
    """The disk fills for real just before the ``nth`` write of ``last.ckpt`` (the write itself is the real one),
    all but ``leave`` bytes."""
    from experiments.core import files

    real, writes = files.atomic_write, []

    def writer(path, write, binary=False, durable=False):
        if Path(path).name == "last.ckpt":
            writes.append(path)
            if len(writes) == nth:
                fill(disk, leave)
        return real(path, write, binary, durable)

    monkeypatch.setattr(files, "atomic_write", writer)
    return writes


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from experiments.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), atol=1e-6), key


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """An untrained SimSiam ResNet-18 with fixed heads, saved as a retrain saves its model (what prune reads)."""
    from experiments.core.assembly import build_space
    from experiments.core.validation import load_config
    from experiments.core.records import new_record, space_record, write_results

    cfg = load_config(CONFIG, {**TINY, "model.head_space": "fixed"})
    torch.manual_seed(0)
    network = build_space(cfg).freeze({})
    directory = tmp_path_factory.mktemp("pretrained")
    write_results(directory, new_record("ssl_retrain", cfg, space_record(cfg), {}, {}, []), "base.json", network,
                  "base.pt")
    return directory / "base.pt"


def job(name: str, out: Path, pretrained: Path) -> tuple[list[str], str]:
    """The job's command and its model file."""
    if name == "search":
        return ["search", "--config", CONFIG, *sets(TINY), "--output-dir", str(out)], "search_model.pt"
    if name == "backbone-search":
        return ["backbone-search", "--config", BACKBONE_CONFIG, *sets(BACKBONE), "--output-dir", str(out)], \
            "search_model.pt"
    if name == "retrain":
        return ["retrain", "--config", CONFIG, *sets(TINY), "--arch", str(SHIPPED), "--output-dir", str(out)], \
            "retrain_model.pt"
    return ["prune", "--config", CONFIG, *sets({**TINY, "model.head_space": "fixed"}), "--checkpoint",
            str(pretrained), "--flops", "0.5", "--gate-epochs", "1", "--finetune-epochs", "2",
            "--output-dir", str(out)], "prune_model.pt"


@pytest.mark.parametrize("name, leave", [("search", 16 << 10), ("backbone-search", 16 << 10), ("retrain", 16 << 10),
                                         ("retrain", 0), ("prune", 16 << 10)])
def test_a_disk_that_fills_ends_the_job_in_one_line_and_the_same_command_resumes_exactly(
        tmp_path, capsys, monkeypatch, pretrained, name, leave):
    """``leave``: the bytes left when the checkpoint starts (0: not even status.json's temporary file fits)."""
    argv, model = job(name, tmp_path / "reference", pretrained)
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        argv, model = job(name, out, pretrained)
        writes = fill_before_checkpoint(monkeypatch, disk, leave=leave)
        rc, err = run_cli(argv, capsys)
        assert len(writes) == 2  # the first checkpoint was written, the second met the full disk
        assert rc == 1 and err.strip().splitlines() == [f"error: no space left on device under {out}"], err
        status = json.loads((out / "status.json").read_text())
        assert status["state"] == "failed" and status["reason"] == f"no space left on device under {out}", status
        state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RunState"]
        assert state["epoch"] == 0 and not state["mid_epoch"]  # the first epoch's checkpoint is kept
        assert not (out / model).exists() and not list(out.rglob(".*.tmp"))

        (disk / "ballast").unlink()  # space freed: the same command resumes
        monkeypatch.undo()
        torch.set_num_threads(1)
        rc, err = run_cli(argv, capsys)
        assert rc == 0, err
        assert json.loads((out / "status.json").read_text())["state"] == "finished"
        assert_same_weights(tmp_path / "reference" / model, out / model)


def test_a_read_only_remount_refuses_the_resume_in_one_line_then_it_resumes(tmp_path, capsys, monkeypatch,
                                                                          pretrained):
    argv, model = job("retrain", tmp_path / "reference", pretrained)
    assert run_cli(argv, capsys)[0] == 0
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        argv, model = job("retrain", out, pretrained)
        fill_before_checkpoint(monkeypatch, disk)
        assert run_cli(argv, capsys)[0] == 1
        monkeypatch.undo()
        torch.set_num_threads(1)
        (disk / "ballast").unlink()
        from experiments.core.run_log import open_run_log

        open_run_log(tmp_path / "elsewhere")  # this process's chatter leaves the disk (a CLI process has ended)
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if remounted.returncode:
            pytest.skip(f"the kernel does not remount this tmpfs read-only: {remounted.stderr.strip()}")
        before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        rc, err = run_cli(argv, capsys)
        assert rc == 2 and err.strip().splitlines() == [
            f"error: --output-dir {out}: {out} is not writable (permission denied or a read-only file system); "
            f"choose another --output-dir"], err
        assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        rc, err = run_cli(argv, capsys)
        assert rc == 0, err
        assert_same_weights(tmp_path / "reference" / model, out / model)


def test_a_checkpoint_on_a_full_disk_fails_with_the_kernels_error(tmp_path):
    """torch's zip writer may hide ENOSPC behind a RuntimeError (``unexpected pos``); the package serialises
    to memory first, so the write fails with the OSError the kernel gave, and leaves no temporary file."""
    from experiments.core.files import atomic_torch_save

    with small_disk(tmp_path / "disk", "1m") as disk:
        fill(disk)
        with pytest.raises(OSError) as full:
            atomic_torch_save({f"w{i}": torch.randn(10_000) for i in range(10)}, disk / "last.ckpt")
        assert full.value.errno == errno.ENOSPC and not list(disk.glob(".*.tmp"))


def test_the_run_log_on_a_full_disk_prints_no_logging_traceback(tmp_path, capsys, monkeypatch):
    import logging

    from experiments.core.run_log import RunLog

    monkeypatch.setattr(logging, "raiseExceptions", True)  # as in the CLI (the suite's conftest turns it off)
    with small_disk(tmp_path / "disk", "1m") as disk:
        handler = RunLog()
        handler.open(disk / "logs" / "run.log")
        fill(disk, leave=0)
        record = logging.LogRecord("nni", logging.INFO, __file__, 1, "x" * 20_000, None, None)
        handler.emit(record)  # the kernel refuses the write: the record is lost, the run goes on
        with contextlib.suppress(OSError):
            handler.stream.close()
    assert "Logging error" not in capsys.readouterr().err
