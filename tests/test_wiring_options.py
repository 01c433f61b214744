"""Options reach the objects that use them: a config with a non-default value builds a job's objects
(the strategy's sampler, tree or copies; the framework's loss, queue and momentum), and each object
holds that value or behaves as it says.

The objects are built the way the backbone-search job builds them (``search_objects``: the job's
setup, the framework's module, the strategy's NNI one-shot module), without training.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.test_backbone_search import load


def search_objects(out, **overrides) -> SimpleNamespace:
    """A backbone search's objects as the job builds them before it trains: ``cfg``, ``setup``, ``ctx``,
    ``strategy``, ``nni_strategy``, ``supernet``, ``oneshot`` (the strategy's Lightning module)."""
    from experiments.core.assembly import build_module
    from experiments.jobs.backbone_search import prepare
    from experiments.strategies import STRATEGIES

    cfg = load(out, **overrides)
    setup = prepare(cfg, log_fn=lambda line: None)
    strategy = STRATEGIES[cfg.backbone_search.strategy]
    ctx = setup.context(out, log_fn=lambda line: None)
    module = build_module(cfg, cfg.search.epochs, interleaved=strategy.interleaved, augment=setup.data.augment,
                          **strategy.module_options(ctx))
    nni_strategy = strategy.build(ctx)
    supernet = nni_strategy.mutate_model(setup.space)
    oneshot = nni_strategy.configure_oneshot_module(module)
    oneshot.set_model(supernet)
    return SimpleNamespace(cfg=cfg, setup=setup, ctx=ctx, strategy=strategy, nni_strategy=nni_strategy,
                           supernet=supernet, oneshot=oneshot)


# --- strategies -------------------------------------------------------------------------------------

def test_mctnas_constants_reach_its_tree(tmp_path):
    from experiments.strategies.mctnas import COMMUNICATION_WEIGHT, EXPLORATION_WEIGHT, MOMENTUM, TEMPERATURE

    options = {"exploration": 2.5, "communication": 0.125, "temperature": 0.75, "momentum": 0.5,
               "warmup_fraction": 0.25, "backup_fraction": 0.5, "loss_shift": 3.0}
    assert (EXPLORATION_WEIGHT, COMMUNICATION_WEIGHT, TEMPERATURE, MOMENTUM) != (2.5, 0.125, 0.75, 0.5)
    oneshot = search_objects(tmp_path / "run", **{
        "backbone_search.strategy": "mctnas", "search.epochs": 4, "backbone_search.strategy_options": options}).oneshot
    shared = oneshot.make(10, None)  # what the module makes at the start of training: 10 steps an epoch
    tree = shared.tree
    assert (tree.exploration_weight, tree.communication_weight, tree.temperature, tree.momentum) == \
        (2.5, 0.125, 0.75, 0.5)
    assert shared.loss_shift == 3.0
    # the warm-up: a quarter of 4 epochs x 10 steps sampled uniformly, rewards backed up after half of it
    assert tree.uniform_steps == 10 and tree.first_update_step == 5


def test_kshot_k_and_simplex_options_reach_the_copies_and_the_simplex_net(tmp_path):
    oneshot = search_objects(tmp_path / "run", **{
        "backbone_search.strategy": "kshot", "search.epochs": 3,
        "backbone_search.strategy_options": {"k": 3, "spos_epochs": 2, "simplex_hidden": 7,
                                             "simplex_lr": 0.02}}).oneshot
    assert oneshot.kshot is None and oneshot.spos_epochs == 2  # SPOS until epoch 2
    oneshot.make_kshot()
    assert oneshot.kshot.copies and all(c.shape[0] == 3 for c in oneshot.kshot.copies)
    assert oneshot.kshot.code.value.shape == (3,)
    hidden = [m for m in oneshot.simplex_net.modules() if isinstance(m, torch.nn.Linear)]
    assert hidden[0].out_features == 7 and hidden[-1].out_features == 3
    assert [g["lr"] for g in oneshot.simplex_optimizer.param_groups] == [0.02]


@pytest.mark.parametrize("complementary", [True, False])
def test_bcnet_options_reach_its_sampler(tmp_path, complementary):
    import numpy as np

    oneshot = search_objects(tmp_path / "run", **{
        "model.backbone": "nas_bench_macro_width", "backbone_search.strategy": "bcnet",
        "backbone_search.max_flops": 40_000,
        "backbone_search.strategy_options": {"loss_records": 3, "complementary": complementary}}).oneshot
    sampler = oneshot.sampler
    assert sampler.records.size == 3
    np.random.seed(0)
    first, second = sampler.next_step().widths, sampler.next_step().widths
    partners = {label: sampler.space[label][::-1][sampler.space[label].index(w)] for label, w in first.items()}
    assert (second == partners) == complementary  # the step after a drawn width trains its complement
    for loss in (5.0, 1.0, 4.0, 2.0, 3.0):
        sampler.records.push(loss, first)
    assert [loss for loss, _ in sampler.records.lowest_first()] == [1.0, 2.0, 3.0]


def test_cafenet_options_reach_its_sampler(tmp_path):
    import numpy as np

    oneshot = search_objects(tmp_path / "run", **{
        "model.backbone": "nas_bench_macro_width", "backbone_search.strategy": "cafenet",
        "backbone_search.max_flops": 40_000,
        "backbone_search.strategy_options": {"free_bins": 2, "placements": 5}}).oneshot
    sampler = oneshot.sampler
    np.random.seed(0)
    step = sampler.next_step()
    assert len(step.placements) == 5 and step.combine == "min"
    for label, values in sampler.space.items():
        assert sampler.free[label] == 2 * max(1, values[-1] // len(values))  # two width steps free


def test_vitas_sharing_option_decides_the_cyclic_layers(tmp_path):
    from experiments.strategies.vitas_slicing import CYCLIC_HOOKS, CyclicLinear

    built = {}
    for sharing, sides in (("cyclic", "both"), ("prefix", "both"), ("cyclic", "alternate")):
        job = search_objects(tmp_path / f"{sharing}-{sides}", **{
            "model.backbone": "vit", "model.backbone_options": {"image_size": 8, "patch_sizes": [4],
                                                                "embed_dims": [8, 16], "max_depth": 2,
                                                                "heads": [1, 2], "mlp_ratios": [1, 2]},
            "backbone_search.strategy": "vitas", "backbone_search.max_flops": None,
            "backbone_search.strategy_options": {"sharing": sharing, "sides_per_step": sides, "tune_identity": False,
                                                 "identity_prob": 0.25, "population": 3}})
        built[sharing, sides] = (job.nni_strategy, job.oneshot)
    cyclic, prefix = built["cyclic", "both"], built["prefix", "both"]
    # sides_per_step reaches the training module: both sides a step (default), one a step, the left under prefix
    assert (cyclic[1].sides, built["cyclic", "alternate"][1].sides, prefix[1].sides) == ("both", "alternate", "left")
    assert list(getattr(cyclic[0], "extra_mutation_hooks", [])) == CYCLIC_HOOKS
    assert not getattr(prefix[0], "extra_mutation_hooks", [])
    assert any(isinstance(m, CyclicLinear) for m in cyclic[1].model.modules())
    assert not any(isinstance(m, CyclicLinear) for m in prefix[1].model.modules())
    assert cyclic[0].identity_prob == 0.25  # not tuned: the option as given


def test_entrannas_dst_rule_and_temperature_reach_the_cells(tmp_path):
    from experiments.strategies.cell_supernet import supernet_cells
    from experiments.strategies.entrannas import EnTranDSTCell, EnTranPairCell

    cells = {"channels": 4, "num_cells": 3, "num_nodes": 2, "inputs_per_node": 3,
             "ops": ["sep_conv_3x3", "max_pool_3x3", "skip_connect", "none"]}
    built = {}
    for rule in ("pairs", "edges"):
        job = search_objects(tmp_path / rule, **{
            "model.backbone": "cells", "model.backbone_options": cells, "backbone_search.strategy": "entrannas",
            "backbone_search.max_flops": None,
            "backbone_search.strategy_options": {"dst": True, "dst_rule": rule, "dst_temperature": 2.5}})
        built[rule] = supernet_cells(job.oneshot.model)
    assert built["pairs"] and built["edges"]
    assert all(type(c) is EnTranPairCell and c.temperature == 2.5 for c in built["pairs"])
    assert all(type(c) is EnTranDSTCell for c in built["edges"])


# --- frameworks -------------------------------------------------------------------------------------

def framework_module(tiny_config, framework: str, options: dict):
    from experiments.core.assembly import build_module

    return build_module(tiny_config(framework=framework, framework_options=options), 2, interleaved=False)


def linear(seed: int, d_in: int, d_out: int) -> torch.nn.Linear:
    layer = torch.nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed)))
    return layer


