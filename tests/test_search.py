"""End to end on a slice of digits: DARTS search -> JSON -> retrain rebuilds it -> evaluate agrees."""
import json
import math

import pytest
import torch
from torch import nn

import evaluators.base as base
from experiments.core.records import build_fixed, read_architecture
from experiments.core.validation import load_config
from experiments.jobs.evaluate import run_evaluate
from experiments.jobs.retrain import run_retrain
from experiments.jobs.search import run_search
from tests.conftest import ROOT, tiny_overrides


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One short guarded DARTS search shared by the tests below (warm-up 1 epoch, penalty on)."""
    out = tmp_path_factory.mktemp("search")
    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml",
                      tiny_overrides(out, **{"search.epochs": 3, "search.warmup_epochs": 1,
                                             "search.arch_lr": 0.01, "data.train_subset": 768,
                                             "model.backbone_width": 0.25}))
    record = run_search(cfg, out, log_fn=lambda line: None)
    return cfg, out, record


def test_search_writes_the_architecture_file(searched):
    cfg, out, record = searched
    on_disk = json.loads((out / "best_architecture.json").read_text())
    assert on_disk["architecture"] == record["architecture"]
    assert set(on_disk["architecture"]) == {f"projector.layer{i}.op" for i in range(1, 7)} | \
        {f"predictor.layer{i}.op" for i in range(1, 5)}
    for key in ("framework", "space", "dataset", "config", "probabilities", "metrics", "versions"):
        assert key in on_disk
    assert on_disk["framework"] == "simsiam" and on_disk["space"]["head_space"] == "nasiam"


def test_search_moves_the_architecture_weights(searched):
    _, _, record = searched
    uniform = 1 / 7
    spread = max(abs(p - uniform) for probs in record["probabilities"].values() for p in probs.values())
    assert spread > 0.005, "architecture weights stayed uniform"
    # warm-up: the first epoch leaves the alphas at their initial (near-uniform) values
    first = record["history"][0]["architecture"]
    assert max(abs(p - uniform) for probs in first.values() for p in probs.values()) < 1e-3
    # the exported choice is the argmax of the final probabilities
    for label, probs in record["probabilities"].items():
        assert record["architecture"][label] == max(probs, key=probs.get)


def test_guarded_search_is_not_collapsed_and_far_above_chance(searched):
    cfg, _, record = searched
    m = record["metrics"]
    assert record["status"] == "ok"
    assert m["collapse"] > cfg.search.collapse_threshold
    assert m["knn_top1"] > 3 * m["chance"]


def test_retrain_rebuilds_exactly_the_exported_choices(searched, tmp_path):
    cfg, out, record = searched
    rebuilt, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    reference = torch.load(out / "search_model.pt", weights_only=True)
    # same module tree and parameter shapes as the network NNI exported after the search
    assert arch == reference["architecture"]
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in reference["state_dict"].items()}
    rebuilt.load_state_dict(reference["state_dict"])  # strict: every key matches
    result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                         log_fn=lambda line: None)
    assert result["architecture"] == record["architecture"]
    assert (tmp_path / "retrain" / "retrain_results.json").is_file()


def test_evaluate_reproduces_the_search_metrics(searched):
    cfg, out, record = searched
    result = run_evaluate(cfg, out / "search_model.pt")
    assert result["metrics"]["knn_top1"] == pytest.approx(record["metrics"]["knn_top1"], abs=1e-6)
    assert result["metrics"]["collapse"] == pytest.approx(record["metrics"]["collapse"], rel=1e-4)


def test_retrain_takes_the_shipped_nasiam_architecture(tiny_config, tmp_path, optimised_weights):
    cfg = tiny_config()
    record = read_architecture(ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json")
    result = run_retrain(cfg, record, tmp_path / "nasiam", log_fn=lambda line: None)
    assert result["architecture"]["predictor.layer2.op"] == "avgpool_3x3"
    # and trains that network: every weight of it (the searched predictor's too) moved
    assert optimised_weights.moved() == optimised_weights.names()
    assert optimised_weights.moved("predictor.layer1.")
    assert math.isfinite(result["history"][-1]["ssl_loss"])


def test_momentum_and_queue_update_once_per_weight_step(tiny_config, tmp_path, monkeypatch):
    from evaluators.moco import MoCo

    calls = {"momentum": 0, "enqueue": 0, "arch_steps": 0}
    original_update, original_enqueue, original_step = base.update_momentum, MoCo.enqueue, MoCo.training_step

    def counting_update(online, target, momentum):
        calls["momentum"] += isinstance(online, nn.Module) and online is not None
        return original_update(online, target, momentum)

    def counting_enqueue(self, keys):
        calls["enqueue"] += 1
        return original_enqueue(self, keys)

    def counting_step(self, batch, batch_idx):
        calls["arch_steps"] += batch_idx % 2 == 0
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(base, "update_momentum", counting_update)
    monkeypatch.setattr(MoCo, "enqueue", counting_enqueue)
    monkeypatch.setattr(MoCo, "training_step", counting_step)
    cfg = tiny_config(framework="moco", **{"search.epochs": 2, "search.warmup_epochs": 0})
    run_search(cfg, tmp_path / "moco", log_fn=lambda line: None)
    weight_steps = 2 * (256 // 64)  # epochs x batches of the weight split (512 images, half held out)
    assert calls["arch_steps"] == weight_steps  # one architecture step per weight step
    assert calls["momentum"] == 2 * weight_steps  # backbone and projector, once per weight step
    assert calls["enqueue"] == weight_steps
