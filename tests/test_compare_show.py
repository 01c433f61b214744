"""`compare` (one table of runs, a Pareto plot) and `show` (the chosen architecture drawn), on
hand-made run directories with known figures: nothing is trained here."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.core.architecture_picture import block_groups, cell_graphs
from experiments.jobs.compare import pareto_front, read_run, sort_rows

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SPACE = {"framework": "simsiam", "head_space": "fixed", "backbone": "nas_bench_macro"}


def make_run(directory: Path, job: str, config: dict, record_file: str | None, record: dict | None,
             state: str = "finished") -> Path:
    directory.mkdir(parents=True)
    (directory / "run.json").write_text(json.dumps({"job": job, "config": config}))
    (directory / "status.json").write_text(json.dumps({"state": state, "job": job}))
    if record_file:
        (directory / record_file).write_text(json.dumps(record))
    return directory


@pytest.fixture
def runs(tmp_path):
    head = make_run(tmp_path / "head", "search",
                    {"framework": "byol", "model": {"backbone": "resnet18", "head_space": "nasiam"},
                     "search": {"epochs": 20, "strategy": "gdarts"}, "data": {"train_subset": 1442}},
                    "best_architecture.json",
                    {"kind": "ssl_head_search", "framework": "byol", "strategy": "gdarts", "status": "ok",
                     "space": {"framework": "byol", "head_space": "nasiam", "backbone": "resnet18"},
                     "architecture": {"projector.layer1.op": "linear_relu", "projector.layer2.op": "identity",
                                      "predictor.layer1.op": "linear_elu"},
                     "probabilities": {"projector.layer1.op": {"linear_relu": 0.61, "identity": 0.39}},
                     "metrics": {"knn_top1": 0.7, "linear_top1": 0.75, "collapse": 0.9, "search_seconds": 30.0}})
    backbone = make_run(tmp_path / "backbone", "backbone-search",
                        {"framework": "simsiam", "model": {"backbone": "nas_bench_macro", "head_space": "fixed"},
                         "search": {"epochs": 5}, "backbone_search": {"strategy": "spos", "max_flops": 250000}},
                        "best_architecture.json",
                        {"kind": "backbone_search", "framework": "simsiam", "strategy": "spos", "status": "ok",
                         "space": SPACE, "architecture": {"backbone.layer1.op": "mb3_k3"},
                         "cost": {"flops": 200000, "params": 5000}, "budget": {"max_flops": 250000},
                         "metrics": {"knn_top1": 0.8, "linear_top1": 0.6, "collapse": 1.1, "search_seconds": 10.0,
                                     "select_seconds": 2.5}})
    pruned = make_run(tmp_path / "pruned", "prune", {"framework": "simsiam", "model": {"backbone": "nas_bench_macro"}},
                      "prune_results.json",
                      {"kind": "ssl_prune", "framework": "simsiam", "space": SPACE, "architecture": {},
                       "pruning": {"method": "l1", "quantity": "flops", "target": 0.5,
                                   "after": {"flops": 100000, "params": 2500}},
                       "metrics": {"knn_top1": 0.75, "linear_top1": 0.55, "collapse": 1.0, "seconds": 4.0}})
    running = make_run(tmp_path / "running", "retrain", {"framework": "simsiam", "train": {"epochs": 7}}, None, None,
                       state="running")
    return {"head": head, "backbone": backbone, "pruned": pruned, "running": running}


def test_each_run_reads_into_its_row(runs):
    head, backbone = read_run(runs["head"]), read_run(runs["backbone"])
    assert (head.job, head.framework, head.space, head.strategy) == ("search", "byol", "nasiam heads on resnet18",
                                                                     "gdarts")
    assert head.budget == "20 ep, 1442 img" and head.flops is None and head.seconds == 30.0
    assert (backbone.strategy, backbone.flops, backbone.params, backbone.seconds) == ("spos", 200000, 5000, 12.5)
    assert backbone.budget == "5 ep, <= 250,000 FLOPs"
    pruned = read_run(runs["pruned"])
    assert (pruned.strategy, pruned.flops, pruned.knn, pruned.budget) == ("l1", 100000, 0.75, "flops x0.5")
    running = read_run(runs["running"])
    assert running.status == "running" and running.knn is None and running.budget == "7 ep"


def test_sort_puts_the_best_first_and_missing_figures_last(runs):
    rows = [read_run(d) for d in runs.values()]
    assert [r.run for r in sort_rows(rows, "knn")] == [str(runs[n]) for n in ("backbone", "pruned", "head", "running")]
    assert [r.run for r in sort_rows(rows, "knn", reverse=True)][:3] == [str(runs[n]) for n in ("head", "pruned",
                                                                                                "backbone")]
    assert [r.job for r in sort_rows(rows, "job")] == ["backbone-search", "prune", "retrain", "search"]


def test_pareto_front_keeps_what_nothing_beats():
    points = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (2.0, 0.6), (3.0, 0.6)]
    assert pareto_front(points) == [0, 3, 2]  # (2, 0.4) and (3, 0.6) are beaten by (2, 0.6)


def test_compare_prints_markdown_writes_csv_and_the_pareto_png(runs, tmp_path, capsys):
    plot = tmp_path / "pareto.png"
    assert main(["compare", *map(str, runs.values()), str(tmp_path / "stray.txt"), "--sort", "knn",
                 "--plot", str(plot)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("| run | job | framework | space | strategy | budget | FLOPs |")
    assert f"| {runs['backbone']} | backbone-search | simsiam | nas_bench_macro | spos |" in lines[2]
    assert "| 200,000 | 5,000 | 0.800 | 0.600 | 1.100 | 12.5 | finished |" in lines[2]
    assert f"plot: {plot}" in printed.out and plot.read_bytes()[:8] == PNG
    assert "skipped 1 path(s) without run.json" in printed.err
    out = tmp_path / "table.csv"
    assert main(["compare", *map(str, runs.values()), "--format", "csv", "--output", str(out), "--plot", "none"]) == 0
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["knn"] for row in table] == ["0.7", "0.8", "0.75", ""]  # raw numbers, the order given


def test_compare_refuses_paths_without_a_run_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments", "compare", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "experiments", "compare", str(broken)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot read the run record" in proc.stderr and proc.stderr.count("\n") == 1


CELL = {"backbone.normal/op_2_0": "sep_conv_3x3", "backbone.normal/input_2_0": [0],
        "backbone.normal/op_2_1": "skip_connect", "backbone.normal/input_2_1": [1],
        "backbone.normal/op_3_0": "max_pool_3x3", "backbone.normal/input_3_0": [2],
        "backbone.normal/op_3_1": "dil_conv_3x3", "backbone.normal/input_3_1": [0],
        "backbone.reduce/op_2_0": "avg_pool_3x3", "backbone.reduce/input_2_0": [1],
        "backbone.reduce/op_2_1": "sep_conv_3x3", "backbone.reduce/input_2_1": [0]}


def test_cell_graph_follows_each_chosen_input_and_operation():
    assert cell_graphs(CELL) == {
        "normal": {2: [(0, "sep_conv_3x3"), (1, "skip_connect")], 3: [(2, "max_pool_3x3"), (0, "dil_conv_3x3")]},
        "reduce": {2: [(1, "avg_pool_3x3"), (0, "sep_conv_3x3")]}}
    assert block_groups(CELL) == {}


def test_blocks_are_grouped_per_part_in_layer_order():
    groups = block_groups({"backbone.layer10.op": "a", "backbone.layer2.op": "b", "projector.layer1.op": "c"})
    assert groups == {"backbone": [("layer2.op", "b"), ("layer10.op", "a")], "projector": [("layer1.op", "c")]}


@pytest.mark.parametrize("kind", ["head", "backbone", "cells"])
def test_show_draws_heads_blocks_and_cells(runs, tmp_path, kind, capsys):
    if kind == "cells":
        target = make_run(tmp_path / "cells", "backbone-search", {"framework": "simsiam"}, "best_architecture.json",
                          {"kind": "backbone_search", "framework": "simsiam", "strategy": "toponas",
                           "space": {**SPACE, "backbone": "cells"}, "architecture": CELL})
    else:
        target = runs[kind]
    assert main(["show", str(target)]) == 0
    assert capsys.readouterr().out.strip() == f"written: {target / 'architecture.png'}"
    assert (target / "architecture.png").read_bytes()[:8] == PNG


def test_show_refuses_a_run_without_a_record_in_one_line(runs):
    proc = subprocess.run([sys.executable, "-m", "experiments", "show", str(runs["running"])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "has the run finished?" in proc.stderr
    assert not (runs["running"] / "architecture.png").exists()
