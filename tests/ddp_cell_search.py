"""Helper of test_cell_resume.py (not a test): a tiny cell-space search under Lightning DDP on two CPU processes.

``python tests/ddp_cell_search.py OUT STRATEGY [DST]``. Every rank saves its supernet's parameters (the cells'
architecture weights among them) and the cell it derives to ``OUT/rank<R>.pt``, so the test can compare the ranks.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()


def main(out: str, strategy: str, dst: bool) -> None:
    import torch
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from experiments.core.validation import load_config
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.strategies.cell_supernet import supernet_cells

    cells = {"channels": 4, "num_cells": 3, "num_nodes": 2}
    if dst:
        cells.update(inputs_per_node=3, ops=["sep_conv_3x3", "max_pool_3x3", "skip_connect", "none"])
    cfg = load_config(ROOT / "configs" / "digits_backbone_cells.yml", {
        "data.batch_size": 32, "data.train_subset": 128, "search.epochs": 1, "search.arch_lr": 0.05,
        "model.backbone_options": cells, "backbone_search.strategy": strategy,
        "backbone_search.strategy_options": {"dst": True} if dst else {}, "backbone_search.score_images": 64,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu", "trainer.strategy": "ddp",
        "trainer.devices": 2, "data.batched_augment": True,
    })
    setup = prepare(cfg, log_fn=lambda _: None)
    nni_strategy, _, _ = train_supernet(setup, Path(out) / "run", log_fn=lambda _: None)
    supernet = nni_strategy.supernet
    with torch.no_grad():
        derived = {k: v for cell in supernet_cells(supernet) for k, v in cell.derived_sample().items()}
        alphas = {f"{cell.label}:{i}": p.detach().clone() for cell in supernet_cells(supernet)
                  for i, p in enumerate(cell.arch_parameters())}
    # parameters only: BatchNorm's running statistics are each rank's own after its last forward
    torch.save({"parameters": {k: v.detach().clone() for k, v in supernet.named_parameters()},
                "alphas": alphas, "derived": derived}, Path(out) / f"rank{rank_zero_only.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "dst")
