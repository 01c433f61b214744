"""Does a ViT superformer rank ViTs as training them alone does, with cyclic against prefix sharing? A small study.

For each sharing (``cyclic``, ``prefix``) one vitas superformer is trained over the ``vit`` space
(``configs/digits_backbone_vitas.yml``: SimSiam on digits; the backbone-search job's ``prepare`` /
``train_supernet``), and the same ``--archs`` distinct ViTs are scored with its weights (vitas's own
score: held-out kNN top-1, the mean of the left and right slices under cyclic sharing). The ViTs are
drawn as vitas draws its training paths (identity shifting, the identity probability tuned to the
budget) among those in the budget band, with ``--arch-seed``. Each ViT is also trained alone
(SimSiam retrain from scratch, ``train.epochs``) and its test kNN top-1 recorded. Reported: Kendall's
tau of each superformer's scores against the standalone accuracies (with a bootstrap 95% interval,
networks resampled), and within each patch size. Every run is one cached JSON
file under ``--work`` (a killed study resumes).

    python -m benchmarks.vit_ranking                          # 20 ViTs, 10 retrain epochs
    python -m benchmarks.vit_ranking --archs 30 --set train.epochs=20
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks._util import ROOT, report

CONFIG = ROOT / "configs" / "digits_backbone_vitas.yml"
SHARING = ("cyclic", "prefix")


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties in either list count for neither)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def bootstrap_interval(scores: list[float], truth: list[float], draws: int = 1000, seed: int = 0) -> str:
    """The 2.5% and 97.5% quantiles of tau over networks resampled with replacement."""
    import random

    rng, taus = random.Random(seed), []
    for _ in range(draws):
        idx = [rng.randrange(len(scores)) for _ in scores]
        tau = kendall_tau([scores[i] for i in idx], [truth[i] for i in idx])
        if tau == tau:
            taus.append(tau)
    taus.sort()
    return f"{taus[int(0.025 * len(taus))]:.2f} - {taus[int(0.975 * len(taus)) - 1]:.2f}"


def sample_architectures(setup, count: int, seed: int) -> list[dict]:
    """``count`` distinct identity-shifted ViTs in the budget band, drawn as vitas draws training paths."""
    import numpy as np

    from experiments.strategies import STRATEGIES
    from experiments.strategies.vitas import identity_draws, shifted_sample

    strategy, ctx = STRATEGIES["vitas"], setup.context(log_fn=lambda line: None)
    space, settings = setup.cost.space, strategy.settings(setup.cfg)
    p = strategy.identity_prob(ctx, space)
    max_flops, max_params = ctx.budget
    floor = 0 if max_flops is None else settings["min_flops_ratio"] * max_flops
    rng, found = np.random.RandomState(seed), {}
    for _ in range(100_000):
        arch = shifted_sample(space, identity_draws(space, 1, rng)[0], p)
        c = setup.cost(arch)
        if c.within(max_flops, max_params) and c.flops >= floor:
            found.setdefault(tuple(sorted(arch.items())), arch)
            if len(found) == count:
                break
    return list(found.values())


def main(argv=None) -> int:
    from experiments.core.config import parse_overrides
    from experiments.core.validation import load_config
    from experiments.core.records import space_record
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.jobs.retrain import run_retrain
    from experiments.strategies import STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=20)
    parser.add_argument("--arch-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value (every run)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "benchmarks" / "vit_ranking"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vit_ranking-cpu.json"))
    args = parser.parse_args(argv)
    base = {"train.epochs": 10, **parse_overrides(args.set), "seed": args.seed, "trainer.progress_bar": False}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(CONFIG, base)
    setup = prepare(cfg, log_fn=lambda line: None)
    archs_file = work / "architectures.json"
    if not archs_file.exists():
        archs_file.write_text(json.dumps(sample_architectures(setup, args.archs, args.arch_seed), indent=1))
    archs = json.loads(archs_file.read_text())
    scores = {}
    for sharing in SHARING:
        cache = work / f"supernet-{sharing}.json"
        if not cache.exists():
            start = time.perf_counter()
            shared = load_config(CONFIG, {**base, "backbone_search.strategy_options.sharing": sharing})
            s = prepare(shared, log_fn=lambda line: None)
            nni_strategy, _, seconds = train_supernet(s, work / f"supernet-{sharing}", log_fn=lambda line: None)
            score_of = STRATEGIES["vitas"].score_function(s.context(work, lambda line: None), nni_strategy.supernet)
            cache.write_text(json.dumps({"sharing": sharing, "train_seconds": seconds,
                                         "scores": [score_of(a) for a in archs],
                                         "seconds": time.perf_counter() - start}, indent=1))
            print(f"superformer {sharing}: {time.perf_counter() - start:.0f} s", flush=True)
        scores[sharing] = json.loads(cache.read_text())["scores"]
    alone = []
    for i, arch in enumerate(archs):
        cache = work / f"alone-{i:03d}.json"
        if not cache.exists():
            start = time.perf_counter()
            record = {"space": space_record(cfg, num_classes=setup.num_classes), "architecture": arch}
            result = run_retrain(cfg, record, work / f"alone-{i:03d}", log_fn=lambda line: None, overwrite=True)
            c = setup.cost(arch)
            cache.write_text(json.dumps({"architecture": arch, "flops": c.flops, "params": c.params,
                                         "knn_top1": result["metrics"]["knn_top1"],
                                         "linear_top1": result["metrics"]["linear_top1"],
                                         "seconds": time.perf_counter() - start}, indent=1))
            print(f"alone {i + 1}/{len(archs)}: {time.perf_counter() - start:.0f} s", flush=True)
        alone.append(json.loads(cache.read_text()))
    truth = [r["knn_top1"] for r in alone]
    patches = sorted({a["backbone.patch_size"] for a in archs}, key=int)
    rows = []
    for sharing in SHARING:
        row = {"sharing": sharing, "archs": len(archs), "kendall_tau_knn": kendall_tau(scores[sharing], truth),
               "tau_knn_95": bootstrap_interval(scores[sharing], truth),
               "kendall_tau_linear": kendall_tau(scores[sharing], [r["linear_top1"] for r in alone])}
        for patch in patches:  # within one patch size: the ranking beyond the coarsest split
            idx = [i for i, a in enumerate(archs) if a["backbone.patch_size"] == patch]
            row[f"tau_knn_patch{patch}"] = kendall_tau([scores[sharing][i] for i in idx], [truth[i] for i in idx])
            row[f"archs_patch{patch}"] = len(idx)
        rows.append(row)
    args.device = "cpu"
    report("vit_ranking", "ViT superformer ranking against standalone training (SimSiam, digits)",
           ["sharing", "archs", "kendall_tau_knn", "tau_knn_95", "kendall_tau_linear",
            *[f"tau_knn_patch{p}" for p in patches], *[f"archs_patch{p}" for p in patches]], rows, args,
           notes=[f"config {CONFIG.relative_to(ROOT)}; overrides {base}",
                  f"standalone kNN top-1 range {min(truth):.3f} - {max(truth):.3f}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
