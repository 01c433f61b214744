"""Each benchmark script runs at a tiny size and writes its JSON record, with a peak memory beside
every time or throughput figure (the figures are not checked: timings are not tests). lightly is a benchmark-only dependency: its script is skipped without it."""
from __future__ import annotations

import importlib
import importlib.util
import json

import pytest

TINY = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "16"]
CASES = {
    "throughput": [*TINY, "--frameworks", "simsiam,ressl", "--variants", "per-image,batched", "--steps", "1",
                   "--warmup", "1"],
    "search_cost": [*TINY, "--images", "64", "--epochs", "1", "--variants", "per-image"],
    "vs_lightly": [*TINY, "--steps", "1", "--warmup", "1"],
    "fair_share": ["--policies", "new", "--rounds", "1", "--epochs", "1", "--settle", "0.2",
                   "--set", "data.train_subset=128", "--set", "data.test_subset=50", "--set", "data.batch_size=32",
                   "--set", "model.backbone_width=0.0625", "--set", "model.head_width=0.0625"],
}
TIMES = ("epoch_s", "step_s", "wall_s", "search_s", "images_per_s")


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_writes_its_record(name, tmp_path, capsys):
    if name == "vs_lightly" and importlib.util.find_spec("lightly") is None:
        pytest.skip("lightly is not installed (benchmarks/requirements-lightly.txt)")
    output = tmp_path / f"{name}.json"
    importlib.import_module(f"benchmarks.{name}").main([*CASES[name], "--output", str(output)])
    record = json.loads(output.read_text())
    assert record["benchmark"] == name and record["rows"]
    for row in record["rows"]:  # every time or throughput figure has its peak memory beside it
        if any(row.get(key) is not None for key in TIMES):
            assert isinstance(row.get("peak_mib"), float) and row["peak_mib"] > 0, row
    assert record["machine"]["torch"]
    assert "written:" in capsys.readouterr().out
