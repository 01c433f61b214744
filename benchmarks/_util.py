"""What the benchmark scripts share: configs, timers, peak memory, the table and the JSON record."""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

from experiments import nni_compat

nni_compat.apply()  # a command-line entry: patch NNI before it is imported

from experiments.core.memory import PeakMemory  # noqa: E402,F401  (the benchmarks' import point)
from experiments.studies.kit import resolve_run_arguments, run_arguments  # noqa: E402

import torch  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "nni"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # the tables are the output
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "runs" / "benchmarks"
common_arguments, resolve = run_arguments, resolve_run_arguments  # the names every benchmark uses


def make_config(args: argparse.Namespace, train_images: int, **overrides: Any):
    """The benchmark config (configs/bench_digits_simsiam.yml) with the benchmark's dataset, network size, batch and device."""
    from experiments.core.validation import load_config

    values: dict[str, Any] = {
        "seed": args.seed,
        "data.batch_size": args.batch_size, "data.train_subset": train_images, "data.test_subset": 200,
        "data.num_workers": args.workers,
        "model.backbone": args.backbone, "model.backbone_width": args.width, "model.head_width": args.head_width,
        "trainer.accelerator": "gpu" if args.device == "cuda" else "cpu", "trainer.progress_bar": False,
        "evaluation.bank_subset": 200,
    }
    if args.dataset == "cifar10":
        values.update({"data.dataset": "imagefolder", "data.root": str(args.cifar10)})
    else:  # digits upscaled to CIFAR's 32 px, so the backbone does CIFAR-sized work
        values.update({"data.dataset": "digits", "data.image_size": 32})
    values.update(overrides)
    return load_config(ROOT / "configs" / "bench_digits_simsiam.yml", values)


def with_options(cfg, options: dict[str, Any]):
    """A copy of ``cfg`` with dotted fields replaced: ``with_options(cfg, {"data.batched_augment": True})``."""
    sections: dict[str, dict] = {}
    for key, value in options.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = value
    return replace(cfg, **{s: replace(getattr(cfg, s), **f) for s, f in sections.items()})


class StepTimer(Callback):
    """Wall and CPU seconds of the training steps after ``warmup`` (loading of those batches included)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start: Optional[tuple[float, float]] = None
        self.end: Optional[tuple[float, float]] = None
        self.steps = 0

    def _now(self, device) -> tuple[float, float]:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup - 1:
            self.start = self._now(pl_module.device)
        elif batch_idx >= self.warmup:
            self.end = self._now(pl_module.device)
            self.steps = batch_idx - self.warmup + 1

    def on_train_start(self, trainer, pl_module):
        if self.warmup == 0:
            self.start = self._now(pl_module.device)

    @property
    def wall(self) -> float:
        return self.end[0] - self.start[0]

    @property
    def cpu(self) -> float:
        return self.end[1] - self.start[1]


class EpochTimer(Callback):
    """Wall and CPU seconds of every training epoch (callbacks' own epoch-end work excluded: put it first)."""

    def __init__(self):
        self.epochs: list[tuple[float, float]] = []
        self._start = (0.0, 0.0)

    def _now(self, pl_module) -> tuple[float, float]:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter(), time.process_time()

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self._now(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        now = self._now(pl_module)
        self.epochs.append((now[0] - self._start[0], now[1] - self._start[1]))


def median(values: Iterable[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def run_measured(command: list[str], cwd: Path, poll_s: float = 0.1) -> tuple[int, str, Optional[float]]:
    """Run ``command``; its exit status, its stderr and its peak resident set in MiB.

    The peak is the child's own high-water mark (``VmHWM``), read every ``poll_s`` while it
    runs: ``wait4``'s ``ru_maxrss`` would report this (large) parent's resident set, which
    a forked child inherits as its starting maximum. ``VmHWM`` only grows, so the last
    reading misses at most what the child added in its last ``poll_s``.
    """
    peak = None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(poll_s)
        err.seek(0)
        return proc.returncode, err.read(), peak


def quiet_trainer(args, max_epochs: int, callbacks: list, **kwargs):
    """A bare NNI-traced Lightning trainer (no logger, no checkpoints, no progress bar)."""
    from nni.nas.evaluator.pytorch import Trainer

    return Trainer(max_epochs=max_epochs, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                   callbacks=callbacks, default_root_dir=tempfile.mkdtemp(prefix="bench-"), **kwargs)


def timed_training(args: argparse.Namespace, cfg, module, loader, steps: int, warmup: int,
                   network: torch.nn.Module) -> dict:
    """Train ``module`` for ``warmup`` untimed then ``steps`` timed steps: images/s, step time, peak memory."""
    timer = StepTimer(warmup)
    trainer = quiet_trainer(args, 1, [timer], precision=cfg.trainer.precision, limit_train_batches=warmup + steps)
    with PeakMemory(args.device) as memory:
        trainer.fit(module, train_dataloaders=loader)
    images = timer.steps * cfg.data.batch_size
    return {"images_per_s": images / timer.wall, "images_per_cpu_s": images / timer.cpu,
            "step_s": timer.wall / timer.steps, "peak_mib": memory.mib, "start_mib": memory.start_mib,
            "added_mib": memory.added_mib, "steps": timer.steps,
            "params_m": sum(p.numel() for p in network.parameters()) / 1e6}


def machine(args: argparse.Namespace) -> dict:
    from experiments.studies.kit import machine as described

    return {**described(), "device": args.device, "torch_threads": torch.get_num_threads()}


def report(name: str, title: str, columns: list[str], rows: list[dict], args: argparse.Namespace,
           summary: Optional[dict] = None, notes: Optional[list[str]] = None) -> Path:
    """Print the rows as a rich table and write them, with the machine, as JSON (runs/benchmarks/ or --output)."""
    from experiments.studies.kit import report as write_report

    path = Path(args.output) if args.output else RESULTS / f"{name}-{args.device}.json"
    return write_report(name, title, columns, rows, path, "python -m benchmarks." + name + " " + " ".join(sys.argv[1:]),
                        vars(args), machine(args), summary, notes)
