"""The strategies' own hooks reach the steps they change (each lives in the strategy's NNI Lightning module).

- DARTS: an architecture-step penalty moves the alphas' gradient by exactly its own gradient (zero
  without it), through NNI's real training step (a Lightning ``fit`` of one batch);
- ENAS: the framework's validation step, which NNI's ENAS asks for the reward, is the module's
  reward step, and it scores the held-out batch it is given;
- width strategies: the module's step trains the sampled channels only, with the framework's
  views and step count once.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from evaluators import FRAMEWORKS
from search_spaces import SSLNetworkSpace
from search_spaces.supernet import mixed_layers


# --- DARTS: the architecture step's penalties ------------------------------------------------------------
def _framework_and_space():
    torch.manual_seed(0)
    framework = FRAMEWORKS["simsiam"](interleaved=True, embedding_dim=8, batch_size=8)
    return framework, SSLNetworkSpace(framework.heads, "nasiam", "resnet18", backbone_width=0.125, head_width=0.0625)


def _first_architecture_gradients(param_free_penalty: float = 0.0, probe_weight: float = 0.0) -> dict:
    """The alphas' gradients after the first backward of one DARTS batch (the architecture step's)."""
    import pytorch_lightning as pl

    from experiments.strategies.darts import DartsStrategy

    framework, space = _framework_and_space()
    probed = {}

    def probe(module) -> torch.Tensor:  # a penalty whose gradient is known: probe_weight on every entry
        label, (_, alpha) = sorted(mixed_layers(module.model).items())[0]
        probed["label"] = label
        return probe_weight * alpha.sum()

    strategy = DartsStrategy(hooks={"param_free_penalty": param_free_penalty, "penalties": {"probe": probe}},
                             arc_learning_rate=1e-3)
    supernet = strategy.mutate_model(space)
    module = strategy.configure_oneshot_module(framework)
    module.set_model(supernet)
    grads: list = []

    class FirstBackward(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            if not grads:
                grads.append({label: alpha.grad.clone() for label, (_, alpha) in mixed_layers(supernet).items()})

    g = torch.Generator().manual_seed(1)
    views = TensorDataset(torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g))
    loaders = strategy.train_dataloader(lambda: DataLoader(views, batch_size=8), lambda: DataLoader(views, batch_size=8))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[FirstBackward()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loaders)
    return {"grads": grads[0], "label": probed["label"]}


def test_darts_penalty_reaches_the_architecture_gradient_and_nothing_else():
    without = _first_architecture_gradients(probe_weight=0.0)
    with_penalty = _first_architecture_gradients(probe_weight=2.5)
    label = with_penalty["label"]
    assert set(without["grads"]) == set(with_penalty["grads"]) and len(without["grads"]) > 1
    for name, grad in with_penalty["grads"].items():
        shift = grad - without["grads"][name]
        expected = torch.full_like(grad, 2.5) if name == label else torch.zeros_like(grad)
        torch.testing.assert_close(shift, expected, rtol=0, atol=1e-5, msg=name)


def test_darts_parameter_free_guard_adds_its_weighted_mass_gradient():
    from experiments.strategies.darts import DartsStrategy, parameter_free_mass

    without = _first_architecture_gradients(param_free_penalty=0.0)
    guarded = _first_architecture_gradients(param_free_penalty=2.0)
    # the mass's own gradient, at the same (seeded) initial alphas
    reference = DartsStrategy(hooks={}).mutate_model(_framework_and_space()[1])
    parameter_free_mass(reference).backward()
    moved = 0
    for name, (_, alpha) in mixed_layers(reference).items():
        mass_grad = alpha.grad if alpha.grad is not None else torch.zeros_like(alpha)
        torch.testing.assert_close(guarded["grads"][name] - without["grads"][name], 2.0 * mass_grad,
                                   rtol=1e-4, atol=1e-6, msg=name)
        moved += int(mass_grad.abs().sum() > 0)
    assert moved > 0  # the nasiam heads have parameter-free candidates


def test_darts_strategy_hands_its_penalties_to_the_module(tiny_config):
    from experiments.strategies import STRATEGIES, SearchContext
    from experiments.strategies.darts import DartsModule

    cfg = tiny_config(**{"search.param_free_penalty": 0.25, "search.arch_every": 3})
    nni_strategy = STRATEGIES["darts"].build(SearchContext(cfg, "heads"))
    module = nni_strategy.configure_oneshot_module(FRAMEWORKS["simsiam"](interleaved=True))
    assert isinstance(module, DartsModule)
    assert module.param_free_penalty == 0.25 and module.arch_every == 3 and module.penalties == {}


# --- ENAS: the reward step --------------------------------------------------------------------------------
@pytest.fixture
def enas_module(monkeypatch):
    """ENAS's module over a tiny macro supernet; NNI's tianshou check is skipped (its policy is not used here)."""
    from nni.nas.oneshot.pytorch import sampling
    from nni.nas.strategy import RandomOneShot

    from experiments.strategies.enas import TaggedENAS

    monkeypatch.setattr(sampling, "has_tianshou", True)

    def make(framework_name: str, bank):
        torch.manual_seed(0)
        framework = FRAMEWORKS[framework_name](embedding_dim=8)
        space = SSLNetworkSpace(framework.heads, "fixed", "nas_bench_macro", backbone_width=0.125, head_width=0.0625,
                                num_classes=3)
        framework.set_model(RandomOneShot().mutate_model(space))
        module = TaggedENAS(reward_bank=bank).configure_oneshot_module(framework)
        sample: dict = {}
        for mixed in module.supernet_modules():  # a path, as NNI's controller would sample one
            sample.update(mixed.resample(memo=sample))
        return framework, module

    return make


def test_enas_reward_step_scores_the_held_out_batch_it_is_given(enas_module):
    from evaluators.downstream import knn_predict

    g = torch.Generator().manual_seed(3)
    bank = (torch.randn(12, 3, 8, 8, generator=g), torch.arange(12) % 3, 3, 5, 0.1)
    framework, module = enas_module("simsiam", bank)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    held_out = (torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2] * 2))
    framework.eval()
    value = framework.validation_step(held_out, 0)  # what NNI's ENAS calls on a "val" batch
    with torch.no_grad():
        features = framework.backbone(torch.cat([bank[0], held_out[0]]))
    expected = (knn_predict(features[12:], features[:12], bank[1], 3, 5, 0.1) == held_out[2]).float().mean()
    assert logged == {"val/reward": pytest.approx(float(expected))} and float(value) == pytest.approx(float(expected))
    assert not hasattr(FRAMEWORKS["simsiam"], "reward_step")  # the framework itself has no reward


def test_enas_reward_of_a_classifier_is_its_accuracy_on_the_batch(enas_module):
    framework, module = enas_module("supervised", None)
    module.log = lambda *args, **kwargs: None
    x = torch.randn(9, 3, 8, 8)
    framework.eval()
    with torch.no_grad():
        predicted = framework.projector(framework.backbone(x)).argmax(1)
    labels = predicted.clone()
    labels[:3] = (labels[:3] + 1) % 3  # three wrong on purpose
    assert float(framework.validation_step((x, labels), 0)) == pytest.approx(6 / 9)


def test_enas_batches_reach_the_module_tagged_with_their_loader():
    from experiments.strategies.enas import TaggedENAS

    train = [(torch.zeros(2), torch.zeros(2))] * 3
    val = [(torch.ones(2), torch.ones(2))] * 2
    loader = TaggedENAS(reward_bank=None).train_dataloader(lambda: train, lambda: val)
    assert list(loader.iterables) == ["train", "val"]  # NNI's ConcatLoader: every train batch, then every val one
    items = [item for tagged in loader.iterables.values() for item in tagged]
    assert [tag for _, tag in items] == ["train"] * 3 + ["val"] * 2
    assert all(float(batch[0].sum()) == (2.0 if tag == "val" else 0.0) for batch, tag in items)


# --- width strategies: the path-sampled step --------------------------------------------------------------
def test_width_step_trains_the_sampled_channels_only():
    from evaluators.simsiam import SimSiam
    from experiments.strategies.width_sampling import WidthSamplingModule, WidthStep
    from search_spaces.channels import width_blocks

    torch.manual_seed(0)
    network = SSLNetworkSpace(SimSiam.heads, "fixed", "nas_bench_macro_width", 0.125, head_width=0.0625,
                              backbone_options={"stages": [1, 1, 1]})
    framework = SimSiam(embedding_dim=8, batch_size=4)
    framework.set_model(network)
    labels = [b.label for b in network.backbone.layers]
    placement = {label: [1, 3] for label in labels}
    step = WidthStep({label: 2 for label in labels}, [placement])
    module = WidthSamplingModule(framework, lambda: SimpleNamespace(next_step=lambda: step,
                                                                    after_step=lambda finished: None))
    views = (torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a trainer warns
        loss = module.training_step(views, 0)
    loss.backward()
    assert framework.weight_steps == 1 and len(step.losses) == 1
    for block in width_blocks(network.backbone):
        trained = block.expand.weight.grad.abs().flatten(1).sum(1) > 0
        assert trained.nonzero().flatten().tolist() == [1, 3], block.label


# --- one search job: the head search goes through the strategy's select and derive -------------------------
def test_head_search_records_what_the_strategy_selects_and_derives(tiny_config, tmp_path, monkeypatch):
    from experiments.jobs.search import run_search
    from experiments.strategies import STRATEGIES, Selection

    darts = STRATEGIES["darts"]
    seen = {}
    select, derive = darts.select, darts.derive

    def chosen(ctx, nni_strategy):  # the argmax, with one choice moved to its least probable value
        selection = select(ctx, nni_strategy)
        label = sorted(selection.probabilities)[0]
        probabilities = selection.probabilities[label]
        least = min(probabilities, key=probabilities.get)
        seen["selected"] = dict(selection.architecture, **{label: least})
        return Selection(seen["selected"], selection.probabilities)

    def derived(nni_strategy, architecture):
        seen["derived"] = architecture
        return derive(nni_strategy, architecture)

    monkeypatch.setattr(darts, "select", chosen)
    monkeypatch.setattr(darts, "derive", derived)
    cfg = tiny_config(**{"search.epochs": 1, "data.train_subset": 256, "data.test_subset": 100,
                         "evaluation.linear_epochs": 5, "search.collapse_threshold": 0.0})
    record = run_search(cfg, tmp_path / "run", log_fn=lambda line: None)
    assert record["architecture"] == seen["selected"] == seen["derived"]
    assert record["kind"] == "ssl_head_search" and record["status"] == "ok"
    assert record["metrics"]["select_seconds"] >= 0 and record["evolution"] == []
