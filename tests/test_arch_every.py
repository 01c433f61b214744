"""``search.arch_every: k`` (quirk 25): the architecture step on every k-th batch, the weight step on every one."""
from __future__ import annotations

import pytest
import torch

from evaluators.base import SSLFramework
from experiments.core.config import ConfigError
from experiments.jobs.search import run_search

BATCHES = 256 // 64  # batches per epoch of the weight split (512 images, half held out, batch 64)


def test_alphas_change_on_every_third_batch_only_weights_on_every_batch(tiny_config, tmp_path, monkeypatch):
    seen = []  # at the entry of each step: (step index, alphas, one backbone weight)
    original = SSLFramework.training_step

    def recording_step(self, batch, batch_idx):
        alphas = torch.cat([p.detach().flatten() for n, p in self.model.named_parameters() if "_arch_alpha" in n])
        weight = next(p for n, p in self.model.named_parameters() if n.startswith("backbone.")).detach()
        seen.append((batch_idx, alphas.clone(), weight.clone()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SSLFramework, "training_step", recording_step)
    cfg = tiny_config(**{"search.epochs": 2, "search.warmup_epochs": 0, "search.arch_every": 3,
                         "search.arch_lr": 0.05})
    run_search(cfg, tmp_path / "run", log_fn=lambda line: None)

    arch = [idx // 2 for idx, _, _ in seen if idx % 2 == 0]
    assert arch == [0, 3, 0, 3]  # two epochs of 4 batches: batches 0 and 3 of each
    weight_entries = [(a, w) for idx, a, w in seen if idx % 2 == 1]
    assert len(weight_entries) == 2 * BATCHES
    for batch in range(1, 2 * BATCHES):
        (alphas_before, weight_before), (alphas_after, weight_after) = weight_entries[batch - 1], weight_entries[batch]
        moved = not torch.equal(alphas_before, alphas_after)
        assert moved == (batch % BATCHES % 3 == 0), f"batch {batch}: alphas moved={moved}"
        assert not torch.equal(weight_before, weight_after), f"batch {batch}: the weights did not train"


def test_arch_every_is_validated(tiny_config):
    with pytest.raises(ConfigError, match="arch_every"):
        tiny_config(**{"search.arch_every": 0})
    with pytest.raises(ConfigError, match="arch_every"):
        tiny_config(**{"search.arch_every": 1.5})
