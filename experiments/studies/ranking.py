"""How well does each sampling strategy's supernet rank NAS-Bench-Macro's networks, under each objective?

    python -m experiments study ranking [--strategies spos ...] [--frameworks supervised simsiam byol]
        [--seeds 0 1] [--train-images 2000] [--epochs 3] [--archs 100] [--table-only]

Every strategy is judged the same way. For each (strategy, objective, seed) at one supernet
training budget it trains the strategy's supernet over NAS-Bench-Macro's space on a CIFAR-10
subset (the backbone-search job's ``prepare`` / ``train_supernet``), scores the same sampled
networks (distinct networks, ``--archs``, drawn with ``--arch-seed`` so every run ranks the same
ones) with inherited weights after BatchNorm recalibration on held-out images, and runs the
strategy's own ``select``. Reported: Kendall's tau against the benchmark's ``mean_acc`` with a
bootstrap 95% interval (networks resampled), tau among the sampled networks in the benchmark's
top 10%, and the benchmark percentile of the network ``select`` returns. Beside them, on the
same networks: the label-free rankers (non-identity layer count, FLOPs, parameters, SynFlow and
NASWOT at initialisation) and the noise ceiling (the benchmark's seed-0 accuracies against its
seed-1 accuracies).

Each run is cached as one JSON file per (strategy, objective, seed, budget) under ``--cache``;
a run already there is read, not retrained, so a study longer than a session continues where it
stopped. The table (Markdown, ``--docs``) is built from every cached run of the sampled networks.
A strategy is named ``NAME`` or ``NAME:option=value,...`` (``backbone_search.strategy_options``,
values read as YAML), e.g. ``spos:distinct=true``.

Needs ``../shared/data/cifar10`` (ImageFolder) and the NAS-Bench-Macro table; exits with one
``error:`` line when either is missing.
"""
from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional

from experiments.studies.kit import (RESULTS, ROOT, bootstrap_tau, budget_tag, cached, command, current_command,
                                     kendall, machine, page_argument, quiet, write_between_markers)
from experiments.studies.networks_alone import (LEARNING_RATES, ZERO_COST_BATCH, label_free_scores,  # noqa: F401
                                                layer_count)  # (layer_count: read by the tests as ranking's)

NAME = "ranking"
HELP = "how well each sampling strategy's supernet ranks NAS-Bench-Macro's networks, under each objective"
DEFAULT_CACHE = RESULTS / "ranking_cache"
DEFAULT_DOCS = ROOT / "docs" / "ranking.md"
GROUND_TRUTH = RESULTS / "ssl_ground_truth.json"  # the ssl-ground-truth study writes it
TOP_FRACTION = 0.10  # "tau within the top 10% of the benchmark"
LAYER_COUNT_TARGET = 0.69  # the bar: layer count's tau against mean_acc over all 6561 keys (0.68 distinct)


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


bootstrap = bootstrap_tau  # the interval every table of this study gives beside a tau


# --- what is ranked and by whom ----------------------------------------------------------------------
def sampling_strategies(backbone: str = "nas_bench_macro") -> list[str]:
    """The registry's strategies that can search ``backbone`` by sampling paths (not a relaxation)."""
    from experiments.strategies import STRATEGIES
    from search_spaces.backbone_spaces import choice_kinds

    kinds = choice_kinds(backbone)
    return [name for name, s in STRATEGIES.items()
            if "backbone" in s.targets and kinds <= s.handles and not s.interleaved]


