"""How well does a SPOS supernet rank NAS-Bench-Macro's networks, under a supervised and an SSL objective?

    python -m benchmarks.ranking_nas_bench_macro [--train-images 3000] [--epochs 8] [--archs 50] ...

For each objective (``supervised``, ``simsiam``) it trains one SPOS supernet over NAS-Bench-Macro's
space on a CIFAR-10 subset (NNI ``RandomOneShot``, as the backbone-search job does), then scores
the same uniformly sampled architectures (distinct networks) with inherited weights after
BatchNorm recalibration, on held-out training images: classifier top-1 (supervised) or kNN
top-1 (SimSiam). It reports Kendall's tau between each ranking and the benchmark's ``mean_acc``
with a bootstrap 95% interval (architectures resampled), the tau between the two supernets'
rankings, and, for scale, the taus of FLOPs and of parameters against ``mean_acc``. Results go to
``benchmarks/results/ranking_nas_bench_macro.json`` with machine, budget and seeds.

Needs ``../shared/data/cifar10`` (ImageFolder) and the NAS-Bench-Macro table; exits with one
``error:`` line when either is missing.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import nni_compat  # noqa: E402

nni_compat.apply()  # a command-line entry: patch NNI before it is imported

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "ranking_nas_bench_macro.json"


def sample_keys(table, n: int, seed: int) -> list[str]:
    """``n`` keys drawn uniformly from the 3^8 keys, one per distinct network (canonical key)."""
    from search_spaces.nas_bench_macro import canonical_key

    rng = random.Random(seed)
    seen, keys = set(), []
    while len(keys) < n:
        key = "".join(rng.choice("012") for _ in range(8))
        if canonical_key(key) not in seen:
            seen.add(canonical_key(key))
            keys.append(key)
    return keys


def kendall(x, y) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def bootstrap(x, y, rounds: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of Kendall's tau over architectures resampled with replacement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    taus = []
    for _ in range(rounds):
        idx = rng.integers(0, len(x), len(x))
        t = kendall(x[idx], y[idx])
        if t == t:  # NaN when a resample is constant
            taus.append(t)
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return float(lo), float(hi)


def config_for(framework: str, args, cifar: Path):
    from experiments.core.config import load_config

    overrides = {
        "framework": framework, "seed": args.seed,
        "data.dataset": "imagefolder", "data.root": str(cifar), "data.train_subset": args.train_images,
        "data.test_subset": 1000, "data.batch_size": args.batch_size, "data.search_split": args.held_out,
        "model.backbone": "nas_bench_macro", "model.backbone_width": args.width, "model.head_space": "fixed",
        "model.head_width": args.head_width, "optim.lr": args.lr[framework],
        "search.epochs": args.epochs, "search.warmup_epochs": 0,
        "backbone_search.strategy": "spos", "backbone_search.bn_batches": args.bn_batches,
        "backbone_search.score_images": args.score_images,
        "evaluation.knn_k": 20, "evaluation.monitor_every_n_epochs": args.epochs, "evaluation.bank_subset": 1000,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        # the defaults when the committed results were measured
        "data.batched_augment": False, "trainer.channels_last": False,
    }
    return load_config(None, overrides)


def rank(framework: str, keys: list[str], args, cifar: Path, out: Path, log) -> dict:
    from experiments.jobs.backbone_search import prepare, train_supernet
    from search_spaces.nas_bench_macro import key_to_arch

    cfg = config_for(framework, args, cifar)
    start = time.perf_counter()
    setup = prepare(cfg, log_fn=log)
    strategy, monitor, train_seconds = train_supernet(setup, out / framework, log_fn=log)
    supernet = strategy.supernet
    start_scoring = time.perf_counter()
    scores = []
    for i, key in enumerate(keys, 1):
        scores.append(setup.scorer(supernet.freeze(key_to_arch(key))))
        if i % 10 == 0:
            log(f"{framework}: scored {i}/{len(keys)}")
    return {"scores": scores, "train_seconds": train_seconds, "score_seconds": time.perf_counter() - start_scoring,
            "total_seconds": time.perf_counter() - start, "weight_images": len(setup.weight_idx),
            "held_out_images": len(setup.arch_idx), "final_epoch": monitor.history[-1] if monitor.history else None}


def compare(files: list[Path], rounds: int, seed: int) -> int:
    """Kendall's tau between the supernet scores of two result files over the same architectures.

    For rankings trained in separate runs (say, one objective per run at a large budget).
    """
    import json

    try:
        runs = [json.loads(Path(f).read_text()) for f in files]
    except (OSError, ValueError) as err:
        print(f"error: --compare: {err}", file=sys.stderr)
        return 2
    columns = []
    for f, run in zip(files, runs):
        scored = [k for k in run.get("summary", {}) if k not in ("flops", "params") and "_vs_" not in k]
        if len(scored) != 1:
            print(f"error: --compare: {f} must hold exactly one objective's scores (it has {scored})", file=sys.stderr)
            return 2
        archs = run["architectures"]
        columns.append((scored[0], [a[scored[0]] for a in archs], [a["key"] for a in archs]))
    if columns[0][2] != columns[1][2]:
        print("error: --compare: the two files ranked different architectures (use the same --archs and --seed)",
              file=sys.stderr)
        return 2
    (na, a, _), (nb, b, _) = columns
    lo, hi = bootstrap(a, b, rounds, seed)
    print(f"{na} ({files[0]}) vs {nb} ({files[1]}), {len(a)} architectures: "
          f"tau {kendall(a, b):+.3f}  [{lo:+.3f}, {hi:+.3f}]")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ranking_nas_bench_macro",
                                description=__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=3000, help="CIFAR-10 training images used (subset)")
    p.add_argument("--held-out", type=float, default=0.2, help="fraction of them held out for scoring")
    p.add_argument("--epochs", type=int, default=8, help="supernet training epochs per objective")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier of NAS-Bench-Macro's network")
    p.add_argument("--head-width", type=float, default=0.25, help="width multiplier of the SimSiam heads")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--archs", type=int, default=50, help="architectures ranked (distinct networks, >= 50)")
    p.add_argument("--score-images", type=int, default=600, help="held-out images per score (and kNN bank size)")
    p.add_argument("--bn-batches", type=int, default=2, help="BatchNorm recalibration batches per architecture")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds for the 95%% intervals")
    p.add_argument("--frameworks", nargs="+", default=["supervised", "simsiam"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ranking_nas_bench_macro")
    p.add_argument("--compare", type=Path, nargs=2, metavar="RESULT",
                   help="only compare the scores of two result files (one objective each, same architectures)")
    args = p.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.bootstrap, args.seed)
    args.lr = {"supervised": 0.1, "simsiam": 0.06, "simclr": 0.3, "byol": 0.06, "moco": 0.06}

    import torch

    from experiments.core.records import versions
    from experiments.core.files import write_json_atomic
    from experiments.core.errors import ConfigError
    from search_spaces.cost import BackboneCost, classifier_cost
    from search_spaces.nas_bench_macro import (NasBenchMacro, NasBenchMacroSpace, canonical_key, key_to_arch,
                                               shared_data_candidates)

    cifar = next((d / "cifar10" for d in shared_data_candidates() if (d / "cifar10" / "train").is_dir()), None)
    try:
        table = NasBenchMacro()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cifar is None:
        print("error: CIFAR-10 (ImageFolder) not found under ../shared/data/cifar10", file=sys.stderr)
        return 2
    if args.archs < 2:
        print("error: --archs must be at least 2", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log = lambda line: print(line, flush=True)  # noqa: E731
    keys = sample_keys(table, args.archs, args.seed)
    truth = [table.mean_acc(k) for k in keys]
    cost = BackboneCost(NasBenchMacroSpace(), 32)
    head = classifier_cost(1280, 10)
    flops = [cost(key_to_arch(k)).flops + head.flops for k in keys]
    params = [cost(key_to_arch(k)).params + head.params for k in keys]
    results: dict = {}
    try:
        for framework in args.frameworks:
            log(f"== {framework}: SPOS supernet, {args.epochs} epochs on {args.train_images} CIFAR-10 images")
            results[framework] = rank(framework, keys, args, cifar, args.workdir, log)
            write_json_atomic(args.workdir / f"scores_{framework}.json", {"keys": keys, **results[framework]})
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {}
    for framework, r in results.items():
        tau = kendall(r["scores"], truth)
        summary[framework] = {"tau": tau, "ci95": bootstrap(r["scores"], truth, args.bootstrap, args.seed)}
    for name, values in (("flops", flops), ("params", params)):
        summary[name] = {"tau": kendall(values, truth), "ci95": bootstrap(values, truth, args.bootstrap, args.seed)}
    if "supervised" in results and "simsiam" in results:
        a, b = results["supervised"]["scores"], results["simsiam"]["scores"]
        summary["simsiam_vs_supervised"] = {"tau": kendall(a, b), "ci95": bootstrap(a, b, args.bootstrap, args.seed)}
    payload = {
        "benchmark": "ranking_nas_bench_macro",
        "command": "python -m benchmarks.ranking_nas_bench_macro "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summary,
        "budget": {"train_images": args.train_images, "held_out_fraction": args.held_out, "epochs": args.epochs,
                   "width": args.width, "head_width": args.head_width, "batch_size": args.batch_size,
                   "score_images": args.score_images, "bn_batches": args.bn_batches, "archs": len(keys),
                   "bootstrap_rounds": args.bootstrap,
                   "seconds": {f: {k: r[k] for k in ("train_seconds", "score_seconds", "total_seconds")}
                               for f, r in results.items()}},
        "seeds": {"data_split_and_training": args.seed, "architecture_sample": args.seed, "bootstrap": args.seed},
        "machine": versions(),
        "architectures": [{"key": k, "canonical_key": canonical_key(k), "mean_acc": t, "flops": f, "params": pa,
                           **{fw: results[fw]["scores"][i] for fw in results}}
                          for i, (k, t, f, pa) in enumerate(zip(keys, truth, flops, params))],
        "final_epochs": {f: r["final_epoch"] for f, r in results.items()},
    }
    write_json_atomic(args.output, payload)
    print(f"\nKendall's tau ({len(keys)} architectures, bootstrap 95% interval):")
    for name, s in summary.items():
        what = "supervised vs simsiam supernet" if name == "simsiam_vs_supervised" else f"{name} vs mean_acc"
        print(f"  {what:34s} tau {s['tau']:+.3f}  [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
