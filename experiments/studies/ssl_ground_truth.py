"""An SSL ground truth for NAS-Bench-Macro's space: its networks trained alone, under each objective.

    python -m experiments study ssl-ground-truth [--objectives simsiam supervised simclr] [--datasets digits]
        [--seeds 0 1] [--networks 60] [--network-seed 0] [--table-only]

NAS-Bench-Macro ranks its networks by supervised CIFAR-10 accuracy; a supernet trained under a
self-supervised objective may rank them differently because the objective prefers other
networks, or because the supernet ranks badly. Only networks trained alone under that objective
tell the two apart. This script trains ``--networks`` distinct networks of the ``nas_bench_macro``
backbone space from scratch, each with the same small budget (the retrain job's ``run_retrain``:
NNI ``freeze``, the framework's Lightning module, kNN and linear probe of the frozen backbone),
under every objective, dataset and seed, and records per (network, objective, dataset, seed):
kNN and linear top-1, the final training loss, the collapse score, wall and CPU seconds, the
backbone's FLOPs and parameters at the run's width and image size, and the benchmark key with its
canonical key (:func:`search_spaces.nas_bench_macro.canonical_key`).

The networks are drawn evenly over the layer counts (non-identity layers, 0 to 8; a count with
fewer distinct networks than its share gives the rest to the others) and always include the
benchmark's best and worst network by ``mean_acc``. Each run is cached as one JSON file under
``--cache``, so a killed study loses at most the run in flight and a rerun of the same command
continues; ``--table-only`` trains nothing and rebuilds the assembled JSON (``--output``: machine,
versions, budget, every run, and per network the mean over seeds: the ground truth the ranking
script reads with ``--reference ssl-ground-truth:OBJECTIVE:DATASET``) and the Markdown page
(``--docs``: noise ceilings, cross-objective taus, tau against ``mean_acc``, the label-free
rankers, all with bootstrap intervals).

Every training runs on one CPU thread (``torch.set_num_threads(1)``), so a cached run rebuilds
bit for bit on the same machine and library versions (``tests/test_ssl_ground_truth.py``).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Callable

from experiments.studies.kit import (RESULTS, ROOT, bootstrap_tau, budget_tag, cached, command, kendall, machine, quiet,
                                     write_between_markers)
from experiments.studies.networks_alone import (BUDGETS, LEARNING_RATES, config_for, label_free_scores, layer_count,
                                                retrain_alone)

command_of = command  # markdown() takes the rebuild line as its own ``command``
NAME = "ssl-ground-truth"
HELP = "NAS-Bench-Macro's networks trained alone under each objective: the SSL ground truth a ranking is judged by"
DEFAULT_CACHE = RESULTS / "ssl_ground_truth"
DEFAULT_OUTPUT = RESULTS / "ssl_ground_truth.json"
DEFAULT_DOCS = ROOT / "docs" / "ssl-ground-truth.md"
TITLE = "# An SSL ground truth for NAS-Bench-Macro's space"
BEGIN_MARK = f"<!-- ground-truth tables: written by {command(NAME)}; edits here are lost -->"
END_MARK = "<!-- end of the ground-truth tables -->"
OBJECTIVES = ("simsiam", "supervised", "simclr")  # the order of the long run: SimSiam first
SSL_OBJECTIVES = ("simsiam", "simclr", "byol", "moco")
LABEL_FREE_WIDTH = 0.25



# --- which networks ----------------------------------------------------------------------------------
def extremes(table) -> tuple[str, str]:
    """The canonical keys of the benchmark's best and worst network by ``mean_acc``."""
    from search_spaces.nas_bench_macro import canonical_key

    best = max(table.keys(), key=lambda k: (table.mean_acc(k), k))
    worst = min(table.keys(), key=lambda k: (table.mean_acc(k), k))
    return canonical_key(best), canonical_key(worst)


def layer_quotas(available: dict[int, int], n: int) -> dict[int, int]:
    """``n`` networks shared as evenly as possible over the layer counts; a count short of networks
    gives its unused share to the others (the lower counts first get the remainder)."""
    quotas = {count: 0 for count in sorted(available)}
    left = n
    while left > 0:
        open_counts = [c for c in quotas if quotas[c] < available[c]]
        if not open_counts:
            raise ValueError(f"only {sum(available.values())} distinct networks, asked for {n}")
        share, extra = divmod(left, len(open_counts))
        for i, count in enumerate(open_counts):
            give = min(share + (i < extra), available[count] - quotas[count])
            quotas[count] += give
            left -= give
    return quotas


