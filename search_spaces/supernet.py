"""What NNI hands back about a space: a supernet's relaxed choices, an architecture as plain data.

A DARTS-family strategy turns each choice into a mixed layer with architecture weights (alphas);
the strategies (their penalties, the DDP averaging of the alphas) and the quirks that read the
alphas (``experiments.nni_compat``: quirks 4 and 14) find them here, by label. An architecture NNI
exports or samples is made plain (quirk 6) before it goes into a record or a checkpoint.
"""
from __future__ import annotations

from typing import Any

import torch


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


def plain_architecture(architecture: dict) -> dict:
    """Quirk 6 (docs/nni.md): NNI's exported choice dict is keyed by ``nni.mutable.utils.label`` objects.

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


def architecture_probabilities(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Quirk 4 (docs/nni.md): the softmax of the alphas, computed ourselves.

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


def differentiable_probabilities(model: torch.nn.Module, labels: dict[str, list]) -> dict[str, torch.Tensor]:
    """Quirk 14 (docs/nni.md): ``DARTS(penalty=...)`` is not differentiable.

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
