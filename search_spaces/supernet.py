"""What NNI hands back about a space: a supernet's relaxed choices, an architecture as plain data.

A DARTS-family strategy turns each choice into a mixed layer with architecture weights (alphas);
the strategies (their penalties, the DDP averaging of the alphas) and the quirks that read the
alphas (``experiments.nni_compat``: quirks 4 and 14) find them here, by label. An architecture NNI
exports or samples is made plain (quirk 6) before it goes into a record or a checkpoint.
"""
from __future__ import annotations

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
