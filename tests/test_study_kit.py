"""The studies' kit on hand-made numbers: Kendall's tau worked by hand, the bootstrap on tiny sets whose
interval is known, mean ± sd, the grid's order, the run cache (every config field in its key, a cached
run read back, never rerun), the one table-between-markers writer and the rerun commands."""
from __future__ import annotations

import json

import pytest

from experiments.studies import STUDIES, kit, parse_arguments


def test_kendall_is_tau_b_worked_by_hand():
    # one discordant pair of six: (5 - 1) / 6
    assert kit.kendall([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # 4 concordant, 0 discordant, one tie in each list of the 6 pairs: 4 / sqrt(5 * 5)
    assert kit.kendall([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kit.kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_the_bootstrap_interval_on_tiny_sets_with_known_answers():
    exact = pytest.approx
    assert kit.bootstrap_tau([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], rounds=50, seed=0) == (exact(1.0), exact(1.0))
    assert kit.bootstrap_tau([1, 2, 3, 4], [4, 3, 2, 1], rounds=50, seed=0) == (exact(-1.0), exact(-1.0))
    truth = [0.1, 0.2, 0.3, 0.4, 0.5]
    # paired: a perfect ranker minus a reversed one is 2 on every resample of the same networks
    assert kit.bootstrap_paired(truth, truth[::-1], truth, rounds=50, seed=0) == (exact(2.0), exact(2.0))
    assert kit.bootstrap_mean([0.5, 0.5, 0.5], rounds=50) == (exact(0.5), exact(0.5))
    # two values 0 and 1: a quarter of the resamples are all 0, a quarter all 1
    assert kit.bootstrap_mean([0.0, 1.0], rounds=2000, seed=0) == (0.0, 1.0)
    # the resamples, not the data, make the interval: a noisy ranker gets a real width around its tau
    x, y = [1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7]
    lo, hi = kit.bootstrap_tau(x, y, rounds=300, seed=1)
    assert kit.kendall(x, y) == pytest.approx(20 / 28)
    assert lo < 20 / 28 < hi <= 1.0 and hi - lo > 0.1


def test_mean_and_sample_sd():
    assert kit.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert kit.mean_sd([0.4, None]) == (0.4, None) and kit.mean_sd([]) == (None, None)
    assert kit.mean_sd_text([0.1, 0.3]) == "0.200 ± 0.141"
    assert kit.mean_sd_text([0.5]) == "0.500" and kit.mean_sd_text([0.5], lone_sd=True) == "0.500 ± 0.000"


def test_the_grid_is_every_arm_at_one_seed_before_the_next():
    assert kit.grid(["a", "b"], [0, 1]) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert kit.grid(["a", "b"], [0, 1], seed_major=False) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


CONFIG = {"seed": 0, "train": {"epochs": 2, "lr": 0.1}, "data": {"dataset": "digits", "images": 64}}


def _result_of(config: dict) -> dict:
    """A toy result that depends on every field of the config."""
    return {"value": json.dumps(config, sort_keys=True)}


def _every_field(config: dict, prefix: tuple = ()):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _every_field(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _changed(config: dict, path: tuple) -> dict:
    copy = json.loads(json.dumps(config))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = f"{node[path[-1]]}-changed"
    return copy


def test_the_cache_key_holds_every_field_that_changes_the_result(tmp_path):
    cache = kit.RunCache(tmp_path)
    first, ran = cache.run("toy", CONFIG, lambda: _result_of(CONFIG))
    assert ran and first == _result_of(CONFIG)
    reordered = {"data": CONFIG["data"], "train": {"lr": 0.1, "epochs": 2}, "seed": 0}
    assert cache.run("toy", reordered, lambda: pytest.fail("a cached run ran again")) == (first, False)
    fields = list(_every_field(CONFIG))
    assert len(fields) == 5
    for path in fields:  # a run differing in any one field is its own run, never the cached one
        other = _changed(CONFIG, path)
        assert kit.config_key(other) != kit.config_key(CONFIG), path
        result, ran = cache.run("toy", other, lambda other=other: _result_of(other))
        assert ran and result == _result_of(other), path
    assert len(list(tmp_path.glob("toy__*.json"))) == 1 + len(fields)  # one JSON per run


def test_a_cache_file_whose_config_differs_is_not_read(tmp_path):
    cache = kit.RunCache(tmp_path)
    path = cache.path("toy", CONFIG)
    path.write_text(json.dumps({"config": {"seed": 1}, "result": {"value": "someone else's"}}))
    result, ran = cache.run("toy", CONFIG, lambda: {"value": "mine"})
    assert ran and result == {"value": "mine"}
    assert json.loads(path.read_text())["result"] == {"value": "mine"}


def test_cached_reads_a_run_file_instead_of_computing(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"scores": [1, 2]}

    path = tmp_path / "run.json"
    assert kit.cached(path, compute, log=lambda _: None) == {"scores": [1, 2]}
    path.write_text(json.dumps({"scores": [7]}))  # what is on disk is what the next call gets
    assert kit.cached(path, compute, log=lambda _: None) == {"scores": [7]}
    assert calls == [1]


def test_the_table_replaces_only_its_own_part_of_the_page(tmp_path):
    page = tmp_path / "page.md"
    kit.write_between_markers(page, "first table", "<!-- b -->", "<!-- e -->", "# Title")
    assert page.read_text() == "# Title\n\n<!-- b -->\nfirst table\n<!-- e -->\n"
    page.write_text("# Hand-written\n\nintro\n<!-- b -->\nfirst table\n<!-- e -->\nafter the table\n")
    kit.write_between_markers(page, "second table", "<!-- b -->", "<!-- e -->")
    assert page.read_text() == "# Hand-written\n\nintro\n<!-- b -->\nsecond table\n<!-- e -->\nafter the table\n"
    other = tmp_path / "other.md"
    other.write_text("no markers")
    kit.write_between_markers(other, "t", "<!-- b -->", "<!-- e -->")
    assert other.read_text() == "no markers\n<!-- b -->\nt\n<!-- e -->\n"


#: the studies that write a short table onto the results page
PAGE_STUDIES = ("ranking", "width-ranking", "width", "topology", "prune")


@pytest.mark.parametrize("name", PAGE_STUDIES)
def test_page_without_a_path_is_the_results_page_and_readme_is_its_former_name(name, tmp_path):
    assert parse_arguments(name, []).page is None  # no page written unless asked
    assert parse_arguments(name, ["--page"]).page == kit.ROOT / "docs" / "results.md"
    assert parse_arguments(name, ["--page", str(tmp_path / "p.md")]).page == tmp_path / "p.md"
    assert parse_arguments(name, ["--readme"]).page == kit.ROOT / "docs" / "results.md"
    assert parse_arguments(name, ["--readme", "README.md"]).page.name == "README.md"


def test_every_study_table_is_on_the_results_page_between_its_markers_and_none_in_the_readme():
    results = (kit.ROOT / "docs" / "results.md").read_text()
    readme = (kit.ROOT / "README.md").read_text()
    for name in PAGE_STUDIES:
        module = STUDIES[name]
        assert results.count(module.SUMMARY_BEGIN) == 1 and results.count(module.SUMMARY_END) == 1, name
        assert results.index(module.SUMMARY_BEGIN) < results.index(module.SUMMARY_END), name
        assert module.SUMMARY_BEGIN not in readme and module.SUMMARY_END not in readme, name
    assert "<!--" not in readme  # no table written by a study is left on the front page


def test_a_recorded_command_is_printed_as_it_is_typed_today():
    assert kit.current_command("python -m benchmarks.ranking_nas_bench_macro --seeds 0") == \
        "python -m experiments study ranking --seeds 0"
    assert kit.current_command("OMP_NUM_THREADS=1 python -m x") == "OMP_NUM_THREADS=1 python -m x"
    assert kit.current_command("OMP_NUM_THREADS=1 python -m benchmarks.topology_search --epochs 4") == \
        "OMP_NUM_THREADS=1 python -m experiments study topology --epochs 4"
    assert kit.current_command("python -m benchmarks.width_study_x") == "python -m benchmarks.width_study_x"
    assert kit.current_command("python -m experiments.study --framework byol") == \
        "python -m experiments study head --framework byol"
    assert set(kit.FORMER_COMMANDS.values()) <= set(STUDIES)


def test_every_study_is_one_registry_entry_with_the_study_interface():
    for name, module in STUDIES.items():
        assert callable(module.add_arguments) and callable(module.run) and module.HELP, name
        argv = ["--framework", "simsiam"] if name == "head" else []
        assert parse_arguments(name, argv).argv == argv  # the defaults parse; the argv is kept for the record
