"""ReSSL and WCL: each loss against its definition, the once-per-weight-step state, tiny DARTS searches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evaluators import FRAMEWORKS
from evaluators.base import SSLFramework
from evaluators.losses import KNNMultiCropLoss, RelationalLoss, SupConLoss, WeakLabelSupConLoss, weak_labels
from evaluators.ressl import ReSSL
from evaluators.wcl import WCL, low_res_crop
from experiments.core.assembly import build_data, build_module, build_space
from evaluators.views import AugmentSettings
from search_spaces import SSLNetworkSpace


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def on_circle(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


# --- ReSSL's relational loss ----------------------------------------------------------------------

def test_relational_loss_with_identical_relations_is_their_entropy():
    queue = unit([1.0, 0.0], [0.0, 1.0], [-1.0, 1.0])
    z = unit([2.0, 1.0], [-0.5, 1.0])
    loss = RelationalLoss(student_temperature=0.5, teacher_temperature=0.5)(z, z, queue)
    entropies = []
    for row in z:
        logits = [float(row @ m) / 0.5 for m in queue]
        total = sum(math.exp(v) for v in logits)
        p = [math.exp(v) / total for v in logits]
        entropies.append(-sum(pi * math.log(pi) for pi in p))
    assert loss.item() == pytest.approx(sum(entropies) / 2, rel=1e-5)


def test_relational_loss_is_cross_entropy_of_sharpened_teacher_and_student():
    queue = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    student, teacher = unit([1.0, 2.0]), unit([3.0, 1.0])
    loss = RelationalLoss(student_temperature=0.1, teacher_temperature=0.04)(student, teacher, queue)

    def softmax(values):
        total = sum(math.exp(v) for v in values)
        return [math.exp(v) / total for v in values]

    p_s = softmax([float(student[0] @ m) / 0.1 for m in queue])
    p_t = softmax([float(teacher[0] @ m) / 0.04 for m in queue])
    assert loss.item() == pytest.approx(-sum(t * math.log(s) for t, s in zip(p_t, p_s)), rel=1e-5)


def test_relational_loss_gives_no_gradient_to_teacher_or_queue():
    queue = unit([1.0, 0.0], [0.0, 1.0]).requires_grad_()
    student = torch.randn(3, 2, requires_grad=True)
    teacher = torch.randn(3, 2, requires_grad=True)
    RelationalLoss()(student, teacher, queue).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and queue.grad is None


# --- WCL's weak labels and supervised contrastive losses -----------------------------------------

def test_weak_labels_are_the_connected_components_of_the_one_nn_graph():
    # Points on the unit circle (degrees). Nearest neighbours: 0<->10, 25->10 (a chain of
    # three), 90<->100, 200<->215; so the components are {0, 10, 25}, {90, 100}, {200, 215}.
    z = on_circle(0, 10, 25, 90, 100, 200, 215)
    labels = weak_labels(z).tolist()
    groups = [{0, 1, 2}, {3, 4}, {5, 6}]
    for i in range(7):
        for j in range(7):
            same = any(i in g and j in g for g in groups)
            assert (labels[i] == labels[j]) == same, (i, j, labels)
    assert sorted(set(labels)) == [0, 1, 2]


def supcon_by_hand(anchors, contrast, positives, exclude, t):
    a, c = F.normalize(anchors, dim=1), F.normalize(contrast, dim=1)
    losses = []
    for i in range(len(a)):
        allowed = [j for j in range(len(c)) if not exclude[i][j]]
        pos = [j for j in allowed if positives[i][j]]
        if not pos:
            continue
        denominator = sum(math.exp(float(a[i] @ c[j]) / t) for j in allowed)
        losses.append(-sum(math.log(math.exp(float(a[i] @ c[p]) / t) / denominator) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_supcon_equals_its_formula_on_a_small_case():
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    labels = [0, 0, 1, 1]
    positives = [[labels[i] == labels[j] for j in range(4)] for i in range(4)]
    exclude = [[i == j for j in range(4)] for i in range(4)]
    loss = SupConLoss(0.5)(z, z, torch.tensor(positives), torch.tensor(exclude))
    assert loss.item() == pytest.approx(supcon_by_hand(z, z, positives, exclude, 0.5), rel=1e-5)
    # by hand for anchor 0: its one positive is row 1 (cos 0.8), the others have cos 0 and -0.6
    anchor0 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(0.0) + math.exp(-1.2)))
    one_anchor = SupConLoss(0.5)(z[:1], z, torch.tensor(positives[:1]), torch.tensor(exclude[:1]))
    assert one_anchor.item() == pytest.approx(anchor0, rel=1e-6)


def test_weak_label_loss_uses_each_views_labels_on_the_other_view():
    z1 = on_circle(0, 10, 90, 100)  # components {0, 1}, {2, 3}
    z2 = on_circle(0, 120, 130, 20)  # components {0, 3}, {1, 2}
    eye = [[i == j for j in range(4)] for i in range(4)]
    same = lambda labels: [[labels[i] == labels[j] for j in range(4)] for i in range(4)]  # noqa: E731
    expected = (supcon_by_hand(z1, z1, same([0, 1, 1, 0]), eye, 0.1)
                + supcon_by_hand(z2, z2, same([0, 0, 1, 1]), eye, 0.1)) / 2
    assert WeakLabelSupConLoss(0.1)(z1, z2).item() == pytest.approx(expected, rel=1e-5)


def test_knn_multicrop_keeps_the_crops_nearest_their_image():
    z1 = on_circle(0, 90)
    z2 = on_circle(10, 100)
    # image 0 sits at 5 degrees: its crops at 180, 95, 20 -> keep crops 1 and 2;
    # image 1 sits at 95 degrees: its crops at 90, 270, 0 -> keep crops 0 and 2
    crops = [on_circle(180, 90), on_circle(95, 270), on_circle(20, 0)]
    loss_fn = KNNMultiCropLoss(k=2, temperature=0.2)
    chosen = loss_fn.select(z1, z2, crops)
    assert [sorted(row) for row in chosen.tolist()] == [[1, 2], [0, 2]]
    anchors = torch.stack([crops[1][0], crops[2][0], crops[0][1], crops[2][1]])
    contrast = torch.cat([z1, z2])
    image = [0, 0, 1, 1]
    positives = [[image[i] == j % 2 for j in range(4)] for i in range(4)]
    expected = supcon_by_hand(anchors, contrast, positives, [[False] * 4] * 4, 0.2)
    assert loss_fn(z1, z2, crops).item() == pytest.approx(expected, rel=1e-5)
    assert KNNMultiCropLoss(k=5).select(z1, z2, crops).shape == (2, 3)  # K above the crop count: all


# --- views ------------------------------------------------------------------------------------------

def test_view_transforms_give_weak_strong_and_low_resolution_crops():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    settings = AugmentSettings()
    mean, std = [0.5] * 3, [0.25] * 3
    assert len(ReSSL.view_transforms(settings, 32, mean, std)) == 2
    views = WCL.view_transforms(settings, 32, mean, std, options={"low_res_crops": 3})
    shapes = [tuple(v(image).shape) for v in views]
    side, _ = low_res_crop(32)
    assert shapes == [(3, 32, 32)] * 2 + [(3, side, side)] * 3 and side == 16
    assert low_res_crop(224) == (96, (0.05, 0.14))
    assert len(WCL.view_transforms(settings, 32, mean, std, options={"multi_crop": False})) == 2


# --- the framework modules ------------------------------------------------------------------------

@pytest.mark.parametrize("framework", ["ressl", "wcl"])
@pytest.mark.parametrize("head_space", ["nasiam", "mlp", "fixed"])
def test_every_head_space_builds_freezes_and_trains(framework, head_space, tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(framework=framework, **{"model.head_space": head_space})
    space = build_space(cfg)
    labels = list(space.simplify())
    if framework == "wcl" and head_space != "fixed":
        assert any(label.startswith("projector2.") for label in labels)
        assert {label.replace("projector2.", "projector.") for label in labels if label.startswith("projector2.")} \
            == {label for label in labels if label.startswith("projector.")}
    network = space.freeze({label: list(m.values)[-1] for label, m in space.simplify().items()})
    module = build_module(cfg, 1, interleaved=False)
    module.set_model(network)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)]
    if framework == "wcl":
        views += [torch.randn(8, 3, 4, 4, generator=g)] * 3
    parts = {"backbone": network.backbone, "projector": network.projector}
    if framework == "wcl":
        parts["projector2"] = network.projector2
    before = {name: [p.detach().clone() for p in part.parameters()] for name, part in parts.items()}
    queue = module.queue.clone() if framework == "ressl" else None

    def loss_on_the_batch():  # ReSSL: the same queue every step (a weight step pushes its keys)
        loss = module.ssl_loss(views, arch_step=False)
        if queue is not None:
            with torch.no_grad():
                module.queue.copy_(queue)
                module.queue_ptr.zero_()
        return loss

    # two small steps of the framework's own optimiser (a tenth of its rate: the searched heads'
    # WCL loss on noise overshoots at the full rate) on one fixed batch lower its loss
    optimizer = module.configure_optimizers()["optimizer"]
    for group in optimizer.param_groups:
        group["lr"] /= 10
    losses = []
    for step in range(2):
        optimizer.zero_grad()
        loss = loss_on_the_batch()
        loss.backward()
        if step == 0:
            for name, part in parts.items():
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(loss_on_the_batch().item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    for name, part in parts.items():  # and every trained part moved
        assert any(not torch.equal(p, b) for p, b in zip(part.parameters(), before[name])), name


def test_config_accepts_framework_options_and_rejects_unknown(tiny_config):
    from experiments.core.errors import ConfigError

    cfg = tiny_config(framework="wcl", **{"framework_options.multi_crop": False})
    assert cfg.framework_options == {"multi_crop": False}
    with pytest.raises(ConfigError, match="queue_size"):
        tiny_config(framework="wcl", **{"framework_options.queue_size": 8})
    with pytest.raises(ConfigError, match=r"must be in \[1, 1048576\]"):
        tiny_config(framework="ressl", **{"framework_options.queue_size": 0})


def test_ressl_updates_queue_and_momentum_only_in_weight_steps():
    torch.manual_seed(0)
    network = SSLNetworkSpace(FRAMEWORKS["ressl"].heads, "fixed", backbone_width=0.125, head_width=0.0625)
    module = ReSSL(interleaved=True, embedding_dim=8, queue_size=16, teacher_momentum=0.9)
    module.set_model(network)
    with torch.no_grad():  # make online and momentum branches differ so the EMA is visible
        for p in network.backbone.parameters():
            p.add_(0.1)
    batch = (torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))

    def snapshot():
        return ([p.clone() for p in network.momentum_backbone.parameters()], module.queue.clone(),
                int(module.queue_ptr))

    before = snapshot()
    module.training_step(batch, 0)  # even index: the architecture step
    after_arch = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(before[0], after_arch[0]))
    assert torch.equal(before[1], after_arch[1]) and after_arch[2] == 0 and module.weight_steps == 0

    online = [p.clone() for p in network.backbone.parameters()]
    module.training_step(batch, 1)  # odd index: the weight step
    momentum, queue, ptr = snapshot()
    for target, old, new in zip(momentum, before[0], online):
        assert torch.allclose(target, 0.9 * old + 0.1 * new, atol=1e-6)
    assert ptr == 4 and module.weight_steps == 1
    with torch.no_grad():
        keys = F.normalize(module.momentum_embed(batch[1]), dim=1)
    assert torch.allclose(queue[:4], keys, atol=1e-5) and torch.equal(queue[4:], before[1][4:])


# --- tiny DARTS searches --------------------------------------------------------------------------

def test_ressl_darts_search_updates_once_per_weight_step(tiny_config, tmp_path, monkeypatch):
    from experiments.jobs.search import run_search

    calls = {"momentum": 0, "enqueue": 0, "arch_steps": 0, "weight_steps": 0}
    seen = {}
    step, momentum_step, enqueue = ReSSL.training_step, SSLFramework.momentum_step, ReSSL.enqueue

    def counted_step(self, batch, batch_idx):
        calls["arch_steps" if batch_idx % 2 == 0 else "weight_steps"] += 1
        seen["module"] = self
        return step(self, batch, batch_idx)

    def counted_momentum(self, *a, **k):
        calls["momentum"] += 1
        return momentum_step(self, *a, **k)

    def counted_enqueue(self, keys):
        calls["enqueue"] += 1
        return enqueue(self, keys)

    monkeypatch.setattr(ReSSL, "training_step", counted_step)
    monkeypatch.setattr(SSLFramework, "momentum_step", counted_momentum)
    monkeypatch.setattr(ReSSL, "enqueue", counted_enqueue)
    cfg = tiny_config(framework="ressl", **{"framework_options.queue_size": 96, "search.collapse_threshold": 0.0})
    record = run_search(cfg, tmp_path / "ressl", log_fn=lambda _: None)
    # 512 images split 256/256 into batches of 64: 4 weight and 4 architecture steps per epoch
    assert calls == {"momentum": 8, "enqueue": 8, "arch_steps": 8, "weight_steps": 8}
    module = seen["module"]
    assert module.weight_steps == 8 and int(module.queue_ptr) == (8 * 64) % 96
    assert set(record["architecture"]) == {f"projector.layer{i}.op" for i in range(1, 5)}
    assert record["metrics"]["knn_top1"] > record["metrics"]["chance"]


def test_wcl_darts_search_moves_both_heads_then_retrains_and_evaluates(tiny_config, tmp_path, optimised_weights):
    from experiments.jobs.evaluate import run_evaluate
    from experiments.jobs.retrain import run_retrain
    from experiments.jobs.search import run_search

    cfg = tiny_config(framework="wcl", **{"framework_options.low_res_crops": 2, "framework_options.knn_crops": 1,
                                          "search.collapse_threshold": 0.0})
    data = build_data(cfg)
    assert [tuple(x.shape[-2:]) for x in data.loader(None, cfg).dataset[0]] == [(8, 8)] * 2 + [(4, 4)] * 2
    record = run_search(cfg, tmp_path / "wcl", log_fn=lambda _: None)
    labels = set(record["architecture"])
    assert {f"projector2.layer{i}.op" for i in range(1, 7)} <= labels and len(labels) == 12
    uniform = 1 / 7
    for head in ("projector", "projector2"):
        probs = record["probabilities"][f"{head}.layer1.op"]
        assert max(abs(p - uniform) for p in probs.values()) > 1e-4, head  # DARTS moved this head's alphas
    result = run_retrain(cfg, record, tmp_path / "retrain", log_fn=lambda _: None)
    assert result["framework"] == "wcl" and result["architecture"] == record["architecture"]
    # the retrain trained every weight of the derived network, both heads included
    assert optimised_weights.moved() == optimised_weights.names()
    assert optimised_weights.moved("projector2.") and optimised_weights.moved("projector.")
    assert math.isfinite(result["history"][-1]["ssl_loss"])
    evaluated = run_evaluate(cfg, tmp_path / "retrain" / "retrain_model.pt")
    assert evaluated["metrics"]["knn_top1"] == pytest.approx(result["metrics"]["knn_top1"])


def test_registry_and_head_specs_declare_both():
    assert FRAMEWORKS["ressl"] is ReSSL and FRAMEWORKS["wcl"] is WCL
    assert ReSSL.heads.nasiam is not None and WCL.heads.nasiam.projector2 is not None
    assert ReSSL.heads.momentum and not WCL.heads.momentum
    assert [n for n, f in FRAMEWORKS.items() if f.heads.second_projector] == ["wcl"]


def test_wcl_darts_over_the_mlp_space_searches_both_heads(tiny_config, tmp_path):
    from experiments.jobs.search import run_search

    cfg = tiny_config(framework="wcl", **{"model.head_space": "mlp", "search.epochs": 1, "data.train_subset": 256,
                                          "framework_options.low_res_crops": 2, "framework_options.knn_crops": 1,
                                          "search.collapse_threshold": 0.0})
    record = run_search(cfg, tmp_path / "wcl-mlp", log_fn=lambda _: None)
    assert {"projector.depth", "projector2.depth", "projector2.layer1.activation"} <= set(record["architecture"])
