"""``trainer.logger``: the per-epoch metrics reach the logger chosen (CSV always; TensorBoard by
default; MLflow's local file store and W&B's offline mode where those extras are installed)."""
from __future__ import annotations

import csv
import glob
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_overrides

EPOCHS = 2


def search(out: Path, logger: str, **extra) -> subprocess.CompletedProcess:
    sets = [f"--set={k}={v}" for k, v in tiny_overrides(out, **{"search.epochs": EPOCHS, "trainer.logger": logger,
                                                                  **extra}).items()]
    return subprocess.run([sys.executable, "-m", "experiments", "search", "--config", "configs/digits_simsiam.yml",
                           *sets], cwd=ROOT, capture_output=True, text=True, timeout=600)


def csv_epochs(out: Path) -> list[float]:
    """The online kNN of each epoch as Lightning's CSV logger wrote it."""
    with open(out / "logs" / "metrics.csv") as f:
        return [float(row["monitor/knn_top1"]) for row in csv.DictReader(f) if row.get("monitor/knn_top1")]


def test_csv_logger_alone_records_every_epoch_and_no_tensorboard(tmp_path):
    out = tmp_path / "csv"
    proc = search(out, "csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(csv_epochs(out)) == EPOCHS
    assert not (out / "tensorboard").exists()  # the default's TensorBoard logger is not added


def test_tensorboard_is_the_default_logger(tiny_config, tmp_path):
    from experiments.core.loggers import run_loggers

    cfg = tiny_config()
    names = [type(logger).__name__ for logger in run_loggers(cfg.trainer.logger, cfg.trainer.logger_options, tmp_path)]
    assert cfg.trainer.logger == "tensorboard" and names == ["CSVLogger", "TensorBoardLogger"]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (an optional extra)")
def test_mlflow_file_store_records_the_same_per_epoch_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this reader too (the run sets it for itself)
    out = tmp_path / "run"
    proc = search(out, "mlflow")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mlflow" not in (proc.stdout + proc.stderr).replace(str(tmp_path), "").lower()  # none of its chatter
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "ssl-nas"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "monitor/knn_top1"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(csv_epochs(out))
    assert len(history) == EPOCHS


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (an optional extra)")
def test_wandb_offline_run_is_written_in_the_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = search(out, "wandb")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wandb" not in (proc.stdout + proc.stderr).replace(str(tmp_path), "")  # its banner stays off the terminal
    (run_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert b"monitor/knn_top1" in Path(run_file).read_bytes()  # the per-epoch metric went to W&B's log


def test_a_logger_whose_package_is_missing_is_refused_in_one_line(tmp_path, monkeypatch):
    from experiments.core import loggers
    from experiments.core.errors import ConfigError
    from experiments.core.validation import load_config

    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"^trainer.logger: mlflow needs the mlflow package \(pip install "):
        load_config(ROOT / "configs" / "digits_simsiam.yml", {"trainer.logger": "mlflow"})
    cfg = load_config(ROOT / "configs" / "digits_simsiam.yml", {})  # the default falls back to CSV alone
    assert [type(x).__name__ for x in loggers.run_loggers("tensorboard", {}, tmp_path)] == ["CSVLogger"]
    assert cfg.trainer.logger == "tensorboard"
    with pytest.raises(ConfigError, match="trainer.logger: .*unknown|trainer.logger: must be one of"):
        load_config(ROOT / "configs" / "digits_simsiam.yml", {"trainer.logger": "neptune"})


def test_a_logger_that_cannot_start_is_one_error_line(tmp_path, monkeypatch):
    from experiments.core import loggers
    from experiments.core.errors import ConfigError

    def refuse(out, options):
        raise TypeError(f"__init__() got an unexpected keyword argument {next(iter(options))!r}")

    monkeypatch.setitem(loggers.LOGGERS, "mlflow", loggers.LoggerKind(None, refuse))
    with pytest.raises(ConfigError, match="^trainer.logger: mlflow could not start: TypeError: .*'trackin_uri'$"):
        loggers.run_loggers("mlflow", {"trackin_uri": "x"}, tmp_path)
