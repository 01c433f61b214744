"""The ranking benchmark's judging: the label-free rows on a handful of keys, Kendall's tau and its
bootstrap interval on hand-made numbers, the strategy list from the registry, and the run cache
(a cached run is read, never retrained)."""
from __future__ import annotations

import json
import math

import pytest

from experiments.studies import ranking
from experiments.studies import parse_arguments, run_study
from experiments.core.errors import ConfigError
from search_spaces.nas_bench_macro import NasBenchMacro, default_table_path, shared_data_candidates

needs_table = pytest.mark.skipif(default_table_path() is None, reason="../shared/data/nas-bench-macro is absent")


def test_layer_count_counts_the_non_identity_layers():
    assert [ranking.layer_count(k) for k in ("00000000", "10000000", "12012000", "20202020", "22222222")] == \
        [0, 1, 4, 4, 8]


def test_tau_of_a_ranker_against_itself_is_one_and_against_its_negative_minus_one():
    values = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    assert ranking.kendall(values, values) == pytest.approx(1.0)
    assert ranking.kendall(values, [-v for v in values]) == pytest.approx(-1.0)
    # one discordant pair of the 6 among four numbers: tau = (5 - 1) / 6
    assert ranking.kendall([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)


def test_the_bootstrap_interval_contains_the_point_estimate():
    import numpy as np

    rng = np.random.default_rng(1)
    truth = rng.normal(size=60)
    scores = truth + rng.normal(scale=1.0, size=60)
    judged = ranking.judge(list(scores), list(truth), [t > 1.0 for t in truth], rounds=300, seed=0)
    lo, hi = judged["ci95"]
    assert lo < judged["tau"] < hi and hi - lo > 0.05  # a noisy ranker: a real interval around it
    assert judged["top_n"] == int((truth > 1.0).sum())
    exact = ranking.judge([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [False, False, True, True, True], rounds=50, seed=0)
    assert exact["ci95"] == (pytest.approx(1.0), pytest.approx(1.0)) and exact["top_tau"] == pytest.approx(1.0)


def test_the_strategies_come_from_the_registry_and_take_options():
    from experiments.strategies import STRATEGIES

    names = ranking.sampling_strategies()
    assert "spos" in names and names == [n for n in STRATEGIES if n in names]
    assert all(not STRATEGIES[n].interleaved for n in names) and "darts" not in names
    assert ranking.parse_strategy("spos") == ("spos", {})
    assert ranking.parse_strategy("spos:distinct=true,trials=3") == ("spos", {"distinct": True, "trials": 3})
    assert ranking.strategy_label("spos", {"distinct": True}) == "spos-distinct=true"
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        ranking.parse_strategy("nope")
    with pytest.raises(ConfigError, match="option=value"):
        ranking.parse_strategy("spos:distinct")


def test_a_budget_names_its_own_file():
    budget = {"epochs": 3, "train_images": 2000, "width": 0.25, "trials": 32}
    a = ranking.run_file(ranking.DEFAULT_CACHE, "spos-distinct=true", "supervised", 0, budget)
    assert a.name.startswith("spos-distinct=true__supervised__seed0__e3-n2000-w0.25-")
    assert ranking.run_file(ranking.DEFAULT_CACHE, "spos", "supervised", 0, {**budget, "trials": 16}) != \
        ranking.run_file(ranking.DEFAULT_CACHE, "spos", "supervised", 0, budget)


def test_the_run_file_changes_with_every_field_that_changes_the_run():
    """The cache key of a run: its strategy with options, objective, seed and every field of its budget."""
    budget = {"train_images": 2000, "held_out": 0.2, "epochs": 3, "width": 0.25, "head_width": 0.25, "batch_size": 128,
              "score_images": 400, "bn_batches": 2, "trials": 32, "archs": 100, "arch_seed": 0}
    base = ranking.run_file(ranking.DEFAULT_CACHE, "spos", "supervised", 0, budget)
    others = [ranking.run_file(ranking.DEFAULT_CACHE, "spos-distinct=true", "supervised", 0, budget),
              ranking.run_file(ranking.DEFAULT_CACHE, "spos", "simsiam", 0, budget),
              ranking.run_file(ranking.DEFAULT_CACHE, "spos", "supervised", 1, budget)]
    others += [ranking.run_file(ranking.DEFAULT_CACHE, "spos", "supervised", 0, {**budget, field: value})
               for field, value in zip(budget, (64, 0.5, 1, 0.5, 0.5, 64, 100, 1, 8, 50, 1))]
    others.append(ranking.run_file(ranking.DEFAULT_CACHE, "spos", "supervised", 0, {**budget, "dataset": "digits"}))
    assert len(others) == 3 + len(budget) + 1 and base not in others and len(set(others)) == len(others)


@needs_table
def test_label_free_rows_on_a_handful_of_keys():
    table = NasBenchMacro()
    keys = ["00000000", "11111111", "22222222", "12012000"]
    rows = ranking.label_free_scores(keys, table, width=0.125, seed=0)
    assert rows["layer count"] == [0, 8, 8, 4]
    assert rows["FLOPs"] == [table.record(k)["flops"] for k in keys]
    assert rows["params"] == [table.record(k)["params"] for k in keys]
    assert all(math.isfinite(v) for v in rows["synflow"] + rows["naswot"])
    assert rows["synflow"][1] < rows["synflow"][2]  # MB6_K5 everywhere carries more flow than MB3_K3
    assert ranking.percentile_in_benchmark(table, table.best()[0]) == 100.0
    assert ranking.percentile_in_benchmark(table, "00000000") == pytest.approx(100 / len(table))  # the worst


@needs_table
def test_main_reuses_a_cached_run_and_builds_the_table_from_it(tmp_path, monkeypatch, capsys):
    table = NasBenchMacro()
    argv = ["--strategies", "spos", "--frameworks", "supervised", "--archs", "5", "--epochs", "1",
            "--train-images", "64", "--bootstrap", "50", "--cache", str(tmp_path), "--docs", str(tmp_path / "r.md")]
    args = parse_arguments("ranking", argv)
    keys = ranking.sample_keys(table, 5, 0)
    budget = {"train_images": 64, "held_out": args.held_out, "epochs": 1, "width": args.width,
              "head_width": args.head_width, "batch_size": args.batch_size, "score_images": args.score_images,
              "bn_batches": args.bn_batches, "trials": args.trials, "archs": 5, "arch_seed": 0}
    best = max(keys, key=table.mean_acc)
    run = {"label": "spos", "objective": "supervised", "seed": 0, "budget": budget, "keys": keys,
           "scores": [table.mean_acc(k) for k in keys],  # a perfect ranker
           "selected": {"key": best, "mean_acc": table.mean_acc(best),
                        "percentile": ranking.percentile_in_benchmark(table, best)},
           "seconds": {"train": 12.0}, "machine": {"cpu": "hand-made", "cpu_count": 2, "cuda": None}}
    ranking.run_file(tmp_path, "spos", "supervised", 0, budget).write_text(json.dumps(run))

    def must_not_train(*a, **k):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(ranking, "train_and_rank", must_not_train)
    if not any((d / "cifar10" / "train").is_dir() for d in shared_data_candidates()):
        argv.append("--table-only")  # without CIFAR-10 only the table is built (the cache is still read)
    results_page = tmp_path / "results.md"
    results_page.write_text(f"# Title\n\nbefore\n{ranking.SUMMARY_BEGIN}\nold summary\n{ranking.SUMMARY_END}\nafter\n")
    argv += ["--page", str(results_page)]
    assert run_study("ranking", argv) == 0
    page = (tmp_path / "r.md").read_text()
    assert "| spos | supervised | 0 | +1.000 | [+1.00, +1.00] |" in page
    short = results_page.read_text()  # the results page's short form: the hand text kept, one row per strategy
    assert short.startswith("# Title\n\nbefore\n") and short.rstrip().endswith("after")
    assert "old summary" not in short and "| spos | +1.000 (+1.00) |" in short and "| layer count |" in short
    assert "| layer count |" in page and "| noise ceiling (seed 0 vs seed 1) |" in page
    assert "above the layer-count baseline" in page and "hand-made" in page
    assert "written:" in capsys.readouterr().out
    assert run_study("ranking", [*argv, "--strategies", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --strategies: unknown strategy")


def test_the_table_replaces_only_its_own_part_of_the_page(tmp_path):
    page = tmp_path / "ranking.md"
    ranking.write_table(page, "first table")
    text = page.read_text()
    assert ranking.BEGIN_MARK in text and "first table" in text
    page.write_text("# Hand-written\n\nintro\n\n" + text.split("\n", 2)[2] + "\nafter the table\n")
    ranking.write_table(page, "second table")
    text = page.read_text()
    assert text.startswith("# Hand-written\n\nintro\n") and text.rstrip().endswith("after the table")
    assert "second table" in text and "first table" not in text and text.count(ranking.BEGIN_MARK) == 1


def test_ranking_compare_gives_the_tau_of_two_cached_runs(tmp_path, capsys):
    def saved(name, objective, scores, keys="abcd"):
        path = tmp_path / name
        path.write_text(json.dumps({"label": "spos", "objective": objective, "keys": list(keys), "scores": scores}))
        return str(path)

    a = saved("a.json", "supervised", [0.1, 0.2, 0.3, 0.4])
    assert run_study("ranking", ["--compare", a, saved("b.json", "simsiam", [0.4, 0.3, 0.2, 0.1]),
                                 "--bootstrap", "20"]) == 0
    assert "tau -1.000" in capsys.readouterr().out  # exactly reversed
    assert run_study("ranking", ["--compare", a, saved("c.json", "simsiam", [1, 2, 3, 4], keys="abce")]) == 2
    assert "different architectures" in capsys.readouterr().err

