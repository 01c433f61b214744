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
    # str(label): NNI's labels are ``nni.mutable.utils.label`` objects (quirk 6), which
    # ``torch.load(weights_only=True)`` refuses in a checkpoint of the monitor's history.
    return {str(label): dict(zip(map(str, names), torch.softmax(alpha.detach().float(), dim=-1).tolist()))
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


def forward_checkpoint_hook(pl_module: Any, hook: str, checkpoint: dict) -> None:
    """Quirk 7: NNI's one-shot wrapper forwards the train hooks to our module, not the checkpoint ones.

    ``BaseOneShotLightningModule`` passes ``on_train_*`` and friends to the training module,
    but not ``on_save_checkpoint`` / ``on_load_checkpoint``: state kept there (the weight-step
    counter) would be lost on resume. A callback calls this to forward them; outside a
    one-shot strategy Lightning already calls the module's own hook, so this does nothing.
    """
    inner = training_module_of(pl_module)
    if inner is not pl_module:
        getattr(inner, hook)(checkpoint)


def stable_arch_parameter_order(strategy: Any) -> Any:
    """Quirk 8: DARTS builds its architecture optimiser from ``list(set(alphas))``.

    The set's order follows object ids, so it differs from one process to the next. The
    optimiser's state (Adam's moments) is saved by position: resumed in a new process, it
    lands on the wrong alphas (silently, when they share a shape). Give the one-shot
    module an ``arch_parameters`` in registration order; returns the strategy.
    """
    configure = strategy.configure_oneshot_module

    def configure_oneshot_module(training_module):
        module = configure(training_module)
        unordered = module.arch_parameters

        def arch_parameters():
            position = {id(p): i for i, p in enumerate(module.parameters())}
            return sorted(unordered(), key=lambda p: position.get(id(p), len(position)))

        module.arch_parameters = arch_parameters
        return module

    strategy.configure_oneshot_module = configure_oneshot_module
    return strategy


def replay_epoch_start(pl_module: Any) -> None:
    """Quirk 9: NNI's one-shot modules set per-epoch state in ``on_train_epoch_start``.

    GumbelDARTS sets the epoch's Gumbel temperature there, DARTS freezes or frees the
    architecture weights around its warm-up. Lightning does not call that hook when it
    resumes in the middle of an epoch, so a resumed GumbelDARTS would go on at the initial
    temperature. Call this before the first batch after such a resume (a one-shot module
    only: our own modules keep no epoch-start state).
    """
    if training_module_of(pl_module) is not pl_module:
        pl_module.on_train_epoch_start()
