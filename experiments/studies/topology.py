"""What TopoNAS and EnTranNAS claim, measured small: consistency, search cost per epoch, top-2 vs learned topology.

On digits (8x8) with the cell space of ``configs/digits_backbone_cells.yml`` under SimSiam, per strategy
and seed, one supernet search, then:

(a) consistency: kNN top-1 (test split) of the supernet's backbone and of the derived network with the
    supernet's weights (no BatchNorm recalibration: the weights as inherited), and their gap;
(b) search cost: CPU (process) and wall seconds per search epoch, no per-epoch monitor, one thread;
(d) for TopoNAS: the nodes whose learned input set (the most probable) differs from the set DARTS's
    top-2 rule picks on the same weights.

With ``--retrain-epochs N`` also (c): each strategy's derived cell, exported as the search job exports
it, retrained from scratch by the ``retrain`` job's own function (``run_retrain``: NNI's ``freeze`` of
the JSON) under SimSiam for N epochs on the whole digits training split, once per ``--retrain-seeds``
seed, and scored by kNN and a linear probe on the test split. The control is a ``random`` cell of the
same space (per node a uniformly drawn set of distinct inputs, per edge a uniformly drawn operation,
drawn with the search seed), retrained the same way. ``--search-records`` takes the searched
architectures from a committed results file (``docs/results/topology_search.json``) instead of
searching again.

Each run is cached as one JSON file under ``--out`` (a killed study resumes); the table is printed and
written to ``--table``. ``--page`` runs nothing: it writes the tables of (a)-(d) on the results page
(``docs/results.md``) from the committed results (``docs/results/topology_search{,_12ep}.json``,
``topology_retrain.json``). Rerun::

    OMP_NUM_THREADS=1 python -m experiments study topology --epochs 4 --seeds 0 1 --images 768

(c), 24 retrains of about 57 CPU s each (23 CPU-minutes) on this machine::

    OMP_NUM_THREADS=1 python -m experiments study topology --epochs 4 --seeds 0 1 --strategies darts toponas \
        entrannas --search-records docs/results/topology_search.json --retrain-epochs 20 --retrain-seeds 0 1 2
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from experiments.studies.kit import (RESULTS, ROOT, cached, command, current_command, machine, mean_sd_text,
                                     page_argument, quiet, write_between_markers)

NAME = "topology"
HELP = "what TopoNAS and EnTranNAS claim, measured small: consistency, search cost, top-2 against learned topology"

STRATEGIES = {"darts": ("darts", {}), "toponas": ("toponas", {}), "entrannas": ("entrannas", {}),
              # the committed runs used the edge rule, the default before the survey's (edge, operation) pairs
              "entrannas-dst": ("entrannas", {"dst": True, "dst_rule": "edges"})}
DST_OPS = ["sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "none"]


def config(name: str, seed: int, epochs: int, out: Path, images: Optional[int], **overrides):
    """The search config of ``name``; ``overrides`` (dotted keys) change it, e.g. into a retrain's."""
    from experiments.core.validation import load_config

    strategy, options = STRATEGIES[name]
    cells = {"channels": 8, "num_cells": 5, "num_nodes": 4, "inputs_per_node": 2}
    if options.get("dst"):
        cells.update(inputs_per_node=5, ops=DST_OPS)  # any number of inputs (up to all five predecessors)
    return load_config(ROOT / "configs" / "digits_backbone_cells.yml", {
        "seed": seed, "output_dir": str(out), "search.epochs": epochs, "data.train_subset": images,
        "backbone_search.strategy": strategy,
        "backbone_search.strategy_options": options, "model.backbone_options": cells,
        "evaluation.monitor_every_n_epochs": epochs + 1, "trainer.progress_bar": False,
        "trainer.accelerator": "cpu", **overrides})


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
    from search_spaces.supernet import plain_architecture

    quiet = lambda line: None  # noqa: E731
    cfg = config(name, seed, epochs, out / f"{name}-seed{seed}", images)
    setup = prepare(cfg, quiet)
    strategy = REGISTRY[cfg.backbone_search.strategy]
    cpu_start = time.process_time()
    nni_strategy, _, seconds = train_supernet(setup, Path(cfg.output_dir), log_fn=quiet)
    cpu_seconds = time.process_time() - cpu_start
    selection = strategy.select(setup.context(Path(cfg.output_dir), quiet), nni_strategy)
    architecture = plain_architecture(selection.architecture)
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


RANDOM = "random"  # the control of (c): a cell drawn uniformly from the space
SUMMARY_BEGIN = f"<!-- topology summary: written by {command(NAME, '--readme')} -->"
SUMMARY_END = "<!-- end of the topology summary -->"


