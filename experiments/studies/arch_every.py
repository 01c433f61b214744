"""Does ``search.arch_every: k`` derive the architecture k = 1 derives? A small seed study.

For each seed, one digits head search per k (same seed, same data, same initial alphas);
each k > 1 run is compared with the k = 1 run of its seed: the fraction of searched
labels given the same choice. Beside it, the noise ceiling: the same fraction between
the k = 1 runs of two different seeds (how much the derived architecture moves anyway).
Since the same seed starts from the same alphas, agreement alone could only mean that
the alphas hardly moved: each run also reports the fraction of labels whose choice left
the initial one (the probabilities logged after the warm-up epoch, before any
architecture step), and the cosine between its probability movement (final minus
initial) and the k = 1 run's.
A bootstrap over the per-seed agreements gives each an interval. Search time, the median
search epoch (after the warm-up; the monitor outside it) and peak memory of every run are
reported too, and beside the agreement the epoch cost that ``benchmarks.search_cost``
recorded for the same k (``--cost``: search epoch / plain epoch, target at most 1.1).
The collapse guard is off (the study compares
architectures; a collapsed tiny search still derives one).

    python -m experiments study arch-every                      # k = 1, 3 over seeds 0, 1, 2
    python -m experiments study arch-every --ks 1,2,3 --seeds 0,1,2,3,4 --set search.epochs=10
"""
from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path

from experiments.studies.kit import RESULTS, ROOT, bootstrap_mean, invoked, machine, options_of, quiet, report

NAME = "arch-every"
HELP = "does search.arch_every: k derive the architecture k = 1 derives? a small seed study"

DEFAULTS = {"data.train_subset": 1024, "data.batch_size": 64, "data.test_subset": 300, "model.backbone_width": 0.125,
            "model.head_width": 0.125, "search.epochs": 6, "search.warmup_epochs": 1,
            "search.arch_lr": 0.01, "search.collapse_threshold": 0.0, "evaluation.linear_epochs": 1,
            "trainer.progress_bar": False,
            "trainer.accelerator": "cpu"}


def agreement(a: dict, b: dict) -> float:
    labels = sorted(set(a) | set(b))
    return sum(a.get(label) == b.get(label) for label in labels) / len(labels)


def movement(record: dict) -> tuple[dict, list[float]]:
    """The initial choice of every label (after the warm-up epoch) and final-minus-initial probabilities."""
    initial, final = record["history"][0]["architecture"], record["probabilities"]
    start = {label: max(p, key=p.get) for label, p in initial.items()}
    delta = [final[label][v] - initial[label][v] for label in sorted(final) for v in sorted(final[label])]
    return start, delta


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else float("nan")


def epoch_costs(path: str) -> dict:
    """k -> "ratio (CPU time ratio; record, date)" of a ``benchmarks.search_cost`` record's everyK runs; {} without."""
    import json

    if not path or not Path(path).is_file():
        return {}
    record = json.loads(Path(path).read_text())
    costs = {}
    for key, value in record.get("summary", {}).items():
        variant, _, label = key.partition(": ")
        if label.startswith("fast-every") and label.endswith(" / plain"):
            k = int(label[len("fast-every"):-len(" / plain")])
            cpu = record["summary"].get(f"{key} (CPU time)")
            costs.setdefault(k, f"{value:.2f} ({variant}; CPU time {cpu:.2f}; target <= 1.1; {Path(path).name}, "
                                f"{record.get('date', '?')}, load {record['machine']['load_average'][0]:.1f})")
    return costs


def search(config: str, overrides: dict, seed: int, every: int) -> dict:
    from experiments.core.validation import load_config
    from experiments.core.memory import PeakMemory
    from experiments.jobs.search import run_search

    out = Path(tempfile.mkdtemp(prefix="bench-arch-every-"))
    cfg = load_config(config, {**overrides, "seed": seed, "search.arch_every": every, "output_dir": str(out)})
    began = time.perf_counter()
    with PeakMemory("cpu") as memory:
        record = run_search(cfg, out, log_fn=lambda line: None)
    start, delta = movement(record)
    searched = [h["epoch_seconds"] for h in record["history"] if h["epoch"] > cfg.search.warmup_epochs]
    return {"architecture": record["architecture"], "start": start, "delta": delta,
            "search_s": time.perf_counter() - began, "epoch_s": statistics.median(searched) if searched else None,
            "peak_mib": memory.mib, "knn_top1": record.get("metrics", {}).get("knn_top1")}


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits_simsiam.yml"))
    parser.add_argument("--ks", default="1,3", help="values of search.arch_every (comma list; 1 is added)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--cost", default=str(ROOT / "benchmarks" / "results" / "search_cost-arch-every-cpu.json"),
                        help="a benchmarks.search_cost record: its everyK epoch ratios go beside the agreement")
    parser.add_argument("--output", default=str(RESULTS / "arch_every-cpu.json"), help="the JSON record")


