"""The GPU check's CPU dry run: every step runs at a tiny size or says why it is skipped, in one JSON;
a machine without a package is told so in one line before anything runs."""
from __future__ import annotations

import json

from benchmarks import gpu_check

STEPS = ["packages", "search_gpu", "search_batched_views", "search_bf16", "search_compile", "retrain",
         "backbone_search", "ddp_nccl", "vs_lightly", "throughput"]


def test_the_dry_run_runs_every_step_on_cpu_and_skips_the_cuda_ones(tmp_path, capsys):
    output = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--output", str(output), "--workdir", str(tmp_path / "work")]) == 0
    record = json.loads(output.read_text())
    steps = {s["step"]: s for s in record["steps"]}
    assert [s["step"] for s in record["steps"]] == STEPS
    assert record["dry_run"] is True and record["machine"]["torch"] and record["machine"]["gpus"] == []
    for name in ("search_gpu", "search_batched_views", "retrain", "backbone_search", "throughput"):
        assert steps[name]["status"] == "ok", (name, steps[name].get("error"), steps[name].get("traceback"))
    for name in ("search_bf16", "search_compile"):
        assert steps[name]["status"] == "skipped" and "needs CUDA" in steps[name]["reason"]
    assert steps["ddp_nccl"]["status"] == "skipped" and "two or more CUDA devices" in steps["ddp_nccl"]["reason"]
    assert steps["vs_lightly"]["status"] == ("skipped" if record["packages"]["optional_missing"] else "ok")
    assert steps["search_gpu"]["figures"]["architecture"]  # a real search wrote its architecture
    assert steps["retrain"]["figures"]["train_seconds"] > 0  # the retrain's own metrics
    assert steps["backbone_search"]["figures"]["architecture"]
    assert steps["throughput"]["figures"]["rows"]
    assert "written:" in capsys.readouterr().out


def test_a_missing_package_is_reported_first_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(gpu_check.REQUIRED, "no_such_package_for_gpu_check", "pip install it")
    output = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: missing packages: no_such_package_for_gpu_check (pip install it)"]
    record = json.loads(output.read_text())
    assert record["steps"] == [{"step": "packages", "status": "failed", "error": "missing: no_such_package_for_gpu_check"}]
    assert "machine" not in record  # nothing ran
