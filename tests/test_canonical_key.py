"""``canonical_key``: which NAS-Bench-Macro keys name the same network.

In a stage's first layer (stride 2, doubling the width) ``identity`` is a 1x1 conv + BN that
downsamples: a real layer, so ``01000000`` and ``10000000`` are different networks. After the
first layer an identity does nothing, so identities there may move to the stage's end without
changing the network. The rule is the benchmark's own ``get_real_arch`` (xiusu/NAS-Bench-Macro,
``train/utils.py`` and ``train/collect_benchmark.py``, commit 61a2bfc), which also built the
table: every key's record is its canonical key's.
"""
from __future__ import annotations

import itertools

import pytest

from search_spaces.nas_bench_macro import NasBenchMacro, canonical_key, default_table_path

ALL_KEYS = ["".join(k) for k in itertools.product("012", repeat=8)]


def get_real_arch(arch, stages=(2, 3, 3)):
    """The benchmark's function, transcribed: keep each stage's first op, drop its later identities, pad with 0."""
    arch = list(arch)
    result = ""
    for stage in stages:
        id_num = 0
        for idx in range(stage):
            op = arch.pop(0)
            if idx == 0:
                result += op
                continue
            if op != "0":
                result += op
            else:
                id_num += 1
        result += "0" * id_num
    return result


@pytest.fixture(scope="module")
def table():
    if default_table_path() is None:
        pytest.skip("../shared/data/nas-bench-macro is not present")
    return NasBenchMacro()


@pytest.mark.parametrize("key, canonical", [
    # a stage that starts with an identity keeps it first: it is the stage's downsampling layer
    ("01000000", "01000000"),
    ("10000000", "10000000"),
    ("00000000", "00000000"),
    ("11011000", "11011000"),  # stage 2 = 0 1 1
    ("11102000", "11120000"),  # stage 2 = 1 0 2: its identity moves to the end, not to the front
    ("11111011", "11111011"),  # stage 3 = 0 1 1
    ("11111101", "11111110"),
    ("02002020", "02020020"),  # every stage led by an identity, later identities moved
    # identities after a stage's first layer move to its end, the other ops keep their order
    ("10210201", "10210210"),
    ("11001000", "11010000"),
    ("22201102", "22210120"),
    ("12102102", "12120120"),
    ("21201102", "21210120"),
])
def test_canonical_key_by_hand(key, canonical):
    assert canonical_key(key) == canonical == get_real_arch(key)


def test_an_identity_that_leads_its_stage_is_not_moved():
    assert canonical_key("01000000") != canonical_key("10000000")
    for stage_start in (0, 2, 5):  # the first layer of stages 1, 2 and 3
        key = ["1"] * 8
        key[stage_start] = "0"
        key = "".join(key)
        assert canonical_key(key) == key  # the leading identity stays; nothing else is an identity
        swapped = list(key)
        swapped[stage_start], swapped[stage_start + 1] = "1", "0"  # the same ops, the identity second
        assert canonical_key("".join(swapped)) != canonical_key(key)


def test_canonical_key_is_the_benchmarks_rule_on_every_key():
    assert all(canonical_key(k) == get_real_arch(k) for k in ALL_KEYS)
    assert all(canonical_key(canonical_key(k)) == canonical_key(k) for k in ALL_KEYS)
    assert len({canonical_key(k) for k in ALL_KEYS}) == 3969  # 9 * 21 * 21 distinct networks


def test_the_table_gives_keys_with_one_canonical_key_one_record_and_the_others_their_own(table):
    # a stage led by an identity: different accuracy, parameters and FLOPs (the 1x1 conv is real)
    a, b = table.record("01000000"), table.record("10000000")
    assert a["params"] != b["params"] and a["flops"] != b["flops"] and abs(a["mean_acc"] - b["mean_acc"]) > 5
    assert table.record("11011000")["params"] != table.record("11101000")["params"]
    # an identity moved within a stage: the same network, the same record
    assert table.record("11102000") == table.record("11120000")
    assert table.record("11001000") == table.record("11010000")
    # and over the whole table: the record of every key is its canonical key's ...
    assert len(table) == len(ALL_KEYS)
    assert all(table.record(k) == table.record(canonical_key(k)) for k in ALL_KEYS)
    # ... and no two canonical keys share a record (three seeds' accuracies each), so the rule
    # merges no two networks that the benchmark trained apart
    canonical = sorted({canonical_key(k) for k in ALL_KEYS})
    assert len({tuple(table.record(k)["test_acc"]) for k in canonical}) == len(canonical)

