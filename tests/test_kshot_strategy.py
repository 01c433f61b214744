"""K-shot NAS as a backbone strategy: K = 1 is SPOS run for run, each step moves only its own parameters,
the exported (materialised) path rebuilds exactly and retrains, and a stopped search resumes exactly."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.test_backbone_search import assert_picks_the_most_flops, load, run, score_by_flops

BUDGET = 40_000  # FLOPs at 8x8: the space spans 13.5k (all identity) to 140k at this width


def kshot(out, k: int, spos_epochs: int = 1, epochs: int = 2, **extra):
    return load(out, **{"backbone_search.strategy": "kshot", "backbone_search.max_flops": BUDGET,
                        "search.epochs": epochs,
                        "backbone_search.strategy_options": {"k": k, "spos_epochs": spos_epochs}, **extra})


@pytest.fixture
def derived_by(monkeypatch):
    """The one-shot module each K-shot search ends with (a spy on ``KShot.derive``)."""
    from experiments.strategies import STRATEGIES

    strategy, seen = STRATEGIES["kshot"], []
    derive = strategy.derive

    def spy(nni_strategy, architecture):
        seen.append(nni_strategy.oneshot_module)
        return derive(nni_strategy, architecture)

    monkeypatch.setattr(strategy, "derive", spy)
    return seen


def saved_weights(out) -> dict:
    return torch.load(out / "search_model.pt", weights_only=True)["state_dict"]


def test_k1_is_spos_end_to_end(tmp_path, derived_by):
    # Bit for bit in NCHW; in channels-last (the default) oneDNN picks other convolution kernels for
    # the parametrised weight and the weights agree to float rounding only (4e-7 after 2 epochs).
    spos_out, kshot_out = tmp_path / "spos", tmp_path / "kshot"
    spos = run(load(spos_out, **{"backbone_search.strategy": "spos", "backbone_search.max_flops": BUDGET,
                                 "search.epochs": 2, "trainer.channels_last": False}), spos_out)
    one = run(kshot(kshot_out, k=1, **{"trainer.channels_last": False}), kshot_out)
    (module,) = derived_by
    assert module.kshot is not None and all(c.shape[0] == 1 for c in module.kshot.copies)  # it did wrap
    assert [e["score"] for e in one["evolution"]] == [e["score"] for e in spos["evolution"]]
    assert [e["architecture"] for e in one["evolution"]] == [e["architecture"] for e in spos["evolution"]]
    assert one["architecture"] == spos["architecture"]
    a, b = saved_weights(spos_out), saved_weights(kshot_out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def search_parts(tmp_path, k: int = 3):
    """A wrapped one-shot module over the digits space, as the strategy trains it, and a batch."""
    from experiments.core.assembly import build_module
    from experiments.jobs.backbone_search import prepare
    from experiments.strategies import STRATEGIES

    cfg = kshot(tmp_path / "parts", k=k)
    setup = prepare(cfg, log_fn=lambda line: None)
    strategy = STRATEGIES["kshot"]
    ctx = setup.context(tmp_path / "parts")
    module = build_module(cfg, 2, interleaved=strategy.interleaved, augment=setup.data.augment,
                          **strategy.module_options(ctx))
    nni_strategy = strategy.build(ctx)
    supernet = nni_strategy.mutate_model(setup.space)
    oneshot = nni_strategy.configure_oneshot_module(module)
    oneshot.set_model(supernet)
    oneshot.make_kshot()
    with torch.no_grad():  # copies as they are once training has moved them apart
        for copies in oneshot.kshot.copies:
            copies.add_(0.1 * torch.randn_like(copies))
    batch = next(iter(setup.data.loader(setup.weight_idx, cfg)))
    return oneshot, batch


def test_simplex_step_moves_only_the_simplex_net_and_weight_step_only_the_weights(tmp_path):
    torch.manual_seed(0)
    oneshot, batch = search_parts(tmp_path)
    simplex = list(oneshot.simplex_net.parameters())
    others = [p for p in oneshot.parameters() if all(p is not q for q in simplex)]
    copies = oneshot.kshot.copies
    before = [p.detach().clone() for p in simplex]

    oneshot.simplex_step(batch, 0)
    assert all(p.grad is None for p in others)  # no copy, stem or head gradient
    assert all(p.grad is not None for p in simplex) and any(p.grad.abs().sum() > 0 for p in simplex)
    assert any(not torch.equal(p, b) for p, b in zip(simplex, before))

    for p in simplex:
        p.grad = None
    oneshot.simplex_step = lambda batch, batch_idx: None  # the weight step alone
    held_out = [t.flip(0) for t in batch]  # another batch: the weight step must not take it
    seen, weight_step = [], oneshot.training_module.training_step
    oneshot.training_module.training_step = lambda b, i: seen.append((b, i)) or weight_step(b, i)
    loss = oneshot.training_step({"train": batch, "val": held_out}, 0)
    assert len(seen) == 1 and seen[0][0] is batch and seen[0][1] == 1
    loss.backward()
    assert all(p.grad is None for p in simplex)
    stepped = [c for c in copies if c.grad is not None and c.grad.abs().sum() > 0]
    assert stepped
    # copy k's gradient is lambda_k times the combined weight's (the copies' gradients sum to it)
    code = oneshot.kshot.code.value
    for c in stepped:
        total = c.grad.sum(0)
        expected = torch.stack([code[k] * total for k in range(len(code))])
        assert torch.allclose(c.grad, expected, atol=1e-6, rtol=1e-4)


def test_kshot_search_within_budget_exports_the_materialised_path_that_retrain_rebuilds(tmp_path, derived_by,
                                                                                         monkeypatch):
    from torch.nn.utils import parametrize

    from evaluators.subnet import SubnetScorer
    from experiments.core.records import build_fixed, read_architecture
    from experiments.jobs.retrain import run_retrain

    scored_live_views = []  # a scored network that still reads the copies (not a materialised path)
    score_by_flops(monkeypatch)  # a score the test knows: the network's FLOPs
    score = SubnetScorer.__call__

    def spy(self, network):
        scored_live_views.append(any(parametrize.is_parametrized(m) for m in network.modules()))
        return score(self, network)

    monkeypatch.setattr(SubnetScorer, "__call__", spy)
    out = tmp_path / "search"
    cfg = kshot(out, k=3)
    record = run(cfg, out)
    (module,) = derived_by
    assert record["strategy"] == "kshot" and record["cost"]["flops"] <= BUDGET
    assert record["evolution"] and all(r["flops"] <= BUDGET for r in record["evolution"])
    assert module.simplex_steps > 0
    # the copies moved apart: the path's weights are a real mixture, not SPOS's single weight
    assert any(not torch.allclose(c[0], c[1]) for c in module.kshot.copies)
    # the evolution scored the materialised paths (plain weights) and picked the one of most FLOPs
    assert len(scored_live_views) == len(record["evolution"]) + 1 and not any(scored_live_views)
    assert_picks_the_most_flops(record)
    # the export is plain weights that rebuild exactly the materialised network
    saved = saved_weights(out)
    assert not any("parametrizations" in name for name in saved)
    materialised = module.materialize(record["architecture"])
    assert not any(parametrize.is_parametrized(m) for m in materialised.modules())
    network, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert arch == record["architecture"]
    network.load_state_dict(saved)  # strict: the same names and shapes
    # the combined weights themselves (BatchNorm's statistics were recalibrated by the scorer since)
    combined = dict(materialised.named_parameters())
    assert combined.keys() == dict(network.named_parameters()).keys()
    assert all(torch.equal(saved[name], value) for name, value in combined.items())
    result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                         log_fn=lambda line: None)
    assert result["architecture"] == record["architecture"]


def test_stopped_kshot_search_resumes_with_its_copies_and_simplex_net(tmp_path):
    from experiments.core.errors import RunInterrupted
    from experiments.jobs.backbone_search import run_backbone_search

    whole_out, stopped_out = tmp_path / "whole", tmp_path / "stopped"
    whole = run(kshot(whole_out, k=2, epochs=3), whole_out)

    def stop_after_second_epoch(record):  # K-shot began at epoch 2; stop before the third
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = kshot(stopped_out, k=2, epochs=3)
    with pytest.raises(RunInterrupted):
        run_backbone_search(cfg, stopped_out, listeners=[stop_after_second_epoch], log_fn=lambda line: None)
    checkpoint = torch.load(stopped_out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and "kshot" in checkpoint
    assert any(".parametrizations." in name for name in checkpoint["state_dict"])
    assert any(name.startswith("simplex_net.") for name in checkpoint["state_dict"])
    resumed = run(cfg, stopped_out)
    assert resumed["architecture"] == whole["architecture"]
    assert [e["score"] for e in resumed["evolution"]] == [e["score"] for e in whole["evolution"]]
    a, b = saved_weights(whole_out), saved_weights(stopped_out)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_kshot_refuses_bad_options(tmp_path):
    from experiments.core.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy_options.k: must be in \\[1, 16\\]"):
        kshot(tmp_path / "a", k=0)
    with pytest.raises(ConfigError, match="spos_epochs: must be below search.epochs"):
        kshot(tmp_path / "b", k=2, spos_epochs=2, epochs=2)


def test_kshot_over_a_width_space_trains_mixed_widths_and_exports_what_retrain_rebuilds(tmp_path, derived_by):
    """The paper's channel dimension: K copies of the width supernet's weights, the width code read by the
    simplex-net; the exported path is plain weights that ``retrain`` rebuilds."""
    from torch.nn.utils import parametrize

    from experiments.core.records import build_fixed, read_architecture
    from experiments.jobs.retrain import run_retrain
    from search_spaces.channels import ChannelChoice

    out = tmp_path / "search"
    cfg = kshot(out, k=2, **{"model.backbone": "nas_bench_macro_width", "backbone_search.max_flops": None,
                             "model.backbone_options": {"op": "mb3_k3", "bins": 4}})
    record = run(cfg, out)
    (module,) = derived_by
    assert module.simplex_steps > 0
    widths = [m for m in module.model.backbone.modules() if isinstance(m, ChannelChoice)]
    assert widths and all(parametrize.is_parametrized(m.expand, "weight") for m in widths)
    assert any(not torch.allclose(c[0], c[1]) for c in module.kshot.copies)  # the copies moved apart
    assert set(module.kshot.choices) >= set(record["architecture"])  # the code reads every width
    saved = saved_weights(out)
    assert not any("parametrizations" in name for name in saved)
    network, arch = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert arch == record["architecture"]
    network.load_state_dict(saved)  # strict: the same names and shapes
    combined = dict(module.materialize(record["architecture"]).named_parameters())
    assert all(torch.equal(saved[name], value) for name, value in combined.items())
    result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                         log_fn=lambda line: None)
    assert result["architecture"] == record["architecture"]
