"""How each framework feeds its views into its loss, the learning-rate and momentum schedules,
and the collapse score: each against its formula computed by hand.

The losses themselves are pinned in test_losses.py and test_ressl_wcl.py. Here the network
parts are fixed linear maps chosen by the test, so the value of a framework's ``ssl_loss`` is
known exactly; a wrong pairing of views (the first view's prediction against its own target,
the student fed the weak view, ...) gives a different number, and each test checks that the
numbers differ before it checks which one the framework computes.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from evaluators import BYOL, WCL, MoCo, ReSSL, SimCLR, SimSiam, Supervised
from evaluators.downstream import collapse_score
from evaluators.losses import KNNMultiCropLoss, WeakLabelSupConLoss
from search_spaces.network import MOMENTUM_PAIRS

DTYPE = torch.float64
N, D = 6, 4  # images per batch, width of every map


def fixed_map(seed: int, d_in: int = D, d_out: int = D) -> nn.Linear:
    """A linear map with weights the test chose (seeded), trainable so gradients can be inspected."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d_in, d_out, bias=False).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=g, dtype=DTYPE))
    return layer


class Constant(nn.Module):
    """A predictor that ignores its input: the loss then reaches the encoder only through the target side."""

    def __init__(self, seed: int, rows: int = N, d: int = D):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.value = nn.Parameter(torch.randn(rows, d, generator=g, dtype=DTYPE))

    def forward(self, z):
        assert z.shape[0] == self.value.shape[0]
        return self.value


def network(**parts: nn.Module) -> nn.Module:
    """The object NNI would hand over (``set_model``): attributes backbone, projector, predictor, ..."""
    model = nn.Module()
    for name, part in parts.items():
        setattr(model, name, part)
    pairs = [(online, target) for online, target in MOMENTUM_PAIRS if target in parts]
    model.momentum_pairs = lambda: [(getattr(model, online), getattr(model, target)) for online, target in pairs]
    return model


def online_and_momentum(predictor: nn.Module | None = None) -> nn.Module:
    """Online backbone 1 / projector 2 / predictor 3; momentum copies 4 / 5, deliberately unlike the online ones."""
    return network(backbone=fixed_map(1), projector=fixed_map(2), predictor=predictor or fixed_map(3),
                   momentum_backbone=fixed_map(4), momentum_projector=fixed_map(5))


def views(seed: int = 0, count: int = 2, rows: int = N) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    return [torch.randn(rows, D, generator=g, dtype=DTYPE) for _ in range(count)]