def momentum_network(embedding: int) -> torch.nn.Module:
    """Online maps all ones, momentum maps all zeros: after one EMA step the target holds 1 - m."""
    model = torch.nn.Module()
    model.backbone, model.projector, model.predictor = linear(1, 4, 4), linear(2, 4, embedding), linear(3, embedding,
                                                                                                      embedding)
    model.momentum_backbone, model.momentum_projector = linear(4, 4, 4), linear(5, 4, embedding)
    with torch.no_grad():
        for part in (model.backbone, model.projector):
            part.weight.fill_(1.0)
        for part in (model.momentum_backbone, model.momentum_projector):
            part.weight.zero_()
    model.momentum_pairs = lambda: [(model.backbone, model.momentum_backbone),
                                    (model.projector, model.momentum_projector)]
    return model


def one_weight_step(module, model) -> float:
    """The EMA coefficient of the first weight step of a 2-epoch, 4-batch run."""
    module.set_model(model)
    module.log = lambda *args, **kwargs: None
    module._trainer = SimpleNamespace(max_epochs=2, num_training_batches=4, current_epoch=0)
    g = torch.Generator().manual_seed(0)
    module.training_step([torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)], 0)
    target = model.momentum_backbone.weight
    assert torch.allclose(target, target[0, 0].expand_as(target))
    return 1.0 - float(target[0, 0])


