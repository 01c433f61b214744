"""Which batch goes to which step, and which side of a width is trained and scored.

Each test hands the job's objects (built as the backbone-search job builds them, see
``test_wiring_options.search_objects``) batches or weights the test can tell apart: a held-out batch
unlike the training batch, a layer whose left channels differ from its right ones.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_wiring_options import search_objects

WIDTH_SEARCH = {"model.backbone": "nas_bench_macro_width", "backbone_search.max_flops": 40_000}


def two_batches(job):
    """A batch of the weight split and one of the held-out split: different images."""
    weight = next(iter(job.setup.data.loader(job.setup.weight_idx, job.cfg)))
    held_out = next(iter(job.setup.data.loader(job.setup.arch_idx, job.cfg)))
    assert not torch.equal(weight[0], held_out[0])
    return weight, held_out


def record_framework_steps(module, seen: list, names: dict) -> None:
    """Each call of the framework's ``training_step`` appended to ``seen`` as (batch name, batch_idx)."""
    step = module.training_step

    def recording(batch, batch_idx, *args, **kwargs):
        seen.append((next((name for name, b in names.items() if b is batch), "another batch"), batch_idx))
        return step(batch, batch_idx, *args, **kwargs)

    module.training_step = recording


# --- K-shot: the simplex-net learns on held-out batches, the weights on training batches --------------

def test_kshot_simplex_step_takes_the_held_out_batch_and_the_weight_step_the_training_batch(tmp_path):
    torch.manual_seed(0)
    job = search_objects(tmp_path / "run", **{"backbone_search.strategy": "kshot", "search.epochs": 2,
                                              "backbone_search.strategy_options": {"k": 3, "spos_epochs": 1}})
    oneshot = job.oneshot
    loaders = job.nni_strategy.train_dataloader(lambda: "weight split", lambda: "held-out split")
    assert loaders == {"train": "weight split", "val": "held-out split"}

    oneshot.make_kshot()
    oneshot.log = lambda *args, **kwargs: None  # no trainer to log to
    train, held_out = two_batches(job)
    seen: list = []
    record_framework_steps(oneshot.training_module, seen, {"train": train, "held out": held_out})
    oneshot.training_step({"train": train, "val": held_out}, 3)
    # the simplex step first (an even, architecture-step index), then the weight step (odd)
    assert seen == [("held out", 6), ("train", 7)]
    assert oneshot.simplex_steps == 1


# --- the frameworks: an architecture step leaves the momentum branch and the queue alone ------------

@pytest.mark.parametrize("framework", ["byol", "moco"])
def test_only_the_weight_step_of_an_interleaved_pair_moves_the_momentum_branch(tiny_config, framework):
    from experiments.core.assembly import build_module
    from tests.test_wiring_options import momentum_network

    module = build_module(tiny_config(framework=framework, framework_options={"momentum": 0.5}), 2,
                          interleaved=True)
    model = momentum_network(module.embedding_dim)
    module.set_model(model)
    module.log = lambda *args, **kwargs: None
    module._trainer = SimpleNamespace(max_epochs=2, num_training_batches=4, current_epoch=0)
    g = torch.Generator().manual_seed(0)
    architecture_views = [torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)]
    weight_views = [torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)]
    queue = module.queue.clone() if framework == "moco" else None
    module.training_step(architecture_views, 0)  # batch 0's architecture step
    assert not model.momentum_backbone.weight.any()
    if framework == "moco":
        assert torch.equal(module.queue, queue)
    module.training_step(weight_views, 1)  # batch 0's weight step
    assert torch.allclose(model.momentum_backbone.weight, torch.full_like(model.momentum_backbone.weight, 0.5))
    if framework == "moco":  # the keys pushed are the weight step's views' keys
        with torch.no_grad():
            keys = [torch.nn.functional.normalize(model.momentum_projector(model.momentum_backbone(x)), dim=1)
                    for x in weight_views]
        # (the momentum maps moved before the keys were computed: the EMA runs first)
        assert torch.allclose(module.queue[:12], torch.cat(keys), atol=1e-6)


# --- BCNet: both sides of a width, in training and in scoring ----------------------------------------

def channel_numbered(job) -> tuple[str, int]:
    """Layer 1's expand conv of the supernet with every weight of output channel c equal to c."""
    block = next(m for name, m in job.supernet.named_modules() if name == "backbone.layers.0")
    conv = block.expand
    with torch.no_grad():
        conv.weight.copy_(torch.arange(conv.out_channels, dtype=conv.weight.dtype).view(-1, 1, 1, 1)
                          .expand_as(conv.weight))
    return "backbone.layer1.width", conv.out_channels


def channel_sum_scorer(network) -> float:
    """A hand-made score: the sum of the channel numbers layer 1's first convolution holds."""
    conv = next(m for m in network.backbone.layers[0].modules() if isinstance(m, torch.nn.Conv2d))
    return float(conv.weight[:, 0, 0, 0].sum())


@pytest.mark.parametrize("strategy", ["bcnet", "autoslim"])
def test_bcnet_scores_a_width_by_its_left_and_right_channels(tmp_path, strategy):
    job = search_objects(tmp_path / "run", **WIDTH_SEARCH, **{"backbone_search.strategy": strategy})
    label, full = channel_numbered(job)
    ctx = dataclasses.replace(job.ctx, scorer=channel_sum_scorer, log_fn=lambda line: None)
    nni_strategy = SimpleNamespace(supernet=job.supernet, oneshot_module=job.oneshot)  # NNI's after a run
    np.random.seed(0)
    selection = job.strategy.select(ctx, nni_strategy)
    assert selection.evolution
    for entry in selection.evolution:
        w = int(entry["architecture"][label])
        left, right = sum(range(w)), sum(range(full - w, full))  # channels [0, w) and [C - w, C)
        assert left != right
        expected = (left + right) / 2 if strategy == "bcnet" else left
        assert entry["score"] == pytest.approx(expected), (w, entry["score"])


