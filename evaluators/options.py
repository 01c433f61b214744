"""Options a framework or a strategy declares next to its code: a default and the values it may take.

The config validates ``framework_options``, ``search.strategy_options`` and
``backbone_search.strategy_options`` against these, so a range lives beside the code whose maths
needs it (an EMA momentum in (0, 1)). The range language is the config schema's own
(``experiments/ranges.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from experiments import ranges


@dataclass(frozen=True)
class Option:
    """An option: its default and, for a number (or each number of a list), the interval it must lie in.

    The default's type is the option's type (an integer option takes integers, a float option
    any finite number, a list option a list of its first item's type). ``why`` says what the
    range protects, for the error line.
    """

    default: Any
    interval: Optional[str] = None
    why: str = ""

    def parse(self, value: Any) -> tuple[Optional[str], Any]:
        """``(what is wrong or None, the value as the option's type)``: the end of an error line, or the value."""
        kind = type(self.default)
        item = type(self.default[0]) if kind is list and self.default else None
        return ranges.problem(value, kind, self.interval, self.why, item)

    def problem(self, value: Any) -> Optional[str]:
        """None if ``value`` is valid, else what is wrong with it (the end of an error line)."""
        return self.parse(value)[0]


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
