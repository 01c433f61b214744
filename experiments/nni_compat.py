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


# --- the backbone search (experiments/backbone_search.py) ----------------------------------------
def differentiable_probabilities(model: torch.nn.Module, labels: dict[str, list]) -> dict[str, torch.Tensor]:
    """Quirk 7: ``DARTS(penalty=...)`` is not differentiable.

    NNI hands its ``ExpectationProfilerPenalty`` the output of ``export_probs()``, which is
    ``softmax(alpha).cpu().tolist()``: plain floats, so a FLOPs penalty shifts the loss but sends
    no gradient to the architecture weights. This is the softmax of the alphas themselves, as
    tensors ordered like ``labels[label]`` (the values of each choice), for NNI's
    ``expression_expectation``. Labels the model does not relax are left out.
    """
    probs = {}
    for label, (names, alpha) in mixed_layers(model).items():
        if label not in labels:
            continue
        p = torch.softmax(alpha.float(), dim=-1)
        order = [names.index(str(v)) for v in labels[label]]
        probs[label] = p[order]
    return probs


def derived_architecture_from(probabilities: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Quirk 4 again, from probabilities already taken: the most probable value of every label."""
    return {label: _typed(max(p, key=p.get)) for label, p in probabilities.items()}


def current_sample() -> dict:
    """Quirk 8: a ``FunctionalEvaluator`` receives the frozen model, not its sample.

    On the sequential engine the trial's "parameter" is the executable model space itself, whose
    ``sample`` is the architecture being evaluated.
    """
    import nni

    model = nni.get_current_parameter()
    sample = getattr(model, "sample", None)
    if sample is None:
        raise RuntimeError("no architecture sample is being evaluated (not inside an NNI sequential trial)")
    return dict(sample)


def require_tianshou() -> None:
    """Quirk 9: ENAS imports ``tianshou`` (its PPO controller) and ``gym``; neither comes with NNI."""
    try:
        import gym  # noqa: F401
        import tianshou  # noqa: F401
    except ImportError as err:
        from experiments.config import ConfigError

        raise ConfigError(f"backbone_search.strategy: enas needs tianshou and gym ({err}); install them with "
                          f"pip install -r requirements-enas.txt, or use spos") from None


class TaggedBatches:
    """Yields ``(batch, tag)`` for every batch of ``loader`` (see :func:`tagged_enas`)."""

    def __init__(self, loader, tag: str):
        self.loader, self.tag = loader, tag

    def __iter__(self):
        for batch in self.loader:
            yield batch, self.tag

    def __len__(self) -> int:
        return len(self.loader)


def tagged_enas(cost, max_flops, max_params, scale: float, **kwargs):
    """Quirk 10: NNI's ENAS on pytorch-lightning 2.x takes every step for a validation step.

    Its ``training_step`` reads a 2-item batch as the legacy ``(batch, mode)`` pair; Lightning
    2.x hands it the bare batch, and an ``(x, y)`` or two-view batch has two items, so ``mode`` is a
    tensor and every step goes to the reward branch (the weights never train). This ENAS tags
    each batch with its loader's name, which is exactly the pair the legacy branch expects.
    The budget is NNI's own reward penalty (``SampleProfilerPenalty``) on the worst ratio of cost
    to budget.
    """
    from nni.nas.oneshot.pytorch._dataloader import ConcatLoader
    from nni.nas.oneshot.pytorch.profiler import SampleProfilerPenalty
    from nni.nas.profiler import Profiler
    from nni.nas.strategy import ENAS

    class BudgetRatio(Profiler):
        def __init__(self):  # noqa: D401 - a profiler over the backbone cost
            pass

        def profile(self, sample) -> float:
            c = cost({k: v for k, v in sample.items() if k in cost.labels})
            ratios = [c.flops / max_flops] if max_flops else []
            ratios += [c.params / max_params] if max_params else []
            return max(ratios) if ratios else 0.0

    class TaggedENAS(ENAS):
        def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
            return ConcatLoader({"train": TaggedBatches(train_dataloader_fn(), "train"),
                                 "val": TaggedBatches(val_dataloader_fn(), "val")})

    penalty = None
    if (max_flops or max_params) and scale > 0:
        penalty = SampleProfilerPenalty(BudgetRatio(), baseline=1.0, scale=-scale, nonlinear="positive")
    return TaggedENAS(reward_metric_name="val/reward", penalty=penalty, **kwargs)


def enas_probabilities(oneshot_module) -> dict[str, dict[str, float]]:
    """Quirk 11: ENAS ``export_probs()`` returns the controller's logits, not probabilities; softmax them."""
    out = {}
    for label, logits in oneshot_module.export_probs().items():
        values = list(logits)
        p = torch.softmax(torch.tensor([float(logits[v]) for v in values]), dim=0).tolist()
        out[label] = {str(v): q for v, q in zip(values, p)}
    return out


def _drop_none(state: dict) -> dict:
    return {k: v for k, v in state.items() if v is not None}


try:  # the one-shot package needs pytorch-lightning; it is always there in this project
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedConv2d as _MixedConv2d
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedLinear as _MixedLinear

    class BiasFreeMixedConv2d(_MixedConv2d):
        """MixedConv2d whose weight-preserving ``freeze`` also works without a bias (see quirk 12)."""

        def freeze_weight(self, **kwargs):
            return _drop_none(super().freeze_weight(**kwargs))

    class BiasFreeMixedLinear(_MixedLinear):
        """MixedLinear whose weight-preserving ``freeze`` also works without a bias (see quirk 12)."""

        def freeze_weight(self, **kwargs):
            return _drop_none(super().freeze_weight(**kwargs))
except ImportError:  # pragma: no cover
    BiasFreeMixedConv2d = BiasFreeMixedLinear = None


def mixed_op_hooks() -> list:
    """Quirk 12: NNI's weight-preserving ``freeze`` of a bias-free mixed conv/linear layer fails.

    ``MixedConv2d.freeze_weight`` returns ``{'weight': ..., 'bias': None}`` and ``freeze`` loads
    it into a ``Conv2d(bias=False)``, which rejects the unexpected ``bias`` key; so no sub-network
    of a supernet with a searched width (every ResNet conv is bias-free) can be frozen with its
    weights. These hooks (pass them as a one-shot strategy's ``mutation_hooks``; they run before
    NNI's own) build mixed layers that drop the ``None`` entries.
    """
    return [BiasFreeMixedConv2d.mutate, BiasFreeMixedLinear.mutate]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Quirk 13: NNI's shape inference (FLOPs profiler) fails on ``Tensor.contiguous(memory_format=...)``.

    The macro spaces run channels-last because PyTorch's CPU depth-wise convolution is several
    times faster in it; NNI profiles them with a tensor subclass (``ShapeTensor``) that has no
    shape formula for the conversion, so only plain tensors are converted.
    """
    if type(x) is torch.Tensor or type(x) is torch.nn.Parameter:
        return x.contiguous(memory_format=torch.channels_last)
    return x