def sample_networks(table, n: int, seed: int) -> list[str]:
    """``n`` distinct networks (canonical keys), even over layer counts, the best and the worst among them,
    in a seeded random order with those two first (a study cut short still holds both)."""
    from search_spaces.nas_bench_macro import distinct_keys

    by_count: dict[int, list[str]] = {}
    for key in distinct_keys():
        by_count.setdefault(layer_count(key), []).append(key)
    quotas = layer_quotas({c: len(keys) for c, keys in by_count.items()}, n)
    rng = random.Random(seed)
    pinned = list(dict.fromkeys(extremes(table)))
    chosen = list(pinned)
    for count, keys in sorted(by_count.items()):
        need = quotas[count] - sum(layer_count(k) == count for k in pinned)
        pool = [k for k in keys if k not in pinned]
        chosen += rng.sample(pool, max(0, need))
    rest = chosen[len(pinned):]
    rng.shuffle(rest)
    return pinned + rest


# --- one run -----------------------------------------------------------------------------------------


def train_network(key: str, objective: str, seed: int, budget: dict, cifar: Path | None, workdir: Path,
                  table=None, argv: tuple = ()) -> dict:
    """Train one network alone from scratch (the retrain job) and evaluate it: the cached record."""
    from search_spaces.cost import BackboneCost
    from search_spaces.nas_bench_macro import NasBenchMacroSpace, canonical_key, key_to_arch

    out = workdir / f"{budget['dataset']}-{objective}-{key}-seed{seed}"
    result, wall, cpu = retrain_alone(config_for(objective, seed, budget, cifar, out), key_to_arch(key), out)
    cost = BackboneCost(NasBenchMacroSpace(width=budget["width"]), budget["image_size"])(key_to_arch(key))
    metrics, last = result["metrics"], result["history"][-1]
    benchmark = table.record(key) if table is not None else {}
    return {"key": key, "canonical_key": canonical_key(key), "layer_count": layer_count(key),
            "objective": objective, "dataset": budget["dataset"], "seed": seed, "budget": budget,
            "knn_top1": metrics["knn_top1"], "linear_top1": metrics["linear_top1"], "collapse": metrics["collapse"],
            "final_loss": last["ssl_loss"], "wall_seconds": wall, "cpu_seconds": cpu,
            "train_seconds": metrics["train_seconds"], "flops": cost.flops, "params": cost.params,
            "benchmark": {k: benchmark[k] for k in ("mean_acc", "flops", "params") if k in benchmark},
            "versions": result["versions"], "load_average": machine()["load_average"],
            "command": command(NAME, *argv)}


def run_file(cache: Path, key: str, objective: str, dataset: str, seed: int, budget: dict) -> Path:
    return cache / f"{dataset}__{objective}__{key}__seed{seed}__{budget_tag(budget)}.json"


# --- the ground truth and its tables -----------------------------------------------------------------
def cached_runs(cache: Path, keys: list[str]) -> list[dict]:
    """Every cached run of ``keys`` at the current budget of its dataset."""
    runs = []
    for path in sorted(cache.glob("*__seed*__*.json")):
        run = json.loads(path.read_text())
        if run.get("key") in keys and run.get("budget") == BUDGETS.get(run.get("dataset")):
            runs.append(run)
    return runs


def ground_truth(runs: list[dict]) -> dict:
    """dataset -> objective -> canonical key -> kNN and linear top-1 averaged over the seeds run."""
    grouped: dict[tuple, list[dict]] = {}
    for r in runs:
        grouped.setdefault((r["dataset"], r["objective"], r["canonical_key"]), []).append(r)
    truth: dict = {}
    for (dataset, objective, key), group in sorted(grouped.items()):
        truth.setdefault(dataset, {}).setdefault(objective, {})[key] = {
            "knn_top1": sum(r["knn_top1"] for r in group) / len(group),
            "linear_top1": sum(r["linear_top1"] for r in group) / len(group),
            "seeds": sorted(r["seed"] for r in group)}
    return truth


def tau_row(x: list[float], y: list[float], rounds: int, seed: int) -> dict:
    if len(x) < 3:
        return {"tau": None, "ci95": None, "n": len(x)}
    return {"tau": kendall(x, y), "ci95": list(bootstrap_tau(x, y, rounds, seed)), "n": len(x)}