def write_summary(path: Path) -> int:
    """The results page's tables from the committed results: (a), (b), (d) per search budget, (c) per cell over all its
    retrains (each file's own command reruns it)."""
    parts = []
    for stem in ("topology_search", "topology_search_12ep"):
        if (RESULTS / f"{stem}.json").is_file():
            result = json.loads((RESULTS / f"{stem}.json").read_text())
            epochs = sorted({r["epochs"] for r in result["runs"]})
            parts += [*[""] * bool(parts), f"(a) consistency, (b) cost, (d) top-2 against learned: "
                      f"{'/'.join(map(str, epochs))}-epoch "
                      f"searches on 768 digits, SimSiam, mean over seeds; {result['machine']}. "
                      f"Rerun: `{current_command(result['command'])}`", "", table(result["runs"])]
    for study in sorted(RESULTS.glob("topology_retrain*.json")):
        result = json.loads(study.read_text())
        rows = retrain_table(result["runs"]).splitlines()
        first = result["runs"][0]
        searched = sorted({r["search_epochs"] for r in result["runs"] if r["strategy"] != RANDOM})
        parts += ["", f"(c) each derived cell of the {'/'.join(map(str, searched))}-epoch searches (and a random one) "
                      f"retrained from scratch under SimSiam, {first['epochs']} epochs on digits, "
                      f"{len(result['runs'])} retrains (mean ± sd over every search and retraining seed of a cell); "
                      f"{result['machine']}. Rerun: `{current_command(result['command'])}`",
                  "", *rows[:2], *(row for row in rows[2:] if row.split(" | ")[1] == "all")]
    write_between_markers(path, "\n".join(parts), SUMMARY_BEGIN, SUMMARY_END)
    return 0


def random_architecture(mutables: dict, seed: int) -> dict:
    """A cell drawn from the space (``mutables``: its ``simplify()``) the strategies derive from: per node,
    distinct inputs drawn uniformly (as many as the node's slots), per edge an operation drawn uniformly;
    ``seed`` fixes the draw."""
    import random
    import re

    from search_spaces.cost import exported_values

    rng = random.Random(seed)
    architecture, slots = {}, {}
    for label, mutable in mutables.items():
        match = re.fullmatch(r"(.*)/input_(\d+)_\d+", label)
        if match:
            slots.setdefault(match.groups(), []).append(label)
        else:
            architecture[label] = rng.choice(exported_values(mutable))
    for labels in slots.values():
        for label, value in zip(labels, rng.sample(exported_values(mutables[labels[0]]), len(labels))):
            architecture[label] = value
    return {label: architecture[label] for label in mutables}


def retrain_one(search: dict, seed: int, epochs: int, out: Path) -> dict:
    """The searched (or random) architecture retrained from scratch by the retrain job's ``run_retrain``."""
    from experiments.core.records import space_record
    from experiments.jobs.retrain import run_retrain

    cfg = retrain_config(search["strategy"], seed, epochs, out)
    record = {"space": space_record(cfg, num_classes=10), "architecture": search["architecture"]}
    cpu_start = time.process_time()
    result = run_retrain(cfg, record, out, log_fn=lambda line: None, source=f"{search['strategy']} search",
                         overwrite=True)
    m = result["metrics"]
    return {"strategy": search["strategy"], "search_seed": search["seed"], "search_epochs": search["epochs"],
            "seed": seed, "epochs": epochs,
            "knn_top1": m["knn_top1"], "linear_top1": m["linear_top1"], "collapse": m["collapse"],
            "train_seconds": m["train_seconds"], "cpu_seconds": time.process_time() - cpu_start,
            "flops": search["derived_flops"], "architecture": search["architecture"]}


def retrain_config(name: str, seed: int, epochs: int, out: Path):
    """One retrain's config, the same for every cell: the space ``name`` searched (the random cell: DARTS's), its
    widths and SimSiam settings, the whole digits training split, ``epochs`` epochs, no per-epoch monitor."""
    return config(name if name in STRATEGIES else "darts", seed, 1, out, None, **{"train.epochs": epochs,
                                                  "evaluation.monitor_every_n_epochs": epochs + 1})


