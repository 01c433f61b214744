"""Where the files the jobs read at run time (``configs/``, ``architectures/``) are.

A checkout (and ``pip install -e .``) reads its own; ``pip install .`` puts copies under
``<prefix>/share/ssl-nas`` (pyproject.toml's data-files), since they are not Python packages.
"""
from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def project_file(*parts: str) -> Path:
    """``configs/x.yml`` of the checkout when there is one, else of the installed copy."""
    here = CHECKOUT.joinpath(*parts)
    if here.exists():
        return here
    return Path(sys.prefix, "share", "ssl-nas", *parts)
