"""The fast architecture step (backbone under no_grad) gives the stock step's head and alpha gradients."""
from __future__ import annotations

import warnings

import pytest
import torch
from nni.nas.strategy import DARTS

from evaluators import FRAMEWORKS
from experiments.core.assembly import build_module
from search_spaces import SSLNetworkSpace


def _supernet_module(framework: str):
    torch.manual_seed(0)
    space = SSLNetworkSpace(FRAMEWORKS[framework].heads, "nasiam", "resnet18", backbone_width=0.125, head_width=0.0625)
    supernet = DARTS().mutate_model(space)  # LayerChoices become DARTS mixed layers with alphas
    options = {"queue_size": 64} if framework == "moco" else {}
    module = FRAMEWORKS[framework](interleaved=True, embedding_dim=8, **options)
    module.set_model(supernet)
    module.train()
    return module


def _grads(module, batch, fast: bool, batch_idx: int):
    module.fast_arch_step = fast
    module.model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a trainer warns
        loss = module.training_step(batch, batch_idx)
    loss.backward()
    return loss.detach(), {name: (None if p.grad is None else p.grad.clone())
                           for name, p in module.model.named_parameters()}


@pytest.mark.parametrize("framework", sorted(n for n, f in FRAMEWORKS.items() if not getattr(f, "uses_labels", False)))
def test_fast_arch_step_gives_the_stock_head_and_alpha_gradients(framework):
    module = _supernet_module(framework)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 3, 8, 8, generator=g))
    loss_stock, stock = _grads(module, batch, fast=False, batch_idx=0)  # even index: architecture step
    loss_fast, fast = _grads(module, batch, fast=True, batch_idx=0)
    torch.testing.assert_close(loss_fast, loss_stock, rtol=1e-6, atol=1e-6)

    alphas = [n for n in stock if "_arch_alpha" in n]
    heads = [n for n in stock if n.startswith(("projector.", "predictor.")) and "_arch_alpha" not in n]
    backbone = [n for n in stock if n.startswith("backbone.")]
    assert alphas and heads and backbone
    for name in alphas + heads:
        if stock[name] is None:  # e.g. a candidate the loss does not reach
            assert fast[name] is None, name
            continue
        assert fast[name] is not None, name
        torch.testing.assert_close(fast[name], stock[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(stock[n] is not None and stock[n].abs().sum() > 0 for n in alphas)
    # what the fast step saves: the stock step back-propagates into the backbone, the fast one does not
    assert all(stock[n] is not None for n in backbone)
    assert all(fast[n] is None for n in backbone)


def test_weight_step_is_the_same_with_the_fast_step_on_or_off():
    module = _supernet_module("simsiam")
    g = torch.Generator().manual_seed(2)
    batch = (torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 3, 8, 8, generator=g))
    _, off = _grads(module, batch, fast=False, batch_idx=1)  # odd index: weight step
    _, on = _grads(module, batch, fast=True, batch_idx=1)
    for name, grad in off.items():
        if grad is None:
            assert on[name] is None, name
        else:
            torch.testing.assert_close(on[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert all(off[n] is not None for n in off if n.startswith("backbone."))


def test_config_switch_reaches_the_module(tiny_config):
    assert build_module(tiny_config(), 2, interleaved=True).fast_arch_step is True
    stock = build_module(tiny_config(**{"search.fast_arch_step": False}), 2, interleaved=True)
    assert stock.fast_arch_step is False
