"""The SSL ground truth: the layer-count quotas on hand numbers, the network sample (distinct, even,
best and worst first), the mean over seeds, bad input refused, and one committed run rebuilt."""
from __future__ import annotations

import json

import pytest

from benchmarks import ssl_ground_truth as gt
from search_spaces.nas_bench_macro import NasBenchMacro, canonical_key, default_table_path

needs_table = pytest.mark.skipif(default_table_path() is None, reason="../shared/data/nas-bench-macro is absent")
# distinct networks per layer count in NAS-Bench-Macro (canonical keys)
AVAILABLE = {0: 1, 1: 12, 2: 68, 3: 240, 4: 576, 5: 960, 6: 1088, 7: 768, 8: 256}


def test_quotas_share_evenly_and_pass_a_short_count_on():
    # 60 over 9 counts: 6 each, the first 6 counts one more; count 0 has 1 network, so its 6 spare
    # go one each to counts 1..6 in the second pass.
    assert gt.layer_quotas(AVAILABLE, 60) == {0: 1, 1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 7, 7: 6, 8: 6}
    assert gt.layer_quotas({0: 1, 1: 2}, 3) == {0: 1, 1: 2}
    with pytest.raises(ValueError, match="only 3 distinct"):
        gt.layer_quotas({0: 1, 1: 2}, 4)


@needs_table
def test_the_sample_is_distinct_even_over_layer_counts_and_starts_with_the_best_and_the_worst():
    table = NasBenchMacro()
    keys = gt.sample_networks(table, 60, 0)
    assert len(set(keys)) == 60 and all(canonical_key(k) == k for k in keys)
    assert gt._counts(keys) == gt.layer_quotas(AVAILABLE, 60)
    accuracies = [table.mean_acc(k) for k in table.keys()]
    assert table.mean_acc(keys[0]) == max(accuracies) and table.mean_acc(keys[1]) == min(accuracies)
    assert gt.sample_networks(table, 60, 0) == keys and gt.sample_networks(table, 60, 1) != keys


def test_the_ground_truth_is_the_mean_over_seeds():
    runs = [{"dataset": "digits", "objective": "simsiam", "canonical_key": "10000000", "seed": s,
             "knn_top1": knn, "linear_top1": lin} for s, knn, lin in ((0, 0.5, 0.4), (1, 0.7, 0.6))]
    runs.append({"dataset": "digits", "objective": "simsiam", "canonical_key": "20000000", "seed": 0,
                 "knn_top1": 0.9, "linear_top1": 0.8})
    truth = gt.ground_truth(runs)["digits"]["simsiam"]
    assert truth["10000000"] == {"knn_top1": pytest.approx(0.6), "linear_top1": pytest.approx(0.5), "seeds": [0, 1]}
    assert truth["20000000"]["seeds"] == [0]


@pytest.mark.parametrize("argv, message", [
    (["--objectives", "nope"], "unknown objective 'nope'"),
    (["--datasets", "mnist"], "unknown dataset 'mnist'"),
    (["--networks", "1"], "--networks must be between 2 and 3969"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, argv, message):
    code = gt.main(argv + ["--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "gt.json"),
                           "--docs", str(tmp_path / "gt.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert list(tmp_path.iterdir()) == []


@needs_table
def test_a_committed_run_rebuilds_bit_for_bit(tmp_path):
    """The worst network (the smallest, all identity) under SimSiam on digits, seed 0, at the recorded budget."""
    budget = gt.BUDGETS["digits"]
    path = gt.run_file(gt.DEFAULT_CACHE, "00000000", "simsiam", "digits", 0, budget)
    assert path.is_file(), f"the committed ground truth lacks {path.name}"
    cached = json.loads(path.read_text())
    assert cached["budget"] == budget
    rebuilt = gt.train_network("00000000", "simsiam", 0, budget, None, tmp_path, NasBenchMacro())
    for field in ("knn_top1", "linear_top1", "collapse", "final_loss", "flops", "params", "canonical_key"):
        assert rebuilt[field] == cached[field], field
