"""Helper of test_width_search.py (not a test): a tiny width search under Lightning DDP on two CPU processes.

``python tests/ddp_width_search.py OUT [STRATEGY]`` (default ``cafenet``). Only the supernet is trained. Every rank writes the widths, placements and the
placement trained (min-min) of each of its steps to ``OUT/../ranks/rank<R>.json``, so the test can
check that every rank trained the same channels in every step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()


def main(out: str, strategy: str = "cafenet") -> None:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from experiments.core.validation import load_config
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.strategies.width_sampling import WidthStep

    steps = []
    original = WidthStep.loss

    def recording(self, module, views):
        loss = original(self, module, views)
        steps.append({"widths": self.widths, "placements": self.placements, "chosen": self.chosen})
        return loss

    WidthStep.loss = recording
    cfg = load_config(ROOT / "configs" / "digits_width_search.yml", {
        "backbone_search.strategy": strategy, "data.batch_size": 32, "data.train_subset": 256,
        "data.test_subset": 64, "model.backbone_width": 0.125, "model.head_width": 0.0625,
        "model.backbone_options": {"stages": [1, 1, 1]}, "backbone_search.max_flops": None,
        "search.epochs": 1, "backbone_search.trials": 2, "backbone_search.strategy_options.population": 2,
        "backbone_search.strategy_options.tournament": 1, "backbone_search.score_images": 64,
        "backbone_search.bn_batches": 1,
        "evaluation.knn_k": 10, "evaluation.linear_epochs": 2, "trainer.progress_bar": False,
        "trainer.accelerator": "cpu", "trainer.strategy": "ddp", "trainer.devices": 2,
    })
    train_supernet(prepare(cfg), Path(out))  # the supernet's training only: that is where ranks could differ
    ranks = Path(out).parent / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"rank{rank_zero_only.rank}.json").write_text(json.dumps(steps))


if __name__ == "__main__":
    main(*sys.argv[1:3])
