"""The work-arounds for NNI 3.0 (final release, archived upstream), one per numbered quirk.

Each function names the quirk it handles and a ``test_quirk<N>_...`` pins it; docs/nni.md's
table says where each quirk is handled (a few live in the room that meets them: the frameworks
and spaces may not import this module, which sits among the jobs). See ../shared/NNI3_NOTES.md.

It imports nothing from this project. The quirks that must patch NNI itself (1, 12, 13, 24)
do so only when :func:`apply` is called: by the command-line entry, the benchmarks, the test
suite's conftest, and anyone using the package as a library, before NNI is imported.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch


def apply() -> None:
    """Patch what must be patched before any search runs (quirks 1, 12, 13, 24); safe to call twice."""
    quiet_nni_import_warning()
    allow_dotted_repeat_labels()
    freeze_without_missing_bias()
    seeded_choice_sampling()


def quiet_nni_import_warning() -> None:
    """Quirk 1: importing NNI under torch >= 2.6 warns that ``Buffer`` and ``LinearCrossEntropyOptions``
    are "not a nn.Module" (NNI fails to wrap two new torch classes; harmless). Filter that message only."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)


def training_module_of(pl_module: Any) -> Any:
    """Quirk 3: callbacks see NNI's one-shot wrapper, not our module; unwrap it."""
    return getattr(pl_module, "training_module", pl_module)


def experiment_config_dir(experiment, workdir) -> None:
    """Quirk 5: NasExperiment registers itself under ~/nni-experiments unless told otherwise."""
    experiment.config.experiment_working_directory = str(workdir)


# Quirks 7-11 meet a search that runs as the trial of an nnictl (HPO) experiment; their tests are
# tests/test_nni_compat_trial.py (7, 8, 9, 11) and tests/test_nni_trial.py (10).
# Quirk 7: while a one-shot ``NasExperiment`` runs, the sequential engine replaces NNI's global trial
# command channel with its own, so ``nni.report_intermediate_result`` called from inside the search
# (an epoch listener) reaches the engine, not the NNI manager: the dashboard shows nothing.
# Quirk 8: the engine calls ``nni.get_next_parameter()`` itself and leaves ``nni.trial._params``
# pointing at its own record (parameter id 0, the model as "parameters"), so a later
# ``nni.report_final_result`` goes out under the wrong parameter id; the tuner loses the result
# and the dispatcher logs ``KeyError``.
# Both are handled by the trial job's own channel (``experiments.jobs.trial.TrialChannel``): the trial
# keeps NNI's channel and record from before the search and reports through them.

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



class dotted_cell_labels:
    """Quirk 27: DARTS's ``DifferentiableMixedCell`` keys its alphas ``<cell label>/<node>_<input>`` in an
    ``nn.ParameterDict``, so a cell labelled ``backbone.normal`` fails as quirk 12 does. Build it inside
    this context (every ``nn.ParameterDict`` escapes dots meanwhile), then call ``keep(dict)`` on its
    alphas so they stay reachable by label afterwards."""

    def __enter__(self):
        original = self._original = torch.nn.ParameterDict._key_to_attr
        torch.nn.ParameterDict._key_to_attr = lambda pd, key: original(pd, key).replace(".", "__dot__")
        return self

    def __exit__(self, *exc):
        torch.nn.ParameterDict._key_to_attr = self._original
        return False

    @staticmethod
    def keep(alphas: torch.nn.ParameterDict) -> torch.nn.ParameterDict:
        alphas.__class__ = LabelParameterDict
        return alphas


_ORIGINAL_FREEZE_WEIGHT: dict = {}


