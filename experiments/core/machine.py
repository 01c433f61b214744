"""What this machine has, checked against the config before a job writes anything."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from experiments.core.config import Config
from experiments.core.errors import ConfigError


def check_trainer(cfg: Config) -> None:
    """The trainer's accelerator and devices exist on this machine.

    Checked before a job claims its output directory: Lightning finds out only when the trainer
    starts, after ``run.json`` is written, and the corrected command would then meet "another config".
    """
    t = cfg.trainer
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if t.accelerator in ("gpu", "cuda") and not gpus and not (t.accelerator == "gpu" and mps):
        raise ConfigError(f"trainer.accelerator: {t.accelerator} asked for, but this machine has no GPU that torch "
                          f"can use; set trainer.accelerator=auto or cpu")
    if t.accelerator == "mps" and not mps:
        raise ConfigError("trainer.accelerator: mps asked for, but this machine has no Apple GPU that torch can use; "
                          "set trainer.accelerator=auto or cpu")
    if t.accelerator == "cpu" or (t.accelerator == "auto" and not gpus and not mps):
        if isinstance(t.devices, list):
            raise ConfigError(f"trainer.devices: {t.devices} are GPU indices, but the run is on the CPU; give a number "
                              f"of processes (e.g. 1)")
        if t.devices == -1:  # Lightning: "devices selected with CPUAccelerator should be an int > 0"
            raise ConfigError("trainer.devices: -1 (every GPU) asked for, but the run is on the CPU; give a number "
                              "of processes (e.g. 1)")
        return
    available = gpus if gpus else 1  # MPS is one device
    wanted = t.devices if isinstance(t.devices, list) else \
        list(range(t.devices)) if isinstance(t.devices, int) and t.devices > 0 else []
    missing = [d for d in wanted if d >= available]
    if missing:
        raise ConfigError(f"trainer.devices: {t.devices} asks for device {missing[0]}, but this machine has "
                          f"{available} GPU(s) (indices 0 to {available - 1})")


# --- How many CPU threads and loader processes a job takes -------------------------------------------------------

@dataclass(frozen=True)
class ThreadPolicy:
    """torch's intra-op threads in the job's process and the data loader's worker processes (one thread each:
    torch sets that in every worker), with the reason, for the start line and ``logs/run.log``."""

    threads: int
    workers: int
    cores: int
    reason: str

    def short(self) -> str:
        workers = f", {self.workers} loader worker{'s' * (self.workers != 1)}" if self.workers else ""
        return f"{self.threads} thread{'s' * (self.threads != 1)}{workers}"

    def describe(self) -> str:
        return f"threads: {self.short()} on {self.cores} usable core{'s' * (self.cores != 1)} ({self.reason})"


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: a cluster's cgroup or ``taskset``), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _omp_threads(value: Optional[str]) -> Optional[int]:
    """``OMP_NUM_THREADS`` as OpenMP reads it (``4``, or ``4,2``: the outer level); None if unset or bad."""
    try:
        threads = int((value or "").split(",")[0])
    except ValueError:
        return None
    return threads if threads >= 1 else None


def choose_thread_policy(threads: Optional[int], workers: Optional[int], batched_views: bool, cores: int,
                         omp_num_threads: Optional[str] = None, processes: int = 1) -> ThreadPolicy:
    """The thread policy for a job, from the config's ``trainer.threads`` and ``data.num_workers`` (None: choose),
    whether the views are made in the training step (``batched_views``), the usable cores, ``OMP_NUM_THREADS``
    and the job's processes on this CPU (DDP on the CPU: each process takes its part of the cores).

    Chosen: one core is left free (and the workers' cores). On a shared machine (a cluster
    node, a laptop, nnictl trials side by side) a neighbour then costs this job about its
    share: each of torch's parallel regions waits for its slowest thread, and a thread that
    shares its core with a busy process stalls them all (measured by benchmarks/fair_share.py,
    docs/performance.md). A user's ``OMP_NUM_THREADS`` is honoured. The loader runs in the job's
    process unless ``data.num_workers`` says otherwise: batched views (the default) leave it
    nothing to do but slice a uint8 tensor. Set workers (one thread each) take their cores
    from the threads' share.
    """
    cores = max(1, cores)
    omp = _omp_threads(omp_num_threads)
    if workers is None:  # worker processes would only slice a uint8 tensor; per-image views: data.num_workers
        workers = 0
        workers_reason = "views made in the training step" if batched_views else "per-image views in the job's process"
    else:
        workers_reason = "data.num_workers"
    if threads is not None:
        reason = "trainer.threads"
    elif omp is not None:
        threads, reason = omp, "OMP_NUM_THREADS"
    else:
        threads = max(1, (cores - 1) // max(1, processes) - workers)
        reason = "one core left free for other processes" + (f", {processes} DDP processes" if processes > 1 else "")
    return ThreadPolicy(threads, workers, cores, f"{reason}; {workers_reason}")


def makes_batched_views(cfg: Config) -> bool:
    """The views are made in the training step (``data.batched_augment``, for a framework that takes them)."""
    from evaluators import FRAMEWORKS

    return cfg.data.batched_augment and FRAMEWORKS[cfg.framework].batched_views


def thread_policy(cfg: Config) -> ThreadPolicy:
    """:func:`choose_thread_policy` for ``cfg`` on this machine, in this environment."""
    t = cfg.trainer
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    return choose_thread_policy(t.threads, cfg.data.num_workers, makes_batched_views(cfg), usable_cores(),
                                os.environ.get("OMP_NUM_THREADS"), ddp_processes(cfg) if on_cpu else 1)


def ddp_processes(cfg: Config) -> int:
    """How many training processes the trainer starts on this node (1 unless a DDP strategy)."""
    t = cfg.trainer
    if t.strategy == "auto":
        return 1
    if isinstance(t.devices, list):
        return len(t.devices)
    return t.devices if isinstance(t.devices, int) and t.devices > 0 else 1


def apply_thread_policy(cfg: Config, log: bool = True) -> ThreadPolicy:
    """Set torch's intra-op threads by the config's policy (every job, when it claims its run directory).

    ``log=False`` leaves the note to :func:`log_thread_policy`, once the run's log is open: a run
    refused before that must not write a line into another run's directory.
    """
    policy = thread_policy(cfg)
    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
    if log:
        log_thread_policy(policy)
    return policy


def log_thread_policy(policy: ThreadPolicy) -> None:
    logging.getLogger("ssl_nas.machine").info(policy.describe())
