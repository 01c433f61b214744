"""Each study's analysis on hand-made runs with a known answer: a tau worked by hand, a mean ± sd, a
verdict, a table row. (The ranking, width-ranking, width and pruning summaries have theirs in
test_ranking.py, test_width_ranking.py, test_width_heads_resnet.py and test_pruning.py.)"""
from __future__ import annotations

import argparse
import json
import math

import pytest

from experiments.studies import (arch_every, backbone_study, head_study, prune, ssl_ground_truth, topology, vit_ranking,
                                 vit_vs_deit, width)


class _Table:
    """A stand-in for NAS-Bench-Macro's table: ``mean_acc`` per key."""

    def __init__(self, accuracies: dict):
        self.accuracies = accuracies

    def mean_acc(self, key: str) -> float:
        return self.accuracies[key]


def test_ssl_ground_truth_analysis_on_four_networks_and_two_seeds():
    keys = ["k1", "k2", "k3", "k4"]
    knn = {0: [0.1, 0.2, 0.3, 0.4], 1: [0.1, 0.2, 0.4, 0.3]}  # seed 1 swaps the last two networks
    runs = [{"dataset": "digits", "objective": "simsiam", "canonical_key": k, "seed": s, "knn_top1": v,
             "linear_top1": v} for s, values in knn.items() for k, v in zip(keys, values)]
    label_free = {"keys": keys, "scores": {"layer count": [4, 3, 2, 1]}}
    figures = ssl_ground_truth.analyse(runs, keys, _Table({"k1": 1, "k2": 2, "k3": 3, "k4": 4}), label_free,
                                       rounds=20, seed=0)
    ceiling = {r["metric"]: r for r in figures["noise_ceiling"]}
    assert ceiling["knn_top1"]["tau"] == pytest.approx(4 / 6) and ceiling["knn_top1"]["n"] == 4
    # the mean over seeds is 0.1, 0.2, 0.35, 0.35: five concordant pairs, one tied in the truth
    vs = {r["metric"]: r for r in figures["vs_mean_acc"]}
    assert vs["knn_top1"]["tau"] == pytest.approx(5 / math.sqrt(6 * 5))
    free = {r["dataset"]: r for r in figures["label_free"]}
    assert free["digits"]["tau"] == pytest.approx(-5 / math.sqrt(30))
    assert free["NAS-Bench-Macro"]["tau"] == pytest.approx(-1.0)
    assert figures["cross"] == []  # one objective: nothing to cross
    assert ssl_ground_truth.tau_row([1, 2], [1, 2], 20, 0) == {"tau": None, "ci95": None, "n": 2}


def test_topology_tables_on_hand_made_records():
    searches = [{"strategy": "darts", "cpu_seconds_per_epoch": c, "seconds_per_epoch": 2 * c, "supernet_knn": s,
                 "derived_knn": d, "gap": s - d, "derived_flops": f}
                for c, s, d, f in ((1.0, 0.8, 0.6, 1000), (3.0, 0.6, 0.6, 3000))]
    searches.append({"strategy": "toponas", "cpu_seconds_per_epoch": 5.0, "seconds_per_epoch": 5.0,
                     "supernet_knn": 0.5, "derived_knn": 0.4, "gap": 0.1, "derived_flops": 10,
                     "top2_disagreements": 1, "nodes": 4})
    rows = topology.table(searches).splitlines()
    assert rows[2] == "| darts | 2 | 2.0 | 4.0 | 0.700 | 0.600 | +0.100 | 2,000 |  |"
    assert rows[3] == "| toponas | 1 | 5.0 | 5.0 | 0.500 | 0.400 | +0.100 | 10 | 1/4 nodes |"
    retrains = [{"strategy": "darts", "search_seed": s, "flops": 100, "knn_top1": k, "linear_top1": 0.5,
                 "cpu_seconds": 10} for s, k in ((0, 0.2), (0, 0.4), (1, 0.9))]
    rows = topology.retrain_table(retrains).splitlines()
    assert rows[2] == "| darts | 0 | 2 | 100 | 0.300 ± 0.141 | 0.500 ± 0.000 | 10 |"
    assert rows[3] == "| darts | 1 | 1 | 100 | 0.900 ± 0.000 | 0.500 ± 0.000 | 10 |"
    assert rows[4] == "| darts | all | 3 | 100 | 0.500 ± 0.361 | 0.500 ± 0.000 | 10 |"


