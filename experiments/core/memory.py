"""Peak memory of a block of work: the CUDA allocator's peak, or this process's peak resident set on CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


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
            import torch

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
            import torch

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