def run(args) -> int:
    quiet()

    from experiments.core.config import parse_overrides

    overrides = {**DEFAULTS, **parse_overrides(args.set)}
    ks = sorted({1, *(int(k) for k in args.ks.split(","))})
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for seed, every in itertools.product(seeds, ks):
        runs[seed, every] = search(args.config, overrides, seed, every)
        print(f"seed {seed} k={every}: {runs[seed, every]['search_s']:.1f} s, {runs[seed, every]['peak_mib']:.0f} MiB")
    rows, summary = [], {}
    for every in ks:
        agree = [agreement(runs[s, every]["architecture"], runs[s, 1]["architecture"]) for s in seeds]
        low, high = bootstrap_mean(agree)
        moved = [1 - agreement(runs[s, every]["architecture"], runs[s, every]["start"]) for s in seeds]
        direction = [cosine(runs[s, every]["delta"], runs[s, 1]["delta"]) for s in seeds]
        epochs = [runs[s, every]["epoch_s"] for s in seeds if runs[s, every]["epoch_s"] is not None]
        rows.append({"compared": f"k={every} vs k=1, same seed", "agreement": sum(agree) / len(agree),
                     "ci_low": low, "ci_high": high, "per_seed": " ".join(f"{a:.2f}" for a in agree),
                     "moved": sum(moved) / len(moved), "movement_cosine": sum(direction) / len(direction),
                     "search_s": statistics.median(runs[s, every]["search_s"] for s in seeds),
                     "epoch_s": statistics.median(epochs) if epochs else None,
                     "peak_mib": max(runs[s, every]["peak_mib"] or 0 for s in seeds)})
    ceiling = [agreement(runs[a, 1]["architecture"], runs[b, 1]["architecture"])
               for a, b in itertools.combinations(seeds, 2)]
    if ceiling:
        low, high = bootstrap_mean(ceiling)
        rows.append({"compared": "k=1, seed vs seed (noise ceiling)", "agreement": sum(ceiling) / len(ceiling),
                     "ci_low": low, "ci_high": high, "per_seed": " ".join(f"{a:.2f}" for a in ceiling)})
    cost = epoch_costs(args.cost)
    for every in ks[1:]:
        ratio = rows[ks.index(every)]["search_s"] / rows[0]["search_s"]
        summary[f"search time k={every} / k=1 (median over seeds)"] = ratio
        if rows[ks.index(every)]["epoch_s"] and rows[0]["epoch_s"]:
            summary[f"search epoch k={every} / k=1 (median over seeds)"] = \
                rows[ks.index(every)]["epoch_s"] / rows[0]["epoch_s"]
        if every in cost:
            summary[f"k={every}: search epoch / plain epoch (benchmarks.search_cost)"] = cost[every]
    info = {**machine(), "device": "cpu"}
    report("arch_every", f"search.arch_every: derived architectures vs k=1, seeds {args.seeds}, "
           f"{overrides['search.epochs']} epochs, digits", ["compared", "agreement", "ci_low", "ci_high", "per_seed",
                                                           "moved", "movement_cosine", "search_s", "epoch_s",
                                                           "peak_mib"],
           rows, args.output, invoked(), options_of(args), info, summary,
           notes=[f"overrides: {overrides}", "agreement: fraction of searched labels with the same derived choice; "
                  "ci: 95% bootstrap interval of the mean over seeds (or seed pairs). moved: fraction of labels "
                  "whose derived choice is not the initial one (mean over seeds); movement_cosine: cosine of the "
                  "probability movement with the k=1 run's (mean over seeds). search_s includes the "
                  "job's per-epoch monitor and final kNN / linear probe. peak_mib: the process's peak RSS "
                  "(reset at the start of each run, so per run, on top of what earlier runs in this process left)."])
    return 0

