"""What the benchmark scripts share: configs, timers, peak memory, the table and the JSON record."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()  # a command-line entry: patch NNI before it is imported

import torch  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "nni"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # the tables are the output
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

# The ImageFolder copy of CIFAR-10 beside the project (../shared/data, see its README.md);
# a git worktree one level deeper finds it one folder further up.
CIFAR10 = next((p / "shared" / "data" / "cifar10" for p in (ROOT.parent, ROOT.parent.parent)
                if (p / "shared" / "data" / "cifar10" / "train").is_dir()), ROOT.parent / "shared" / "data" / "cifar10")
RESULTS = ROOT / "runs" / "benchmarks"


def common_arguments(parser: argparse.ArgumentParser, width: float = 0.25, batch_size: int = 128) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when present, else CPU")
    parser.add_argument("--dataset", default="auto", choices=("auto", "cifar10", "digits"),
                        help="auto: CIFAR-10 when --cifar10 is present, else digits upscaled to 32 px")
    parser.add_argument("--cifar10", default=str(CIFAR10), help="CIFAR-10 as an ImageFolder (train/, test/)")
    parser.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet34", "resnet50"))
    parser.add_argument("--width", type=float, default=width, help="backbone width multiplier (1.0: 512 features)")
    parser.add_argument("--head-width", type=float, default=None, help="head width multiplier (default: --width)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loader workers (default: 0 on CPU, 8 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the package's thread policy, experiments/core/machine.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the results (default: runs/benchmarks/)")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    cifar = Path(args.cifar10)
    if args.dataset == "auto":
        args.dataset = "cifar10" if (cifar / "train").is_dir() else "digits"
    if args.dataset == "cifar10" and not (cifar / "train").is_dir():
        raise SystemExit(f"error: --dataset cifar10 needs {cifar}/train (an ImageFolder copy of CIFAR-10)")
    if args.head_width is None:
        args.head_width = args.width
    if args.workers is None:
        args.workers = 8 if args.device == "cuda" else 0
    if not args.threads:  # what a job would take here (batched views: no loader workers)
        from experiments.core.machine import choose_thread_policy, usable_cores

        args.threads = choose_thread_policy(None, 0, True, usable_cores(), os.environ.get("OMP_NUM_THREADS")).threads
    torch.set_num_threads(args.threads)
    return args


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


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or this process's peak resident set on CPU (Linux).

    ``start_mib`` is the same measure at the block's start (allocated CUDA memory, or the
    resident set): in a process that ran something before, ``mib - start_mib`` is what the
    block itself added, ``mib`` also counts what earlier work left resident.
    """

    def __init__(self, device: str):
        self.device = device
        self.mib: Optional[float] = None
        self.start_mib: Optional[float] = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mib = torch.cuda.memory_allocated() / 2 ** 20
        else:
            try:  # "5" resets the process's peak RSS (VmHWM) to its current RSS
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.start_mib = _status_mib("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mib = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            self.mib = _vm_hwm_mib()
        return False

    @property
    def added_mib(self) -> Optional[float]:
        return None if self.mib is None or self.start_mib is None else self.mib - self.start_mib


def _status_mib(field: str) -> Optional[float]:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _vm_hwm_mib() -> Optional[float]:
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    from experiments.core.records import versions

    info = versions()
    info.update({"device": args.device, "torch_threads": torch.get_num_threads(),
                 "load_average": list(os.getloadavg())})
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def report(name: str, title: str, columns: list[str], rows: list[dict], args: argparse.Namespace,
           summary: Optional[dict] = None, notes: Optional[list[str]] = None) -> Path:
    """Print the rows as a rich table and write them, with the machine, as JSON."""
    from rich.console import Console
    from rich.table import Table

    from experiments.core.files import write_json_atomic

    info = machine(args)
    table = Table(title=title, caption=f"{info.get('cpu', info['machine'])}; {info['cuda'] or 'no CUDA'}; "
                                         f"torch {info['torch']}; load {info['load_average'][0]:.1f}")
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file keeps every column
    console.print(table)
    for key, value in (summary or {}).items():
        console.print(f"{key}: {_fmt(value)}")
    for note in notes or []:
        console.print(note)
    path = Path(args.output) if args.output else RESULTS / f"{name}-{args.device}.json"
    write_json_atomic(path, {
        "benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks." + name + " " + " ".join(sys.argv[1:]),
        "arguments": vars(args), "machine": info, "rows": rows, "summary": summary or {}, "notes": notes or [],
    })
    console.print(f"written: {path}")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_between_markers(path: Path, text: str, begin: str, end: str, title: str = "") -> None:
    """Put ``text`` between the page's ``begin`` and ``end`` markers, keeping the hand-written text around them
    (a page without them gets them appended; a missing page starts with ``title``)."""
    from experiments.core.files import write_text_atomic

    page = path.read_text() if path.is_file() else ""
    if begin in page and end in page:
        before, rest = page.split(begin, 1)
        after = rest.split(end, 1)[1]
    else:
        before, after = (page + "\n" if page else (f"{title}\n\n" if title else "")), "\n"
    write_text_atomic(path, f"{before}{begin}\n{text}\n{end}{after}")
