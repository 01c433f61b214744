"""NAS-Bench-Macro's space (Su et al., CVPR 2021), layer for layer, and its benchmark table.

The network is xiusu/NAS-Bench-Macro's ``train/model.py``: stem 3x3 conv to 32 channels,
8 searchable layers in stages of 2, 3 and 3 (the first of each stage has stride 2 and doubles
the width: 32 -> 64 -> 128 -> 256), a 1x1 conv to 1280 and global pooling. Each layer is
``identity`` (a 1x1 conv + BN where it downsamples), ``mb3_k3`` or ``mb6_k5``; those are the
digits 0, 1 and 2 of the benchmark's 8-digit key, layer 1 first.

The benchmark trains each network alone (supervised, CIFAR-10); several keys share one network
(an identity that is not first in its stage does nothing wherever it sits), and
:func:`canonical_key` is the benchmark's own ``get_real_arch``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from search_spaces.macro import MacroBackboneSpace

NAS_BENCH_MACRO_OPS = ("identity", "mb3_k3", "mb6_k5")  # key digits 0, 1, 2
NAS_BENCH_MACRO_STAGES = (2, 3, 3)
NUM_LAYERS = sum(NAS_BENCH_MACRO_STAGES)
TABLE_NAME = "nas-bench-macro_cifar10.json"
_ROOT = Path(__file__).resolve().parents[1]


class BenchmarkKeyError(ValueError):
    """A key or architecture that NAS-Bench-Macro does not hold; the message is one line."""


class NasBenchMacroSpace(MacroBackboneSpace):
    """Exactly NAS-Bench-Macro's network without its classifier (``feature_dim`` = 1280 at width 1)."""

    space_name = "nas_bench_macro"

    def __init__(self, width: float = 1.0, in_channels: int = 3, prefix: str = "backbone"):
        super().__init__(NAS_BENCH_MACRO_OPS, "cifar", width, in_channels, prefix)

    @classmethod
    def benchmark_entry(cls, architecture: Mapping[str, Any]) -> dict:
        """The network's benchmark key and, when the table is on disk, its CIFAR-10 accuracy and cost."""
        key = arch_to_key(architecture)
        try:
            table = NasBenchMacro()
        except FileNotFoundError:
            return {"key": key, "canonical_key": canonical_key(key)}
        r = table.record(key)
        return {"key": key, "canonical_key": canonical_key(key), "mean_acc": r["mean_acc"], "params": r["params"],
                "flops": r["flops"]}

    @classmethod
    def distinct_architectures(cls, prefix: str = "backbone") -> list[dict]:
        """One architecture per distinct network (6561 keys, 3969 networks), in canonical-key order."""
        return [key_to_arch(key, prefix) for key in distinct_keys()]


def layer_labels(prefix: str = "backbone") -> list[str]:
    return [f"{prefix}.layer{i}.op" for i in range(1, NUM_LAYERS + 1)]


def key_to_arch(key: Any, prefix: str = "backbone") -> dict[str, str]:
    """The architecture (label -> operation) of a benchmark key such as ``'12012012'``."""
    text = str(key)
    if len(text) != NUM_LAYERS or any(c not in "012" for c in text):
        raise BenchmarkKeyError(f"NAS-Bench-Macro has no key {text!r}: a key is {NUM_LAYERS} digits, each 0 "
                                f"(identity), 1 (mb3_k3) or 2 (mb6_k5), e.g. '12012012'")
    return {label: NAS_BENCH_MACRO_OPS[int(c)] for label, c in zip(layer_labels(prefix), text)}


def arch_to_key(arch: Mapping[str, Any], prefix: str = "backbone") -> str:
    """The benchmark key of an architecture; extra labels (a searched head) are ignored."""
    digits = []
    for label in layer_labels(prefix):
        if label not in arch:
            raise BenchmarkKeyError(f"architecture has no choice for {label}: it is not a NAS-Bench-Macro network")
        op = arch[label]
        if op not in NAS_BENCH_MACRO_OPS:
            raise BenchmarkKeyError(f"{label} = {op!r} is not a NAS-Bench-Macro operation "
                                    f"(one of {', '.join(NAS_BENCH_MACRO_OPS)})")
        digits.append(str(NAS_BENCH_MACRO_OPS.index(op)))
    return "".join(digits)


def canonical_key(key: str) -> str:
    """The benchmark's ``get_real_arch``: identities after a stage's first layer move to its end."""
    key_to_arch(key)  # validates
    out, rest = [], list(key)
    for size in NAS_BENCH_MACRO_STAGES:
        stage, rest = rest[:size], rest[size:]
        kept = [stage[0]] + [c for c in stage[1:] if c != "0"]
        out += kept + ["0"] * (size - len(kept))
    return "".join(out)


def shared_data_candidates() -> list[Path]:
    """Where ``shared/data`` may sit: beside the checkout (``ROOT.parent``), or one level up (a worktree)."""
    return [_ROOT.parent / "shared" / "data", _ROOT.parent.parent / "shared" / "data"]


def default_table_path() -> Optional[Path]:
    for data in shared_data_candidates():
        path = data / "nas-bench-macro" / TABLE_NAME
        if path.is_file():
            return path
    return None


class NasBenchMacro:
    """The benchmark table: ``key -> {test_acc, mean_acc, std, params, flops}``."""

    def __init__(self, path: str | Path | None = None):
        p = Path(path) if path is not None else default_table_path()
        if p is None or not p.is_file():
            raise FileNotFoundError(f"NAS-Bench-Macro table not found (looked for {path or TABLE_NAME} under "
                                    f"{', '.join(str(d) for d in shared_data_candidates())})")
        self.path = p
        with p.open() as fh:
            self.table: dict[str, dict] = json.load(fh)

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def keys(self) -> Iterable[str]:
        return self.table.keys()

    def record(self, key_or_arch: Any) -> dict:
        key = arch_to_key(key_or_arch) if isinstance(key_or_arch, Mapping) else str(key_or_arch)
        key_to_arch(key)  # a malformed key gets the format message
        if key not in self.table:
            raise BenchmarkKeyError(f"NAS-Bench-Macro has no key {key!r} in {self.path}")
        return self.table[key]

    def mean_acc(self, key_or_arch: Any) -> float:
        return float(self.record(key_or_arch)["mean_acc"])

    def best(self) -> tuple[str, dict]:
        key = max(self.table, key=lambda k: self.table[k]["mean_acc"])
        return key, self.table[key]

    def best_within(self, max_flops: float | None = None, max_params: float | None = None) -> tuple[str, dict]:
        """The highest ``mean_acc`` among networks within a FLOPs / parameter budget (classifier included)."""
        ok = [k for k, r in self.table.items()
              if (max_flops is None or r["flops"] <= max_flops) and (max_params is None or r["params"] <= max_params)]
        if not ok:
            raise BenchmarkKeyError(f"no NAS-Bench-Macro network within flops <= {max_flops}, params <= {max_params}")
        key = max(ok, key=lambda k: (self.table[k]["mean_acc"], -int(k)))
        return key, self.table[key]


__all__ = ["NasBenchMacroSpace", "NasBenchMacro", "BenchmarkKeyError", "NAS_BENCH_MACRO_OPS", "key_to_arch",
           "arch_to_key", "canonical_key", "layer_labels", "default_table_path"]


def distinct_keys() -> list[str]:
    """One key per distinct network of the benchmark (its canonical key), sorted: 3969 of the 6561 keys."""
    keys = ("".join(digits) for digits in itertools.product("012", repeat=NUM_LAYERS))
    return sorted({canonical_key(key) for key in keys})
