"""Helper of test_ddp.py (not a test): one tiny DARTS search under Lightning DDP on two CPU processes.

``python tests/ddp_search.py OUT STRATEGY``. Every rank appends its per-epoch architecture
probabilities to ``OUT/../ranks/rank<R>.json`` (a test-only listener), so the test can
compare ranks; the search itself writes only from global rank zero.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()


def main(out: str, strategy: str) -> None:
    from experiments.core.validation import load_config
    from experiments.jobs.search import run_search

    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml", {
        "data.batch_size": 32, "data.train_subset": 256, "data.test_subset": 100,
        "model.backbone_width": 0.125, "model.head_width": 0.0625,
        "search.epochs": 2, "search.warmup_epochs": 0, "search.arch_lr": 0.05, "search.collapse_threshold": 0.0,
        "evaluation.knn_k": 10, "evaluation.linear_epochs": 5,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        "trainer.strategy": strategy, "trainer.devices": 2, "data.batched_augment": True,
    })
    run_search(cfg, Path(out), listeners=[functools.partial(record_rank, Path(out).parent / "ranks")],
               log_fn=print)


def record_rank(ranks: Path, record: dict) -> None:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    path = ranks / f"rank{rank_zero_only.rank}.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append(record["architecture"])
    ranks.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
