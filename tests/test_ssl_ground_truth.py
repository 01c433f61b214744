"""The SSL ground truth: the layer-count quotas on hand numbers, the network sample (distinct, even,
best and worst first), the mean over seeds, bad input refused, and one committed run rebuilt."""
from __future__ import annotations

import json

import pytest

from experiments.studies import ssl_ground_truth as gt
from experiments.studies import run_study
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
    code = run_study("ssl-ground-truth", argv + ["--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "gt.json"),
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


def _ground_truth_file(tmp_path):
    """A hand-made assembled ground truth: SimSiam on digits for networks a, b, c, d (d: seed 0 only), e untrained."""
    knn = {("a", 0): 0.2, ("a", 1): 0.4, ("b", 0): 0.5, ("b", 1): 0.5, ("c", 0): 0.9, ("c", 1): 0.7, ("d", 0): 0.6}
    runs = [{"canonical_key": k, "seed": s, "objective": "simsiam", "dataset": "digits", "knn_top1": v,
             "linear_top1": v} for (k, s), v in knn.items()]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"networks": [{"key": k} for k in "abcde"], "truth": gt.ground_truth(runs),
                                "runs": runs}))
    return path


def test_the_ranking_reads_an_ssl_ground_truth_as_its_reference(tmp_path):
    from experiments.studies import ranking
    from experiments.core.errors import ConfigError

    path = _ground_truth_file(tmp_path)
    ref = ranking.parse_reference("ssl-ground-truth:simsiam:digits", None, path)
    assert ref.keys == list("abcde") and ref.dataset == "digits"
    assert ref.truth == pytest.approx({"a": 0.3, "b": 0.5, "c": 0.8, "d": 0.6})
    assert ref.ceiling == {"a": (0.2, 0.4), "b": (0.5, 0.5), "c": (0.9, 0.7)}
    with pytest.raises(ConfigError, match=r"has no byol on digits \(it has simsiam:digits\)"):
        ranking.parse_reference("ssl-ground-truth:byol:digits", None, path)
    with pytest.raises(ConfigError, match="neither mean_acc nor"):
        ranking.parse_reference("ssl-ground-truth:simsiam", None, path)
    # a supernet ranking b < a < d < c (truth: a < b < d < c), judged on the networks with a truth (not e):
    # one discordant pair of six, tau = 4/6; a ranker that equals the truth has tau 1
    run = {"label": "spos", "objective": "simsiam", "seed": 0, "scores": [2, 1, 4, 3, 0], "command": "c",
           "budget": {"epochs": 1, "train_images": 10, "width": 0.25, "held_out": 0.2, "head_width": 0.25,
                      "batch_size": 2, "score_images": 2, "bn_batches": 1, "trials": 2, "dataset": "digits"},
           "selected": {"key": "22222222", "mean_acc": 90.0, "percentile": 50.0}, "seconds": {"train": 1.0},
           "machine": {}}
    label_free = {"arch_seed": 0, "width": 0.25, "seed": 0, "scores": {"layer count": [0.3, 0.5, 0.8, 0.6, 9.0]}}
    _, figures = ranking.build_table([run], list("abcde"), None, label_free, 20, 0, "cmd", ref)
    assert figures["runs"][0]["judged"]["tau"] == pytest.approx(4 / 6)
    assert figures["label_free"]["layer count"]["tau"] == pytest.approx(1.0)
    assert figures["noise_ceiling"]["tau"] == pytest.approx(1.0)  # seeds 0 and 1 agree on a < b < c
