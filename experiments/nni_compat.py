"""Every work-around for NNI 3.0 (final release, archived upstream) lives here, one per quirk.

Each function names the quirk it handles; ``tests/test_nni_compat.py`` pins each one, so a
future NNI (or a fork) means changing this file alone. See ../shared/NNI3_NOTES.md.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

# Quirk 1: importing NNI under torch >= 2.6 warns that ``Buffer`` and ``LinearCrossEntropyOptions``
# are "not a nn.Module" (NNI fails to wrap two new torch classes; harmless). Filter that message only.
warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)

# Strategies that call ``training_step`` twice per batch: an even batch_idx (2i) is the
# architecture step on a held-out batch, the odd one (2i+1) the weight step (quirk 2).
INTERLEAVED_STRATEGIES = ("darts", "gdarts", "proxyless")


def is_architecture_step(batch_idx: int, interleaved: bool) -> bool:
    """Quirk 2: under DARTS-family strategies even batch indices are architecture steps."""
    return interleaved and batch_idx % 2 == 0


def training_module_of(pl_module: Any) -> Any:
    """Quirk 3: callbacks see NNI's one-shot wrapper, not our module; unwrap it."""
    return getattr(pl_module, "training_module", pl_module)


def mixed_layers(model: torch.nn.Module) -> dict[str, tuple[list[str], torch.nn.Parameter]]:
    """``label -> (candidate names, alpha)`` of every relaxed choice, shared labels once."""
    found: dict[str, tuple[list[str], torch.nn.Parameter]] = {}
    for module in model.modules():
        alpha = getattr(module, "_arch_alpha", None)
        if isinstance(alpha, torch.nn.Parameter) and hasattr(module, "names") and hasattr(module, "label"):
            found.setdefault(module.label, (list(module.names), alpha))
        elif isinstance(alpha, torch.nn.ParameterDict):  # Repeat and mixed operations: one alpha per label
            for label, param in alpha.items():
                values = _values_of(module, label)
                if values is not None:
                    found.setdefault(label, (values, param))
    return found


def _values_of(module, label):
    for mutable in getattr(module, "mutables", []) or []:
        if getattr(mutable, "label", None) == label:
            return [str(v) for v in mutable.values]
    for attr in ("depth_choice",):
        choice = getattr(module, attr, None)
        if getattr(choice, "label", None) == label:
            return [str(v) for v in choice.values]
    return None


