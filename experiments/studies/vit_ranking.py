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

    python -m experiments study vit-ranking                          # 20 ViTs, 10 retrain epochs
    python -m experiments study vit-ranking --archs 30 --set train.epochs=20
"""
from __future__ import annotations

import time
from pathlib import Path

from experiments.studies.kit import (RESULTS, ROOT, bootstrap_tau, cached, invoked, kendall, machine, options_of, quiet,
                                     report)

NAME = "vit-ranking"
HELP = "does a ViT superformer rank ViTs as training them alone does, with cyclic against prefix sharing?"
CONFIG = ROOT / "configs" / "digits_backbone_vitas.yml"
SHARING = ("cyclic", "prefix")


def bootstrap_interval(scores: list[float], truth: list[float], draws: int = 1000, seed: int = 0) -> str:
    """The 95% bootstrap interval of tau over the networks resampled with replacement, as ``lo - hi``."""
    lo, hi = bootstrap_tau(scores, truth, draws, seed)
    return f"{lo:.2f} - {hi:.2f}"


def judge(scores: dict[str, list[float]], alone: list[dict], archs: list[dict]) -> list[dict]:
    """One row per sharing: tau of its scores against the standalone kNN (with its interval) and linear top-1,
    and the kNN tau within each patch size (the ranking beyond the coarsest split)."""
    truth = [r["knn_top1"] for r in alone]
    patches = sorted({a["backbone.patch_size"] for a in archs}, key=int)
    rows = []
    for sharing, scored in scores.items():
        row = {"sharing": sharing, "archs": len(archs), "kendall_tau_knn": kendall(scored, truth),
               "tau_knn_95": bootstrap_interval(scored, truth),
               "kendall_tau_linear": kendall(scored, [r["linear_top1"] for r in alone])}
        for patch in patches:
            idx = [i for i, a in enumerate(archs) if a["backbone.patch_size"] == patch]
            row[f"tau_knn_patch{patch}"] = kendall([scored[i] for i in idx], [truth[i] for i in idx])
            row[f"archs_patch{patch}"] = len(idx)
        rows.append(row)
    return rows


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


def add_arguments(parser) -> None:
    parser.add_argument("--archs", type=int, default=20)
    parser.add_argument("--arch-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value (every run)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "benchmarks" / "vit_ranking"))
    parser.add_argument("--output", default=str(RESULTS / "vit_ranking-cpu.json"))


def run(args) -> int:
    from experiments.core.config import parse_overrides
    from experiments.core.validation import load_config
    from experiments.core.records import space_record
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.jobs.retrain import run_retrain
    from experiments.strategies import STRATEGIES

    quiet()
    base = {"train.epochs": 10, **parse_overrides(args.set), "seed": args.seed, "trainer.progress_bar": False}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(CONFIG, base)
    setup = prepare(cfg, log_fn=lambda line: None)
    silent = lambda line: None  # noqa: E731
    archs = cached(work / "architectures.json", lambda: sample_architectures(setup, args.archs, args.arch_seed),
                   log=silent)

    def superformer(sharing: str) -> dict:
        start = time.perf_counter()
        shared = load_config(CONFIG, {**base, "backbone_search.strategy_options.sharing": sharing,
                                      # the committed superformers trained one side a step (the default then)
                                      "backbone_search.strategy_options.sides_per_step": "alternate"})
        s = prepare(shared, log_fn=silent)
        nni_strategy, _, seconds = train_supernet(s, work / f"supernet-{sharing}", log_fn=silent)
        score_of = STRATEGIES["vitas"].score_function(s.context(work, silent), nni_strategy.supernet)
        record = {"sharing": sharing, "train_seconds": seconds, "scores": [score_of(a) for a in archs],
                  "seconds": time.perf_counter() - start}
        print(f"superformer {sharing}: {time.perf_counter() - start:.0f} s", flush=True)
        return record

    def trained_alone(i: int, arch: dict) -> dict:
        start = time.perf_counter()
        record = {"space": space_record(cfg, num_classes=setup.num_classes), "architecture": arch}
        result = run_retrain(cfg, record, work / f"alone-{i:03d}", log_fn=silent, overwrite=True)
        c = setup.cost(arch)
        print(f"alone {i + 1}/{len(archs)}: {time.perf_counter() - start:.0f} s", flush=True)
        return {"architecture": arch, "flops": c.flops, "params": c.params, "knn_top1": result["metrics"]["knn_top1"],
                "linear_top1": result["metrics"]["linear_top1"], "seconds": time.perf_counter() - start}

    scores = {sharing: cached(work / f"supernet-{sharing}.json", lambda sharing=sharing: superformer(sharing),
                              log=silent)["scores"] for sharing in SHARING}
    alone = [cached(work / f"alone-{i:03d}.json", lambda i=i, arch=arch: trained_alone(i, arch), log=silent)
             for i, arch in enumerate(archs)]
    truth = [r["knn_top1"] for r in alone]
    patches = sorted({a["backbone.patch_size"] for a in archs}, key=int)
    rows = judge(scores, alone, archs)
    report("vit_ranking", "ViT superformer ranking against standalone training (SimSiam, digits)",
           ["sharing", "archs", "kendall_tau_knn", "tau_knn_95", "kendall_tau_linear",
            *[f"tau_knn_patch{p}" for p in patches], *[f"archs_patch{p}" for p in patches]], rows, args.output, invoked(),
           options_of(args), {**machine(), "device": "cpu"},
           notes=[f"config {CONFIG.relative_to(ROOT)}; overrides {base}",
                  f"standalone kNN top-1 range {min(truth):.3f} - {max(truth):.3f}"])
    return 0