def parse_strategy(text: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:option=value,...`` -> (name, strategy_options); values are read as YAML."""
    import yaml

    from experiments.core.errors import ConfigError
    from experiments.strategies import STRATEGIES

    name, _, rest = text.partition(":")
    if name not in STRATEGIES:
        raise ConfigError(f"--strategies: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    options = {}
    for item in filter(None, rest.split(",")):
        option, sep, value = item.partition("=")
        if not sep or not option:
            raise ConfigError(f"--strategies: {text!r}: options are option=value, got {item!r}")
        options[option] = yaml.safe_load(value)
    return name, options


def strategy_label(name: str, options: dict) -> str:
    return name + "".join(f"-{k}={json.dumps(v)}" for k, v in sorted(options.items()))



def percentile_in_benchmark(table, key: str) -> float:
    """Percent of the benchmark's keys whose ``mean_acc`` is at most this key's (100 = the best)."""
    accuracy = table.mean_acc(key)
    return 100.0 * sum(r["mean_acc"] <= accuracy for r in table.table.values()) / len(table.table)


def top_threshold(table, fraction: float = TOP_FRACTION) -> float:
    """The ``mean_acc`` at or above which a key is in the benchmark's top ``fraction``."""
    import numpy as np

    return float(np.quantile([r["mean_acc"] for r in table.table.values()], 1 - fraction))


def judge(scores, truth, top_mask, rounds: int, seed: int) -> dict:
    """Tau against the truth with its bootstrap interval, and tau among the top networks only."""
    top_scores = [s for s, top in zip(scores, top_mask) if top]
    top_truth = [t for t, top in zip(truth, top_mask) if top]
    return {"tau": kendall(scores, truth), "ci95": bootstrap(scores, truth, rounds, seed),
            "top_tau": kendall(top_scores, top_truth) if len(top_scores) > 1 else None, "top_n": len(top_scores)}



# --- what a ranking is judged against ---------------------------------------------------------------
@dataclass
class Reference:
    """The truth a supernet's ranking is judged against: NAS-Bench-Macro's ``mean_acc`` (CIFAR-10,
    supervised) or an SSL ground truth (``ssl-ground-truth:OBJECTIVE:DATASET``: networks trained alone
    under that objective on that dataset, kNN top-1 averaged over seeds)."""

    name: str
    dataset: str  # the data the supernets train on, so they are judged on the data of their truth
    truth: dict  # network key -> value
    ceiling: dict  # network key -> (seed-0 value, seed-1 value): the noise ceiling
    keys: Optional[list] = None  # the reference's own networks (None: sample them, --archs)
    described: str = "the benchmark's `mean_acc`"

    def top_threshold(self, fraction: float = TOP_FRACTION) -> float:
        import numpy as np

        return float(np.quantile(list(self.truth.values()), 1 - fraction))


def benchmark_reference(table) -> Reference:
    return Reference("mean_acc", "cifar10", {k: r["mean_acc"] for k, r in table.table.items()},
                     {k: tuple(r["test_acc"][:2]) for k, r in table.table.items()})


def parse_reference(spec: str, table, path: Path = GROUND_TRUTH) -> Reference:
    """``mean_acc`` or ``ssl-ground-truth:OBJECTIVE:DATASET`` read from the assembled ground truth."""
    from experiments.core.errors import ConfigError

    if spec == "mean_acc":
        return benchmark_reference(table)
    kind, _, rest = spec.partition(":")
    objective, _, dataset = rest.partition(":")
    if kind != "ssl-ground-truth" or not objective or not dataset:
        raise ConfigError(f"--reference: {spec!r} is neither mean_acc nor ssl-ground-truth:OBJECTIVE:DATASET")
    if not path.is_file():
        raise ConfigError(f"--reference {spec}: no ground truth at {path} ({command('ssl-ground-truth')})")
    built = json.loads(path.read_text())
    truth = built.get("truth", {}).get(dataset, {}).get(objective)
    if not truth:
        known = [f"{o}:{d}" for d, by in built.get("truth", {}).items() for o in by]
        raise ConfigError(f"--reference {spec}: the ground truth has no {objective} on {dataset} "
                          f"(it has {', '.join(known) or 'nothing yet'})")
    by_seed = {(r["canonical_key"], r["seed"]): r["knn_top1"] for r in built["runs"]
               if (r["objective"], r["dataset"]) == (objective, dataset)}
    ceiling = {k: (by_seed[(k, 0)], by_seed[(k, 1)]) for k in truth if (k, 0) in by_seed and (k, 1) in by_seed}
    return Reference(spec, dataset, {k: v["knn_top1"] for k, v in truth.items()}, ceiling,
                     keys=[n["key"] for n in built["networks"]],
                     described=f"the {objective} ground truth on {dataset} (kNN top-1 of each network trained alone, "
                               "mean over seeds; `docs/ssl-ground-truth.md`)")


# --- the cache -------------------------------------------------------------------------------------

def run_file(cache: Path, label: str, objective: str, seed: int, budget: dict) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.=-]", "_", label)
    return cache / f"{safe}__{objective}__seed{seed}__{budget_tag(budget)}.json"