def _cell(row: dict) -> str:
    if row["tau"] is None or row["tau"] != row["tau"]:
        return f"n/a | | {row['n']}"
    return f"{row['tau']:+.3f} | [{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}] | {row['n']}"


def analyse(runs: list[dict], keys: list[str], table, label_free: dict, rounds: int, seed: int) -> dict:
    """Noise ceilings, cross-objective taus, taus against ``mean_acc`` and the label-free rankers' taus."""
    truth = ground_truth(runs)
    by_run = {(r["dataset"], r["objective"], r["canonical_key"], r["seed"]): r for r in runs}
    figures: dict = {"noise_ceiling": [], "cross": [], "vs_mean_acc": [], "label_free": []}
    free = {name: dict(zip(label_free["keys"], values)) for name, values in label_free["scores"].items()}
    for dataset, objectives in truth.items():
        for objective, networks in objectives.items():
            for metric in ("knn_top1", "linear_top1"):
                paired = [k for k in keys if (dataset, objective, k, 0) in by_run and (dataset, objective, k, 1) in by_run]
                figures["noise_ceiling"].append({"dataset": dataset, "objective": objective, "metric": metric, **tau_row(
                    [by_run[(dataset, objective, k, 0)][metric] for k in paired],
                    [by_run[(dataset, objective, k, 1)][metric] for k in paired], rounds, seed)})
                common = [k for k in keys if k in networks]
                figures["vs_mean_acc"].append({"dataset": dataset, "objective": objective, "metric": metric, **tau_row(
                    [networks[k][metric] for k in common], [table.mean_acc(k) for k in common], rounds, seed)})
            common = [k for k in keys if k in networks]
            for name, scores in free.items():
                figures["label_free"].append({"dataset": dataset, "objective": objective, "ranker": name, **tau_row(
                    [scores[k] for k in common], [networks[k]["knn_top1"] for k in common], rounds, seed)})
        names = list(objectives)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                common = [k for k in keys if k in objectives[a] and k in objectives[b]]
                figures["cross"].append({"dataset": dataset, "a": a, "b": b, **tau_row(
                    [objectives[a][k]["knn_top1"] for k in common], [objectives[b][k]["knn_top1"] for k in common],
                    rounds, seed)})
    for name, scores in free.items():  # the same rankers against the benchmark, on the same networks
        figures["label_free"].append({"dataset": "NAS-Bench-Macro", "objective": "mean_acc", "ranker": name, **tau_row(
            [scores[k] for k in keys], [table.mean_acc(k) for k in keys], rounds, seed)})
    return figures


