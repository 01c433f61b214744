"""One search on two CPU processes through Lightning DDP (gloo): ranks agree, one JSON is written.

The search makes its views from uint8 batches (data.batched_augment), one random stream per rank.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ddp_env

ROOT = Path(__file__).resolve().parents[1]




@pytest.mark.parametrize("strategy", ["ddp"])
def test_darts_search_under_ddp_on_two_cpu_processes(tmp_path, strategy):
    out = tmp_path / "run"
    env = ddp_env()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_search.py"), str(out), strategy],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # one architecture JSON, from global rank zero
    written = list(tmp_path.rglob("best_architecture.json"))
    assert written == [out / "best_architecture.json"]
    record = json.loads(written[0].read_text())
    assert record["status"] in ("ok", "collapsed")

    # both ranks trained and held bitwise-equal architecture weights after every epoch
    rank0 = json.loads((tmp_path / "ranks" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ranks" / "rank1.json").read_text())
    assert len(rank0) == len(rank1) == 2
    assert rank0 == rank1
    assert record["probabilities"] == rank0[-1]
    # the search moved them away from the uniform start
    probs = [p for choice in rank0[-1].values() for p in choice.values()]
    assert max(probs) - min(probs) > 1e-3


def test_quirk20_gradient_sync_is_paused_only_under_ddp():
    from types import SimpleNamespace

    import torch

    from experiments.nni_compat import pause_ddp_gradient_sync

    assert pause_ddp_gradient_sync(None) is False  # no trainer: nothing to pause
    plain = SimpleNamespace(strategy=SimpleNamespace(model=torch.nn.Linear(2, 2)))
    assert pause_ddp_gradient_sync(plain) is False  # single process: the module is not wrapped


def test_learning_rate_scales_with_the_global_batch_under_ddp():
    from types import SimpleNamespace

    from evaluators import SimSiam
    from evaluators import FRAMEWORKS
    from search_spaces import SSLNetworkSpace

    module = SimSiam(lr=0.06, batch_size=128)
    module.set_model(SSLNetworkSpace(FRAMEWORKS["simsiam"].heads, "fixed", "resnet18", 0.125, 3, 0.0625).freeze({}))
    single = module.configure_optimizers()["optimizer"].param_groups[0]["lr"]
    module._trainer = SimpleNamespace(world_size=4)  # four processes of 128 images each
    four = module.configure_optimizers()["optimizer"].param_groups[0]["lr"]
    assert single == 0.06 * 128 / 256 and four == 4 * single


def test_path_sampling_backbone_search_under_ddp_on_two_cpu_processes(tmp_path):
    """MCT-NAS trains one path per step: without DDP's unused-parameter search Lightning stops at step 2."""
    out = tmp_path / "run"
    env = ddp_env()
    sets = {"trainer.strategy": "ddp", "trainer.devices": 2, "trainer.accelerator": "cpu", "search.epochs": 2,
            "data.train_subset": 512, "data.batch_size": 32, "backbone_search.score_images": 100,
            "backbone_search.strategy_options.min_visits": 1, "backbone_search.strategy_options.num_leaves": 2,
            "evaluation.linear_epochs": 5, "trainer.progress_bar": False}
    command = [sys.executable, "-m", "experiments", "backbone-search", "--config",
               "configs/digits_backbone_mctnas.yml", "--output-dir", str(out)]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "best_architecture.json").read_text())
    assert record["status"] == "ok" and record["strategy"] == "mctnas"
    assert record["budget"]["max_flops"] >= record["cost"]["flops"]


def test_trainer_finds_unused_parameters_only_when_asked_and_under_ddp(tmp_path):
    from experiments.core.assembly import build_trainer
    from experiments.core.validation import load_config

    def ddp_flag(strategy, unused):
        cfg = load_config(ROOT / "configs" / "digits_backbone_mctnas.yml",
                          {"trainer.strategy": strategy, "trainer.accelerator": "cpu",
                           "trainer.devices": 2 if strategy != "auto" else 1})
        trainer = build_trainer(cfg, 1, tmp_path, [], unused_parameters=unused)
        return getattr(trainer.strategy, "_ddp_kwargs", {}).get("find_unused_parameters")

    assert ddp_flag("ddp", True) is True
    assert ddp_flag("ddp", False) in (None, False)
    assert ddp_flag("auto", True) is None  # one process: nothing to find


def test_kshot_under_ddp_keeps_copies_and_simplex_net_equal_on_every_rank(tmp_path):
    """K-shot's copies change shape after DDP wrapped the module: their gradients and the simplex-net's
    are averaged by hand, the path is rank zero's. Both ranks must end with the same state, moved by K-shot."""
    import torch

    env = ddp_env()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_kshot.py"), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["simplex_steps"] == ranks[1]["simplex_steps"] > 0
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"{key} differs between the ranks"
    copies = [v for k, v in ranks[0]["state"].items() if k.endswith("original") and v.dim() > 1]
    assert copies, "no K-shot copies in the state"
    assert any(not torch.equal(c[0], c[1]) for c in copies), "the K copies never diverged: K-shot did not train"
