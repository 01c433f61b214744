"""The one range language of this package: a kind (integer, number, list ...) and an interval (``"(0, 1]"``).

The config schema (``experiments/core/config.py``) checks every field with it, and so does
every framework's and strategy's ``Option`` (``evaluators/options.py``): a value out of range
gets the same words wherever it was given. Standard library only, so the schema imports no registry.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

_INTERVAL = re.compile(r"^([\[(])\s*([^,]+),\s*([^\])]+)([\])])$")

_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
               list: "a list", dict: "a mapping"}


def kind_words(kind: type) -> str:
    return _KIND_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def inside(value: Any, interval: str) -> bool:
    """Whether a number lies in ``interval`` (``[low, high]``, ``(low, high)``, ...); exact for huge integers."""
    left, low, high, right = _INTERVAL.match(interval).groups()
    low, high = float(low), float(high)
    return (low <= value if left == "[" else low < value) and (value <= high if right == "]" else value < high)


def as_kind(value: Any, kind: type) -> tuple[Optional[str], Any]:
    """``(None, value)`` converted to ``kind`` when it is one, else ``(what is wrong, value)``.

    A float takes an integer and the strings PyYAML leaves unparsed (``2e6``, ``1e-3``); no kind takes a bool
    but ``bool``. An integer beyond any float is no float.
    """
    if kind is bool or isinstance(value, bool):
        return (None, value) if kind is bool and isinstance(value, bool) else (f"must be {kind_words(kind)}", value)
    if kind is float:
        try:
            converted = float(value) if isinstance(value, (int, float, str)) else math.nan
        except (ValueError, OverflowError):
            converted = math.nan
        return (None, converted) if math.isfinite(converted) else ("must be a finite number", value)
    if kind in _KIND_WORDS and not isinstance(value, kind):
        return f"must be {kind_words(kind)}", value
    return None, value


def problem(value: Any, kind: Optional[type], interval: Optional[str] = None, why: str = "",
            item: Optional[type] = None) -> tuple[Optional[str], Any]:
    """``(what is wrong or None, the value converted)``: its kind, then its interval (each item's, for a list)."""
    if kind is not None:
        wrong, value = as_kind(value, kind)
        if wrong:
            return wrong, value
    if isinstance(value, list) and item is not None:
        items = []
        for x in value:
            wrong, x = problem(x, item, interval)
            if wrong:
                return f"must be a list of {kind_words(item)}s" + (f" in {interval}" if interval else ""), value
            items.append(x)
        return None, items
    if interval is not None and isinstance(value, (int, float)) and not inside(value, interval):
        return f"must be in {interval}" + (f": {why}" if why else ""), value
    return None, value


__all__ = ["as_kind", "inside", "kind_words", "problem"]