def test_bcnet_trains_the_left_then_the_right_channels_of_the_drawn_width(tmp_path):
    job = search_objects(tmp_path / "run", **WIDTH_SEARCH, **{"backbone_search.strategy": "bcnet"})
    oneshot, framework = job.oneshot, job.oneshot.training_module
    block = next(m for name, m in job.supernet.named_modules() if name == "backbone.layers.0")
    used: list = []
    loss = framework.ssl_loss

    def recording(views, arch_step):
        used.append(block.channels.tolist())
        return loss(views, arch_step)

    framework.ssl_loss = recording
    framework.log = lambda *args, **kwargs: None
    oneshot.log = lambda *args, **kwargs: None
    train, _ = two_batches(job)
    np.random.seed(1)
    oneshot.training_step(train, 0)
    np.random.seed(1)
    w = job.oneshot.sampler.space["backbone.layer1.width"][np.random.randint(8)]  # the width that step drew
    full = block.max_width
    assert w < full
    assert used == [list(range(w)), list(range(full - w, full))]


# --- the jobs: the weight steps see the weight split, the architecture steps the held-out split ----

def split_images(cfg) -> tuple[set, set]:
    """The images (as bytes) only in the job's weight split, and those only in its held-out split."""
    from experiments.core.assembly import build_data
    from experiments.core.data import split_indices

    data = build_data(cfg)
    weight_idx, arch_idx = split_indices(len(data.train), cfg.data.search_split, cfg.seed)
    weight = {data.train.images[i].numpy().tobytes() for i in weight_idx.tolist()}
    held_out = {data.train.images[i].numpy().tobytes() for i in arch_idx.tolist()}
    return weight - held_out, held_out - weight


@pytest.fixture
def steps_seen(monkeypatch):
    """Every framework step of a job: (batch_idx, the batch's images as bytes)."""
    from evaluators.base import SSLFramework

    seen: list = []
    step = SSLFramework.training_step

    def recording(self, batch, batch_idx, *args, **kwargs):
        images = batch if torch.is_tensor(batch) else batch[0]  # uint8 images (the module makes the views)
        seen.append((batch_idx, {image.numpy().tobytes() for image in images}))
        return step(self, batch, batch_idx, *args, **kwargs)

    monkeypatch.setattr(SSLFramework, "training_step", recording)
    return seen


def assert_each_step_on_its_split(seen: list, weight: set, held_out: set) -> None:
    arch_steps = [images for idx, images in seen if idx % 2 == 0]
    weight_steps = [images for idx, images in seen if idx % 2 == 1]
    assert arch_steps and weight_steps
    for images in arch_steps:
        assert images & held_out and not images & weight
    for images in weight_steps:
        assert images & weight and not images & held_out


def test_head_search_weight_steps_take_the_weight_split_and_darts_steps_the_held_out_split(tiny_config, tmp_path,
                                                                                          steps_seen):
    from experiments.jobs.search import run_search

    cfg = tiny_config(**{"search.epochs": 1, "data.train_subset": 256, "search.collapse_threshold": 0.0,
                         "data.batched_augment": True})  # the steps see the raw images
    weight, held_out = split_images(cfg)
    run_search(cfg, tmp_path / "run", log_fn=lambda line: None)
    assert_each_step_on_its_split(steps_seen, weight, held_out)


def test_kshot_search_weight_steps_take_the_weight_split_and_simplex_steps_the_held_out_split(tmp_path, steps_seen):
    from tests.test_backbone_search import load, run

    out = tmp_path / "run"
    cfg = load(out, **{"backbone_search.strategy": "kshot", "search.epochs": 2, "backbone_search.max_flops": 40_000,
                       "backbone_search.strategy_options": {"k": 2, "spos_epochs": 1},
                       "data.batched_augment": True})
    weight, held_out = split_images(cfg)
    run(cfg, out)
    assert_each_step_on_its_split(steps_seen, weight, held_out)


# --- ViTAS: a width is scored on its left and right slices under cyclic sharing, the left under prefix ---

@pytest.mark.parametrize("sharing", ["cyclic", "prefix"])
def test_vitas_scores_a_width_by_its_left_and_right_slices(tmp_path, sharing):
    job = search_objects(tmp_path / "run", **{
        "model.backbone": "vit", "model.backbone_options": {"image_size": 8, "patch_sizes": [4],
                                                            "embed_dims": [8, 16], "max_depth": 1,
                                                            "heads": [1], "mlp_ratios": [1]},
        "model.backbone_width": 1.0, "backbone_search.strategy": "vitas", "backbone_search.max_flops": None,
        "backbone_search.strategy_options": {"sharing": sharing, "tune_identity": False, "population": 3}})
    tokens = job.supernet.backbone.patch_embedding.tokens
    with torch.no_grad():  # class-token channel c holds c
        tokens.class_token.copy_(torch.arange(16.0).view(1, 1, 16))
    ctx = dataclasses.replace(job.ctx, scorer=lambda net: float(net.backbone.patch_embedding.tokens.class_token.sum()))
    score_of = job.strategy.score_function(ctx, job.supernet)
    left, right = sum(range(8)), sum(range(8, 16))  # E = 8 of 16: channels [0, 8) and [8, 16)
    assert score_of({"backbone.embed_dim": 8}) == pytest.approx((left + right) / 2 if sharing == "cyclic" else left)
    assert score_of({"backbone.embed_dim": 16}) == pytest.approx(left + right)  # the full width: one slice
