"""The NNI 3.0 quirks the backbone search works around (experiments/nni_compat.py, quirks 13-19)."""
from __future__ import annotations

import inspect
import sys
from collections import OrderedDict

import nni
import pytest
import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableConv2d

from experiments import nni_compat
from search_spaces.supernet import differentiable_probabilities


class TinySpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.op = LayerChoice(OrderedDict([("a", torch.nn.Identity()), ("b", torch.nn.ReLU())]), label="backbone.op")

    def forward(self, x):
        return self.op(x)


def test_quirk14_darts_export_probs_carry_no_gradient_but_ours_do():
    from nni.nas.strategy import DARTS

    space = TinySpace()
    DARTS().mutate_model(space)
    exported = space.op.export_probs({})["backbone.op"]
    assert all(isinstance(p, float) for p in exported.values())  # what NNI's DARTS penalty receives
    probs = differentiable_probabilities(space, {"backbone.op": ["b", "a"]})
    assert probs["backbone.op"].requires_grad
    assert torch.allclose(probs["backbone.op"], torch.tensor([exported["b"], exported["a"]]))


def test_quirk15_the_current_sample_exists_only_inside_a_sequential_trial():
    with pytest.raises(RuntimeError, match="no architecture sample"):
        nni_compat.current_sample()


def test_quirk16_enas_without_tianshou_is_one_clear_error(monkeypatch):
    from experiments.core.errors import ConfigError
    from experiments.strategies import STRATEGIES

    monkeypatch.setitem(sys.modules, "tianshou", None)
    assert "No module named" in nni_compat.missing_enas_dependencies()
    with pytest.raises(ConfigError, match="enas needs tianshou and gym"):
        STRATEGIES["enas"].check(None, "backbone")


def test_quirk17_enas_reads_a_two_item_batch_as_batch_and_mode_so_we_tag_batches():
    from nni.nas.oneshot.pytorch.sampling import EnasLightningModule

    from experiments.strategies.enas import TaggedBatches

    source = inspect.getsource(EnasLightningModule.training_step)
    assert "len(batch_packed) == 2" in source and "batch, mode = batch_packed" in source
    views = (torch.zeros(2, 3), torch.ones(2, 3))
    tagged = list(TaggedBatches([views, views], "train"))
    assert len(tagged) == 2 and tagged[0][1] == "train" and tagged[0][0] is views
    assert len(TaggedBatches([views] * 3, "val")) == 3


def test_quirk18_enas_probabilities_are_a_softmax_of_the_controller_logits():
    class Controller:
        def export_probs(self):
            return {"backbone.op": {"a": 0.0, "b": 1.0}}

    probs = nni_compat.enas_probabilities(Controller())["backbone.op"]
    assert probs["b"] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert sum(probs.values()) == pytest.approx(1.0)


class WidthSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.conv = MutableConv2d(3, nni.choice("backbone.width", [4, 8]), 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x)


def test_quirk13_bias_free_mixed_layers_freeze_with_their_weights():
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedConv2d, MixedLinear
    from nni.nas.strategy import RandomOneShot

    space = WidthSpace()
    RandomOneShot().mutate_model(space)
    # the quirk: NNI's own freeze_weight hands a ``bias: None`` to a bias-free layer
    original = nni_compat._ORIGINAL_FREEZE_WEIGHT[MixedConv2d]
    assert original(space.conv, in_channels=3, out_channels=4, kernel_size=3, groups=1)["bias"] is None
    assert set(nni_compat._ORIGINAL_FREEZE_WEIGHT) == {MixedConv2d, MixedLinear}
    frozen = space.freeze({"backbone.width": 4})
    assert isinstance(frozen.conv, torch.nn.Conv2d) and frozen.conv.bias is None
    assert torch.equal(frozen.conv.weight, space.conv.weight[:4])  # the supernet's weights, sliced


def test_quirk19_nni_shape_inference_cannot_follow_a_memory_format_change():
    from nni.nas.profiler.pytorch.flops import FlopsProfiler

    class ChannelsLast(ModelSpace):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x.contiguous(memory_format=torch.channels_last))

    with pytest.raises(TypeError):
        FlopsProfiler(ChannelsLast(), torch.zeros(1, 3, 8, 8))
    from search_spaces.macro import to_channels_last

    x = torch.randn(2, 3, 4, 4)
    assert to_channels_last(x).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(to_channels_last(x), x)


def test_quirk24_sampled_choices_follow_the_global_numpy_seed():
    import numpy as np
    from nni.mutable import Categorical

    choice = Categorical(list(range(10)), label="quirk24")
    np.random.seed(0)
    first = [choice.random() for _ in range(30)]
    np.random.seed(0)
    again = [choice.random() for _ in range(30)]
    np.random.seed(1)
    other = [choice.random() for _ in range(30)]
    assert first == again and first != other  # unpatched, each draw comes from a fresh OS-seeded RandomState
