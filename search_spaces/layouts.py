"""Per-framework head sizes: the one table a new framework adds a line to.

Sizes are the CIFAR recipes of the SSL libraries (lightly, solo-learn):
SimSiam 2048-2048 projector and 2048-512-2048 predictor; SimCLR and MoCo v2 2048 -> 128;
BYOL 4096 -> 256 projector and predictor. ReSSL (its paper's CIFAR head): 512 -> 128 without
BatchNorm. WCL (its paper): two identical heads, two 2048-wide hidden blocks -> 128.
"""
from __future__ import annotations

from search_spaces.heads import HeadDims

FRAMEWORK_HEADS: dict[str, HeadDims] = {
    "simsiam": HeadDims(projector_hidden=2048, projector_out=2048, predictor_hidden=512,
                        projector_out_norm="bn_noaffine"),
    "simclr": HeadDims(projector_hidden=2048, projector_out=128),
    "moco": HeadDims(projector_hidden=2048, projector_out=128),
    "byol": HeadDims(projector_hidden=4096, projector_out=256, predictor_hidden=4096),
    "ressl": HeadDims(projector_hidden=512, projector_out=128, projector_hidden_norm=None),
    "wcl": HeadDims(projector_hidden=2048, projector_out=128, projector_hidden_layers=2),
    # Not SSL: a linear classifier, sized by the dataset's classes in SSLNetworkSpace (unused here).
    "supervised": HeadDims(projector_hidden=10, projector_out=10, projector_hidden_layers=0),
}

# Frameworks whose target branch is a momentum (EMA) copy of backbone and projector.
MOMENTUM_FRAMEWORKS = {"moco", "byol", "ressl"}

# Frameworks with a second projection head (``projector2``, searched under its own labels).
TWO_HEAD_FRAMEWORKS = {"wcl"}


def head_dims(framework: str, width: float = 1.0) -> HeadDims:
    if framework not in FRAMEWORK_HEADS:
        raise ValueError(f"unknown framework {framework!r}; choose one of {sorted(FRAMEWORK_HEADS)}")
    return FRAMEWORK_HEADS[framework].scaled(width)