def retrain_table(records: list[dict]) -> str:
    """Mean ± sd over retraining seeds, per (cell, search seed), and per cell over all its retrains."""
    rows = ["| cell | search seed | retrains | derived FLOPs | kNN top-1 | linear top-1 | CPU s per retrain |",
            "|---|---|---|---|---|---|---|"]
    for name in [*STRATEGIES, RANDOM]:
        mine = [r for r in records if r["strategy"] == name]
        seeds = sorted({r["search_seed"] for r in mine})
        for seed in seeds + (["all"] if len(seeds) > 1 else []):
            rs = [r for r in mine if seed == "all" or r["search_seed"] == seed]
            stats = lambda key: mean_sd_text([r[key] for r in rs], lone_sd=True)  # noqa: E731
            flops = f"{statistics.mean(r['flops'] for r in rs):,.0f}"
            rows.append(f"| {name} | {seed} | {len(rs)} | {flops} | {stats('knn_top1')} | {stats('linear_top1')} | "
                        f"{statistics.mean(r['cpu_seconds'] for r in rs):.0f} |")
    return "\n".join(rows)


def searched(name: str, seed: int, args, out: Path, committed: dict) -> dict:
    """The search record of (strategy, seed): the cache, else the committed results file, else a search."""
    def search() -> dict:
        if (name, seed, args.epochs) in committed:
            return committed[name, seed, args.epochs]
        start = time.perf_counter()
        record = run_one(name, seed, args.epochs, out, args.images)
        print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return record

    return cached(out / f"{name}-seed{seed}.json", search, log=lambda line: None)


def add_arguments(p) -> None:
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--images", type=int, default=768, help="digits training images (half weights, half architecture)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--out", default=str(ROOT / "runs" / "topology_study"))
    p.add_argument("--table", default=None, help="also write the table (markdown) here")
    p.add_argument("--search-records", default=None,
                   help="a results file of this study (its 'runs'): take the searches found there instead of searching")
    p.add_argument("--retrain-epochs", type=int, default=0, help="(c): retrain each derived cell and a random one "
                                                                 "from scratch for this many SimSiam epochs (0: not)")
    p.add_argument("--retrain-seeds", type=int, nargs="+", default=[0, 1, 2])
    page_argument(p, "run nothing: write the committed results' tables")


def run(args) -> int:
    quiet()
    if args.page is not None:
        return write_summary(args.page)
    if args.retrain_epochs < 0:
        print("error: --retrain-epochs must be >= 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    committed = {}
    if args.search_records:
        for r in json.loads(Path(args.search_records).read_text())["runs"]:
            committed[r["strategy"], r["seed"], r["epochs"]] = r
    records = [searched(name, seed, args, out, committed) for seed in args.seeds for name in args.strategies]
    text = table(records)
    if args.retrain_epochs:
        retrained = []
        searches = records + [random_search(seed, args) for seed in args.seeds]
        for seed in args.retrain_seeds:  # every cell at one seed before the next: a killed study stays balanced
            for search in searches:
                tag = f"{search['strategy']}-search{search['seed']}-seed{seed}"
                folder = out / f"retrain-{args.retrain_epochs}ep"

                def retrain(search=search, seed=seed, tag=tag, folder=folder) -> dict:
                    record = retrain_one(search, seed, args.retrain_epochs, folder / tag)
                    print(f"retrain {tag}: {record['cpu_seconds']:.0f} CPU s, kNN {record['knn_top1']:.3f}, "
                          f"linear {record['linear_top1']:.3f}", file=sys.stderr, flush=True)
                    return record

                retrained.append(cached(folder / f"{tag}.json", retrain, log=lambda line: None))
        text += "\n\n" + retrain_table(retrained)
    print(text)
    if args.table:  # the table, and beside it the runs it was made from with the command and machine
        Path(args.table).write_text(text + "\n")
        Path(args.table).with_suffix(".json").write_text(json.dumps(
            {"command": command(NAME, *args.argv),
             "machine": machine_line(), "runs": retrained if args.retrain_epochs else records}, indent=1))
    return 0


def machine_line() -> str:
    """Cores, CPU model and torch threads: what the CPU seconds above were measured on."""
    import os

    import torch

    threads = torch.get_num_threads()
    return (f"{os.cpu_count()}-core {machine().get('cpu', 'CPU')} CPU shared with other jobs, "
            f"{threads} torch thread{'s' * (threads > 1)}")


def random_search(seed: int, args) -> dict:
    """The random control in the shape of a search record (its draw seeded by the search seed)."""
    from experiments.core.assembly import build_space
    from search_spaces.cost import BackboneCost

    cfg = retrain_config(RANDOM, seed, 1, Path(args.out))
    space = build_space(cfg, num_classes=10)
    architecture = random_architecture(space.simplify(), seed)  # the network's labels: the backbone's
    return {"strategy": RANDOM, "seed": seed, "epochs": 0, "architecture": architecture,
            "derived_flops": BackboneCost(space.backbone, 8)(architecture).flops}