def test_moco_temperature_queue_size_and_momentum_reach_the_module(tiny_config):
    module = framework_module(tiny_config, "moco", {"temperature": 0.37, "queue_size": 24, "momentum": 0.75})
    default = framework_module(tiny_config, "moco", {})
    assert module.criterion.temperature == 0.37 and default.criterion.temperature == 0.2
    assert module.queue.shape[0] == 24 and default.queue.shape[0] == 4096
    assert one_weight_step(module, momentum_network(module.embedding_dim)) == pytest.approx(0.75)
    assert one_weight_step(default, momentum_network(default.embedding_dim)) == pytest.approx(0.99)


def test_byol_momentum_reaches_the_first_weight_step(tiny_config):
    for momentum in (0.5, 0.9):
        module = framework_module(tiny_config, "byol", {"momentum": momentum})
        assert one_weight_step(module, momentum_network(module.embedding_dim)) == pytest.approx(momentum)


def test_simclr_temperature_reaches_its_loss(tiny_config):
    model = torch.nn.Module()
    model.backbone, model.projector = linear(1, 4, 4), linear(2, 4, 8)
    model.momentum_pairs = lambda: []
    losses = {}
    for t in (0.5, 0.1):
        module = framework_module(tiny_config, "simclr", {"temperature": t})
        module.set_model(model)
        g = torch.Generator().manual_seed(0)
        x1, x2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
        z = torch.nn.functional.normalize(torch.cat([model.projector(model.backbone(x)) for x in (x1, x2)]), dim=1)
        sim = (z @ z.t() / t).detach()
        n2 = len(z)
        by_hand = sum(-(sim[i, (i + n2 // 2) % n2] - torch.logsumexp(torch.cat([sim[i, :i], sim[i, i + 1:]]), 0))
                      for i in range(n2)) / n2
        losses[t] = float(module.ssl_loss([x1, x2], arch_step=False))
        assert losses[t] == pytest.approx(float(by_hand), rel=1e-5)
    assert not math.isclose(losses[0.5], losses[0.1], rel_tol=1e-3)


# --- a strategy's penalty reaches the architecture step ---------------------------------------------

def test_darts_budget_penalty_reaches_the_architecture_step(tmp_path):
    """A tight budget: with the penalty the first architecture step logs ``scale * (E[FLOPs] / budget - 1)`` at
    (about) uniform alphas, and the steps move the alphas towards the cheap identity; with ``budget_penalty: 0``
    nothing is logged and the identity gains less."""
    import csv

    from experiments.jobs.backbone_search import prepare
    from tests.test_backbone_search import run

    identity_mass, logged = {}, {}
    for scale in (0.0, 50.0):
        out = tmp_path / f"penalty{scale:g}"
        cfg = load(out, **{"backbone_search.strategy": "darts", "backbone_search.max_flops": 20_000,
                           "backbone_search.budget_penalty": scale, "search.arch_lr": 0.05})
        if scale:
            cost = prepare(cfg, log_fn=lambda line: None).cost
            uniform = {label: torch.full((len(values),), 1 / len(values)) for label, values in cost.labels.items()}
            first_penalty = scale * (float(cost.expected(uniform, "flops")) / 20_000 - 1)
            assert first_penalty > 10
        record = run(cfg, out)
        probabilities = record["probabilities"]
        identity_mass[scale] = sum(p["identity"] for p in probabilities.values()) / len(probabilities)
        with open(out / "logs" / "metrics.csv") as f:
            logged[scale] = [float(r["search/budget"]) for r in csv.DictReader(f) if r.get("search/budget")]
    assert logged[0.0] == [] and logged[50.0] and all(v > 0 for v in logged[50.0])
    assert logged[50.0][0] == pytest.approx(first_penalty, rel=1e-3)
    assert identity_mass[50.0] > identity_mass[0.0] + 0.01
