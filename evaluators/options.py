"""Options a framework or a strategy declares next to its code: a default and the values it may take.

The config validates ``framework_options`` and ``backbone_search.strategy_options`` against
these, so a range lives beside the code whose maths needs it (an EMA momentum in (0, 1)).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

_INTERVAL = re.compile(r"^([\[(])\s*([^,]+),\s*([^\])]+)([\])])$")


@dataclass(frozen=True)
class Option:
    """A framework option: its default and, for a number, the interval it must lie in (``"(0, 1)"``).

    The default's type is the option's type (an integer option takes integers, a float option
    any finite number). ``why`` says what the range protects, for the error line.
    """

    default: Any
    interval: Optional[str] = None
    why: str = ""

    def problem(self, value: Any) -> Optional[str]:
        """None if ``value`` is valid, else what is wrong with it (the end of an error line)."""
        default = self.default
        if isinstance(default, bool) or isinstance(value, bool):
            return None if isinstance(value, bool) and isinstance(default, bool) else f"must be like {default!r}"
        if isinstance(default, int) and not isinstance(value, int):
            return "must be an integer"
        if isinstance(default, float) and not (isinstance(value, (int, float)) and math.isfinite(value)):
            return "must be a finite number"
        if isinstance(default, str) and not isinstance(value, str):
            return "must be a string"
        if self.interval is None:
            return None
        left, low, high, right = _INTERVAL.match(self.interval).groups()
        low, high = float(low), float(high)
        inside = (low <= value if left == "[" else low < value) and (value <= high if right == "]" else value < high)
        if inside:
            return None
        return f"must be in {self.interval}" + (f": {self.why}" if self.why else "")


def option_problems(specs: Mapping[str, Option], values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for every value that is unknown (``"unknown"``) or out of its range."""
    problems = []
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            problems.append((key, "unknown"))
        elif (problem := spec.problem(value)) is not None:
            problems.append((key, problem))
    return problems
