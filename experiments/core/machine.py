"""What this machine has, checked against the config before a job writes anything."""
from __future__ import annotations

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
