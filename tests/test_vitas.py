"""The vitas strategy: cyclic sharing trains every embedding channel equally often where prefix sharing
does not, the identity probability meets the FLOPs band, and a CI-sized search exports what retrain rebuilds."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT
from tests.test_backbone_search import tiny_backbone_overrides

CONFIG = ROOT / "configs" / "digits_backbone_vitas.yml"


def channel_counts(cyclic: bool) -> dict[str, torch.Tensor]:
    """Per embedding channel, the steps that trained it: widths 16, 32, 48, 64 of E = 64, each on two
    steps (left then right under cyclic sharing; left twice under prefix sharing)."""
    from nni.nas.strategy import RandomOneShot

    from experiments.strategies.vitas_slicing import CYCLIC_HOOKS, SIDES, set_channel_side
    from search_spaces.vit import ViTSpace

    torch.manual_seed(0)
    strategy = RandomOneShot()
    if cyclic:
        strategy.extra_mutation_hooks = list(CYCLIC_HOOKS)
    supernet = strategy.mutate_model(ViTSpace(image_size=8, patch_sizes=[4], embed_dims=(16, 32, 48, 64),
                                              max_depth=1, heads=(1,), mlp_ratios=(1,)))
    embedding = supernet.patch_embedding
    watched = {"class token": lambda: embedding.tokens.class_token.grad[0, 0],
               "position": lambda: embedding.tokens.position.grad[0].abs().sum(0),
               "patch projection": lambda: embedding.projection.weight.grad.abs().sum((1, 2, 3)),
               "final norm": lambda: supernet.norm.weight.grad}
    counts = {name: torch.zeros(64, dtype=torch.long) for name in watched}
    x = torch.randn(4, 3, 8, 8)
    step = 0
    for width in (16, 32, 48, 64):
        for _ in range(2):
            memo = {"backbone.embed_dim": width}
            for m in supernet.modules():
                if m is not supernet and hasattr(m, "resample"):
                    memo.update(m.resample(memo=memo))
            set_channel_side(supernet, SIDES[step % 2] if cyclic else "left")
            supernet.zero_grad(set_to_none=True)
            supernet(x).pow(2).sum().backward()
            for name, grad in watched.items():
                counts[name] += (grad() != 0).long()
            step += 1
    return counts


def test_cyclic_sharing_trains_every_channel_equally_where_prefix_sharing_is_skewed():
    # prefix: channel c trains whenever D > c: 8, 6, 4, 2 steps for the four blocks of 16 channels
    prefix = torch.tensor([8] * 16 + [6] * 16 + [4] * 16 + [2] * 16)
    # cyclic: left steps D > c plus right steps D > 63 - c: (4 + 1), (3 + 2), (2 + 3), (1 + 4) = 5 everywhere
    cyclic = torch.full((64,), 5)
    for name, counted in channel_counts(cyclic=False).items():
        assert torch.equal(counted, prefix), name
    for name, counted in channel_counts(cyclic=True).items():
        assert torch.equal(counted, cyclic), name


def one_step_of_a_hand_made_net(sides: str, global_step: int = 0):
    """One ``CyclicPathModule`` training step of a net whose backbone is one cyclic linear layer (3 -> D of 3,
    weights 1..9, D = 1: the left slice is row [1, 2, 3], the right row [7, 8, 9]) on x = [1, 1, 1], loss the
    sum of the backbone's output. Returns (the losses the framework returned, framework calls, the weight's grad)."""
    import nni
    from nni.nas.evaluator.pytorch import LightningModule
    from nni.nas.nn.pytorch import ModelSpace, MutableLinear
    from nni.nas.strategy import RandomOneShot

    from experiments.strategies.sampling import CyclicPathModule
    from experiments.strategies.vitas_slicing import CYCLIC_HOOKS

    class Net(ModelSpace):
        def __init__(self):
            super().__init__()
            self.backbone = MutableLinear(3, nni.choice("width", [1, 3]), bias=False)

    class Framework(LightningModule):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def training_step(self, batch, batch_idx):
            self.calls += 1
            return self.model.backbone(batch).sum()

    strategy = RandomOneShot()
    strategy.extra_mutation_hooks = list(CYCLIC_HOOKS)
    supernet = strategy.mutate_model(Net())
    with torch.no_grad():
        supernet.backbone.weight.copy_(torch.arange(1.0, 10.0).view(3, 3))
    framework = Framework()
    framework.model = supernet
    module = CyclicPathModule(framework, lambda: {"width": 1}, sides)
    module.set_model(supernet)
    type(module).global_step = property(lambda self: global_step)
    try:
        loss = module.training_step(torch.ones(1, 3), 0)
    finally:
        del type(module).global_step
    loss.backward()  # what Lightning does with the one loss the step returns
    assert "forward" not in vars(supernet.backbone)  # the summing forward is gone after the step
    return loss.item(), framework.calls, supernet.backbone.weight.grad


def test_both_sides_run_in_one_step_and_their_outputs_are_summed_before_the_one_loss():
    loss, calls, grad = one_step_of_a_hand_made_net("both")
    assert loss == 6 + 24 and calls == 1  # left row . x + right row . x, one framework step, one loss
    assert torch.equal(grad, torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 1, 1]]))  # one backward reaches both rows


def test_alternating_sides_train_the_left_on_even_steps_and_the_right_on_odd_ones():
    for step, expected_loss, row in ((0, 6, 0), (1, 24, 2)):
        loss, calls, grad = one_step_of_a_hand_made_net("alternate", global_step=step)
        assert loss == expected_loss and calls == 1
        expected = torch.zeros(3, 3)
        expected[row] = 1
        assert torch.equal(grad, expected)


def test_the_identity_probability_puts_the_mean_draw_in_the_budget_band():
    import numpy as np

    from experiments.strategies.vitas import identity_draws, shifted_sample, tune_identity_prob
    from search_spaces.cost import BackboneCost
    from search_spaces.vit import ViTSpace

    # one patch size, one E, one MLP ratio: a draw's FLOPs are base + depth * per-layer FLOPs exactly
    space = ViTSpace(image_size=8, patch_sizes=[4], embed_dims=[32], max_depth=4, heads=(1, 2), mlp_ratios=(2,))
    cost = BackboneCost(space, 8)
    one, two = cost(space.shift_identities({}, [(1, 2), None, None, None])), \
        cost(space.shift_identities({}, [(1, 2), (2, 2), None, None]))
    per_layer = two.flops - one.flops
    base = one.flops - per_layer
    # E[depth] = 4 (1 - p) + p^4 (an all-identity draw keeps one block); p = 0.5 gives 2.0625 layers
    budget = base + 2.0625 * per_layer
    draws = identity_draws(space, 1000, np.random.RandomState(0))
    p, mean = tune_identity_prob(space, cost, budget, 0.99, draws, log_fn=lambda line: None)
    assert 0.99 * budget <= mean <= budget
    assert mean == pytest.approx(sum(cost(shifted_sample(space, d, p)).flops for d in draws) / len(draws))
    assert p == pytest.approx(0.5, abs=0.03)  # the analytic probability, to the draws' noise
    # a budget above every full-depth network: no identities; one below every one-block draw: near 1
    assert tune_identity_prob(space, cost, 10 * budget, 0.9, draws, log_fn=lambda line: None)[0] == 0.0
    assert tune_identity_prob(space, cost, base, 0.9, draws, log_fn=lambda line: None)[0] > 0.999


def load(out, **extra):
    from experiments.core.validation import load_config

    overrides = tiny_backbone_overrides(out, **{
        "model.backbone_width": 1.0, "backbone_search.max_flops": 3e5, "backbone_search.bn_batches": 0,
        "backbone_search.strategy_options": {"population": 3, "generations": 2, "tuning_samples": 200,
                                             "tournament": 2}})
    overrides.update(extra)
    return load_config(CONFIG, overrides)


def test_a_ci_sized_vitas_search_stays_in_the_band_and_exports_what_retrain_rebuilds(tmp_path, optimised_weights):
    from experiments.core.records import build_fixed, read_architecture
    from experiments.jobs.backbone_search import run_backbone_search
    from experiments.jobs.retrain import run_retrain
    from search_spaces.vit import ViTSpace
    from tests.test_vit_space import attention_products
    from search_spaces.cost import count_fixed

    out = tmp_path / "search"
    cfg = load(out)
    lines: list[str] = []
    record = run_backbone_search(cfg, out, log_fn=lines.append)
    assert record["strategy"] == "vitas" and record["status"] == "ok"
    assert any(line.startswith("vitas: identity probability") for line in lines)
    # the training moved the backbone (both sides' slices and the private embeddings) and the heads
    assert optimised_weights.moved("backbone.patch_embedding.") and optimised_weights.moved("projector.")
    # the evolution scored population x generations = 6 networks, all in [0.9 x budget, budget]
    assert len(record["evolution"]) == 6
    assert all(270_000 <= r["flops"] <= 300_000 for r in record["evolution"])
    assert 270_000 <= record["cost"]["flops"] <= 300_000
    space = ViTSpace(image_size=8)
    assert record["architecture"] == space.canonical(record["architecture"])  # one sample per network
    network, architecture = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert architecture == record["architecture"]
    saved = torch.load(out / "search_model.pt", weights_only=True)
    network.load_state_dict(saved["state_dict"])  # the searched weights fit the rebuilt network exactly
    assert count_fixed(network.backbone, 8).flops + attention_products(network.backbone, 8) == record["cost"]["flops"]
    assert sum(p.numel() for p in network.backbone.parameters()) == record["cost"]["params"]
    result = run_retrain(cfg, read_architecture(out / "best_architecture.json"), tmp_path / "retrain",
                         log_fn=lambda line: None)
    assert result["architecture"] == record["architecture"]
    assert optimised_weights.moved() == optimised_weights.names()  # the retrain trained every weight


@pytest.mark.parametrize("override,message", [
    ({"backbone_search.strategy_options": {"sharing": "both"}}, "sharing: must be one of cyclic, prefix"),
    ({"backbone_search.strategy_options": {"sides_per_step": "left"}},
     "sides_per_step: must be one of both, alternate, got 'left'"),
    ({"model.backbone": "resnet", "model.backbone_options": {}},
     r"vitas searches a space whose layers shift to identities \(vit\), got resnet"),
    ({"model.head_space": "nasiam"}, "vitas searches the backbone only"),
    ({"backbone_search.strategy_options": {"population": 2, "tournament": 4}},
     r"strategy_options.tournament: must be <= backbone_search.strategy_options.population \(2\)"),
])
def test_bad_vitas_settings_are_refused_before_anything_runs(tmp_path, override, message):
    from experiments.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load(tmp_path / "x", **override)


def test_a_vit_built_for_another_image_size_is_refused_before_anything_is_written(tmp_path):
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import run_backbone_search

    cfg = load(tmp_path / "x", **{"model.backbone_options": {"image_size": 32}})
    with pytest.raises(ConfigError, match=r"^model: backbone_options.image_size: the vit space is built for 32 px "
                                          r"images, the data are 8 px$"):
        run_backbone_search(cfg, tmp_path / "x", log_fn=lambda line: None)
    assert not (tmp_path / "x").exists()