def freeze_without_missing_bias() -> None:
    """Quirk 13: NNI's weight-preserving ``freeze`` of a bias-free mixed linear/conv layer fails.

    After a one-shot search, ``MixedLinear.freeze_weight`` and ``MixedConv2d.freeze_weight``
    return ``{'weight': ..., 'bias': None}`` and ``freeze`` loads that into a layer built with
    ``bias=False``, which rejects the key (``Unexpected key(s) in state_dict: "bias"``). Every
    ResNet conv and every bias-free head layer is such a layer, so no searched width or head
    could be frozen with its weights. Leave a missing bias out of the weights.
    """
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedConv2d, MixedLinear

    for cls in (MixedLinear, MixedConv2d):
        if cls in _ORIGINAL_FREEZE_WEIGHT:
            continue
        original = _ORIGINAL_FREEZE_WEIGHT[cls] = cls.freeze_weight

        def freeze_weight(self, *args, _original=original, **kwargs):
            return {k: v for k, v in _original(self, *args, **kwargs).items() if v is not None}

        cls.freeze_weight = freeze_weight


def current_sample() -> dict:
    """Quirk 15: a ``FunctionalEvaluator`` receives the frozen model, not its sample.

    On the sequential engine the trial's "parameter" is the executable model space itself, whose
    ``sample`` is the architecture being evaluated.
    """
    import nni

    model = nni.get_current_parameter()
    sample = getattr(model, "sample", None)
    if sample is None:
        raise RuntimeError("no architecture sample is being evaluated (not inside an NNI sequential trial)")
    return dict(sample)


def missing_enas_dependencies() -> str:
    """Quirk 16: ENAS imports ``tianshou`` (its PPO controller) and ``gym``; neither comes with NNI.

    Returns the import error's text, or an empty string when both are there.
    """
    try:
        import gym  # noqa: F401
        import tianshou  # noqa: F401
    except ImportError as err:
        return str(err)
    return ""


def enas_probabilities(oneshot_module) -> dict[str, dict[str, float]]:
    """Quirk 18: ENAS ``export_probs()`` returns the controller's logits, not probabilities; softmax them."""
    out = {}
    for label, logits in oneshot_module.export_probs().items():
        values = list(logits)
        p = torch.softmax(torch.tensor([float(logits[v]) for v in values]), dim=0).tolist()
        out[label] = {str(v): q for v, q in zip(values, p)}
    return out


def pause_ddp_gradient_sync(trainer: Any) -> bool:
    """Quirk 20: DARTS runs the architecture and the weight backward inside one DDP forward.

    Lightning prepares DDP's reducer before each ``manual_backward``; when the architecture
    step leaves the backbone out of the graph (``search.fast_arch_step``), the reducer then
    waits for backbone gradients that never come and the weight step fails ("parameters
    that were not used in producing the loss"). Instead, the architecture backward runs
    without DDP's sync (nothing but the alphas' gradients is used from it) and
    the alphas' gradients are averaged by hand (``resume_ddp_gradient_sync``). Returns True
    when sync was paused (a DDP run), False otherwise.
    """
    model = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and model.require_backward_grad_sync:
        model.require_backward_grad_sync = False
        return True
    return False


def resume_ddp_gradient_sync(trainer: Any) -> None:
    """Quirk 20, second half: after the architecture backward (and the alphas' gradients averaged by
    hand, ``evaluators.distributed.average_gradients``), DDP syncs the weight step again."""
    trainer.strategy.model.require_backward_grad_sync = True


def forward_checkpoint_hook(pl_module: Any, hook: str, checkpoint: dict) -> None:
    """Quirk 21: NNI's one-shot wrapper forwards the train hooks to our module, not the checkpoint ones.

    ``BaseOneShotLightningModule`` passes ``on_train_*`` and friends to the training module,
    but not ``on_save_checkpoint`` / ``on_load_checkpoint``: state kept there (the weight-step
    counter) would be lost on resume. A callback calls this to forward them; outside a
    one-shot strategy Lightning already calls the module's own hook, so this does nothing.
    """
    inner = training_module_of(pl_module)
    if inner is not pl_module:
        getattr(inner, hook)(checkpoint)


