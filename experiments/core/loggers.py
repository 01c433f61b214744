"""The metrics loggers a run can write to, by the name ``trainer.logger`` gives: Lightning's own.

Every run keeps Lightning's CSV logger (``logs/metrics.csv``: the package and its tests read it);
``trainer.logger`` adds TensorBoard (the default), Weights & Biases or MLflow, or nothing more
(``csv``). W&B and MLflow are optional extras and default to what works without a server or a
network: W&B's offline mode (its files under the run directory, ``wandb sync`` uploads them
later) and an MLflow file store in the run directory (``mlruns/``; ``mlflow ui --backend-store-uri
runs/x/mlruns`` shows it). ``trainer.logger_options`` goes to the logger's constructor and
overrides those defaults (``tracking_uri``, ``experiment_name``; ``project``, ``offline``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass(frozen=True)
class LoggerKind:
    """A logger ``trainer.logger`` can name: the package it needs and how it is made for a run directory."""
    package: Optional[str]
    make: Callable[[Path, dict], object]
    install: str = ""

    def missing(self) -> Optional[str]:
        """Why this logger cannot run here (its package is not installed), or None."""
        if self.package and importlib.util.find_spec(self.package) is None:
            return f"needs the {self.package} package ({self.install})"
        return None


def _tensorboard(out: Path, options: dict):
    from pytorch_lightning.loggers import TensorBoardLogger

    return TensorBoardLogger(str(out), **{"name": "tensorboard", "version": "", **options})


def _wandb(out: Path, options: dict):
    import os

    from pytorch_lightning.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")  # its banner and sync hint would be terminal chatter

    logger = WandbLogger(**{"project": "ssl-nas", "name": out.name, "save_dir": str(out), "offline": True, **options})
    # Lightning 2.6 always hands wandb.init an ``anonymous`` key, which wandb 0.2x+ warns about on the
    # terminal however silent it is told to be: the key has no effect there, so it is not passed
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def _mlflow(out: Path, options: dict):
    import os

    from pytorch_lightning.loggers import MLFlowLogger

    # MLflow 3 keeps its file store for existing users only and refuses it unless told: a file
    # store needs no server and no database package (a ``tracking_uri`` option points elsewhere)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    return MLFlowLogger(**{"experiment_name": "ssl-nas", "run_name": out.name,
                           "tracking_uri": (out / "mlruns").resolve().as_uri(), **options})


LOGGERS = {
    "tensorboard": LoggerKind("tensorboard", _tensorboard, "in requirements.txt"),
    "csv": LoggerKind(None, lambda out, options: None),
    "wandb": LoggerKind("wandb", _wandb, "pip install wandb"),
    "mlflow": LoggerKind("mlflow", _mlflow, "pip install mlflow-skinny"),
}


def run_loggers(name: str, options: dict, out: Path) -> list:
    """Lightning loggers for a run in ``out``: the CSV one, then the one ``name`` adds (if any)."""
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(str(out), name="logs", version="")]
    kind = LOGGERS[name]
    if name == "tensorboard" and kind.missing():  # the default: without tensorboard, CSV alone
        return loggers
    try:
        extra = kind.make(Path(out), dict(options))
    except Exception as err:  # noqa: BLE001 - a bad option or store: one line, not the logger's traceback
        from experiments.core.errors import ConfigError, one_line

        raise ConfigError(f"trainer.logger: {name} could not start: {type(err).__name__}: {one_line(err)}") from None
    if extra is not None:
        loggers.append(extra)
    return loggers