def markdown(runs: list[dict], keys: list[str], figures: dict, objectives: list[str], datasets: list[str],
             seeds: list[int], info: dict, rounds: int, command: str) -> str:
    lines = ["NAS-Bench-Macro's networks trained alone, from scratch, each with the same budget, under "
             "self-supervised objectives and the supervised one, so a supernet's ranking can be judged against "
             "the truth of its own objective. Built by `experiments/studies/ssl_ground_truth.py`; every number below comes "
             "from the cached runs under `docs/results/ssl_ground_truth/` (one JSON per network, objective, "
             "dataset and seed) and is assembled in `docs/results/ssl_ground_truth.json`.", "",
             "Rebuild this page from the cache (trains nothing):", "", f"    {command}", "",
             "Continue the study (trains only what is not cached, one run at a time):", "",
             "    OMP_NUM_THREADS=1 " + command_of(NAME, "--objectives", *objectives, "--datasets", *datasets), ""]
    lines += ["## Budget and machine", ""]
    for dataset in datasets:
        b = BUDGETS[dataset]
        lines.append(f"- {dataset} (`{budget_tag(b)}`): {b['epochs']} epochs on {b['train_images']} training "
                     f"images at {b['image_size']} px, batch {b['batch_size']}, backbone width {b['width']}, head "
                     f"width {b['head_width']}, SGD with the ranking script's learning rate per objective "
                     f"({', '.join(f'{o} {LEARNING_RATES[o]}' for o in objectives)}); kNN (k={b['knn_k']}) and a "
                     f"linear probe ({b['linear_epochs']} epochs) of the frozen backbone on {b['test_images']} test "
                     "images; collapse score of the projector output (about 1 healthy, 0 collapsed).")
    lines += [f"- machine: {info.get('cpu', info.get('machine'))}, {info.get('cpu_count')} CPUs shared with other "
              "jobs (wall times are noisy; CPU seconds are the better measure), one torch thread per run; "
              + ", ".join(f"{k} {info[k]}" for k in ("python", "torch", "torchvision", "nni", "pytorch_lightning")
                          if k in info) + ".",
              f"- {len(keys)} distinct networks (canonical keys), even over the layer counts "
              f"({', '.join(f'{c}: {n}' for c, n in sorted(_counts(keys).items()))}), with the benchmark's best "
              f"(`{keys[0]}`) and worst (`{keys[1]}`) by `mean_acc`; seeds {', '.join(map(str, seeds))}.",
              f"- Intervals: percentile 95% bootstrap over the networks ({rounds} resamples).", ""]
    lines += ["## Runs done", "", "| dataset | objective | seed | runs | mean kNN | mean linear | mean collapse "
              "| mean CPU s | mean wall s |", "|---|---|---|---|---|---|---|---|---|"]
    done = 0
    for dataset in datasets:
        for objective in objectives:
            for seed in seeds:
                group = [r for r in runs if (r["dataset"], r["objective"], r["seed"]) == (dataset, objective, seed)]
                done += len(group)
                if group:
                    mean = lambda field: sum(r[field] for r in group) / len(group)  # noqa: E731
                    lines.append(f"| {dataset} | {objective} | {seed} | {len(group)} of {len(keys)} | "
                                 f"{mean('knn_top1'):.3f} | {mean('linear_top1'):.3f} | {mean('collapse'):.3f} | "
                                 f"{mean('cpu_seconds'):.1f} | {mean('wall_seconds'):.1f} |")
                else:
                    lines.append(f"| {dataset} | {objective} | {seed} | 0 of {len(keys)} | | | | | |")
    lines += ["", f"{done} runs cached of the {len(keys) * len(objectives) * len(datasets) * len(seeds)} "
              "this study plans.", ""]
    lines += ["## Noise ceiling: seed 0 against seed 1", "",
              "Kendall's tau between the two seeds' accuracies of the same networks: no ranking of these networks "
              "can agree with this ground truth much better than its own seeds agree with each other.", "",
              "| dataset | objective | metric | tau | 95% interval | networks |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['objective']} | {r['metric']} | {_cell(r)} |" for r in figures["noise_ceiling"]]
    lines += ["", "## SSL against supervised: the same networks, the same data", "",
              "Tau between the ground truths of two objectives (kNN top-1, mean over seeds): the \"One Network "
              "Doesn't Rule Them All\" question on a real ground truth.", "",
              "| dataset | objective A | objective B | tau | 95% interval | networks |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['a']} | {r['b']} | {_cell(r)} |" for r in figures["cross"]]
    lines += ["", "## Each ground truth against NAS-Bench-Macro's `mean_acc`", "",
              "| dataset | objective | metric | tau | 95% interval | networks |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['objective']} | {r['metric']} | {_cell(r)} |" for r in figures["vs_mean_acc"]]
    lines += ["", "## Label-free rankers against each ground truth", "",
              "Layer count (non-identity layers), FLOPs and parameters (the benchmark table's, CIFAR-10 at width 1), "
              f"SynFlow and NASWOT at initialisation (`evaluators/zero_cost.py`, width {LABEL_FREE_WIDTH}, 32 px "
              "random images) against kNN top-1 (mean over seeds); the last rows rank the same networks against "
              "`mean_acc`.", "",
              "| ranker | ground truth | tau | 95% interval | networks |", "|---|---|---|---|---|"]
    lines += [f"| {r['ranker']} | {r['dataset']} {r['objective']} | {_cell(r)} |"
              for r in sorted(figures["label_free"], key=lambda r: (r["dataset"] == "NAS-Bench-Macro", r["dataset"],
                                                                    r["objective"]))]
    lines.append("")
    return "\n".join(lines)


