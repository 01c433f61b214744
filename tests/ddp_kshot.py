"""Helper of test_ddp.py (not a test): a tiny K-shot supernet trained under Lightning DDP on two CPU processes.

``python tests/ddp_kshot.py OUT``. Every rank saves what its K-shot module ended with (the parameters,
copies and simplex-net included, and the simplex-net's steps) to ``OUT/rank<R>.pt``, so the test can compare the ranks.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()


def main(out: str) -> None:
    import torch
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from experiments.core.validation import load_config
    from experiments.jobs.backbone_search import prepare, train_supernet

    cfg = load_config(ROOT / "configs" / "digits_backbone_kshot.yml", {
        "data.batch_size": 32, "data.train_subset": 512, "search.epochs": 2,
        "backbone_search.strategy_options.k": 2, "backbone_search.strategy_options.spos_epochs": 1,
        "backbone_search.strategy_options.simplex_lr": 0.05, "backbone_search.score_images": 100,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu", "trainer.strategy": "ddp",
        "trainer.devices": 2,
    })
    setup = prepare(cfg, log_fn=lambda _: None)
    nni_strategy, _, _ = train_supernet(setup, Path(out) / "run", log_fn=lambda _: None)
    module = nni_strategy.oneshot_module
    # parameters only: BatchNorm's running statistics are each rank's own after its last forward (DDP
    # broadcasts rank zero's at the start of a forward), under K-shot as under plain DDP
    torch.save({"state": {k: v.detach().clone() for k, v in module.named_parameters()},
                "simplex_steps": module.simplex_steps},
               Path(out) / f"rank{rank_zero_only.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
