"""A vision-transformer backbone space after ViTAS (Su et al., ECCV 2022), sized for small images on a CPU.

A DeiT-style ViT (pre-norm blocks, class token, learned position embedding) with these choices:

- ``backbone.patch_size``: the patch size (an NNI ``LayerChoice`` of patch embeddings: each patch
  size keeps its *private* patch projection, class token and position embedding, as ViTAS does);
- ``backbone.embed_dim``: the token-embedding width E, shared by every layer (NNI ``MutableLinear``,
  ``MutableConv2d``, ``MutableLayerNorm``: weight-shared slices of the widest layer);
- ``backbone.depth``: the number of encoder layers (NNI ``Repeat``: the layers past the depth are
  the identities that ViTAS shifts to the end of the network);
- ``backbone.layer<i>.heads``: the layer's head count. The attention width is E, so a head is
  E / heads wide. Q and K are a ``LayerChoice`` keyed by the head count (private per head count),
  V and the output projection are one ``MutableLinear`` each (shared by every head count);
- ``backbone.layer<i>.mlp_ratio``: the MLP's hidden width is ``mlp_ratio * E``.

The features are the final-norm class token, zero-padded to the widest E (``feature_dim``), as the
ResNet space pads: zero columns change neither cosine kNN nor a linear probe.

Cost (``ViTSpace.cost``), counted by hand in ``docs/vit-search.md``: FLOPs are the multiply-
accumulates of the patch projection, every linear layer and the two attention products (QK^T and
AV); norms, softmax, GELU and additions are not counted. Parameters are all of them.

The one-shot supernet slices weights through NNI's mixed layers (prefix slices, ``RandomOneShot``),
or through the ``vitas`` strategy's cyclic mixed layers (``experiments/strategies/vitas_slicing.py``).
The space's own sliced modules (the tokens, the feature pad) have a ``channel_side`` attribute,
``left`` ([0, D), the default) or ``right`` ([E - D, E)), which that strategy sets.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import nni
import torch
import torch.nn.functional as F
from nni.mutable import Mutable, MutableExpression
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableConv2d, MutableLayerNorm, MutableLinear, \
    MutableModule, Repeat
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import nn

DEFAULT_EMBED_DIMS = (32, 48, 64)
DEFAULT_HEADS = (1, 2, 4)
DEFAULT_MLP_RATIOS = (1, 2, 4)
DEFAULT_MAX_DEPTH = 4
INIT_STD = 0.02  # ViT/DeiT's truncated-normal init: a slice of a wide layer is distributed as a narrow one


def _value(v: Any, sample: Mapping[str, Any]) -> Any:
    return v.freeze(dict(sample)) if isinstance(v, Mutable) else v


def channel_slice(t: torch.Tensor, dim: int, size: int, side: str) -> torch.Tensor:
    """``size`` entries of ``t`` along ``dim``: the first ones (left) or the last ones (right)."""
    return t.narrow(dim, 0 if side == "left" else t.size(dim) - size, size)


class Tokens(MutableModule):
    """The class token and the learned position embedding of one patch size, ``embed_dim`` wide.

    The supernet holds them at the widest E and slices the input's width D from the ``channel_side``;
    ``freeze`` keeps that slice as a network of exactly D channels.
    """

    def __init__(self, embed_dim, num_patches: int):
        super().__init__()
        self.embed_dim, self.num_patches, self.channel_side = embed_dim, num_patches, "left"
        width = max(embed_dim.grid()) if isinstance(embed_dim, Mutable) else int(embed_dim)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        nn.init.trunc_normal_(self.class_token, std=INIT_STD)
        nn.init.trunc_normal_(self.position, std=INIT_STD)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, tokens, width = patches.shape
        if tokens != self.num_patches:
            raise ValueError(f"vit: {tokens} patches where the position embedding has {self.num_patches} (is the "
                             f"image size model.backbone_options.image_size?)")
        cls = channel_slice(self.class_token, 2, width, self.channel_side).expand(n, -1, -1)
        return torch.cat((cls, patches), dim=1) + channel_slice(self.position, 2, width, self.channel_side)

    def freeze(self, sample: Mapping[str, Any]) -> "Tokens":
        width = int(_value(self.embed_dim, sample))
        frozen = Tokens(width, self.num_patches)
        with torch.no_grad():
            frozen.class_token.copy_(channel_slice(self.class_token, 2, width, self.channel_side))
            frozen.position.copy_(channel_slice(self.position, 2, width, self.channel_side))
        return frozen


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches to E-wide tokens, with this patch size's own tokens."""

    def __init__(self, in_channels: int, embed_dim, patch: int, image_size: int):
        super().__init__()
        self.patch = patch
        self.projection = MutableConv2d(in_channels, embed_dim, kernel_size=patch, stride=patch)
        self.tokens = Tokens(embed_dim, (image_size // patch) ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(self.projection(x).flatten(2).transpose(1, 2))


class QueryKey(nn.Module):
    """The attention map of ``heads`` heads: this head count's own Q and K projections."""

    def __init__(self, embed_dim, heads: int):
        super().__init__()
        self.heads = heads
        self.query = MutableLinear(embed_dim, embed_dim)
        self.key = MutableLinear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, _ = x.shape
        q = self.query(x).reshape(n, tokens, self.heads, -1).transpose(1, 2)
        k = self.key(x).reshape(n, tokens, self.heads, -1).transpose(1, 2)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with a searchable head count: Q/K private per head count, V shared."""

    def __init__(self, embed_dim, heads: Sequence[int], label: str):
        super().__init__()
        query_keys = {str(h): QueryKey(embed_dim, h) for h in heads}  # NNI keys candidates by name
        self.query_key = LayerChoice(query_keys, label=label) if len(heads) > 1 else query_keys[str(heads[0])]
        self.value = MutableLinear(embed_dim, embed_dim)
        self.projection = MutableLinear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.query_key(x)  # (N, heads, tokens, tokens)
        n, heads, tokens, _ = attention.shape
        v = self.value(x).reshape(n, tokens, heads, -1).transpose(1, 2)
        return self.projection((attention @ v).transpose(1, 2).reshape(n, tokens, -1))


class EncoderLayer(nn.Module):
    """A pre-norm transformer layer: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, embed_dim, heads: Sequence[int], mlp_ratio, label: str):
        super().__init__()
        hidden = MutableExpression.to_int(embed_dim * mlp_ratio) if isinstance(embed_dim * mlp_ratio, Mutable) \
            else int(embed_dim * mlp_ratio)
        self.norm1 = MutableLayerNorm(embed_dim)
        self.attention = Attention(embed_dim, heads, f"{label}.heads")
        self.norm2 = MutableLayerNorm(embed_dim)
        self.fc1 = MutableLinear(embed_dim, hidden)
        self.fc2 = MutableLinear(hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SidePad(nn.Module):
    """Zero-pads (N, D) features to ``dim`` columns, on the side away from the live slice."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim, self.channel_side = dim, "left"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = self.dim - x.shape[1]
        if missing <= 0:
            return x
        return F.pad(x, (0, missing) if self.channel_side == "left" else (missing, 0))


def _choice(label: str, values: Sequence):
    values = list(dict.fromkeys(values))
    return values[0] if len(values) == 1 else nni.choice(label, values)


def scaled_embed_dims(embed_dims: Sequence[int], width: float, heads: Sequence[int]) -> list[int]:
    """The embedding widths at ``width``, rounded to a multiple of every head count."""
    step = math.lcm(*[int(h) for h in heads])
    return sorted({max(step, int(round(e * width / step)) * step) for e in embed_dims})


class ViTSpace(ModelSpace):
    """Patch embedding (per patch size), ``depth`` searchable encoder layers, final norm, class token."""

    space_name = "vit"
    choice_kinds = frozenset({"layer", "width", "depth"})

    def __init__(self, image_size: int = 32, patch_sizes: Optional[Sequence[int]] = None,
                 embed_dims: Sequence[int] = DEFAULT_EMBED_DIMS, max_depth: int = DEFAULT_MAX_DEPTH,
                 heads: Sequence[int] = DEFAULT_HEADS, mlp_ratios: Sequence[float] = DEFAULT_MLP_RATIOS,
                 width: float = 1.0, in_channels: int = 3, prefix: str = "backbone"):
        super().__init__()
        patch_sizes = list(patch_sizes) if patch_sizes else [max(1, image_size // 4), max(1, image_size // 2)]
        if any(int(p) < 1 or image_size % int(p) for p in patch_sizes):
            raise ValueError(f"vit patch_sizes must divide image_size {image_size}, got {patch_sizes}")
        if not heads or any(int(h) < 1 for h in heads) or not mlp_ratios or any(r <= 0 for r in mlp_ratios):
            raise ValueError(f"vit heads must be >= 1 and mlp_ratios > 0, got {list(heads)}, {list(mlp_ratios)}")
        if int(max_depth) < 1 or not embed_dims or width <= 0:
            raise ValueError(f"vit needs max_depth >= 1, embed_dims and width > 0, got {max_depth}, "
                             f"{list(embed_dims)}, {width}")
        self.image_size, self.in_channels, self.prefix = int(image_size), in_channels, prefix
        self.patch_sizes = sorted({int(p) for p in patch_sizes})
        self.heads = sorted({int(h) for h in heads})
        self.mlp_ratios = sorted(set(mlp_ratios))
        self.embed_dims = scaled_embed_dims(embed_dims, width, self.heads)
        self.max_depth = int(max_depth)
        embed_dim = _choice(f"{prefix}.embed_dim", self.embed_dims)
        embeddings = {str(p): PatchEmbedding(in_channels, embed_dim, p, self.image_size) for p in self.patch_sizes}
        self.patch_embedding = LayerChoice(embeddings, label=f"{prefix}.patch_size") if len(embeddings) > 1 \
            else embeddings[str(self.patch_sizes[0])]

        def layer(i: int) -> nn.Module:
            ratio = _choice(f"{prefix}.layer{i + 1}.mlp_ratio", self.mlp_ratios)
            return EncoderLayer(embed_dim, self.heads, ratio, f"{prefix}.layer{i + 1}")

        depth = _choice(f"{prefix}.depth", range(1, self.max_depth + 1))
        self.layers = Repeat(layer, depth) if isinstance(depth, Mutable) else nn.Sequential(*[layer(0)])
        self.norm = MutableLayerNorm(embed_dim)
        self.feature_dim = self.embed_dims[-1]
        self.pad = SidePad(self.feature_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                nn.init.zeros_(m.bias)

    def freeze(self, sample: Mapping[str, Any]) -> nn.Module:
        """NNI's freeze; a fresh space's network (not a supernet's, whose weights it keeps) starts from ViT's init."""
        frozen = super().freeze(sample)
        # (NNI's is_supernet, without importing nni.nas.oneshot.pytorch.strategy before nni.nas.strategy:
        # that order leaves nni.nas.strategy with its ImportFailedStrategy stand-ins)
        if not any(isinstance(m, BaseSuperNetModule) for m in self.modules()):
            for m in frozen.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=INIT_STD)
                    nn.init.zeros_(m.bias)
        return frozen

    # --- identity shifting: one sample per network ---------------------------------------------------
    def canonical(self, sample: Mapping[str, Any]) -> dict:
        """``sample`` with the choices of the layers past its depth at their first values: one sample per network."""
        depth = int(self.pick(sample, "depth", range(1, self.max_depth + 1)))
        out = dict(sample)
        for i in range(depth + 1, self.max_depth + 1):
            for name, values in ((f"layer{i}.heads", [str(h) for h in self.heads]),
                                 (f"layer{i}.mlp_ratio", self.mlp_ratios)):
                if len(values) > 1:
                    out[f"{self.prefix}.{name}"] = values[0]
        return out

    def shift_identities(self, common: Mapping[str, Any], layers: Sequence[Optional[tuple]]) -> dict:
        """The sample of ViTAS's per-layer encoding: ``layers[i]`` is ``(heads, mlp_ratio)`` or None (an identity).

        Identities are shifted to the end: the non-identity layers keep their order and become
        layers 1..depth, the rest are identities (past the depth). ``common``: patch size and E.
        """
        kept = [layer for layer in layers if layer is not None]
        if not kept or len(layers) != self.max_depth:
            raise ValueError(f"vit: {len(layers)} layers with {len(kept)} blocks; need {self.max_depth} with >= 1")
        sample = dict(common)
        if self.max_depth > 1:
            sample[f"{self.prefix}.depth"] = len(kept)
        for i, (heads, ratio) in enumerate(kept, start=1):
            if len(self.heads) > 1:
                sample[f"{self.prefix}.layer{i}.heads"] = str(heads)
            if len(self.mlp_ratios) > 1:
                sample[f"{self.prefix}.layer{i}.mlp_ratio"] = ratio
        first = {f"{self.prefix}.layer{i}.{name}": values[0] for i in range(1, self.max_depth + 1)
                 for name, values in (("heads", [str(h) for h in self.heads]), ("mlp_ratio", self.mlp_ratios))
                 if len(values) > 1}
        return self.canonical({**first, **sample})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"vit: built for {self.image_size} px images (model.backbone_options.image_size), "
                             f"got {tuple(x.shape[-2:])}")
        return self.pad(self.norm(self.layers(self.patch_embedding(x)))[:, 0])

    # --- the hand-countable FLOPs / parameters -------------------------------------------------------
    def labels(self) -> dict[str, list]:
        """Every label and its values, in the network's order."""
        labels = {f"{self.prefix}.patch_size": [str(p) for p in self.patch_sizes],
                  f"{self.prefix}.embed_dim": self.embed_dims,
                  f"{self.prefix}.depth": list(range(1, self.max_depth + 1))}
        for i in range(1, self.max_depth + 1):
            labels[f"{self.prefix}.layer{i}.heads"] = [str(h) for h in self.heads]
            labels[f"{self.prefix}.layer{i}.mlp_ratio"] = self.mlp_ratios
        return {k: v for k, v in labels.items() if len(v) > 1}

    def pick(self, sample: Mapping[str, Any], name: str, values: Sequence) -> Any:
        values = list(values)
        if len(values) == 1:
            return values[0]
        label = f"{self.prefix}.{name}"
        if label not in sample:
            raise KeyError(f"the sample has no choice for {label}")
        return sample[label]

    def dimensions(self, sample: Mapping[str, Any]) -> dict:
        """The network of ``sample``: patch size, E, and (heads, MLP width) per layer up to the depth."""
        embed = int(self.pick(sample, "embed_dim", self.embed_dims))
        depth = int(self.pick(sample, "depth", range(1, self.max_depth + 1)))
        layers = [(int(self.pick(sample, f"layer{i}.heads", self.heads)),
                   int(embed * self.pick(sample, f"layer{i}.mlp_ratio", self.mlp_ratios))) for i in range(1, depth + 1)]
        return {"patch_size": int(self.pick(sample, "patch_size", self.patch_sizes)), "embed_dim": embed,
                "layers": layers}

    def check_input_size(self, input_size: int) -> None:
        """The position embeddings are learned for one image size: refuse another before anything runs."""
        if int(input_size) != self.image_size:
            raise ValueError(f"backbone_options.image_size: the vit space is built for {self.image_size} px "
                             f"images, the data are {input_size} px")

    def cost(self, sample: Mapping[str, Any], input_size: int) -> tuple[int, int]:
        """(FLOPs, params) of ``sample`` at ``input_size`` px (see the module docstring for what counts)."""
        self.check_input_size(input_size)
        d = self.dimensions(sample)
        return vit_cost(self.image_size, self.in_channels, d["patch_size"], d["embed_dim"],
                        [hidden for _, hidden in d["layers"]])


def vit_cost(image_size: int, in_channels: int, patch: int, embed: int, hiddens: Sequence[int]) -> tuple[int, int]:
    """(FLOPs, params) of a ViT of width ``embed`` with one layer per MLP hidden width (module docstring)."""
    patches = (image_size // patch) ** 2
    tokens = patches + 1
    flops = patches * in_channels * patch * patch * embed
    params = in_channels * patch * patch * embed + embed + embed + tokens * embed  # projection+bias, class, positions
    for hidden in hiddens:
        flops += 4 * tokens * embed * embed + 2 * tokens * tokens * embed + 2 * tokens * embed * hidden
        params += 4 * (embed * embed + embed) + 2 * embed * hidden + hidden + embed + 4 * embed  # QKV proj, MLP, norms
    params += 2 * embed  # final norm
    return int(flops), int(params)


DEIT_TINY = {"embed_dim": 192, "heads": 3, "depth": 12, "mlp_ratio": 4, "patch_size": 16, "image_size": 224}
DEIT_HEAD_WIDTH = DEIT_TINY["embed_dim"] // DEIT_TINY["heads"]  # 64 channels a head


def deit_shaped(space: ViTSpace, max_flops: float) -> tuple[dict, dict]:
    """DeiT-Tiny's shape at ``space``'s image size, scaled to at most ``max_flops``: ``(backbone_options,
    architecture)`` of a ``ViTSpace`` holding just that network.

    DeiT's shape: uniform layers, MLP ratio 4, heads of about 64 channels (at least one), the finest
    patch grid of ``space`` (DeiT-Tiny: 14 x 14 patches) and ``space``'s full depth (DeiT's 12 layers).
    Scaled as DeiT-Ti/S/B are, by the width alone: the widest E within ``max_flops``.
    """
    patch, depth, best = space.patch_sizes[0], space.max_depth, None
    for embed in range(1, 16 * max(space.embed_dims) + 1):
        heads = max(1, round(embed / DEIT_HEAD_WIDTH))
        if embed % heads:
            continue
        if vit_cost(space.image_size, space.in_channels, patch, embed, [DEIT_TINY["mlp_ratio"] * embed] * depth)[0] \
                > max_flops:
            break
        best = (embed, heads)
    if best is None:
        raise ValueError(f"no DeiT-shaped network is within {max_flops:,.0f} FLOPs")
    embed, heads = best
    options = {"image_size": space.image_size, "patch_sizes": [patch], "embed_dims": [embed], "max_depth": depth,
               "heads": [heads], "mlp_ratios": [DEIT_TINY["mlp_ratio"]]}
    return options, ({f"{space.prefix}.depth": depth} if depth > 1 else {})


def layer_signature(network: nn.Module) -> tuple:
    """A frozen ViT backbone's shape, read from its modules: (patch, E, [(heads, hidden) per layer])."""
    embedding = network.patch_embedding
    layers = tuple((m.attention.query_key.heads, m.fc1.out_features) for m in network.layers)
    return embedding.patch, embedding.projection.out_channels, layers


__all__ = ["ViTSpace", "DEIT_TINY", "Tokens", "channel_slice", "deit_shaped", "vit_cost", "layer_signature",
           "scaled_embed_dims"]