# --- one run ---------------------------------------------------------------------------------------
def config_for(name: str, options: dict, objective: str, seed: int, budget: dict, cifar: Path):
    from experiments.core.validation import load_config

    data = ({"data.dataset": "digits"} if budget.get("dataset") == "digits"
            else {"data.dataset": "imagefolder", "data.root": str(cifar)})
    overrides = {
        "framework": objective, "seed": seed, **data, "data.train_subset": budget["train_images"],
        "data.test_subset": 1000, "data.batch_size": budget["batch_size"], "data.search_split": budget["held_out"],
        "model.backbone": "nas_bench_macro", "model.backbone_width": budget["width"], "model.head_space": "fixed",
        "model.head_width": budget["head_width"], "optim.lr": LEARNING_RATES.get(objective, 0.06),
        "search.epochs": budget["epochs"], "search.warmup_epochs": 0,
        "backbone_search.strategy": name, "backbone_search.strategy_options": options,
        "backbone_search.bn_batches": budget["bn_batches"], "backbone_search.score_images": budget["score_images"],
        "backbone_search.trials": budget["trials"], "backbone_search.population": min(16, budget["trials"]),
        "backbone_search.tournament": min(4, budget["trials"]),
        "evaluation.knn_k": 20, "evaluation.monitor_every_n_epochs": budget["epochs"], "evaluation.bank_subset": 1000,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        # the defaults when the committed results were measured
        "data.batched_augment": False, "trainer.channels_last": False,
    }
    return load_config(None, overrides)


def train_and_rank(name: str, options: dict, objective: str, seed: int, budget: dict, keys: list[str], table,
                   cifar: Path, workdir: Path, log: Callable[[str], None], argv: list[str]) -> dict:
    """Train one supernet, score ``keys`` with inherited weights, run the strategy's ``select``."""
    from experiments import nni_compat
    from experiments.core.memory import PeakMemory
    from experiments.jobs.backbone_search import prepare, train_supernet
    from experiments.strategies import STRATEGIES
    from search_spaces.nas_bench_macro import arch_to_key, canonical_key, key_to_arch
    from search_spaces.supernet import plain_architecture

    cfg = config_for(name, options, objective, seed, budget, cifar)
    out = workdir / run_file(workdir, strategy_label(name, options), objective, seed, budget).stem
    strategy = STRATEGIES[name]
    with PeakMemory("cpu") as training_memory:  # the config trains on the CPU: peak resident set
        setup = prepare(cfg, log_fn=log)
        nni_strategy, monitor, train_seconds = train_supernet(setup, out, log_fn=log)
    start = time.perf_counter()
    scores = []
    with PeakMemory("cpu") as scoring_memory:
        for i, key in enumerate(keys, 1):  # the network the strategy itself would score (K-shot: materialised)
            scores.append(setup.scorer(strategy.derive(nni_strategy, key_to_arch(key))))
            if i % 25 == 0:
                log(f"{name} {objective} seed {seed}: scored {i}/{len(keys)}")
    score_seconds = time.perf_counter() - start
    start = time.perf_counter()
    selection = strategy.select(setup.context(out, log), nni_strategy)
    selected = arch_to_key(plain_architecture(selection.architecture))
    return {"strategy": name, "strategy_options": options, "label": strategy_label(name, options),
            "objective": objective, "seed": seed, "budget": budget, "keys": keys, "scores": scores,
            "selected": {"key": selected, "canonical_key": canonical_key(selected),
                         "mean_acc": table.mean_acc(selected), "percentile": percentile_in_benchmark(table, selected)},
            "seconds": {"train": train_seconds, "score": score_seconds, "select": time.perf_counter() - start},
            "peak_mib": {"train": training_memory.mib, "score": scoring_memory.mib},
            "final_epoch": monitor.history[-1] if monitor.history else None,
            "command": command(NAME, *argv),
            "machine": machine()}


# --- the table -------------------------------------------------------------------------------------
def _interval(j: dict) -> str:
    top = "n/a" if j["top_tau"] is None else f"{j['top_tau']:+.2f}"
    return f"{j['tau']:+.3f} | [{j['ci95'][0]:+.2f}, {j['ci95'][1]:+.2f}] | {top} (n={j['top_n']})"