def architecture_probabilities(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Quirk 4: the softmax of the alphas, computed ourselves.

    GumbelDARTS adds fresh Gumbel noise in ``export_probs()`` and Proxyless samples in
    ``export()``; the plain softmax of the architecture weights is the stable quantity.
    """
    return {label: dict(zip(names, torch.softmax(alpha.detach().float(), dim=-1).tolist()))
            for label, (names, alpha) in sorted(mixed_layers(model).items())}


def derived_architecture(model: torch.nn.Module, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quirk 4 again: the argmax of every relaxed choice (Proxyless ``export()`` is a random draw)."""
    arch = dict(fixed or {})
    for label, probs in architecture_probabilities(model).items():
        best = max(probs, key=probs.get)
        arch[label] = _typed(best)
    return arch


def _typed(value: str):
    try:
        return int(value)
    except ValueError:
        return value


def experiment_config_dir(experiment, workdir) -> None:
    """Quirk 5: NasExperiment registers itself under ~/nni-experiments unless told otherwise."""
    experiment.config.experiment_working_directory = str(workdir)


def plain_architecture(architecture: dict) -> dict:
    """Quirk 6: NNI's exported choice dict is keyed by ``nni.mutable.utils.label`` objects.

    They print like strings, but ``torch.load(weights_only=True)`` refuses them; keep plain
    ``str`` keys and plain values so the dict survives JSON and safe checkpoint loading.
    """
    def plain(v):
        if isinstance(v, bool) or v is None:
            return v
        for t in (int, float, str):
            if isinstance(v, t):
                return t(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return {str(k): plain(v) for k, v in architecture.items()}


# Quirks 7-11 meet a search that runs as the trial of an nnictl (HPO) experiment; their tests are
# tests/test_nni_compat_trial.py (7, 8, 9, 11) and tests/test_nni_trial.py (10).
# Quirk 7: while a one-shot ``NasExperiment`` runs, the sequential engine replaces NNI's global trial
# command channel with its own, so ``nni.report_intermediate_result`` called from inside the search
# (an epoch listener) reaches the engine, not the NNI manager: the dashboard shows nothing.
# Quirk 8: the engine calls ``nni.get_next_parameter()`` itself and leaves ``nni.trial._params``
# pointing at its own record (parameter id 0, the model as "parameters"), so a later
# ``nni.report_final_result`` goes out under the wrong parameter id; the tuner loses the result
# and the dispatcher logs ``KeyError``.

class TrialChannel:
    """The trial's own command channel and parameter record, kept across a nested NAS experiment.

    Create it after ``nni.get_next_parameter()``; report through it, never through
    ``nni.report_*``, while a search may be running; ``restore()`` puts NNI's globals back.
    """

    def __init__(self) -> None:
        import nni
        from nni.runtime.env_vars import trial_env_vars
        from nni.runtime.trial_command_channel import get_default_trial_command_channel

        self.channel = get_default_trial_command_channel()
        self.record = nni.trial._params
        self.trial_job_id = trial_env_vars.NNI_TRIAL_JOB_ID
        self._sequence = 0

    @property
    def parameter_id(self):
        return self.record["parameter_id"] if self.record else None

    def report_intermediate(self, metric: dict) -> None:
        self.channel.send_metric(type="PERIODICAL", parameter_id=self.parameter_id,
                                 trial_job_id=self.trial_job_id, sequence=self._sequence, value=metric)
        self._sequence += 1

    def report_final(self, metric: dict) -> None:
        self.channel.send_metric(type="FINAL", parameter_id=self.parameter_id,
                                 trial_job_id=self.trial_job_id, sequence=0, value=metric)

    def restore(self) -> None:
        """Undo quirks 7 and 8 for any later ``nni.*`` call in this process."""
        import nni
        from nni.runtime.trial_command_channel import set_default_trial_command_channel

        set_default_trial_command_channel(self.channel)
        nni.trial._params = self.record
        nni.trial._intermediate_seq = self._sequence


def unregistered_nested_experiments():
    """Quirk 9: a one-shot ``NasExperiment`` adds itself to the user's experiment list.

    ``~/nni-experiments/.experiment`` is nnictl's own manifest (its path ignores
    ``experiment_working_directory``): inside an nnictl trial every search would appear there as
    one more RUNNING experiment (and stay so if the trial is killed), so ``nnictl experiment list``
    and a bare ``nnictl stop`` see several experiments. A context manager that skips the manifest
    for the searches started inside it.
    """
    import contextlib

    from nni.nas.experiment import NasExperiment

    @contextlib.contextmanager
    def skipping():
        saved = NasExperiment._start_without_nni_manager, NasExperiment._stop_without_nni_manager
        NasExperiment._start_without_nni_manager = lambda self: None
        NasExperiment._stop_without_nni_manager = lambda self: None
        try:
            yield
        finally:
            NasExperiment._start_without_nni_manager, NasExperiment._stop_without_nni_manager = saved

    return skipping()


def manager_parameter_record(received: dict | None, wait_seconds: float = 15.0) -> dict | None:
    """Quirk 10: NNI 3.0 hands queued parameters to concurrent trials in the order they *ask*.

    The v3 training-service layer (``nni_node/training_service/v3/compat.js``) records each new
    trial with the next parameter at submission, but answers ``get_next_parameter()`` from a
    shared queue: when two trials start together and the second asks first, each runs the
    other's parameters while the dashboard's trial table (and its hyper-parameter plot) shows
    the recorded ones. The trial's metrics still carry the id it received, so the tuner is right
    and only the trial-to-parameters view is swapped. Ask the manager (its REST API, at the base
    of ``NNI_TRIAL_COMMAND_CHANNEL``) which record it holds for this trial and run that one; if
    it cannot be reached (remote training services) keep what was received.
    """
    import json
    import os
    import time
    import urllib.error
    import urllib.request

    channel_url = os.environ.get("NNI_TRIAL_COMMAND_CHANNEL") or ""
    trial_id = os.environ.get("NNI_TRIAL_JOB_ID")
    if received is None or not trial_id or not channel_url.startswith("http://") or "/env/" not in channel_url:
        return received
    url = f"{channel_url.split('/env/', 1)[0]}/api/v1/nni/trial-jobs/{trial_id}"
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                job = json.loads(resp.read() or b"null")
            records = [json.loads(h) for h in (job or {}).get("hyperParameters") or []]
            if records:
                recorded = records[-1]
                if isinstance(recorded, dict) and "parameter_id" in recorded and "parameters" in recorded:
                    return recorded
        except (OSError, ValueError, urllib.error.URLError):
            pass
        if time.monotonic() >= deadline:
            return received
        time.sleep(1.0)


def load_experiment_config(path):
    """Quirk 11: ``ExperimentConfig.load`` leaves its base path set when a file fails to parse.

    NNI sets a module-global base path, builds the config, then unsets it; an error in between
    (an unknown field) leaves it set, and every later ``load`` in the process dies on a bare
    ``AssertionError``. Unset it whatever happens. Returns NNI's canonical (validated) config.
    """
    from nni.experiment.config import ExperimentConfig
    from nni.experiment.config.utils import internal

    try:
        return ExperimentConfig.load(str(path)).canonical_copy()
    finally:
        internal.unset_base_path()

class LabelParameterDict(torch.nn.ParameterDict):
    """An ``nn.ParameterDict`` whose keys may contain dots (each is stored under ``__dot__``)."""

    def _key_to_attr(self, key: str) -> str:
        return super()._key_to_attr(key).replace(".", "__dot__")


def allow_dotted_repeat_labels() -> None:
    """Quirk 12: DARTS's ``DifferentiableMixedRepeat`` keys its alphas by label in an ``nn.ParameterDict``,
    and torch refuses a '.' in a parameter name, so a searched depth labelled ``projector.depth`` fails
    (``KeyError: parameter name can't contain "."``). Keep the label, escape the dot in the attribute."""
    from nni.nas.nn.pytorch import Repeat
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedRepeat

    if getattr(DifferentiableMixedRepeat, "_dotted_labels_allowed", False):
        return

    def __init__(self, blocks, depth, softmax, alphas):  # NNI 3.0's body, with our dict
        Repeat.__init__(self, blocks, depth)
        self._softmax = softmax
        self._arch_alpha = LabelParameterDict(alphas)

    DifferentiableMixedRepeat.__init__ = __init__
    DifferentiableMixedRepeat._dotted_labels_allowed = True


allow_dotted_repeat_labels()


def freeze_linear_without_bias() -> None:
    """Quirk 13: after a one-shot search, freezing a ``MutableLinear(..., bias=False)`` fails: NNI's
    ``MixedLinear.freeze_weight`` returns ``bias: None`` and ``load_state_dict`` rejects the key
    (``Unexpected key(s) in state_dict: "bias"``). Leave a missing bias out of the weights."""
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedLinear

    if getattr(MixedLinear, "_bias_free_freeze", False):
        return
    original = MixedLinear.freeze_weight

    def freeze_weight(self, *args, **kwargs):
        return {k: v for k, v in original(self, *args, **kwargs).items() if v is not None}

    MixedLinear.freeze_weight = freeze_weight
    MixedLinear._bias_free_freeze = True


freeze_linear_without_bias()
