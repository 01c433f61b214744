"""One test per NNI 3.0 quirk that experiments/nni_compat.py works around."""
import subprocess
import sys

import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from torch import nn

from experiments import nni_compat
from search_spaces.supernet import architecture_probabilities, derived_architecture
from tests.conftest import ROOT


def test_quirk1_import_warning_is_filtered_by_message_only():
    code = ("import warnings; warnings.simplefilter('default');"
            "import experiments.nni_compat as c; c.apply(); import nni.nas.nn.pytorch;"
            "warnings.warn('another RuntimeWarning', RuntimeWarning)")
    result = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert "not a nn.Module" not in result.stderr
    assert "another RuntimeWarning" in result.stderr  # other warnings still show


def test_importing_nni_compat_patches_nothing_until_apply_is_called():
    code = ("import experiments.nni_compat as c; from nni.mutable import mutable; import numpy;"
            "print(mutable.RandomState is numpy.random.RandomState); c.apply();"
            "print(mutable.RandomState is numpy.random.RandomState)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "False"], result.stderr[-2000:]


def test_quirk2_even_batch_indices_are_architecture_steps_only_when_interleaved():
    from evaluators import FRAMEWORKS

    interleaved, plain = FRAMEWORKS["simsiam"](interleaved=True), FRAMEWORKS["simsiam"](interleaved=False)
    assert interleaved.is_architecture_step(0) and interleaved.is_architecture_step(4)
    assert not interleaved.is_architecture_step(1)
    assert not plain.is_architecture_step(0)


def test_quirk3_callbacks_see_the_wrapper():
    class Inner:
        pass

    class Wrapper:
        training_module = Inner()

    inner = Wrapper.training_module
    assert nni_compat.training_module_of(Wrapper()) is inner
    assert nni_compat.training_module_of(inner) is inner


class _Space(ModelSpace):
    def __init__(self):
        super().__init__()
        self.a = LayerChoice({"x": nn.Identity(), "y": nn.ReLU()}, label="head.layer1.op")
        self.b = LayerChoice({"x": nn.Identity(), "y": nn.ReLU()}, label="head.layer1.op")  # shared label


def _supernet(strategy, logits):
    """The space as NNI's strategy mutates it, with the shared alpha set to ``logits``."""
    space = strategy.mutate_model(_Space())
    alpha = space.a._arch_alpha
    with torch.no_grad():
        alpha.copy_(torch.tensor(logits))
    assert space.b._arch_alpha is alpha  # NNI shares one alpha between equal labels
    return space, alpha


def test_quirk4_probabilities_are_the_plain_softmax_once_per_shared_label():
    from nni.nas.strategy import DARTS

    space, alpha = _supernet(DARTS(), [0.0, 1.0])
    probs = architecture_probabilities(space)
    assert list(probs) == ["head.layer1.op"]
    expected = torch.softmax(alpha.detach(), 0).tolist()
    assert [probs["head.layer1.op"]["x"], probs["head.layer1.op"]["y"]] == expected
    assert derived_architecture(space) == {"head.layer1.op": "y"}


def test_quirk4_gumbel_export_probs_are_noisy_but_ours_are_not():
    from nni.nas.strategy import GumbelDARTS

    space, _ = _supernet(GumbelDARTS(), [0.0, 1.0])
    draws = {tuple(space.a.export_probs({})["head.layer1.op"].values()) for _ in range(5)}
    assert len(draws) > 1  # NNI's export_probs under GumbelDARTS samples noise
    ours = {tuple(architecture_probabilities(space)["head.layer1.op"].values()) for _ in range(5)}
    assert len(ours) == 1


def test_quirk5_the_experiment_writes_where_we_say_not_under_home(tmp_path):
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import Random

    experiment = NasExperiment(_Space(), FunctionalEvaluator(lambda model: None), Random())
    assert "nni-experiments" in str(experiment.config.experiment_working_directory)  # NNI's default
    nni_compat.experiment_config_dir(experiment, tmp_path)
    assert experiment.config.experiment_working_directory == str(tmp_path)


def test_quirk6_exported_labels_become_plain_strings(tmp_path):
    import pytest
    from nni.mutable.utils import label

    exported = {label("projector.layer1.op"): "linear_relu"}
    torch.save({"architecture": exported}, tmp_path / "raw.pt")
    with pytest.raises(Exception, match="label"):  # the quirk: NNI's label objects fail safe loading
        torch.load(tmp_path / "raw.pt", weights_only=True)
    from search_spaces.supernet import plain_architecture

    plain = plain_architecture(exported)
    assert all(type(k) is str for k in plain) and plain == {"projector.layer1.op": "linear_relu"}
    torch.save({"architecture": plain}, tmp_path / "a.pt")
    assert torch.load(tmp_path / "a.pt", weights_only=True)["architecture"] == plain