def build_table(runs: list[dict], keys: list[str], table, label_free: dict, rounds: int, seed: int,
                command: str, reference: Optional[Reference] = None) -> tuple[str, dict]:
    """The Markdown page and its figures, from every cached run over ``keys``, judged against ``reference``
    (default: ``mean_acc``) on those of ``keys`` it holds."""
    ref = reference or benchmark_reference(table)
    held = [i for i, k in enumerate(keys) if k in ref.truth]
    pick = lambda values: [values[i] for i in held]  # noqa: E731
    truth = [ref.truth[keys[i]] for i in held]
    threshold = ref.top_threshold()
    top_mask = [t >= threshold for t in truth]
    paired = [i for i in held if keys[i] in ref.ceiling]
    ceiling = judge([ref.ceiling[keys[i]][0] for i in paired], [ref.ceiling[keys[i]][1] for i in paired],
                    [ref.truth[keys[i]] >= threshold for i in paired], rounds, seed)
    fixed = {name: judge(pick(values), truth, top_mask, rounds, seed) for name, values in label_free["scores"].items()}
    judged = sorted(({**r, "judged": judge(pick(r["scores"]), truth, top_mask, rounds, seed)} for r in runs),
                    key=lambda r: (r["budget"]["epochs"] * r["budget"]["train_images"], budget_tag(r["budget"]),
                                   r["label"], r["objective"], r["seed"]))
    drawn = (f"drawn with seed {label_free['arch_seed']}" if ref.keys is None
             else f"the ground truth's networks, {len(held)} of them with a truth so far")
    data = "CIFAR-10" if ref.dataset == "cifar10" else ref.dataset
    lines = [f"Every strategy, judged the same way on the same {len(held)} distinct networks ({drawn}): Kendall's "
             f"tau of its supernet's ranking (inherited weights, BatchNorm recalibrated, held-out {data} images) "
             f"against {ref.described}, its bootstrap 95% "
             f"interval ({rounds} resamples of the networks), tau among the sampled networks in the reference's top "
             f"10% (>= {threshold:.2f}), and the benchmark percentile of the network the "
             "strategy's own `select` returns (100 = the best of the 6561 keys by `mean_acc`).", "",
             "Rebuild this page from the cached runs (trains only what is not cached):", "",
             f"    {command}", ""]
    lines += ["### Label-free rankers and the noise ceiling", "",
              "Same networks. SynFlow and NASWOT at initialisation (`evaluators/zero_cost.py`), width "
              f"{label_free['width']}, seed {label_free['seed']}, NASWOT on {ZERO_COST_BATCH} random images; "
              "FLOPs and parameters from the benchmark table; the noise ceiling is the reference's own seed-0 "
              "accuracies ranked against its seed-1 accuracies.", "",
              "| ranker | tau | 95% interval | top-10% tau |", "|---|---|---|---|"]
    lines += [f"| {name} | {_interval(j)} |" for name, j in fixed.items()]
    lines += [f"| noise ceiling (seed 0 vs seed 1) | {_interval(ceiling)} |", ""]
    bar = fixed["layer count"]["tau"]
    budgets: dict[str, list[dict]] = {}
    for r in judged:
        budgets.setdefault(budget_tag(r["budget"]), []).append(r)
    for tag, group in budgets.items():
        b = group[0]["budget"]
        machines = sorted({f"{r['machine'].get('cpu', r['machine'].get('machine'))}, "
                           f"{r['machine'].get('cpu_count')} CPUs, GPU {r['machine'].get('cuda')}" for r in group})
        lines += [f"### Budget `{tag}`", "",
                  f"{b['epochs']} supernet epochs on {b['train_images']} {b.get('dataset', 'CIFAR-10')} training images "
                  f"({b['held_out']:.0%} of them held out for scoring), width {b['width']}, head width "
                  f"{b['head_width']}, batch {b['batch_size']}, {b['score_images']} scoring images, "
                  f"{b['bn_batches']} BatchNorm batches, `select` over {b['trials']} scored networks. "
                  f"Machine: {'; '.join(machines)}. Made by: "
                  + "; ".join(f"`{c}`" for c in sorted({current_command(r.get("command", "?")) for r in group})) + ".", "",
                  "| strategy | objective | seed | tau | 95% interval | top-10% tau | select's percentile "
                  "| train s |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['objective']} | {r['seed']} | {_interval(r['judged'])} | "
                  f"{r['selected']['percentile']:.1f} (`{r['selected']['key']}`, {r['selected']['mean_acc']:.2f}) | "
                  f"{r['seconds']['train']:.0f} |" for r in group]
        lines.append("")
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in judged:
        rows.setdefault((r["label"], r["objective"]), {}).setdefault(budget_tag(r["budget"]), []).append(
            r["judged"]["tau"])
    if not budgets:
        lines += ["No supernet run is cached yet.", ""]
    lines += ["### Tau against budget", "", "Mean tau over the cached seeds (their count in brackets).", "",
              "| strategy | objective | " + " | ".join(f"`{t}`" for t in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for (label, objective), by_budget in rows.items():
        cells = [f"{sum(v) / len(v):+.3f} ({len(v)})" if v else "" for v in (by_budget.get(t, []) for t in budgets)]
        lines.append(f"| {label} | {objective} | " + " | ".join(cells) + " |")
    above = [r for r in judged if r["objective"] == "supervised" and r["judged"]["tau"] > bar]
    lines += ["", "### Verdict", ""]
    if above:
        lines.append("Under the supervised objective, above the layer-count baseline (tau "
                     f"{bar:+.3f} on these networks): " + ", ".join(
                         f"{r['label']} seed {r['seed']} at `{budget_tag(r['budget'])}` (tau {r['judged']['tau']:+.3f})"
                         for r in above) + ".")
    else:
        lines.append(f"No cached supernet beats the layer-count baseline (tau {bar:+.3f} on these networks; "
                     f"{LAYER_COUNT_TARGET} over all 6561 keys) under the supervised objective at the budgets "
                     "run here: counting non-identity layers ranks NAS-Bench-Macro better than these supernets do. "
                     "The issue's target is not met at this machine's budget; the table above shows tau against "
                     "budget.")
    lines.append("")
    figures = {"label_free": fixed, "noise_ceiling": ceiling,
               "runs": [{k: r[k] for k in ("label", "objective", "seed", "judged", "selected")}
                        | {"budget": budget_tag(r["budget"])} for r in judged]}
    figures["summary"] = summary(figures, budgets, command)
    return "\n".join(lines), figures


def summary(figures: dict, budgets: dict[str, list[dict]], command: str) -> str:
    """The results page's short form: strategy x objective at the budget run most, the label-free rankers beside."""
    if not budgets:
        return "No supernet run is cached yet."
    tag, group = max(budgets.items(), key=lambda item: len(item[1]))
    objectives = list(dict.fromkeys(r["objective"] for r in sorted(group, key=lambda r: r["objective"] != "supervised")))
    taus: dict[str, dict[str, list[float]]] = {}
    for r in group:
        taus.setdefault(r["label"], {}).setdefault(r["objective"], []).append(r["judged"]["tau"])
    b = group[0]["budget"]
    seeds = sorted({r["seed"] for r in group})
    networks = b.get("archs") or len(group[0].get("keys") or [])  # older runs record only the keys
    machine_info = group[0].get("machine", {})
    lines = [f"Kendall's tau against NAS-Bench-Macro's `mean_acc` on the same {networks} networks. Supernets: "
             f"{b['epochs']} epochs on {b['train_images']} CIFAR-10 images, width {b['width']}, seeds "
             f"{', '.join(map(str, seeds))}; mean over the seeds run (each seed's tau in brackets). Machine: "
             f"{machine_info.get('cpu', '?')}, {machine_info.get('cpu_count')} CPUs, no GPU. "
             f"Rebuild: `{command} --page`; every run, interval and budget: docs/ranking.md.", "",
             "| supernet | " + " | ".join(objectives) + " |", "|---|" + "---|" * len(objectives)]
    for label, by_objective in taus.items():
        cells = [f"{sum(v) / len(v):+.3f} ({' / '.join(f'{t:+.2f}' for t in v)})" if v else ""
                 for v in (by_objective.get(o, []) for o in objectives)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| costs nothing | tau | 95% interval |", "|---|---|---|"]
    lines += [f"| {name} | {j['tau']:+.3f} | [{j['ci95'][0]:+.2f}, {j['ci95'][1]:+.2f}] |"
              for name, j in figures["label_free"].items()]
    c = figures["noise_ceiling"]
    lines.append(f"| noise ceiling (benchmark seed 0 vs 1) | {c['tau']:+.3f} | [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] |")
    return "\n".join(lines)


BEGIN_MARK = f"<!-- ranking table: written by {command(NAME)}; edits here are lost -->"
END_MARK = "<!-- end of the ranking table -->"
SUMMARY_BEGIN = f"<!-- ranking summary: written by {command(NAME, '--readme')} -->"
SUMMARY_END = "<!-- end of the ranking summary -->"


def write_table(path: Path, table_text: str, begin: str = BEGIN_MARK, end: str = END_MARK,
                title: str = "# How well does a supernet rank NAS-Bench-Macro's networks?") -> None:
    """This page's table between its markers (``write_between_markers`` with the ranking page's marks and title)."""
    write_between_markers(path, table_text, begin, end, title)


def compare(files: list[Path], rounds: int, seed: int) -> int:
    """Kendall's tau between the supernet scores of two cached runs over the same architectures."""
    try:
        runs = [json.loads(Path(f).read_text()) for f in files]
        columns = [(run["label"] + " " + run["objective"], run["scores"], run["keys"]) for run in runs]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: --compare: {err}", file=sys.stderr)
        return 2
    if columns[0][2] != columns[1][2]:
        print("error: --compare: the two runs ranked different architectures (use the same --archs and --arch-seed)",
              file=sys.stderr)
        return 2
    (na, a, _), (nb, b, _) = columns
    lo, hi = bootstrap(a, b, rounds, seed)
    print(f"{na} ({files[0]}) vs {nb} ({files[1]}), {len(a)} architectures: "
          f"tau {kendall(a, b):+.3f}  [{lo:+.3f}, {hi:+.3f}]")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--strategies", nargs="+", default=None,
                   help="NAME or NAME:option=value,... (default: every sampling strategy that can search "
                        "nas_bench_macro: %(default)s = the registry's)")
    p.add_argument("--frameworks", nargs="+", default=["supervised", "simsiam", "byol"], help="objectives")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="supernet training seeds")
    p.add_argument("--train-images", type=int, default=2000, help="CIFAR-10 training images used (subset)")
    p.add_argument("--held-out", type=float, default=0.2, help="fraction of them held out for scoring")
    p.add_argument("--epochs", type=int, default=3, help="supernet training epochs (every strategy, every objective)")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier of NAS-Bench-Macro's network")
    p.add_argument("--head-width", type=float, default=0.25, help="width multiplier of the SSL heads")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--archs", type=int, default=100, help="networks ranked (distinct networks)")
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the network sample (the same for every run)")
    p.add_argument("--score-images", type=int, default=400, help="held-out images per score (and kNN bank size)")
    p.add_argument("--bn-batches", type=int, default=2, help="BatchNorm recalibration batches per network")
    p.add_argument("--trials", type=int, default=32, help="networks the strategy's select may score")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the 95%% intervals")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="one JSON per (strategy, objective, seed, budget)")
    p.add_argument("--reference", default="mean_acc",
                   help="what the rankings are judged against: mean_acc (NAS-Bench-Macro, CIFAR-10) or "
                        "ssl-ground-truth:OBJECTIVE:DATASET (the ssl-ground-truth study; the supernets then train "
                        "on DATASET and rank the ground truth's networks)")
    p.add_argument("--ground-truth", type=Path, default=GROUND_TRUTH, help="the assembled SSL ground truth (JSON)")
    p.add_argument("--docs", type=Path, default=None,
                   help=f"the Markdown table written (default: {DEFAULT_DOCS.relative_to(ROOT)}, or "
                        "docs/ranking-ssl-OBJECTIVE-DATASET.md for an SSL reference)")
    page_argument(p, "also write the short strategy x objective table")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ranking_nas_bench_macro")
    p.add_argument("--table-only", action="store_true", help="train nothing: build the table from the cache")
    p.add_argument("--compare", type=Path, nargs=2, metavar="RUN",
                   help="only the tau between the scores of two cached runs (same networks)")


def run(args) -> int:
    quiet()
    if args.compare:
        return compare(args.compare, args.bootstrap, args.arch_seed)

    from experiments.core.errors import ConfigError
    from search_spaces.nas_bench_macro import NasBenchMacro, shared_data_candidates

    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if args.archs < 2:
            raise ConfigError("--archs must be at least 2")
        strategies = [parse_strategy(s) for s in (args.strategies or sampling_strategies())]
        table = NasBenchMacro()
        reference = parse_reference(args.reference, table, args.ground_truth)
        if args.docs is None:
            args.docs = DEFAULT_DOCS if reference.keys is None else \
                ROOT / "docs" / f"ranking-ssl-{args.reference.split(':', 1)[1].replace(':', '-')}.md"
        cifar = next((d / "cifar10" for d in shared_data_candidates() if (d / "cifar10" / "train").is_dir()), None)
        if cifar is None and reference.dataset == "cifar10" and not args.table_only:
            raise ConfigError("CIFAR-10 (ImageFolder) not found under ../shared/data/cifar10")
        keys = sample_keys(table, args.archs, args.arch_seed) if reference.keys is None else reference.keys
        networks = "" if reference.keys is None else f"__ssl-ground-truth-{len(keys)}"
        label_free_path = (args.cache / f"label_free__archs{args.archs}__archseed{args.arch_seed}__w{args.width}"
                           f"{networks}.json")
        label_free = cached(label_free_path, lambda: {
            "keys": keys, "arch_seed": args.arch_seed, "width": args.width, "seed": args.arch_seed,
            "scores": label_free_scores(keys, table, args.width, args.arch_seed), "machine": machine()}, log)
        budget = {"train_images": args.train_images, "held_out": args.held_out, "epochs": args.epochs,
                  "width": args.width, "head_width": args.head_width, "batch_size": args.batch_size,
                  "score_images": args.score_images, "bn_batches": args.bn_batches, "trials": args.trials,
                  "archs": args.archs, "arch_seed": args.arch_seed}
        if reference.keys is not None:  # the ground truth's networks on its data (mean_acc budgets keep their tags)
            budget.update({"archs": len(keys), "arch_seed": None, "networks": "ssl-ground-truth",
                           "dataset": reference.dataset})
        if not args.table_only:
            for name, options in strategies:
                for objective in args.frameworks:
                    for seed in args.seeds:
                        path = run_file(args.cache, strategy_label(name, options), objective, seed, budget)
                        log(f"== {strategy_label(name, options)} / {objective} / seed {seed} / {budget_tag(budget)}")
                        cached(path, lambda: train_and_rank(name, options, objective, seed, budget, keys, table,
                                                            cifar, args.workdir, log, args.argv), log)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = [run for run in (json.loads(p.read_text()) for p in sorted(args.cache.glob("*__seed*__*.json")))
            if "label" in run and run.get("keys") == keys]
    rerun = (command(NAME, "--table-only")
               + (f" --reference {args.reference}" if reference.keys is not None else "")
               + (f" --archs {args.archs}" if args.archs != 100 and reference.keys is None else "")
               + (f" --arch-seed {args.arch_seed}" if args.arch_seed else "")
               + (f" --cache {args.cache}" if args.cache != DEFAULT_CACHE else ""))
    page, figures = build_table(runs, keys, table, label_free, args.bootstrap, args.arch_seed, rerun, reference)
    write_table(args.docs, page)
    if args.page is not None:
        write_table(args.page, figures["summary"], SUMMARY_BEGIN, SUMMARY_END)
    for name, j in figures["label_free"].items():
        log(f"  {name:34s} tau {j['tau']:+.3f}  [{j['ci95'][0]:+.3f}, {j['ci95'][1]:+.3f}]")
    for r in figures["runs"]:
        j = r["judged"]
        log(f"  {r['label']} {r['objective']} seed {r['seed']} {r['budget']}: tau {j['tau']:+.3f} "
            f"[{j['ci95'][0]:+.3f}, {j['ci95'][1]:+.3f}]; select's percentile {r['selected']['percentile']:.1f}")
    log(f"written: {args.docs} ({len(runs)} cached runs)")
    return 0

