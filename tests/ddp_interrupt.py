"""Helper of test_faults_ddp.py (not a test): a tiny retrain under Lightning DDP on two CPU processes.

``python tests/ddp_interrupt.py OUT [EPOCH BATCH]``: the CLI's retrain (``trainer.devices=2``,
``trainer.strategy=ddp``, gloo) into OUT; with EPOCH and BATCH (0-based), the process of global
rank zero sends itself SIGTERM after that batch, as ``kill <pid>`` of the run would; rank one
gets no signal. Lightning re-runs this script for rank one, so both ranks build the same trainer.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.cli import main  # noqa: E402

TINY = {"model.backbone_width": 0.0625, "model.head_width": 0.0625, "data.train_subset": 128,
        "data.test_subset": 100, "data.batch_size": 16, "evaluation.linear_epochs": 2,
        "evaluation.bank_subset": 128, "evaluation.knn_k": 10, "trainer.progress_bar": False,
        "trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp",
        "train.epochs": 2, "train.collapse_threshold": 0.0}


def argv(out: str) -> list[str]:
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return ["retrain", "--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"), *sets,
            "--arch", str(ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json"), "--output-dir", out]


if __name__ == "__main__":
    if len(sys.argv) > 2:
        import pytest

        from tests.test_faults_runs import signal_retrain_at

        signal_retrain_at(pytest.MonkeyPatch(), int(sys.argv[2]), int(sys.argv[3]), (signal.SIGTERM,), rank=0)
    sys.exit(main(argv(sys.argv[1])))
