"""Issue 24's defaults: batched views and channels-last on; frameworks with their own views fall
back to the per-image path; the configs behind committed results keep the old values."""
import pytest

from experiments.core.assembly import build_data
from experiments.core.batch_augment import BatchViewAugment
from experiments.core.config import Config
from experiments.core.validation import load_config
from tests.conftest import ROOT, tiny_overrides


def test_batched_views_and_channels_last_are_the_defaults():
    cfg = Config()
    assert (cfg.data.batched_augment, cfg.trainer.channels_last) == (True, True)


@pytest.mark.parametrize("framework, batched", [("simsiam", True), ("ressl", False), ("wcl", False),
                                                ("supervised", False)])
def test_a_framework_that_makes_its_own_views_falls_back_instead_of_refusing(tmp_path, framework, batched):
    head_space = "fixed" if framework == "supervised" else "nasiam"  # supervised trains a linear classifier
    cfg = load_config(None, tiny_overrides(tmp_path, framework=framework,
                                           **{"data.train_subset": 64, "model.head_space": head_space}))
    assert cfg.data.batched_augment
    data = build_data(cfg)
    assert isinstance(data.augment, BatchViewAugment) is batched


@pytest.mark.parametrize("name", ["bench_digits_simsiam.yml", "study_digits.yml", "study_cifar10.yml",
                                  "cifar10_simsiam.yml", "cifar10_simclr.yml", "cifar10_moco.yml",
                                  "cifar10_byol.yml", "cifar10_ressl.yml", "cifar10_wcl.yml"])
def test_configs_behind_committed_results_pin_the_old_defaults(name):
    cfg = load_config(ROOT / "configs" / name, {"data.root": str(ROOT)})  # any existing path: no data read
    assert (cfg.data.batched_augment, cfg.trainer.channels_last) == (False, False)


def test_the_benchmarks_base_is_the_earlier_quick_start_with_the_old_defaults():
    import argparse

    from benchmarks._util import common_arguments, make_config, resolve

    parser = argparse.ArgumentParser()
    common_arguments(parser)
    args = resolve(parser.parse_args(["--dataset", "digits", "--device", "cpu"]))
    cfg = make_config(args, 64)
    assert (cfg.data.batched_augment, cfg.trainer.channels_last) == (False, False)
    assert (cfg.search.strategy, cfg.search.arch_lr, cfg.search.epochs) == ("darts", 3e-3, 20)


def test_batched_views_follow_from_epoch_and_position_so_a_resume_makes_the_same_views(tiny_config):
    from types import SimpleNamespace

    import torch

    from experiments.core.assembly import build_module

    cfg = tiny_config(**{"data.batched_augment": True, "data.train_subset": 64})
    data = build_data(cfg)
    batch = next(iter(data.loader(None, cfg)))

    def views(epoch: int, batch_idx: int, module=None):
        module = module or build_module(cfg, 2, interleaved=False, augment=data.augment)
        module._trainer = SimpleNamespace(current_epoch=epoch, global_rank=0)
        return module.make_views(batch, batch_idx)[0]

    first = build_module(cfg, 2, interleaved=False, augment=data.augment)
    assert torch.equal(views(1, 3, first), views(1, 3))  # a fresh module (a resumed run) draws the same
    assert not torch.equal(views(0, 3, first), views(1, 3, first))  # another epoch, other views
    assert not torch.equal(views(1, 2, first), views(1, 3, first))  # another position, other views


def test_every_number_of_the_schema_has_the_interval_docs_config_md_lists():
    import re

    from experiments.core.config import field_intervals

    listed = {}
    table = (ROOT / "docs" / "config.md").read_text()
    for interval, fields in re.findall(r"^\| `([\[(][^`]*[\])])` \| (.+) \|$", table, re.M):
        listed.update({name: interval for name in re.findall(r"`([a-z_.]+)`", fields)})
    intervals = field_intervals()
    assert "search.epochs" in intervals and "evaluation.linear_epochs" in intervals and "train.epochs" in intervals
    assert listed == intervals
