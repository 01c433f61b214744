"""The head-space registry: a name in a config (``model.head_space``) -> the space that builds the heads.

A new head space is one module with a ``HeadSpace`` subclass (``search_spaces/heads.py``) and
one entry here. The jobs ask the space, not its name: which kinds of choice it holds, whether
the head search takes it, whether its widths are factors of the framework's.
"""
from __future__ import annotations

from search_spaces.head_widths import WidthHeads
from search_spaces.heads import FixedHeads, HeadSpace
from search_spaces.mlp import MlpHeads
from search_spaces.nasiam import NasiamHeads

HEAD_SPACES: dict[str, HeadSpace] = {s.name: s for s in (FixedHeads(), NasiamHeads(), MlpHeads(), WidthHeads())}


def fixed_head_spaces() -> list[str]:
    """The head spaces that hold no choice (what a backbone-only strategy needs)."""
    return [name for name, space in HEAD_SPACES.items() if not space.choice_kinds((1.0,))]


__all__ = ["HEAD_SPACES", "HeadSpace", "fixed_head_spaces"]