def _counts(keys: list[str]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for key in keys:
        counts[layer_count(key)] = counts.get(layer_count(key), 0) + 1
    return counts


def assemble(runs: list[dict], keys: list[str], table, figures: dict, info: dict, args) -> dict:
    """The committed ground truth: machine, versions, budgets, the networks, every run, the means over seeds."""
    return {"machine": info, "budgets": {d: BUDGETS[d] for d in args.datasets}, "objectives": args.objectives,
            "seeds": args.seeds, "network_seed": args.network_seed,
            "networks": [{"key": k, "canonical_key": k, "layer_count": layer_count(k),
                          "mean_acc": table.mean_acc(k)} for k in keys],
            "truth": ground_truth(runs), "figures": figures, "runs": runs}


# --- the command ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES),
                   help="frameworks trained, in this order (default: %(default)s)")
    p.add_argument("--datasets", nargs="+", default=["digits"], help="digits and/or cifar10 (its budget: BUDGETS)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--networks", type=int, default=60, help="distinct networks (canonical keys)")
    p.add_argument("--network-seed", type=int, default=0, help="seed of the network sample")
    p.add_argument("--limit", type=int, default=None, help="train at most this many new runs, then build the tables")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the 95%% intervals")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="one JSON per (network, objective, dataset, seed)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the assembled ground truth (JSON)")
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="the Markdown page written")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ssl_ground_truth")
    p.add_argument("--table-only", action="store_true", help="train nothing: build the tables from the cache")


def check_args(args) -> None:
    from evaluators import FRAMEWORKS
    from experiments.core.errors import ConfigError

    for objective in args.objectives:
        if objective not in FRAMEWORKS:
            raise ConfigError(f"--objectives: unknown objective {objective!r} (known: {', '.join(FRAMEWORKS)})")
    for dataset in args.datasets:
        if dataset not in BUDGETS:
            raise ConfigError(f"--datasets: unknown dataset {dataset!r} (known: {', '.join(BUDGETS)})")
    if not 2 <= args.networks <= 3969:
        raise ConfigError(f"--networks must be between 2 and 3969 (the distinct networks), got {args.networks}")
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")


def run(args) -> int:
    from experiments.core.errors import ConfigError
    from experiments.core.files import write_json_atomic
    from search_spaces.nas_bench_macro import NasBenchMacro, shared_data_candidates

    quiet()
    log: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    try:
        check_args(args)
        table = NasBenchMacro()
        cifar = next((d / "cifar10" for d in shared_data_candidates() if (d / "cifar10" / "train").is_dir()), None)
        if "cifar10" in args.datasets and cifar is None and not args.table_only:
            raise ConfigError("--datasets cifar10: CIFAR-10 (ImageFolder) not found under ../shared/data/cifar10")
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    keys = sample_networks(table, args.networks, args.network_seed)
    trained = 0
    if not args.table_only:
        for dataset in args.datasets:
            for objective in args.objectives:
                for key in keys:
                    for seed in args.seeds:
                        path = run_file(args.cache, key, objective, dataset, seed, BUDGETS[dataset])
                        if path.is_file() or (args.limit is not None and trained >= args.limit):
                            continue
                        run = cached(path, lambda: train_network(key, objective, seed, BUDGETS[dataset], cifar,
                                                                 args.workdir, table, args.argv), log)
                        trained += 1
                        log(f"{dataset} {objective} {key} seed {seed}: kNN {run['knn_top1']:.3f} linear "
                            f"{run['linear_top1']:.3f} loss {run['final_loss']:.3f} collapse {run['collapse']:.2f} "
                            f"({run['cpu_seconds']:.1f} CPU s, {run['wall_seconds']:.1f} s)")
    label_free = cached(args.cache / f"label_free__networks{args.networks}__seed{args.network_seed}.json", lambda: {
        "keys": keys, "width": LABEL_FREE_WIDTH,
        "scores": label_free_scores(keys, table, LABEL_FREE_WIDTH, args.network_seed)}, log)
    runs = cached_runs(args.cache, keys)
    info = machine()
    figures = analyse(runs, keys, table, label_free, args.bootstrap, args.network_seed)
    rerun = command(NAME, "--table-only", "--objectives", *args.objectives, "--datasets", *args.datasets)
    write_json_atomic(args.output, assemble(runs, keys, table, figures, info, args))
    write_between_markers(args.docs, markdown(runs, keys, figures, args.objectives, args.datasets, args.seeds, info,
                                              args.bootstrap, rerun), BEGIN_MARK, END_MARK, TITLE)
    log(f"written: {args.output} and {args.docs} ({len(runs)} cached runs, {trained} trained now)")
    return 0