def test_prune_table_means_each_method_and_target_over_seeds(tmp_path, capsys):
    args = argparse.Namespace(backbone="resnet18", dataset="digits", nbm_key="22212220", train_images=2000,
                              test_images=1000, pretrain_epochs=2, finetune_epochs=1, gate_epochs=1, linear_epochs=5,
                              seeds="0,1", methods="l1", targets="0.5", overrides=[], config="configs/x.yml")
    metrics = lambda knn: {"knn_top1": knn, "linear_top1": knn / 2}  # noqa: E731
    rows = [{"seed": 0, "method": "l1", "target": 0.5, "flops_ratio": 0.48, "metrics": metrics(0.4), "seconds": 3},
            {"seed": 1, "method": "l1", "target": 0.5, "flops_ratio": 0.52, "metrics": metrics(0.6), "seconds": 5},
            {"seed": 1, "method": "l1", "target": 0.25, "flops_ratio": None, "metrics": None, "seconds": 1}]
    page = tmp_path / "prune.md"
    prune.write_table(args, rows, page)
    text = page.read_text()
    assert "| l1 | 0.5 | 0.500 ± 0.028 | 0.500 ± 0.141 | 0.250 ± 0.071 |  | 2 |" in text
    assert "| l1 | 0.25 | | collapsed | collapsed | | 0 (+1 collapsed) |" in text
    assert "Rerun: `python -m experiments study prune --dataset digits" in text
    assert json.loads(page.with_suffix(".json").read_text()) == rows


def test_arch_every_agreement_movement_and_the_cost_record(tmp_path):
    assert arch_every.agreement({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 0, "c": 3}) == pytest.approx(2 / 3)
    assert arch_every.agreement({"a": 1}, {"b": 1}) == 0.0  # a label only one side has is a disagreement
    record = {"history": [{"architecture": {"x": {"p": 0.6, "q": 0.4}}}], "probabilities": {"x": {"p": 0.2, "q": 0.8}}}
    start, delta = arch_every.movement(record)
    assert start == {"x": "p"} and delta == pytest.approx([-0.4, 0.4])
    assert arch_every.cosine([1, 0], [0, 1]) == 0.0 and arch_every.cosine([1, 1], [2, 2]) == pytest.approx(1.0)
    assert math.isnan(arch_every.cosine([0, 0], [1, 1]))
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps({"date": "d", "machine": {"load_average": [2.0]}, "summary": {
        "batched: fast-every3 / plain": 1.05, "batched: fast-every3 / plain (CPU time)": 1.1, "other": 9}}))
    assert arch_every.epoch_costs(str(cost)) == {
        3: "1.05 (batched; CPU time 1.10; target <= 1.1; cost.json, d, load 2.0)"}
    assert arch_every.epoch_costs(str(tmp_path / "none.json")) == {}


def test_vit_ranking_judges_each_sharing_overall_and_within_a_patch_size():
    archs = [{"backbone.patch_size": p} for p in (2, 2, 4, 4)]
    alone = [{"knn_top1": k, "linear_top1": k} for k in (0.1, 0.2, 0.3, 0.4)]
    rows = vit_ranking.judge({"cyclic": [1, 2, 3, 4], "prefix": [2, 1, 3, 4]}, alone, archs)
    assert [r["sharing"] for r in rows] == ["cyclic", "prefix"]
    assert rows[0]["kendall_tau_knn"] == pytest.approx(1.0) and rows[0]["tau_knn_95"] == "1.00 - 1.00"
    assert rows[1]["kendall_tau_knn"] == pytest.approx(4 / 6)  # one swapped pair of six
    assert rows[1]["tau_knn_patch2"] == pytest.approx(-1.0) and rows[1]["tau_knn_patch4"] == pytest.approx(1.0)
    assert rows[1]["archs_patch2"] == 2


def test_head_study_summary_on_two_seeds_of_two_arms():
    def row(arm, seed, knn, search=None):
        return {"arm": arm, "seed": seed, "knn_top1": knn, "linear_top1": knn, "collapse": 0.9, "search": search,
                "train_seconds": 10.0, "head_params": 100, "architecture": None}

    search = {"seconds": 4.0, "status": "ok", "probabilities": {"a": {"x": 0.75, "y": 0.25}}}
    rows = [row("hand-made", 0, 0.5), row("hand-made", 1, 0.7),
            row("darts-nasiam", 0, 0.8, search), row("darts-nasiam", 1, 0.9, search)]
    arms = [a for a in head_study.ARMS if a.name in ("hand-made", "darts-nasiam")]
    table = {e["arm"]: e for e in head_study.summarise(rows, arms, threshold=0.1)}
    darts = table["darts-nasiam"]
    assert darts["knn_top1"] == (pytest.approx(0.85), pytest.approx(math.sqrt(0.005)))
    # 0.85 - 0.071 > 0.6 + 0.141: the intervals do not overlap
    assert darts["vs_hand_made"]["knn"] == "win" and darts["vs_hand_made"]["knn_seeds_above"] == [2, 2]
    assert darts["vs_hand_made"]["knn_delta"] == pytest.approx(0.25)
    assert darts["search_seconds"] == 4.0 and darts["decisiveness"]["0"] == (0.75, 0.5)
    assert table["hand-made"]["vs_hand_made"] is None and table["hand-made"]["collapsed_seeds"] == []


