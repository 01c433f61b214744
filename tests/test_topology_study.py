"""The random control of the topology study's retraining (experiments/studies/topology.py): a valid cell of the
space, drawn as documented (distinct inputs per node, operations uniform), fixed by its seed."""
from __future__ import annotations

import collections

from tests.conftest import ROOT  # noqa: F401 (the project on the path)


def test_the_random_cell_is_a_valid_draw_with_distinct_inputs_per_node_and_uniform_operations(tmp_path):
    from experiments.studies.topology import random_architecture, retrain_config
    from experiments.core.assembly import build_space
    from experiments.core.records import validate_choices
    from search_spaces.cells import CELL_OPS

    cfg = retrain_config("random", 0, 1, tmp_path)
    space = build_space(cfg, num_classes=10)
    mutables = space.simplify()
    draws = [random_architecture(mutables, seed) for seed in range(300)]
    assert random_architecture(mutables, 7) == draws[7] and draws[0] != draws[1]
    for arch in draws[:20]:
        assert validate_choices(space, arch) == arch  # every label, each value among its choices
    for cell in ("normal", "reduce"):
        for node in range(2, 6):  # four nodes; node i reads two distinct of its i predecessors
            pairs = [(a[f"backbone.{cell}/input_{node}_0"][0], a[f"backbone.{cell}/input_{node}_1"][0]) for a in draws]
            assert all(i != j and 0 <= i < node and 0 <= j < node for i, j in pairs)
    # node 2 has two predecessors, so both orders; node 5's first input: each of 0..4 in about a fifth of the draws
    first = collections.Counter(a["backbone.normal/input_5_0"][0] for a in draws)
    assert sorted(first) == [0, 1, 2, 3, 4] and min(first.values()) > 300 / 5 / 2
    ops = collections.Counter(a["backbone.reduce/op_4_1"] for a in draws)
    assert sorted(ops) == sorted(CELL_OPS) and min(ops.values()) > 300 / len(CELL_OPS) / 2


def test_the_results_page_tables_come_from_the_committed_results_and_train_nothing(tmp_path):
    import json
    import statistics

    from experiments.studies import topology as topology_search
    from experiments.studies import run_study

    page = tmp_path / "results.md"
    page.write_text(f"a\n{topology_search.SUMMARY_BEGIN}\nold\n{topology_search.SUMMARY_END}\nb\n")
    assert run_study("topology", ["--page", str(page), "--out", str(tmp_path / "runs")]) == 0
    text = page.read_text()
    assert text.startswith("a\n") and text.endswith("\nb\n") and "old" not in text
    assert not (tmp_path / "runs").exists()  # nothing searched or retrained
    for committed in topology_search.RESULTS.glob("topology_*.json"):  # and the results it read are untouched
        json.loads(committed.read_text())
    retrains = json.loads((topology_search.RESULTS / "topology_retrain.json").read_text())["runs"]
    knn = [r["knn_top1"] for r in retrains if r["strategy"] == "toponas"]
    assert f"| toponas | all | {len(knn)} | " in text
    assert f"{statistics.mean(knn):.3f} ± {statistics.stdev(knn):.3f}" in text
    assert "| toponas | 0 |" not in text  # only each cell's row over all its retrains
    searches = json.loads((topology_search.RESULTS / "topology_search_12ep.json").read_text())["runs"]
    gap = statistics.mean(r["gap"] for r in searches if r["strategy"] == "darts")
    assert f"| {gap:+.3f} |" in text


def test_the_table_is_written_with_its_runs_command_and_machine_beside_it(tmp_path):
    import json

    from experiments.studies import topology as topology_search
    from experiments.studies import run_study

    committed = topology_search.RESULTS / "topology_search.json"
    argv = ["--epochs", "4", "--seeds", "1", "--strategies", "toponas", "--search-records", str(committed),
            "--out", str(tmp_path / "runs"), "--table", str(tmp_path / "table.md")]
    assert run_study("topology", argv) == 0  # the search is the committed one: nothing is trained
    written = json.loads((tmp_path / "table.json").read_text())
    assert written["command"] == "python -m experiments study topology " + " ".join(argv)
    assert "core" in written["machine"] and "torch thread" in written["machine"]
    expected = [r for r in json.loads(committed.read_text())["runs"] if (r["strategy"], r["seed"]) == ("toponas", 1)]
    assert written["runs"] == expected and (tmp_path / "table.md").read_text().startswith("| strategy |")