def in_registration_order(module: torch.nn.Module, parameters: list) -> list:
    """Quirk 22: DARTS builds its architecture optimiser from ``list(set(alphas))``.

    The set's order follows object ids, so it differs from one process to the next. The
    optimiser's state (Adam's moments) is saved by position: resumed in a new process, it
    lands on the wrong alphas (silently, when they share a shape). NNI lets a subclass of its
    module override ``arch_parameters`` (``experiments.strategies.darts``): this is the order it
    returns, that of ``module.parameters()``.
    """
    position = {id(p): i for i, p in enumerate(module.parameters())}
    return sorted(parameters, key=lambda p: position.get(id(p), len(position)))


class architecture_step_skipped:
    """Quirk 25: NNI's DARTS takes an architecture step on every batch after its warm-up.

    ``search.arch_every: k`` keeps it on every k-th batch of an epoch (batch indices 0, k,
    2k, ...). NNI's ``DartsLightningModule.training_step`` (shared by DARTS, GumbelDARTS and
    Proxyless) runs both steps in one body with no switch for the first, so a subclass cannot
    skip it without copying that body: inside this context the module's ``training_step`` runs
    as it does in warm-up (its own test ``warmup_epochs == 0 or current_epoch >= warmup_epochs``
    fails for that call): the held-out half of the batch is drawn by the loader but not
    computed, the architecture optimiser neither zeroes nor steps (Adam's momentum and weight
    decay would move the alphas on a zero gradient), the weights train as always.
    """

    def __init__(self, module: Any):
        self.module = module

    def __enter__(self):
        self.warmup = self.module.warmup_epochs
        self.module.warmup_epochs = self.module.trainer.current_epoch + 1  # "still warming up", this call only
        return self

    def __exit__(self, *exc):
        self.module.warmup_epochs = self.warmup
        return False


def replay_epoch_start(pl_module: Any) -> None:
    """Quirk 23: NNI's one-shot modules set per-epoch state in ``on_train_epoch_start``.

    GumbelDARTS sets the epoch's Gumbel temperature there, DARTS freezes or frees the
    architecture weights around its warm-up. Lightning does not call that hook when it
    resumes in the middle of an epoch, so a resumed GumbelDARTS would go on at the initial
    temperature. Call this before the first batch after such a resume (a one-shot module
    only: our own modules keep no epoch-start state).
    """
    if training_module_of(pl_module) is not pl_module:
        pl_module.on_train_epoch_start()


_GLOBAL_RANDOM_STATE = "_seeded_choice_sampling"


def seeded_choice_sampling() -> None:
    """Quirk 24: a choice sampled without a ``random_state`` draws from a fresh, unseeded numpy ``RandomState``.

    ``Categorical.random()`` (and the other mutables') create ``RandomState()`` when none is
    given, which seeds itself from the operating system: SPOS's path of every step
    (``RandomOneShot``, the mixed operations' ``resample``) then differs from run to run, the
    same seed gives another supernet, and a killed search cannot resume exactly. Draw instead
    from numpy's global generator, which ``seed_everything`` seeds and every checkpoint saves.
    """
    import numpy as np
    from nni.mutable import mutable

    if getattr(mutable, _GLOBAL_RANDOM_STATE, False):
        return

    def global_random_state(*seed):
        return np.random.RandomState(*seed) if seed else np.random.mtrand._rand

    mutable.RandomState = global_random_state
    setattr(mutable, _GLOBAL_RANDOM_STATE, True)


def nni_log_to(handler: logging.Handler) -> None:
    """Quirk 26: NNI logs INFO and up to stdout through a handler of its own on the ``nni`` logger,
    added when ``nni`` is imported: a one-shot search prints ``training_service will be ignored for
    sequential execution engine`` 17 times, its internal checkpoint path and two warnings it says
    to ignore. Remove that handler (NNI's ``silence_stdout``) and send the records to ``handler``."""
    from nni.runtime import log as nni_log

    nni_log.silence_stdout()
    logger = logging.getLogger("nni")
    if handler not in logger.handlers:
        logger.addHandler(handler)


