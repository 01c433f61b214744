"""Label-free zero-cost rankers computed at initialisation: SynFlow and NASWOT.

They cost one forward (and, for SynFlow, one backward) pass per network, so every supernet
ranking can be reported beside rankers that cost nothing. Both work on a deep copy of the
network they are given: its parameters, BatchNorm buffers and train/eval mode stay as they were.

- :func:`synflow` (Tanaka et al., NeurIPS 2020; as a NAS proxy, Abdelfattah et al., ICLR 2021):
  with every parameter and buffer replaced by its absolute value and an input of ones,
  R = sum of the output; the score is the sum of theta * dR/dtheta over the weights of the
  convolution and linear layers (the weights both references score; biases and BatchNorm affine
  parameters shape R but are not summed). BatchNorm runs in eval mode, as Tanaka et al.'s
  ``prune_loop`` runs it: normalising a batch of one constant image by its own statistics would
  erase the signal, and at PyTorch's initialisation (running mean 0, variance 1, weight 1, bias 0)
  eval-mode BatchNorm is the identity up to 1/sqrt(1 + eps), so this equals Abdelfattah et al.'s
  variant that drops BatchNorm. A zero BatchNorm weight stops the flow through its branch (the
  residual branches of ``CifarResNet``'s zero-initialised blocks carry none). The pass runs in
  float64 and the function returns the natural log of the score: R grows like a product over
  layers; the log keeps it readable and is rank-equivalent. It is ``inf`` only if float64 itself
  overflowed (about e^709; NAS-Bench-Macro at width 1 scores about e^52) and ``-inf`` if no
  weight carries any flow.
- :func:`naswot` (Mellor et al., ICML 2021): the binary code (x > 0) of every unit after every
  rectifier module for a batch of images: ReLU, ReLU6 and LeakyReLU, the reference's "ReLU in the
  class name" made explicit (NAS-Bench-Macro's blocks and torchvision's ResNets use ``nn.ReLU``;
  a module called twice counts twice). K_H[i, j] = number of units whose codes agree for images
  i and j (N_A minus the Hamming distance); the score is log|det K_H|. BatchNorm uses batch
  statistics, as in the reference (which scores freshly built networks in train mode); dropout is
  off so the score is deterministic. Two images with identical codes make two equal rows of K_H:
  its determinant is 0 and the score ``-inf``.

Only activations that are modules are seen (a functional ``F.relu`` is not); a network with no
rectifier module is an error rather than a silent ``-inf``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

SCORED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


def _device_of(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def synflow(network: nn.Module, input_shape: Sequence[int]) -> float:
    """log SynFlow of ``network`` for inputs of ``input_shape`` (one sample, no batch dimension)."""
    probe = copy.deepcopy(network).double().eval()
    with torch.no_grad():
        for tensor in probe.state_dict().values():  # parameters and BatchNorm running statistics
            tensor.abs_()
    weights = [m.weight for m in probe.modules() if isinstance(m, SCORED_LAYERS)]
    if not weights:
        raise ValueError("synflow needs at least one convolution or linear layer")
    for weight in weights:
        weight.requires_grad_(True)
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=_device_of(probe))
    with torch.enable_grad():
        flow = probe(ones).sum()
        gradients = torch.autograd.grad(flow, weights, allow_unused=True)
    with torch.no_grad():
        score = sum((w * g).sum() for w, g in zip(weights, gradients) if g is not None)
    return float(torch.log(torch.as_tensor(score, dtype=torch.float64)))


def naswot_kernel(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """K_H (float64, N x N) of ``images`` (N x ...): per pair, how many rectifier units' codes agree."""
    probe = copy.deepcopy(network).eval()
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    count = images.shape[0]
    kernel = torch.zeros(count, count, dtype=torch.float64, device=_device_of(probe))

    def add_agreements(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        codes = (output.detach().reshape(count, -1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    hooked = [m.register_forward_hook(add_agreements) for m in probe.modules() if isinstance(m, RECTIFIERS)]
    if not hooked:
        raise ValueError("naswot needs rectifier modules (nn.ReLU, nn.ReLU6, nn.LeakyReLU); found none")
    with torch.no_grad():
        probe(images.to(_device_of(probe)))
    return kernel


def naswot(network: nn.Module, images: torch.Tensor) -> float:
    """NASWOT score of ``network``: log|det K_H| over a batch of ``images`` (no labels)."""
    return float(torch.linalg.slogdet(naswot_kernel(network, images)).logabsdet)


def random_images(batch_size: int, input_shape: Sequence[int], seed: int) -> torch.Tensor:
    """A standard-normal batch drawn from its own generator (the global RNG is left alone)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *input_shape), generator=generator)


def score_architectures(build_network: Callable[[Any], nn.Module], architectures: Iterable[Any],
                        input_shape: Sequence[int], batch_size: int = 16,
                        seed: int = 0) -> list[dict[str, float]]:
    """``{'synflow', 'naswot'}`` per architecture; each network is built right after
    ``torch.manual_seed(seed)`` (the global RNG is restored afterwards), so its initialisation,
    hence its scores, depend on the architecture and the seed only, not on the order scored.
    NASWOT sees the same :func:`random_images` batch for every architecture."""
    images = random_images(batch_size, input_shape, seed)
    scores = []
    for architecture in architectures:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_network(architecture)
        scores.append({"synflow": synflow(network, input_shape), "naswot": naswot(network, images)})
    return scores


__all__ = ["synflow", "naswot", "naswot_kernel", "random_images", "score_architectures"]