def apply(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``x W^T`` written out: the hand computation does not call the module."""
    return x @ layer.weight.detach().t()


def cos(a, b) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def unit(a):
    return a / a.norm(dim=1, keepdim=True)


def no_gradient(module: nn.Module) -> bool:
    return all(p.grad is None or not p.grad.any() for p in module.parameters())


def has_gradient(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def differ(a: float, b: float) -> bool:
    return abs(a - b) > 1e-3 * max(1.0, abs(a))


# --- SimSiam ----------------------------------------------------------------------------------------

def simsiam_by_hand(model, x1, x2, pair=((1, 2), (2, 1))):
    z = {1: apply(model.projector, apply(model.backbone, x1)), 2: apply(model.projector, apply(model.backbone, x2))}
    p = {i: apply(model.predictor, z[i]) for i in z}
    # 0.5 * (D(p1, sg z2) + D(p2, sg z1)), D = negative cosine
    return -0.5 * sum(cos(p[a], z[b]).mean() for a, b in pair).item()


def test_simsiam_pairs_each_prediction_with_the_other_views_projection():
    model = online_and_momentum()
    module = SimSiam()
    module.set_model(model)
    x1, x2 = views()
    right = simsiam_by_hand(model, x1, x2)
    wrong = simsiam_by_hand(model, x1, x2, pair=((1, 1), (2, 2)))  # each prediction against its own view
    assert differ(right, wrong)
    assert module.ssl_loss([x1, x2], arch_step=False).item() == pytest.approx(right, rel=1e-10)


def test_simsiam_stops_the_gradient_at_the_projection():
    # the predictor ignores z, so the only path from the loss to the encoder is through the target z
    model = network(backbone=fixed_map(1), projector=fixed_map(2), predictor=Constant(3))
    module = SimSiam()
    module.set_model(model)
    x1, x2 = (x.requires_grad_() for x in views())
    module.ssl_loss([x1, x2], arch_step=False).backward()
    assert has_gradient(model.predictor)  # the prediction side trains
    assert no_gradient(model.projector) and no_gradient(model.backbone)  # the target side does not
    assert x1.grad is None and x2.grad is None


# --- BYOL -------------------------------------------------------------------------------------------

def byol_by_hand(model, x1, x2, pair=((1, 2), (2, 1))):
    xs = {1: x1, 2: x2}
    online = {i: apply(model.predictor, apply(model.projector, apply(model.backbone, x))) for i, x in xs.items()}
    target = {i: apply(model.momentum_projector, apply(model.momentum_backbone, x)) for i, x in xs.items()}
    # the mean over both directions of ||p/|p| - t/|t|||^2 = 2 - 2 cos(p, t)
    return sum((2 - 2 * cos(online[a], target[b])).mean() for a, b in pair).item() / 2


def test_byol_regresses_each_prediction_on_the_momentum_projection_of_the_other_view():
    model = online_and_momentum()
    module = BYOL()
    module.set_model(model)
    x1, x2 = views()
    right = byol_by_hand(model, x1, x2)
    assert differ(right, byol_by_hand(model, x1, x2, pair=((1, 1), (2, 2))))
    # the target is the momentum branch, not the online one
    assert differ(right, byol_by_hand(network(**{**dict(model.named_children()),
                                                 "momentum_backbone": model.backbone,
                                                 "momentum_projector": model.projector}), x1, x2))
    p1 = apply(model.predictor, apply(model.projector, apply(model.backbone, x1)))
    t2 = apply(model.momentum_projector, apply(model.momentum_backbone, x2))
    assert float(((unit(p1) - unit(t2)) ** 2).sum(1).mean()) == pytest.approx(float((2 - 2 * cos(p1, t2)).mean()))
    assert module.ssl_loss([x1, x2], arch_step=False).item() == pytest.approx(right, rel=1e-10)


def test_byol_target_gets_no_gradient():
    model = online_and_momentum()
    module = BYOL()
    module.set_model(model)
    x1, x2 = views()
    module.ssl_loss([x1, x2], arch_step=False).backward()
    assert has_gradient(model.backbone) and has_gradient(model.projector) and has_gradient(model.predictor)
    assert no_gradient(model.momentum_backbone) and no_gradient(model.momentum_projector)

    # with a predictor that ignores its input, nothing but the (stopped) target reaches the views
    model = online_and_momentum(predictor=Constant(3))
    module = BYOL()
    module.set_model(model)
    x1, x2 = (x.requires_grad_() for x in views())
    module.ssl_loss([x1, x2], arch_step=False).backward()
    assert has_gradient(model.predictor)
    assert x1.grad is None and x2.grad is None


# --- MoCo -------------------------------------------------------------------------------------------

def moco_by_hand(model, x1, x2, queue, t, pair=((1, 2), (2, 1))):
    q = {i: unit(apply(model.projector, apply(model.backbone, x))) for i, x in ((1, x1), (2, x2))}
    k = {i: unit(apply(model.momentum_projector, apply(model.momentum_backbone, x))) for i, x in ((1, x1), (2, x2))}
    total = 0.0
    for a, b in pair:  # -log exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.n_j/t)), n_j the queue before this step
        positive = torch.exp((q[a] * k[b]).sum(1) / t)
        negatives = torch.exp(q[a] @ queue.t() / t).sum(1)
        total += -torch.log(positive / (positive + negatives)).mean()
    return (total / 2).item(), torch.cat([k[1], k[2]])


def test_moco_contrasts_each_query_with_the_other_views_key_and_the_queue_before_the_push():
    model = online_and_momentum()
    module = MoCo(queue_size=16, embedding_dim=D, temperature=0.2)
    module.set_model(model)
    g = torch.Generator().manual_seed(7)
    queue = unit(torch.randn(16, D, generator=g, dtype=DTYPE))
    module.queue = queue.clone()
    x1, x2 = views()
    right, keys = moco_by_hand(model, x1, x2, queue, 0.2)
    assert differ(right, moco_by_hand(model, x1, x2, queue, 0.2, pair=((1, 1), (2, 2)))[0])
    pushed = queue.clone()
    pushed[:2 * N] = keys
    assert differ(right, moco_by_hand(model, x1, x2, pushed, 0.2)[0])  # negatives taken after the push

    # an architecture step: same loss, the queue stays as it was
    assert module.ssl_loss([x1, x2], arch_step=True).item() == pytest.approx(right, rel=1e-10)
    assert torch.equal(module.queue, queue) and int(module.queue_ptr) == 0
    # a weight step: same loss, then both views' keys (k1 first) are the newest entries
    loss = module.ssl_loss([x1, x2], arch_step=False)
    assert loss.item() == pytest.approx(right, rel=1e-10)
    assert torch.allclose(module.queue, pushed) and int(module.queue_ptr) == 2 * N
    loss.backward()
    assert has_gradient(model.backbone) and no_gradient(model.momentum_backbone)


# --- ReSSL ------------------------------------------------------------------------------------------

def ressl_by_hand(model, strong, weak, queue, ts, tt):
    student = unit(apply(model.projector, apply(model.backbone, strong)))
    teacher = unit(apply(model.momentum_projector, apply(model.momentum_backbone, weak)))
    target = torch.softmax(teacher @ queue.t() / tt, dim=1)
    log_p = torch.log_softmax(student @ queue.t() / ts, dim=1)
    return -(target * log_p).sum(1).mean().item(), teacher


def test_ressl_student_sees_the_strong_view_and_the_teacher_the_weak_one():
    model = online_and_momentum()
    module = ReSSL(queue_size=16, embedding_dim=D, student_temperature=0.1, teacher_temperature=0.04)
    module.set_model(model)
    queue = unit(torch.randn(16, D, generator=torch.Generator().manual_seed(8), dtype=DTYPE))
    module.queue = queue.clone()
    strong, weak = views(seed=1)
    right, teacher = ressl_by_hand(model, strong, weak, queue, 0.1, 0.04)
    assert differ(right, ressl_by_hand(model, weak, strong, queue, 0.1, 0.04)[0])  # views swapped
    assert differ(right, ressl_by_hand(model, strong, strong, queue, 0.1, 0.04)[0])  # teacher on the strong view
    assert differ(right, ressl_by_hand(model, strong, weak, queue, 0.04, 0.1)[0])  # temperatures swapped
    loss = module.ssl_loss([strong, weak], arch_step=False)
    assert loss.item() == pytest.approx(right, rel=1e-10)
    # the teacher's keys are pushed after the loss took its snapshot
    assert torch.allclose(module.queue[:N], teacher) and torch.equal(module.queue[N:], queue[N:])
    loss.backward()
    assert has_gradient(model.projector) and no_gradient(model.momentum_backbone)
    assert no_gradient(model.momentum_projector)


# --- SimCLR -----------------------------------------------------------------------------------------

def ntxent_by_hand(z1, z2, t):
    """Row i of the 2N views has its positive at i+N (mod 2N); every other view but itself is a negative."""
    z = unit(torch.cat([z1, z2]))
    sim = z @ z.t() / t
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        others = torch.cat([sim[i, :i], sim[i, i + 1:]])
        total += -(sim[i, (i + n2 // 2) % n2] - torch.logsumexp(others, 0))
    return (total / n2).item()


def test_simclr_positive_pair_is_the_two_views_of_one_image():
    model = network(backbone=fixed_map(1), projector=fixed_map(2))
    module = SimCLR(temperature=0.5)
    module.set_model(model)
    x1, x2 = views(seed=2)
    z1, z2 = (apply(model.projector, apply(model.backbone, x)) for x in (x1, x2))
    right = ntxent_by_hand(z1, z2, 0.5)
    assert differ(right, ntxent_by_hand(z1, z2.roll(1, dims=0), 0.5))  # views of different images paired
    assert differ(right, ntxent_by_hand(z1, z1, 0.5))  # one view twice
    assert module.ssl_loss([x1, x2], arch_step=False).item() == pytest.approx(right, rel=1e-10)


# --- WCL --------------------------------------------------------------------------------------------

def test_wcl_instance_head_graph_head_and_crops_each_get_their_own_embeddings():
    rows = 8  # enough images for a non-trivial nearest-neighbour graph
    model = network(backbone=fixed_map(1), projector=fixed_map(2), projector2=fixed_map(6))
    module = WCL(temperature=0.1, knn_crops=1)
    module.set_model(model)
    x1, x2, *crops = views(seed=3, count=5, rows=rows)  # two views, three crops
    emb = lambda head, x: apply(head, apply(model.backbone, x))  # noqa: E731
    z1, z2 = emb(model.projector, x1), emb(model.projector, x2)
    g1, g2 = emb(model.projector2, x1), emb(model.projector2, x2)
    zc = [emb(model.projector, c) for c in crops]
    graph, crop = WeakLabelSupConLoss(0.1), KNNMultiCropLoss(1, 0.1)

    def total(inst, gr, cr):
        return ntxent_by_hand(*inst, 0.1) + graph(*gr).item() + crop(*cr).item()

    right = total((z1, z2), (g1, g2), (z1, z2, zc))
    assert differ(right, total((g1, g2), (z1, z2), (z1, z2, zc)))  # the two heads swapped
    assert differ(right, total((z1, z2), (z1, z2), (z1, z2, zc)))  # graph labels from the first head
    assert differ(right, total((z1, z2), (g1, g2), (g1, g2, [emb(model.projector2, c) for c in crops])))  # crops
    assert differ(right, total((z1, z2), (g1, g2), (g1, g2, zc)))  # crops matched to the graph head's views
    assert differ(right, total((z1, z2.roll(1, 0)), (g1, g2), (z1, z2, zc)))  # views of different images
    assert module.ssl_loss([x1, x2, *crops], arch_step=False).item() == pytest.approx(right, rel=1e-9)
    # without crops the loss is the two heads' terms alone
    assert module.ssl_loss([x1, x2], arch_step=False).item() == pytest.approx(
        ntxent_by_hand(z1, z2, 0.1) + graph(g1, g2).item(), rel=1e-9)


# --- Supervised -------------------------------------------------------------------------------------

def test_supervised_is_label_smoothed_cross_entropy_of_the_first_view_against_the_labels():
    classes = 3
    model = network(backbone=fixed_map(1), projector=fixed_map(2, D, classes))
    module = Supervised(label_smoothing=0.2)
    module.set_model(model)
    (x,) = views(seed=4, count=1)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    log_p = torch.log_softmax(apply(model.projector, apply(model.backbone, x)), dim=1)
    # (1 - e) * (-log p_y) + e * mean_c(-log p_c)
    right = (0.8 * -log_p[torch.arange(N), y] + 0.2 * -log_p.mean(1)).mean().item()
    assert differ(right, (-log_p[torch.arange(N), y]).mean().item())  # smoothing dropped
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    assert module.ssl_loss([x, y], arch_step=False).item() == pytest.approx(right, rel=1e-10)


# --- the learning-rate schedule ---------------------------------------------------------------------

def _lrs(module: SimSiam, epochs: int) -> list[float]:
    config = module.configure_optimizers()
    assert config["lr_scheduler"].__class__.__name__ == "LambdaLR" and "interval" not in config  # per epoch
    opt, sched = config["optimizer"], config["lr_scheduler"]
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero(optimizer):
    module = SimSiam(lr=0.06, batch_size=512, max_epochs=10, warmup_epochs=2, optimizer=optimizer)
    module.set_model(network(backbone=fixed_map(1), projector=fixed_map(2), predictor=fixed_map(3)))
    base = 0.06 * 512 / 256  # the linear scaling rule: 0.12
    # epochs 0, 1: (e + 1) / (warmup + 1) of the base; from epoch 2: cosine over the 8 remaining epochs
    expected = [base / 3, 2 * base / 3] + [base * 0.5 * (1 + math.cos(math.pi * (e - 2) / 8)) for e in range(2, 11)]
    assert expected[2] == base and expected[6] == pytest.approx(base / 2) and expected[10] == pytest.approx(0.0)
    assert _lrs(module, 11) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert _lrs(module, 11)[9] == pytest.approx(0.12 * 0.5 * (1 + math.cos(7 * math.pi / 8)))  # 0.00457


def test_learning_rate_without_warm_up_and_with_two_processes():
    module = SimSiam(lr=0.05, batch_size=128, max_epochs=4, warmup_epochs=0)
    module.set_model(network(backbone=fixed_map(1), projector=fixed_map(2), predictor=fixed_map(3)))
    module._trainer = SimpleNamespace(world_size=2)  # DDP: batch_size is per process, 256 in all
    assert _lrs(module, 5) == pytest.approx([0.05, 0.05 * (1 + math.cos(math.pi / 4)) / 2, 0.025,
                                             0.05 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0], abs=1e-15)


# --- BYOL's momentum schedule -----------------------------------------------------------------------

def _momentum_of_weight_step(module, model, batch_idx, epoch, max_epochs, batches):
    """The EMA coefficient the weight step at ``batch_idx`` used: online weights 1, target 0 -> target 1 - m."""
    with torch.no_grad():
        for part in (model.backbone, model.projector):
            part.weight.fill_(1.0)
        for part in (model.momentum_backbone, model.momentum_projector):
            part.weight.zero_()
    module._trainer = SimpleNamespace(max_epochs=max_epochs, num_training_batches=batches, current_epoch=epoch)
    module.training_step(views(), batch_idx)
    updated = model.momentum_backbone.weight
    assert torch.allclose(updated, updated[0, 0].expand_as(updated))
    assert torch.equal(model.momentum_projector.weight, updated)
    return 1.0 - updated[0, 0].item()


def byol_momentum(base, progress):
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@pytest.mark.parametrize("interleaved", [False, True])
def test_byol_momentum_rises_from_base_to_one_over_the_weight_steps(interleaved):
    base, epochs, batches = 0.9, 2, 4  # 8 weight steps in all
    model = online_and_momentum()
    module = BYOL(momentum=base, interleaved=interleaved, max_epochs=epochs)
    module.set_model(model)
    module.log = lambda *args, **kwargs: None
    # under DARTS, weight step i of an epoch is training_step(2i + 1) (2i is its architecture step)
    index = (lambda i: 2 * i + 1) if interleaved else (lambda i: i)
    m = lambda epoch, i: _momentum_of_weight_step(module, model, index(i), epoch, epochs, batches)  # noqa: E731
    assert m(0, 0) == pytest.approx(base)  # start: progress 0
    assert m(0, 2) == pytest.approx(byol_momentum(base, 0.25))
    assert m(1, 0) == pytest.approx(0.95)  # middle: progress 1/2, halfway from base to 1
    last = m(1, 3)  # the last weight step: progress (1 + 3/4) / 2
    assert last == pytest.approx(byol_momentum(base, 7 / 8)) and last == pytest.approx(0.99619, abs=1e-5)
    assert m(2, 0) == pytest.approx(1.0)  # the end (progress 1): the target stops moving
    assert module.weight_steps == 5
    if interleaved:  # an architecture step moves nothing
        with torch.no_grad():
            model.momentum_backbone.weight.zero_()
        module.training_step(views(), 2)
        assert not model.momentum_backbone.weight.any() and module.weight_steps == 5


# --- the collapse score -----------------------------------------------------------------------------

def test_collapse_score_is_one_when_spread_zero_when_on_one_point_and_in_between_half_collapsed():
    g = torch.Generator().manual_seed(0)
    assert collapse_score(torch.randn(4096, 64, generator=g)) == pytest.approx(1.0, abs=0.05)

    # every embedding on one point that is NOT constant across dimensions, at different lengths:
    # after normalisation all rows are equal, so the spread over the batch is zero
    point = torch.randn(64, generator=g)
    assert point.std() > 0.5
    scales = torch.rand(256, 1, generator=g) * 10 + 0.1
    assert collapse_score(point.expand(256, 64) * scales) == pytest.approx(0.0, abs=1e-5)

    # half the dimensions used: rows +-e1, +-e2 (lengths arbitrary) in 4 dimensions. Dimensions 1 and 2
    # take the values 1, -1, 0, 0 (unbiased std sqrt(2/3)), dimensions 3 and 4 are always 0:
    # mean std sqrt(2/3) / 2, times sqrt(4) -> sqrt(2/3)
    e = torch.eye(4)
    rows = torch.stack([3 * e[0], -0.5 * e[0], 2 * e[1], -7 * e[1]])
    assert collapse_score(rows) == pytest.approx(math.sqrt(2 / 3), rel=1e-6)
    # the same directions in all 4 dimensions: values 1, -1 and six 0 per dimension, std sqrt(2/7), score 2 sqrt(2/7)
    spread = torch.cat([e, -e]) * torch.arange(1, 9.0)[:, None]
    assert collapse_score(spread) == pytest.approx(2 * math.sqrt(2 / 7), rel=1e-6)
