"""K-shot NAS (Su et al., ICML 2021): K copies of every searchable weight, mixed per path.

Every parameter of every candidate operation (the modules inside the space's ``LayerChoice``s)
is held as K copies ``Theta_1..Theta_K``; a path (one choice per label) uses the convex
combination ``W = sum_k lambda_k * Theta_k``, where the code ``lambda`` lies on the simplex and
comes from a small :class:`SimplexNet` reading the path's one-hot encoding. The stem, the head
and everything outside the ``LayerChoice``s keep a single weight, and BatchNorm's running
statistics stay single (buffers are statistics of the data, not weights to mix; SPOS-style
scoring recalibrates them anyway).

How it fits NNI: each copied parameter gets a ``torch.nn.utils.parametrize`` parametrization
whose stored tensor is the stack ``(K, *shape)`` and whose value is the combination under the
current code. Any forward code therefore sees an ordinary weight, NNI's sampled layers included:
wrap the SPOS supernet (after ``RandomOneShot().mutate_model(space)``, whose ``PathSamplingLayer``
keeps the candidate modules), and only the candidates of the sampled path compute their
combination, since a ``PathSamplingLayer`` runs (and reads the weights of) its chosen candidate
only. Gradients reach each copy as ``lambda_k * dL/dW`` and reach ``lambda`` (so the simplex-net)
as ``<dL/dW, Theta_k>``. NNI's ``space.freeze(arch)`` hands back the chosen candidate modules
themselves, so a frozen path of a K-shot space is a live view of the copies;
:meth:`KShotWeights.materialize` writes the combined weights into a plain, independent network.

Per training step a strategy calls, after NNI's ``resample()`` picked the path::

    sample = oneshot_module.resample()
    kshot.use_path(sample, simplex_net)       # lambda for this path, with its graph
    loss = training_module.training_step(batch, batch_idx)

alternating a weight step (train batches; step the space's parameters, copies included) with a
simplex-net step (held-out batches; step ``simplex_net.parameters()`` only). A step that runs the
backbone on two views may wrap both in ``parametrize.cached()`` to combine each weight once. A
forward without a fresh ``use_path`` reuses the last code; during training its graph is already
freed, so backward fails loudly instead of training on a stale code.

Warm start: the copies start equal to the weights the wrapped supernet holds (train SPOS, then
wrap), with no noise, so the K-shot supernet starts as the SPOS supernet (the same function, up to
rounding, for any code). The paper's full text was not at hand to check whether it perturbs them.
The symmetry still breaks: copy k moves by ``lambda_k(path)`` times the path's gradient, and a
randomly initialised simplex-net gives non-uniform codes. While the copies are equal the
simplex-net's gradient is zero (the K inner products are equal and the softmax cancels a constant
shift), so it starts learning once the copies have diverged. For the same reason the simplex-net's
output layer must not be zero-initialised: a uniform code for every path moves all copies
alike, and they would stay equal forever. K = 1 is exactly SPOS: the code is the scalar 1.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from nni.nas.nn.pytorch import LayerChoice
from torch import nn
from torch.nn.utils import parametrize


def choice_values(space: nn.Module) -> dict[str, list]:
    """``label -> values`` of every choice of ``space`` (NNI's ``simplify()``), in a fixed order."""
    choices = {}
    for label, mutable in space.simplify().items():
        if not hasattr(mutable, "values"):
            raise ValueError(f"choice {label} ({type(mutable).__name__}) has no finite values to one-hot encode")
        choices[str(label)] = list(mutable.values)
    return choices


def path_encoding(architecture: Mapping[str, Any], choices: Mapping[str, Sequence]) -> torch.Tensor:
    """The path as the concatenated one-hot vectors of its choices (labels outside ``choices`` ignored)."""
    parts = []
    for label, values in choices.items():
        if label not in architecture:
            raise KeyError(f"architecture has no choice for {label}")
        if architecture[label] not in values:
            raise ValueError(f"{label} = {architecture[label]!r} is not one of {list(values)}")
        one_hot = torch.zeros(len(values))
        one_hot[list(values).index(architecture[label])] = 1.0
        parts.append(one_hot)
    return torch.cat(parts)


class SimplexNet(nn.Module):
    """Path encoding -> code on the K-simplex (linear, ReLU, linear, softmax).

    PyTorch's default (random) initialisation on purpose: see the module docstring for why a
    uniform code at the start would keep the copies identical.
    """

    def __init__(self, encoding_dim: int, k: int, hidden: int = 64):
        super().__init__()
        self.embed = nn.Linear(encoding_dim, hidden)
        self.logits = nn.Linear(hidden, k)

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        encoding = encoding.to(self.embed.weight)
        return torch.softmax(self.logits(torch.relu(self.embed(encoding))), dim=-1)


class SimplexCode:
    """The current path's code, read by every combination; shared state, so a deepcopy shares it too.

    NNI's ``freeze`` deep-copies the modules around the chosen candidates, the candidates' combinations
    among them: they must keep reading this one code, and a code with a graph cannot be copied.
    """

    def __init__(self, k: int):
        self.value = torch.full((k,), 1.0 / k)

    def __deepcopy__(self, memo):
        return self


class ConvexCombination(nn.Module):
    """Parametrization: the stored ``(K, *shape)`` copies -> ``sum_k lambda_k * Theta_k``."""

    def __init__(self, k: int, code: SimplexCode):
        super().__init__()
        self.k = k
        self.code = code

    def forward(self, copies: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(self.code.value.to(copies), copies, dims=1)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """K equal copies of ``weight``: registering (or assigning) a weight warm-starts every copy with it."""
        return weight.unsqueeze(0).repeat(self.k, *([1] * weight.dim()))


def searched_modules(space: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(label, module)`` whose weights a choice selects: each candidate of a ``LayerChoice`` and each
    searched-width module (the width spaces' ``ChannelChoice``, NNI's mixed operations), which slices its
    full-width weights to the chosen width."""
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedOperation

    from search_spaces.channels import ChannelChoice

    found = []
    for module in space.modules():
        if isinstance(module, LayerChoice):
            found.extend((module.label, module[name]) for name in module.names)
        elif isinstance(module, ChannelChoice):
            found.append((module.label, module))
        elif isinstance(module, MixedOperation):
            found.append((", ".join(module.mutable_arguments) or type(module).__name__, module))
    return found


def candidate_parameters(space: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(owner module, parameter name)`` of every parameter a choice selects (``searched_modules``)."""
    found, seen_modules, seen_params = [], set(), set()
    for label, searched in searched_modules(space):
        for module in searched.modules():
            if id(module) in seen_modules:
                continue
            seen_modules.add(id(module))
            if parametrize.is_parametrized(module):
                raise ValueError(f"{type(module).__name__} in {label} is already parametrized "
                                 f"(a space can be made K-shot once)")
            for param_name, param in module.named_parameters(recurse=False):
                if id(param) in seen_params:
                    raise ValueError(f"{label}: a parameter tied between two modules cannot be K-shot")
                seen_params.add(id(param))
                found.append((module, param_name))
    return found


class KShotWeights:
    """Makes ``space``'s candidate operations K-shot, in place; holds the code they read.

    ``space`` is a model space or a supernet built from one (wrap the SPOS supernet after its
    training: the copies start as its weights). Build optimisers after wrapping: the copied
    parameters keep their identity but now have shape ``(K, *shape)``, and the space's
    ``state_dict`` holds them as ``<module>.parametrizations.<name>.original`` (load SPOS
    checkpoints before wrapping). Wrap after NNI's ``mutate_model``: mutation rebuilds mixed
    operations (a searched width) from their arguments and would drop the copies.
    """

    def __init__(self, space: nn.Module, k: int):
        if k < 1:
            raise ValueError(f"K-shot needs k >= 1 copies, got {k}")
        self.space, self.k = space, k
        self.code = SimplexCode(k)
        self.choices = choice_values(space)
        self._owners = candidate_parameters(space)
        if not self._owners:
            raise ValueError(f"{type(space).__name__} has no LayerChoice candidates or searched widths with "
                             f"parameters to copy")
        for module, name in self._owners:
            parametrize.register_parametrization(module, name, ConvexCombination(k, self.code))

    @property
    def encoding_dim(self) -> int:
        return sum(len(values) for values in self.choices.values())

    @property
    def copies(self) -> list[nn.Parameter]:
        """The stacked ``(K, *shape)`` copies, one per K-shot parameter."""
        return [module.parametrizations[name].original for module, name in self._owners]

    def encode(self, architecture: Mapping[str, Any]) -> torch.Tensor:
        return path_encoding(architecture, self.choices)

    def use_code(self, code: torch.Tensor) -> None:
        """Every K-shot weight reads ``code`` (shape ``(K,)``) from the next forward on."""
        if code.shape != (self.k,):
            raise ValueError(f"a K-shot code has shape ({self.k},), got {tuple(code.shape)}")
        self.code.value = code

    def use_path(self, architecture: Mapping[str, Any], simplex_net: SimplexNet) -> torch.Tensor:
        """The simplex-net's code for ``architecture``, set for the next forward(s); returned for logging."""
        code = simplex_net(self.encode(architecture))
        self.use_code(code)
        return code

    def materialize(self, architecture: Mapping[str, Any], simplex_net: SimplexNet) -> nn.Module:
        """The path as a plain network (no copies, no parametrizations) with its combined weights.

        Its ``state_dict`` loads into a fresh ``space.freeze(architecture)``, so retraining and
        scoring take it like any frozen network. The code used for training is left as it was.
        """
        previous = self.code.value
        try:
            with torch.no_grad():
                self.use_path(architecture, simplex_net)
                network = plain_copy(self.space.freeze(architecture))  # freeze shares the candidates
        finally:
            self.code.value = previous
        return network


def plain_copy(network: nn.Module) -> nn.Module:
    """A deep copy of ``network`` whose parametrized tensors are plain parameters holding their current values.

    Not ``parametrize.remove_parametrizations``: a deep copy shares the original's injected
    ``Parametrized<Module>`` class, and removing deletes the tensor's property from that class,
    which would strip the K-shot supernet itself of its weights.
    """
    network = copy.deepcopy(network)
    for module in list(network.modules()):
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            module.__class__ = parametrize.type_before_parametrizations(module)
            del module.parametrizations
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))
    return network


__all__ = ["KShotWeights", "SimplexNet", "SimplexCode", "ConvexCombination", "choice_values", "path_encoding",
           "candidate_parameters", "plain_copy"]
