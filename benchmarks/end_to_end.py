"""End-to-end wall time of the Quick start's search, as a user runs it (on its benchmark config).

Runs ``python -m experiments search --config configs/bench_digits_simsiam.yml`` in a fresh
process per variant (imports, data, the whole search with its per-epoch monitor, the
export and the final kNN and linear probe all count) into a temporary folder, and reads
the search's own timing and metrics back from ``best_architecture.json``.

    python -m benchmarks.end_to_end
    python -m benchmarks.end_to_end --variants default --set search.epochs=4   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._util import ROOT, report, run_measured

VARIANTS = {
    "default": [],
    "batched": ["data.batched_augment=true"],
    "batched+cl": ["data.batched_augment=true", "trainer.channels_last=true"],
    "stock-arch-step": ["search.fast_arch_step=false"],
}


def run_job(config: str, overrides: list[str], device: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    accelerator = "gpu" if device == "cuda" else "cpu"
    command = [sys.executable, "-m", "experiments", "search", "--config", config, "--output-dir", str(out),
               "--set", "trainer.progress_bar=false", "--set", f"trainer.accelerator={accelerator}"]
    for item in overrides:
        command += ["--set", item]
    start = time.perf_counter()
    returncode, stderr, peak_rss_mib = run_measured(command, ROOT)
    wall = time.perf_counter() - start
    if returncode not in (0, 3):  # 3: the derived head collapsed (still a finished run)
        raise SystemExit(f"error: the job failed ({returncode}):\n{stderr[-3000:]}")
    record = json.loads((out / "best_architecture.json").read_text())
    m = record["metrics"]
    epochs = [h["epoch_seconds"] for h in record.get("history", [])]
    return {"wall_s": wall, "search_s": m.get("search_seconds"), "mean_epoch_s": sum(epochs) / len(epochs) if epochs
            else None, "knn_top1": m["knn_top1"], "linear_top1": m["linear_top1"], "collapse": m["collapse"],
            "status": record["status"], "peak_rss_mib": peak_rss_mib, "output": str(out)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench_digits_simsiam.yml")
    parser.add_argument("--variants", default="default,batched+cl", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every variant (repeatable)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"error: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        result = run_job(args.config, VARIANTS[variant] + args.overrides, args.device)
        rows.append({"variant": variant, "overrides": " ".join(VARIANTS[variant] + args.overrides) or "-", **result})
        print(f"{variant:16s} {result['wall_s']:.1f} s")
    first = rows[0]["wall_s"]
    for row in rows:
        row["speedup"] = first / row["wall_s"]
    report("end_to_end", f"python -m experiments search --config {args.config} ({args.device}, "
           f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
           ["variant", "wall_s", "speedup", "search_s", "mean_epoch_s", "peak_rss_mib", "knn_top1", "linear_top1",
            "collapse", "status", "overrides"], rows, args,
           notes=["peak_rss_mib: the job process's peak resident set (host memory, also under CUDA)"])


if __name__ == "__main__":
    main()