def test_backbone_study_page_rows(monkeypatch):
    result = {"dataset": "digits", "budget_flops": 1000.0, "image_size": 8, "search_seconds": 12.0,
              "train_epochs": 1, "search_epochs": 1, "train_images": 10, "test_images": 5,
              "rows": [{"network": "ResNet-18", "note": "width 0.125", "flops": 900, "params": 1234,
                        "knn_top1": 0.5, "linear_top1": 0.25, "train_seconds": 3.4}]}
    page = backbone_study.markdown([result], 0, 1.0, {"machine": "x86_64"}, ["--datasets", "digits"])
    assert "Rerun: `python -m experiments study backbone --datasets digits`" in page
    assert "| ResNet-18 | 900 | 1,234 | 0.500 | 0.250 | 3 | width 0.125 |" in page


def test_width_study_table_row():
    r = {"name": "bcnet", "seed": 1, "architecture": {"backbone.stage1.width": 32}, "flops": 1500, "max_flops": 2000,
         "params": 12000, "knn_top1": 0.4, "linear_top1": 0.5, "collapse": 0.93, "cpu_seconds": 7.5}
    assert width.table([r]).splitlines()[2] == \
        "| bcnet (seed 1) | stage1 32 | 1,500 (2,000) | 12,000 | 0.400 | 0.500 | 0.93 | 7.5 |"


def test_arch_every_study_runs_tiny_and_writes_its_record(tmp_path, capsys):
    """The arch-every study end to end at a tiny size: per k a row with its agreement and peak memory."""
    from experiments.studies import run_study

    output = tmp_path / "arch_every.json"
    assert run_study("arch-every", ["--seeds", "0", "--set", "search.epochs=2", "--set", "data.train_subset=128",
                                    "--set", "data.batch_size=32", "--set", "model.backbone_width=0.0625",
                                    "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["benchmark"] == "arch_every" and [r["compared"] for r in record["rows"]] == \
        ["k=1 vs k=1, same seed", "k=3 vs k=1, same seed"]
    assert record["rows"][0]["agreement"] == 1.0  # a run agrees with itself
    assert all(isinstance(r["peak_mib"], float) and r["peak_mib"] > 0 for r in record["rows"])
    assert "written:" in capsys.readouterr().out


def test_mcts_simulation_summary_and_a_tiny_run(tmp_path):
    from experiments.studies import mcts_simulation, run_study

    summary = mcts_simulation.summarise([{"top1_share": 0.1, "calls": 4}, {"top1_share": 0.3, "calls": 4}])
    assert summary["top1_share"] == (pytest.approx(0.2), pytest.approx(math.sqrt(0.02)))
    assert summary["calls"] == (4, 0.0)
    assert mcts_simulation.summarise([{"calls": 3}]) == {"calls": (3, 0.0)}  # one seed: no spread
    output = tmp_path / "mcts.json"
    assert run_study("mcts-simulation", ["--space", "synthetic", "--seeds", "2", "--epochs", "2",
                                         "--steps-per-epoch", "30", "--updates-from", "1", "--tree-from", "1",
                                         "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert len(record["results"]) == 3 and record["arguments"]["seeds"] == 2 and "run" not in record["arguments"]


def test_vit_vs_deit_shape_cell():
    shape = {"patch_size": 2, "embed_dim": 64, "layers": [[2, 128], [4, 256]]}
    assert vit_vs_deit.shape_text(shape) == "patch 2, E 64, (heads, hidden) [[2, 128], [4, 256]]"


def test_frameworks_knn_runs_tiny_and_writes_each_frameworks_row(tmp_path, capsys):
    from experiments.studies import run_study

    output = tmp_path / "frameworks_knn.json"
    assert run_study("frameworks-knn", ["--dataset", "digits", "--width", "0.0625", "--batch-size", "16",
                                        "--frameworks", "simsiam,untrained", "--epochs", "1", "--train-images", "64",
                                        "--test-images", "50", "--linear-epochs", "2", "--knn-k", "5",
                                        "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    rows = {r["framework"]: r for r in record["rows"]}
    assert set(rows) == {"simsiam", "untrained"} and rows["untrained"]["epochs"] == 0 and rows["simsiam"]["epochs"] == 1
    assert all(0 <= r["knn_top1"] <= 1 and r["peak_mib"] > 0 for r in rows.values())
    assert record["machine"]["device"] == "cpu" and "written:" in capsys.readouterr().out
    assert run_study("frameworks-knn", ["--dataset", "digits", "--frameworks", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --frameworks: unknown nope")


def test_prune_table_only_rewrites_the_page_from_the_runs_beside_it(tmp_path):
    from experiments.studies import run_study

    rows = [{"seed": 0, "method": "l1", "target": 0.5, "flops_ratio": 0.5, "seconds": 2, "cpu_seconds": 3,
             "metrics": {"knn_top1": 0.25, "linear_top1": 0.5}}]
    page = tmp_path / "page.md"
    page.with_suffix(".json").write_text(json.dumps(rows))
    out = tmp_path / "runs"
    assert run_study("prune", ["--methods", "l1", "--targets", "0.5", "--table", str(page), "--out", str(out),
                               "--table-only"]) == 0
    assert "| 0 | l1 | 0.5 | 0.500 | 0.250 | 0.500 | 2 | 3 |" in page.read_text() and not out.exists()
    assert run_study("prune", ["--table", str(tmp_path / "none.md"), "--table-only"]) == 2
