"""Framework mechanics on hand-made tensors: the MoCo queue, the EMA update, BYOL's loss."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluators import FRAMEWORKS
from evaluators.base import update_momentum
from evaluators.moco import MoCo


def test_moco_queue_holds_the_newest_keys():
    moco = MoCo(queue_size=6, embedding_dim=2)
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    second = torch.tensor([[0.0, -1.0], [2.0, 1.0], [1.0, -2.0], [3.0, 3.0]])
    moco.enqueue(first)
    moco.enqueue(second)
    expected_newest_six = F.normalize(torch.cat([first, second])[-6:], dim=1)
    # ring buffer: slots 0-3 got `first`, then 4,5,0,1 got `second`
    order = [2, 3, 4, 5, 0, 1]
    assert torch.allclose(moco.queue[order], expected_newest_six)
    assert int(moco.queue_ptr) == 2


def test_update_momentum_is_the_ema_formula_and_skips_architecture_weights():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    update_momentum(online, target, 0.9)
    for p_t, p_0, p_o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(p_t, 0.9 * p_0 + 0.1 * p_o)
    online._arch_alpha = nn.Parameter(torch.ones(2))
    target._arch_alpha = nn.Parameter(torch.zeros(2))
    update_momentum(online, target, 0.5)
    assert torch.equal(target._arch_alpha, torch.zeros(2))


def test_byol_momentum_rises_on_a_cosine_to_one():
    byol = FRAMEWORKS["byol"](momentum=0.99)
    byol.current_epoch_progress = lambda: 0.0
    assert byol.momentum_value(0.99) == pytest.approx(0.99)
    byol.current_epoch_progress = lambda: 0.5
    assert byol.momentum_value(0.99) == pytest.approx(0.995)
    byol.current_epoch_progress = lambda: 1.0
    assert byol.momentum_value(0.99) == pytest.approx(1.0)


def test_unknown_framework_option_is_refused():
    with pytest.raises(ValueError, match="no option"):
        FRAMEWORKS["simclr"](queue_size=3)


def test_parameter_free_mass_of_the_nasiam_space_under_darts():
    from nni.nas.strategy import DARTS

    from experiments.strategies.darts import parameter_free_mass
    from search_spaces import SSLNetworkSpace

    space = DARTS().mutate_model(SSLNetworkSpace(FRAMEWORKS["simclr"].heads, "nasiam", backbone_width=0.125, head_width=0.125))
    # near-uniform alphas at init: 3 of 7 candidates are parameter-free
    assert parameter_free_mass(space).item() == pytest.approx(3 / 7, abs=1e-2)
    mass = parameter_free_mass(space)
    mass.backward()
    alpha = space.projector.layer1._arch_alpha
    assert alpha.grad is not None and alpha.grad[:3].gt(0).all() and alpha.grad[3:].lt(0).all()


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_ema_momentum_option_does_not_collide_with_sgd_momentum(name):
    module = FRAMEWORKS[name](momentum=0.5, sgd_momentum=0.8)
    assert module.options["momentum"] == 0.5 and module.sgd_momentum == 0.8