# --- NNI's remote training service (nni_configs/remote_example.yml, tests/test_nni_remote.py) -------
_BARE_PYTHONS = ("python", "python3")
#: what NNI 3.0's remote service packs of trialCodeDirectory (nni_node/common/tarball.js)
REMOTE_UPLOAD_MAX_FILES = 2000
REMOTE_UPLOAD_MAX_BYTES = 300 * 1024 * 1024


def remote_trial_python(trial_command: str) -> str | None:
    """Quirk 28: a remote trial's bare ``python`` is whatever the host's ``~/.bashrc`` puts first on PATH.

    NNI 3.0 puts ``pythonPath`` first on PATH for its own SSH commands and starts its trial keeper
    with that PATH, but the keeper also inherits the SSH session's ``SSH_CLIENT``, and bash, started
    for each trial with that variable set, reads ``~/.bashrc`` (Debian's bash does for "a remote
    shell"): a conda or pyenv line there puts another python first, and the trial fails with
    ``No module named 'nni'``. The trial command must name its interpreter by absolute path. Returns
    the problem as one sentence, or None.
    """
    import shlex

    try:
        first = shlex.split(trial_command)[0]
    except (ValueError, IndexError):
        return None  # NNI's and the trial command's own checks say what is wrong with it
    if first not in _BARE_PYTHONS:
        return None
    return (f"trialCommand starts with a bare {first!r}: on a remote host each trial's bash reads ~/.bashrc "
            f"(NNI 3.0 passes it SSH_CLIENT), where a conda or pyenv line puts another python before pythonPath; "
            f"name the venv's interpreter by absolute path, e.g. /path/to/ssl-nas/.venv/bin/python -m experiments ...")


def _nniignore_patterns(code_dir) -> list[str]:
    from pathlib import Path

    path = Path(code_dir) / ".nniignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(relative: str, name: str, is_dir: bool, patterns: list[str]) -> bool:
    """The part of gitignore's syntax our ``.nniignore`` uses: ``name``, ``name/`` (folders only),
    ``/name`` (at the top only) and ``*`` wildcards in a name."""
    import fnmatch

    for pattern in patterns:
        folders_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if folders_only and not is_dir:
            continue
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(relative, pattern[1:]):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def remote_upload_problem(code_dir) -> str | None:
    """Quirk 29: NNI 3.0's remote service packs ``trialCodeDirectory`` into one tarball for every host and
    refuses more than 2,000 files or 300 MB; the experiment then never starts a trial. This repository
    with its ``.venv/`` inside (the README's install) is tens of thousands of files: the repository's
    ``.nniignore`` (gitignore syntax, which NNI reads) keeps ``.venv/``, ``.git/`` and ``runs/`` out.
    Counts what NNI would pack; returns the problem as one sentence, or None.
    """
    import os

    patterns = _nniignore_patterns(code_dir)
    files = size = 0
    root = os.fspath(code_dir)
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        rel = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not _ignored(rel + d, d, not os.path.islink(os.path.join(folder, d)), patterns)]
        for name in names:
            if _ignored(rel + name, name, False, patterns):
                continue
            files += 1
            size += os.lstat(os.path.join(folder, name)).st_size
            if files > REMOTE_UPLOAD_MAX_FILES or size > REMOTE_UPLOAD_MAX_BYTES:
                what = (f"more than {REMOTE_UPLOAD_MAX_FILES} files" if files > REMOTE_UPLOAD_MAX_FILES
                        else f"more than {REMOTE_UPLOAD_MAX_BYTES // 2**20} MB")
                return (f"trialCodeDirectory {root} holds {what} outside .nniignore, which NNI 3.0's remote "
                        f"training service refuses to upload (no trial would start); list the folders trials do "
                        f"not need (.venv/, runs/, data) in {os.path.join(root, '.nniignore')}")
    return None
