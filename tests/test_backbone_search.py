"""The backbone-search job: every strategy on digits within a budget, the export that retrain rebuilds,
the supervised framework, and the errors for bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import ROOT, tiny_overrides

CONFIG = ROOT / "configs" / "digits_backbone_spos.yml"


def tiny_backbone_overrides(out, **extra) -> dict:
    """A backbone search small enough for a test: 128 images, one epoch, four scored sub-networks."""
    base = tiny_overrides(out, **{
        "data.batch_size": 32, "data.train_subset": 128, "data.test_subset": 64,
        "model.backbone_width": 0.125, "model.head_width": 0.0625,
        "search.epochs": 1, "train.epochs": 1, "evaluation.knn_k": 10, "evaluation.linear_epochs": 5,
        # an old config's strategy fields (core/config.py MOVED_TO_OPTIONS): each strategy takes those it reads
        "backbone_search.trials": 4, "backbone_search.population": 3, "backbone_search.tournament": 2,
        "backbone_search.score_images": 64, "backbone_search.bn_batches": 2,
        "backbone_search.enas_batches_per_update": 2,
    })
    base.update(extra)
    return base


def load(out, **extra):
    from experiments.core.validation import load_config

    return load_config(CONFIG, tiny_backbone_overrides(out, **extra))


def run(cfg, out):
    from experiments.jobs.backbone_search import run_backbone_search

    return run_backbone_search(cfg, out, log_fn=lambda line: None)


def score_by_flops(monkeypatch, input_size: int = 8) -> None:
    """Every scored network does the scorer's work (BatchNorm recalibrated) but scores its backbone's FLOPs / 1e5:
    a hand-made score whose best network the test knows (``assert_picks_the_most_flops``)."""
    from evaluators.subnet import SubnetScorer
    from search_spaces.cost import count_fixed

    score = SubnetScorer.__call__

    def by_flops(self, network):
        score(self, network)
        return count_fixed(network.backbone, input_size).flops / 1e5

    monkeypatch.setattr(SubnetScorer, "__call__", by_flops)


def assert_picks_the_most_flops(record: dict) -> None:
    """Under ``score_by_flops``: every network scored its FLOPs (as the cost model counts them), and the search
    picked the one of most FLOPs among them."""
    evolution = record["evolution"]
    assert len(evolution) > 1 and len({e["flops"] for e in evolution}) > 1
    assert all(e["score"] == pytest.approx(e["flops"] / 1e5) for e in evolution)
    assert record["cost"]["flops"] == max(e["flops"] for e in evolution)
    assert record["metrics"]["held_out_score"] == pytest.approx(record["cost"]["flops"] / 1e5)


def enas_available() -> bool:
    try:
        import gym  # noqa: F401
        import tianshou  # noqa: F401
    except ImportError:
        return False
    return True


STRATEGIES = ["spos", "darts", "gdarts", "proxyless",
              pytest.param("enas", marks=pytest.mark.skipif(not enas_available(), reason="tianshou/gym missing"))]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_searches_within_budget_and_exports_what_retrain_rebuilds(tmp_path, strategy, optimised_weights,
                                                                              monkeypatch):
    from experiments.core.records import build_fixed, read_architecture
    from search_spaces.cost import count_fixed

    if strategy == "spos":
        score_by_flops(monkeypatch)
    out = tmp_path / strategy
    budget = 40_000  # FLOPs at 8x8: the space spans 13.5k (all identity) to 140k at this width
    cfg = load(out, **{"backbone_search.strategy": strategy, "backbone_search.max_flops": budget})
    record = run(cfg, out)
    assert record["status"] == "ok" and record["strategy"] == strategy
    assert math.isfinite(record["history"][-1]["ssl_loss"])
    # the weights trained (ENAS: quirk 17): the stem, some searched layers and the projector moved
    moved = optimised_weights.moved()
    assert "backbone.stem.0.weight" in moved and any(n.startswith("backbone.layers.") for n in moved), moved
    assert any(n.startswith("projector.") for n in moved)
    assert record["cost"]["flops"] <= budget
    assert set(record["architecture"]) == {f"backbone.layer{i}.op" for i in range(1, 9)}
    assert len(record["benchmark"]["key"]) == 8
    if strategy == "spos":  # the evolution scored only networks within budget, and kept the best
        assert record["evolution"] and all(r["flops"] <= budget for r in record["evolution"])
        assert_picks_the_most_flops(record)
    else:
        assert set(record["probabilities"]) == set(record["architecture"])
    # the JSON rebuilds the same network (NNI freeze), which takes the searched weights as they are
    saved = torch.load(out / "search_model.pt", weights_only=True)
    network, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert arch == record["architecture"] == saved["architecture"]
    network.load_state_dict(saved["state_dict"])
    assert count_fixed(network.backbone, 8).flops == record["cost"]["flops"]
    assert count_fixed(network.backbone, 8).params == record["cost"]["params"]


def test_spos_over_the_resnet_space_with_the_supervised_objective_then_retrain(tmp_path, optimised_weights):
    from experiments.core.records import read_architecture
    from experiments.jobs.retrain import run_retrain

    out = tmp_path / "search"
    cfg = load(out, **{"framework": "supervised", "model.backbone": "resnet", "backbone_search.max_params": 60_000,
                       "backbone_search.max_flops": None})
    record = run(cfg, out)
    assert record["cost"]["params"] <= 60_000
    assert {"backbone.stage1.depth", "backbone.stage4.block", "backbone.stage3.width"} <= set(record["architecture"])
    assert record["space"]["num_classes"] == 10 and record["framework"] == "supervised"
    result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                         log_fn=lambda line: None)
    assert result["architecture"] == record["architecture"]
    # the retrain (the second optimiser: the search's came first) trained every weight of its network ...
    assert len(optimised_weights.runs) == 2
    assert optimised_weights.moved() == optimised_weights.names()
    assert optimised_weights.moved("projector.")  # the classifier among them
    # ... with the labels: its kNN is well above chance
    assert result["metrics"]["knn_top1"] > 2 * result["metrics"]["chance"]


def test_supervised_loss_is_cross_entropy_of_the_classifier():
    from evaluators.supervised import Supervised

    torch.manual_seed(0)
    module = Supervised()
    model = torch.nn.Module()
    model.backbone, model.projector = torch.nn.Flatten(), torch.nn.Linear(12, 3)
    module.set_model(model)
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 2, 1, 1, 0])
    expected = torch.nn.functional.cross_entropy(model.projector(x.flatten(1)), y)
    assert torch.allclose(module.ssl_loss([x, y], arch_step=False), expected)


def test_budget_penalty_is_zero_within_budget_and_pushes_towards_cheap_operations():
    from nni.nas.strategy import DARTS

    from experiments.strategies.budget import budget_penalty_fn
    from search_spaces.cost import BackboneCost
    from evaluators import FRAMEWORKS
    from search_spaces.network import SSLNetworkSpace

    space = SSLNetworkSpace(FRAMEWORKS["simsiam"].heads, "fixed", "nas_bench_macro", 0.125, head_width=0.0625)
    cost = BackboneCost(space.backbone, 8)
    DARTS().mutate_model(space)
    module = torch.nn.Module()
    module.model = space
    uniform = cost.expected({label: torch.full((3,), 1 / 3) for label in cost.labels}).item()
    assert budget_penalty_fn(cost, uniform * 1.01, None, 2.0)(module).item() == 0.0
    penalty = budget_penalty_fn(cost, uniform / 2, None, 2.0)(module)
    assert penalty.item() == pytest.approx(2.0 * (uniform / (uniform / 2) - 1), rel=1e-3)
    penalty.backward()
    alpha = space.backbone.layers[4]._arch_alpha
    assert alpha.grad[0] < 0 < alpha.grad[2]  # gradient descent raises identity, lowers mb6_k5


def test_fit_to_budget_keeps_a_network_within_budget_and_repairs_one_over_it():
    from experiments.strategies.budget import fit_to_budget
    from search_spaces.cost import BackboneCost
    from search_spaces.nas_bench_macro import NasBenchMacroSpace, key_to_arch

    cost = BackboneCost(NasBenchMacroSpace(width=0.125), 8)
    probs = {label: {"identity": 0.2, "mb3_k3": 0.3, "mb6_k5": 0.5} for label in cost.labels}
    probs["backbone.layer8.op"] = {"identity": 0.45, "mb3_k3": 0.1, "mb6_k5": 0.45}
    argmax = key_to_arch("22222222")
    assert fit_to_budget(probs, argmax, cost, None, None) == argmax
    budget = cost(argmax).flops - 1
    fitted = fit_to_budget(probs, argmax, cost, budget, None)
    assert cost(fitted).flops <= budget
    # the cheapest change in probability: layer 8, where identity is as likely as mb6_k5
    assert fitted == dict(argmax, **{"backbone.layer8.op": "identity"})


@pytest.mark.parametrize("overrides, message", [
    ({"backbone_search.max_flops": 1000}, "backbone_search.max_flops: 1000 is below the smallest network"),
    ({"backbone_search.max_params": 10}, "backbone_search.max_params: 10 is below the smallest network"),
    ({"model.backbone": "resnet", "backbone_search.strategy": "darts"},
     "backbone_search.strategy: darts cannot search space resnet"),
    ({"model.backbone": "resnet18"}, "is a fixed ResNet; the backbone search needs a backbone space"),
    ({"backbone_search.strategy": "random"}, "backbone_search.strategy: must be one of"),
    ({"model.backbone_options": {"plann": "cifar"}, "model.backbone": "macro"}, "did you mean 'plan'"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, overrides, message):
    from experiments.cli import main

    out = tmp_path / "run"
    argv = ["backbone-search", "--config", str(CONFIG), "--output-dir", str(out)]
    for key, value in tiny_backbone_overrides(out, **overrides).items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (out / "best_architecture.json").exists()


def test_a_searched_backbone_pairs_with_a_searched_head(tmp_path):
    """DARTS over NAS-Bench-Macro's backbone and NASiam's SimSiam heads at once: both sets of weights move."""
    from experiments.core.records import build_fixed, read_architecture

    out = tmp_path / "joint"
    cfg = load(out, **{"backbone_search.strategy": "darts", "model.head_space": "nasiam",
                       "backbone_search.max_flops": 40_000, "search.arch_lr": 0.05})
    record = run(cfg, out)
    labels = set(record["architecture"])
    assert {"backbone.layer1.op", "projector.layer1.op", "predictor.layer1.op"} <= labels
    assert record["cost"]["flops"] <= 40_000
    for label in ("backbone.layer5.op", "projector.layer2.op"):  # the relaxed weights left uniform
        assert max(record["probabilities"][label].values()) > 1 / len(record["probabilities"][label]) + 0.01
    network, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert arch == record["architecture"]
    network.load_state_dict(torch.load(out / "search_model.pt", weights_only=True)["state_dict"])
