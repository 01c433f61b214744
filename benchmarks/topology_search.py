"""What TopoNAS and EnTranNAS claim, measured small: consistency, search cost per epoch, top-2 vs learned topology.

On digits (8x8) with the cell space of ``configs/digits_backbone_cells.yml`` under SimSiam, per strategy
and seed, one supernet search, then:

(a) consistency: kNN top-1 (test split) of the supernet's backbone and of the derived network with the
    supernet's weights (no BatchNorm recalibration: the weights as inherited), and their gap;
(b) search cost: CPU (process) and wall seconds per search epoch, no per-epoch monitor, one thread;
(d) for TopoNAS: the nodes whose learned input set (the most probable) differs from the set DARTS's
    top-2 rule picks on the same weights.

Each run is cached as one JSON file under ``--out`` (a killed study resumes); the table is printed and
written to ``--table``. Rerun::

    OMP_NUM_THREADS=1 python -m benchmarks.topology_search --epochs 4 --seeds 0 1 --images 768

Not measured here: (c) retraining the derived cells from scratch (3 seeds, kNN and linear).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks._util import ROOT  # noqa: F401 (patches NNI, puts the project on the path)

STRATEGIES = {"darts": ("darts", {}), "toponas": ("toponas", {}), "entrannas": ("entrannas", {}),
              "entrannas-dst": ("entrannas", {"dst": True})}
DST_OPS = ["sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "none"]


def config(name: str, seed: int, epochs: int, out: Path, images: int):
    from experiments.core.config import load_config

    strategy, options = STRATEGIES[name]
    cells = {"channels": 8, "num_cells": 5, "num_nodes": 4, "inputs_per_node": 2}
    if options.get("dst"):
        cells.update(inputs_per_node=5, ops=DST_OPS)  # any number of inputs (up to all five predecessors)
    return load_config(ROOT / "configs" / "digits_backbone_cells.yml", {
        "seed": seed, "output_dir": str(out), "search.epochs": epochs, "data.train_subset": images,
        "backbone_search.strategy": strategy,
        "backbone_search.strategy_options": options, "model.backbone_options": cells,
        "evaluation.monitor_every_n_epochs": epochs + 1, "trainer.progress_bar": False,
        "trainer.accelerator": "cpu"})


def knn_top1(backbone, data, cfg) -> float:
    from evaluators.downstream import extract_features, knn_accuracy

    ev = data.evaluation
    bank, test = extract_features(backbone, ev.bank), extract_features(backbone, ev.test)
    return knn_accuracy(bank, ev.bank_labels, test, ev.test_labels, ev.num_classes, cfg.evaluation.knn_k,
                        cfg.evaluation.knn_temperature)


def run_one(name: str, seed: int, epochs: int, out: Path, images: int) -> dict:
    import torch

    from experiments import nni_compat
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.strategies import STRATEGIES as REGISTRY
    from experiments.strategies.cell_supernet import supernet_cells

    quiet = lambda line: None  # noqa: E731
    cfg = config(name, seed, epochs, out / f"{name}-seed{seed}", images)
    setup = prepare(cfg, quiet)
    strategy = REGISTRY[cfg.backbone_search.strategy]
    cpu_start = time.process_time()
    nni_strategy, _, seconds = train_supernet(setup, Path(cfg.output_dir), log_fn=quiet)
    cpu_seconds = time.process_time() - cpu_start
    selection = strategy.select(setup.context(Path(cfg.output_dir), quiet), nni_strategy)
    architecture = nni_compat.plain_architecture(selection.architecture)
    supernet = nni_strategy.supernet
    derived = strategy.derive(nni_strategy, architecture)
    with torch.no_grad():
        record = {"strategy": name, "seed": seed, "epochs": epochs, "search_seconds": seconds,
                  "seconds_per_epoch": seconds / epochs, "cpu_seconds_per_epoch": cpu_seconds / epochs,
                  "supernet_knn": knn_top1(supernet.backbone, setup.data, cfg),
                  "derived_knn": knn_top1(derived.backbone, setup.data, cfg),
                  "derived_flops": setup.cost(architecture).flops, "architecture": architecture}
        if name == "toponas":
            nodes = differ = 0
            for cell in supernet_cells(supernet):
                learned, top2 = cell.derived_topology(), cell.top2_topology()
                for node in learned:
                    nodes += 1
                    differ += {j for j, _ in learned[node]} != {j for j, _ in top2[node]}
            record.update(nodes=nodes, top2_disagreements=differ)
    record["gap"] = record["supernet_knn"] - record["derived_knn"]
    return record


def table(records: list[dict]) -> str:
    rows = ["| strategy | seeds | CPU s/epoch | wall s/epoch | supernet kNN | derived kNN (inherited) | gap | "
            "derived FLOPs | "
            "top-2 vs learned |", "|---|---|---|---|---|---|---|---|---|"]
    for name in STRATEGIES:
        rs = [r for r in records if r["strategy"] == name]
        if not rs:
            continue
        mean = lambda key: statistics.mean(r[key] for r in rs)  # noqa: E731
        disagree = (f"{sum(r['top2_disagreements'] for r in rs)}/{sum(r['nodes'] for r in rs)} nodes"
                    if name == "toponas" else "")
        rows.append(f"| {name} | {len(rs)} | {mean('cpu_seconds_per_epoch'):.1f} | {mean('seconds_per_epoch'):.1f} | "
                    f"{mean('supernet_knn'):.3f} | "
                    f"{mean('derived_knn'):.3f} | {mean('gap'):+.3f} | {mean('derived_flops'):,.0f} | {disagree} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--images", type=int, default=768, help="digits training images (half weights, half architecture)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--out", default=str(ROOT / "runs" / "topology_study"))
    p.add_argument("--table", default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        for name in args.strategies:
            cached = out / f"{name}-seed{seed}.json"
            if not cached.exists():
                start = time.perf_counter()
                record = run_one(name, seed, args.epochs, out, args.images)
                cached.write_text(json.dumps(record, indent=1))
                print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            records.append(json.loads(cached.read_text()))
    text = table(records)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
