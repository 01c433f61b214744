"""The jobs under a momentum framework as well as under SimSiam: ``retrain``, ``prune`` (fine-tuning) and the
backbone search run end to end on tiny digits configs, and under BYOL or MoCo the momentum branch exists,
is updated (its weights move, and differ from the online ones) and the job writes its record."""
from __future__ import annotations

import json

import pytest
import torch

from evaluators.base import SSLFramework
from tests.test_backbone_search import load


@pytest.fixture
def trained_networks(monkeypatch):
    """Every network a framework trains (``set_model``), with its momentum branch's weights at that moment."""
    seen: list[tuple[torch.nn.Module, dict]] = []
    set_model = SSLFramework.set_model

    def spy(self, model):
        target = getattr(model, "momentum_backbone", None)
        start = {} if target is None else {n: p.detach().clone() for n, p in target.named_parameters()}
        seen.append((model, start))
        return set_model(self, model)

    monkeypatch.setattr(SSLFramework, "set_model", spy)
    return seen


def check_momentum_branch(framework: str, model: torch.nn.Module, start: dict) -> None:
    """SimSiam has no momentum branch; BYOL's and MoCo's moved during training and is not the online backbone."""
    if framework == "simsiam":
        assert not hasattr(model, "momentum_backbone") and not model.momentum_pairs()
        return
    online, target = dict(model.backbone.named_parameters()), dict(model.momentum_backbone.named_parameters())
    assert target and target.keys() == online.keys() and target.keys() == start.keys()
    assert {(n, p.shape) for n, p in target.items()} == {(n, p.shape) for n, p in online.items()}
    assert any(not torch.equal(target[n], start[n]) for n in target), "the momentum branch never moved"
    assert any(not torch.equal(target[n], online[n]) for n in target), "the momentum branch is the online one"
    assert not any(p.requires_grad and p.grad is not None and p.grad.any() for p in target.values())


@pytest.mark.parametrize("framework", ["simsiam", "byol"])
def test_retrain_then_prune_under_the_framework(tiny_config, tmp_path, trained_networks, framework):
    from experiments.core.records import load_saved_model
    from experiments.jobs.prune import run_prune
    from experiments.jobs.retrain import run_retrain

    cfg = tiny_config(framework=framework, **{"model.head_space": "fixed", "train.epochs": 1,
                                              "evaluation.linear_epochs": 2})
    record = {"space": {"framework": framework, "head_space": "fixed"}, "architecture": {}}
    retrained = run_retrain(cfg, record, tmp_path / "retrain", log_fn=lambda line: None)
    assert retrained["kind"] == "ssl_retrain" and retrained["framework"] == framework
    assert json.loads((tmp_path / "retrain" / "retrain_results.json").read_text())["framework"] == framework
    check_momentum_branch(framework, *trained_networks[-1])

    trained_networks.clear()
    pruned = run_prune(cfg, tmp_path / "retrain" / "retrain_model.pt", tmp_path / "prune", "dagger", 0.5, "flops",
                       finetune_epochs=1, gate_epochs=1, log_fn=lambda line: None)
    assert pruned["kind"] == "ssl_prune" and pruned["pruning"]["ratio"]["flops"] <= 0.5
    finetuned, start = trained_networks[-1]  # the fine-tuning's network: the pruned one
    assert sum(p.numel() for p in finetuned.backbone.parameters()) == pruned["pruning"]["after"]["params"]
    check_momentum_branch(framework, finetuned, start)  # (pruned like the online backbone: same shapes)
    network, _ = load_saved_model(tmp_path / "prune" / "prune_model.pt", cfg)  # both branches reload pruned
    if framework != "simsiam":
        assert [p.shape for p in network.momentum_backbone.parameters()] == \
            [p.shape for p in network.backbone.parameters()]


@pytest.mark.parametrize("framework", ["simsiam", "moco"])
def test_backbone_search_under_the_framework(tmp_path, trained_networks, framework):
    from experiments.jobs.backbone_search import run_backbone_search

    out = tmp_path / "search"
    cfg = load(out, framework=framework, **{"backbone_search.strategy": "spos", "backbone_search.max_flops": 40_000,
                                            "framework_options": {"queue_size": 64} if framework == "moco" else {}})
    record = run_backbone_search(cfg, out, log_fn=lambda line: None)
    assert record["status"] == "ok" and record["framework"] == framework
    assert json.loads((out / "best_architecture.json").read_text())["architecture"] == record["architecture"]
    supernet, start = trained_networks[-1]
    check_momentum_branch(framework, supernet, start)
