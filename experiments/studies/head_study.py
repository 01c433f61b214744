"""Does the head search pay? One command that tests NASiam's claim on your machine.

``python -m experiments head-study --framework simsiam --dataset digits`` runs, over several seeds
and at one training budget, every arm of the study:

- ``untrained``: the network at initialisation, evaluated without training (a floor);
- ``hand-made``: the framework's own head (``model.head_space: fixed``), retrained;
- ``nasiam-published``: NASiam's published SimSiam head (SimSiam only), retrained;
- ``darts-nasiam`` / ``darts-mlp``: DARTS over the ``nasiam`` / ``mlp`` space, then the
  derived head retrained from scratch;
- ``darts-nasiam-no-warmup`` / ``darts-nasiam-no-penalty``: the same search without one of
  its guards (``search.warmup_epochs=0``; ``search.param_free_penalty=0``), then retrained.

Every arm's config is the one base config plus the arm's dotted overrides, so every retrain
has the same ``train.epochs`` and every search the same ``search.epochs``. The command prints
a table (kNN and linear top-1 as mean ± std over seeds, collapse score, search and retrain
time, derived architectures) and writes it as JSON and Markdown under ``docs/results/``.
A finished run is reused when its config is identical (``--fresh`` reruns everything).
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from experiments.core.resources import project_file
from experiments.jobs.command import output_dir_argument
from experiments.studies.kit import RESULTS, current_command, grid, mean_sd

NAME = "head-study"  # also ``python -m experiments study head``
HELP = "does the head search pay? every arm (hand-made, searched, NASiam's) over seeds, one table"
PUBLISHED_NASIAM = project_file("architectures", "nasiam_simsiam_cifar10_resnet18.json")


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    kind: str  # "pixels", "untrained", "fixed", "published", "search"
    head_space: str = "fixed"
    overrides: dict = field(default_factory=dict)  # search.* only: the budget stays equal
    frameworks: Optional[tuple] = None  # None: every framework

    def applies_to(self, framework: str) -> bool:
        return self.frameworks is None or framework in self.frameworks


ARMS = (
    Arm("raw-pixels", "kNN and linear probe on the normalised pixels themselves (reference, no network)", "pixels"),
    Arm("untrained", "the network at initialisation, hand-made head, no training (floor)", "untrained"),
    Arm("hand-made", "the framework's hand-made head, trained", "fixed"),
    Arm("nasiam-published", "NASiam's published CIFAR-10 head, trained", "published", "nasiam",
        frameworks=("simsiam",)),
    Arm("darts-nasiam", "DARTS over the nasiam space, derived head retrained", "search", "nasiam"),
    Arm("darts-mlp", "DARTS over the mlp space, derived head retrained", "search", "mlp"),
    Arm("darts-nasiam-no-warmup", "as darts-nasiam without the warm-up (search.warmup_epochs=0)", "search",
        "nasiam", {"search.warmup_epochs": 0}),
    Arm("darts-nasiam-no-penalty", "as darts-nasiam without the parameter-free penalty "
        "(search.param_free_penalty=0)", "search", "nasiam", {"search.param_free_penalty": 0.0}),
)
ARM_NAMES = tuple(a.name for a in ARMS)

# Short names for the architecture column.
OP_SHORT = {"maxpool_3x3": "max", "avgpool_3x3": "avg", "identity": "id", "linear_relu": "relu",
            "linear_silu": "silu", "linear_hardswish": "hswish", "linear_elu": "elu",
            "leaky_relu": "lrelu", "hardswish": "hswish"}


# --- configs ---------------------------------------------------------------------------------
def arm_config(base: Path, user: dict, framework: str, seed: int, arm: Arm, run_dir: Path):
    """One arm's config: the base file, the user's --set, then the arm's own overrides."""
    from experiments.core.validation import load_config

    overrides = {**user, "framework": framework, "seed": seed, "model.head_space": arm.head_space,
                 "output_dir": str(run_dir), **arm.overrides}
    if arm.kind in ("pixels", "untrained", "fixed"):
        overrides["model.head_space"] = "fixed"
    return load_config(base, overrides)


def plan(base: Path, user: dict, framework: str, seeds: list[int], arms: list[Arm], out: Path) -> list[dict]:
    """Every (arm, seed) run with its validated config; raises ConfigError before anything runs."""
    from experiments.core.errors import ConfigError

    for arm in arms:
        if any(not k.startswith("search.") for k in arm.overrides):
            raise ConfigError(f"arm {arm.name}: may only change search.* (the training budget is shared)")
    runs = [{"arm": arm, "seed": seed, "dir": out / arm.name / f"seed{seed}",
             "cfg": arm_config(base, user, framework, seed, arm, out / arm.name / f"seed{seed}")}
            for arm, seed in grid(arms, seeds)]
    epochs = {r["cfg"].train.epochs for r in runs}
    search_epochs = {r["cfg"].search.epochs for r in runs}
    if len(epochs) != 1 or len(search_epochs) != 1:  # a guard on the study's one promise
        raise ConfigError(f"arms differ in budget: train.epochs {sorted(epochs)}, search.epochs {sorted(search_epochs)}")
    return runs


def _comparable(cfg_dict: dict) -> dict:
    d = json.loads(json.dumps(cfg_dict))
    d.pop("output_dir", None)
    d.get("trainer", {}).pop("progress_bar", None)
    return d


def _reusable(path: Path, cfg) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if _comparable(record.get("config", {})) == _comparable(cfg.to_dict()) else None


# --- one run ---------------------------------------------------------------------------------
def head_parameters(network) -> int:
    """Trainable parameters of the online heads (projector + predictor), momentum copies excluded."""
    return sum(p.numel() for m in (network.projector, network.predictor) for p in m.parameters())


def run_one(run: dict, framework: str, fresh: bool, log) -> dict:
    """Run (or reuse) one arm at one seed; returns its row of numbers."""
    from experiments.core.records import build_fixed, read_architecture
    from experiments.core.files import write_json_atomic
    from experiments.jobs.retrain import RESULTS_FILE, run_retrain
    from experiments.jobs.search import ARCHITECTURE_FILE, SearchCollapsed, run_search

    arm, cfg, run_dir = run["arm"], run["cfg"], run["dir"]
    tag = f"[{arm.name} seed {cfg.seed}]"
    say = lambda s: log(f"{tag} {s}")  # noqa: E731
    result: dict[str, Any] = {"arm": arm.name, "seed": cfg.seed, "reused": False}

    if arm.kind in ("pixels", "untrained"):
        path = run_dir / f"{arm.kind}_results.json"
        reuse = None if fresh else _reusable(path, cfg)
        if reuse is None:
            import pytorch_lightning as pl

            from experiments.core.assembly import build_data, downstream_metrics

            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            record = {"space": {"framework": framework, "head_space": "fixed"}, "architecture": {}}
            network, _ = build_fixed(record, cfg)
            params = head_parameters(network)
            data = build_data(cfg)
            if arm.kind == "pixels":
                metrics, params = pixel_metrics(cfg, data), 0
            else:
                metrics = downstream_metrics(cfg, data, network)
            reuse = {"metrics": metrics, "head_params": params, "config": cfg.to_dict()}
            write_json_atomic(path, reuse)
        else:
            result["reused"] = True
        say(f"kNN {reuse['metrics']['knn_top1']:.3f}  linear {reuse['metrics']['linear_top1']:.3f}")
        return {**result, **_numbers(reuse["metrics"]), "head_params": reuse["head_params"],
                "architecture": None, "search": None}

    search, ran = None, False
    if arm.kind == "fixed":
        record = {"space": {"framework": framework, "head_space": "fixed"}, "architecture": {}}
    elif arm.kind == "published":
        record = read_architecture(PUBLISHED_NASIAM)
    else:
        search_dir = run_dir / "search"
        record = None if fresh else _reusable(search_dir / ARCHITECTURE_FILE, cfg)
        if record is None:
            ran = True
            say(f"search over the {arm.head_space} space, {cfg.search.epochs} epochs")
            try:
                record = run_search(cfg, search_dir, log_fn=say)
            except SearchCollapsed as err:  # reported, not hidden: its head is still retrained
                say(f"search collapsed: {err}")
                record = json.loads((search_dir / ARCHITECTURE_FILE).read_text())
        m = record["metrics"]
        search = {"seconds": m["search_seconds"], "status": record.get("status", "ok"),
                  "knn_top1": m["knn_top1"], "collapse": m["collapse"],
                  "probabilities": record.get("probabilities")}
    retrain_dir = run_dir / "retrain"
    result_record = None if fresh else _reusable(retrain_dir / RESULTS_FILE, cfg)
    if result_record is None:
        say(f"retrain {cfg.train.epochs} epochs")
        result_record = run_retrain(cfg, record, retrain_dir, log_fn=say, source=arm.name)
        ran = True
    result["reused"] = not ran
    network, _ = build_fixed(record, cfg, arm.name)
    m = result_record["metrics"]
    say(f"kNN {m['knn_top1']:.3f}  linear {m['linear_top1']:.3f}  collapse {m['collapse']:.3f}")
    return {**result, **_numbers(m), "train_seconds": m.get("train_seconds"), "head_params": head_parameters(network),
            "architecture": result_record["architecture"] if arm.kind != "fixed" else None, "search": search}


def pixel_metrics(cfg, data) -> dict:
    """kNN and linear top-1 with the normalised pixels as features: what a network has to beat."""
    from evaluators.downstream import knn_accuracy, linear_probe_accuracy

    e, ev = cfg.evaluation, data.evaluation
    bank, test = ev.bank.flatten(1), ev.test.flatten(1)
    return {"knn_top1": knn_accuracy(bank, ev.bank_labels, test, ev.test_labels, ev.num_classes, e.knn_k,
                                     e.knn_temperature),
            "linear_top1": linear_probe_accuracy(bank, ev.bank_labels, test, ev.test_labels, ev.num_classes,
                                                 epochs=e.linear_epochs, lr=e.linear_lr, seed=cfg.seed),
            "collapse": None, "chance": 1.0 / ev.num_classes}


def _numbers(m: dict) -> dict:
    return {"knn_top1": m["knn_top1"], "linear_top1": m["linear_top1"], "collapse": m["collapse"],
            "chance": m["chance"]}


# --- the table -------------------------------------------------------------------------------
def verdict(arm: dict, base: dict, key: str) -> str:
    """win / loss when the mean ± std intervals over seeds do not overlap, else tie."""
    (ma, sa), (mb, sb) = arm[key], base[key]
    if ma is None or mb is None or sa is None or sb is None:
        return "n/a"
    if ma - sa > mb + sb:
        return "win"
    if ma + sa < mb - sb:
        return "loss"
    return "tie"


def summarise(rows: list[dict], arms: list[Arm], threshold: float) -> list[dict]:
    table = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm.name]
        if not mine:
            continue
        searches = [r["search"] for r in mine if r["search"]]
        entry = {
            "arm": arm.name, "description": arm.description, "seeds": [r["seed"] for r in mine],
            "knn_top1": mean_sd([r["knn_top1"] for r in mine]),
            "linear_top1": mean_sd([r["linear_top1"] for r in mine]),
            "collapse_min": min((r["collapse"] for r in mine if r["collapse"] is not None), default=None),
            "collapsed_seeds": [r["seed"] for r in mine if r["collapse"] is not None and r["collapse"] < threshold],
            "search_collapsed_seeds": [r["seed"] for r in mine if r["search"] and r["search"]["status"] != "ok"],
            "search_seconds": mean_sd([s["seconds"] for s in searches])[0] if searches else None,
            "train_seconds": mean_sd([r.get("train_seconds") for r in mine])[0],
            "head_params": round(statistics.fmean(r["head_params"] for r in mine)),
            "architectures": {str(r["seed"]): r["architecture"] for r in mine if r["architecture"]},
            "decisiveness": {str(r["seed"]): decisiveness(r["search"]["probabilities"]) for r in mine if r["search"]},
        }
        table.append(entry)
    base = next((e for e in table if e["arm"] == "hand-made"), None)
    base_rows = {r["seed"]: r for r in rows if r["arm"] == "hand-made"}
    for e in table:
        e["vs_hand_made"] = None if base is None or e is base or e["arm"] in ("untrained", "raw-pixels") else {
            "knn": verdict(e, base, "knn_top1"), "linear": verdict(e, base, "linear_top1"),
            "knn_delta": e["knn_top1"][0] - base["knn_top1"][0],
            "linear_delta": e["linear_top1"][0] - base["linear_top1"][0],
            "knn_seeds_above": _seeds_above(rows, e["arm"], base_rows, "knn_top1"),
            "linear_seeds_above": _seeds_above(rows, e["arm"], base_rows, "linear_top1")}
    return table


def _seeds_above(rows: list[dict], arm: str, base_rows: dict, key: str) -> list[int]:
    """[k, n]: on k of the n seeds both ran, the arm beat the hand-made head (same seed: same data split)."""
    pairs = [(r[key], base_rows[r["seed"]][key]) for r in rows if r["arm"] == arm and r["seed"] in base_rows]
    return [sum(a > b for a, b in pairs), len(pairs)]


def short_architecture(architecture: dict) -> str:
    """``projector: relu silu id · predictor: hswish avg`` (mlp: depth, then activations)."""
    heads: dict[str, dict[str, Any]] = {}
    for label, value in architecture.items():
        head, _, rest = label.partition(".")
        heads.setdefault(head, {})[rest] = value
    parts = []
    for head, choices in heads.items():
        depth = choices.get("depth")
        layers = sorted((k for k in choices if k.startswith("layer")), key=lambda k: int(k[5:].split(".")[0]))
        if isinstance(depth, int):
            layers = [k for k in layers if int(k[5:].split(".")[0]) <= depth]
        ops = " ".join(OP_SHORT.get(str(choices[k]), str(choices[k])) for k in layers)
        width = f" w{choices['width']}" if "width" in choices else ""
        parts.append(f"{head}: " + (f"depth {depth}{width} ({ops})" if depth is not None else ops))
    return " · ".join(parts)


def _fmt(ms: tuple, digits: int = 3) -> str:
    mean, std = ms
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _seconds(s: Optional[float]) -> str:
    return "–" if s is None else f"{s:.0f}"


def _collapse_cell(e: dict) -> str:
    if e["collapse_min"] is None:
        return "–"
    cell = f"{e['collapse_min']:.2f}"
    if e["collapsed_seeds"]:
        cell += f" COLLAPSED (seeds {', '.join(map(str, e['collapsed_seeds']))})"
    if e["search_collapsed_seeds"]:
        cell += f"; search collapsed (seeds {', '.join(map(str, e['search_collapsed_seeds']))})"
    return cell


def table_rows(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "kNN top-1", "linear top-1", "vs hand-made (kNN / linear)", "collapse (min)",
              "search s", "retrain s", "head params"]
    rows = []
    for e in table:
        vs = e["vs_hand_made"]
        cell = "–" if vs is None else (
            f"{vs['knn']} ({vs['knn_delta']:+.3f}, {'/'.join(map(str, vs['knn_seeds_above']))}) / "
            f"{vs['linear']} ({vs['linear_delta']:+.3f}, {'/'.join(map(str, vs['linear_seeds_above']))})")
        rows.append([e["arm"], _fmt(e["knn_top1"]), _fmt(e["linear_top1"]), cell, _collapse_cell(e),
                     _seconds(e["search_seconds"]), _seconds(e["train_seconds"]), f"{e['head_params']:,}"])
    return header, rows


def decisiveness(probabilities: Optional[dict]) -> Optional[tuple[float, float]]:
    """Mean over choices of the winning candidate's probability, and the same for a uniform choice."""
    if not probabilities:
        return None
    return (statistics.fmean(max(p.values()) for p in probabilities.values()),
            statistics.fmean(1 / len(p) for p in probabilities.values()))


def architecture_rows(table: list[dict]) -> list[list[str]]:
    rows = []
    for e in table:
        for seed, arch in e["architectures"].items():
            d = e["decisiveness"].get(seed)
            rows.append([e["arm"], seed, short_architecture(arch),
                         "–" if d is None else f"{d[0]:.3f} ({d[1]:.3f})"])
    return rows


def markdown(study: dict) -> str:
    header, rows = table_rows(study["table"])
    b, v = study["budget"], study["versions"]
    lines = [f"# Does the head search pay? {study['framework']} on {study['dataset']}", "",
             f"Rerun: `{current_command(study['command'])}`", "",
             f"- machine: {v['machine']}, {v['cpu_count']} CPUs, GPU: {v['cuda'] or 'none'}; "
             f"python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, nni {v['nni']}, "
             f"pytorch-lightning {v['pytorch_lightning']}",
             f"- load average (1 min) at start / end of this invocation: {study['load_average'][0]:.1f} / "
             f"{study['load_average'][1]:.1f} (a shared machine: times are wall-clock and noisy)",
             f"- seeds: {', '.join(map(str, study['seeds']))}; finished {study['finished']}; search + training "
             f"time summed over the runs {study['run_seconds'] / 60:.1f} min; this invocation "
             f"{study['wall_seconds'] / 60:.1f} min wall, {study['reused_runs']} of {len(study['runs'])} runs "
             f"reused from an earlier invocation with the same config",
             f"- budget: {b['summary']}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "kNN (k={knn_k}, T={knn_t}) and linear probe ({lin} epochs) on frozen backbone features of the test "
              "split; mean ± sample std over seeds. *vs hand-made*: win / loss when the mean ± std intervals do not "
              "overlap, otherwise tie; in brackets the difference of means and on how many seeds the arm beat the hand-made head (same seed, same data). *collapse*: the projector output's "
              "collapse score after training (about 1 healthy, 0 collapsed; COLLAPSED below {thr}). *search s*: "
              "wall time of the DARTS search; *retrain s*: of the training. *head params*: projector + predictor."
              .format(knn_k=b["knn_k"], knn_t=b["knn_temperature"], lin=b["linear_epochs"], thr=b["collapse_threshold"]),
              "", "Arms:", ""]
    lines += [f"- `{e['arm']}`: {e['description']}" for e in study["table"]]
    arch = architecture_rows(study["table"])
    if arch:
        lines += ["", "Derived architectures (per seed). *decided*: the winning candidate's search probability, "
                  "averaged over the choices, with the uniform value in brackets (how far the search moved from "
                  "a coin toss).", "", "| arm | seed | architecture | decided |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in arch]
    return "\n".join(lines) + "\n"


def print_table(study: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=max(160, Console().width))
    header, rows = table_rows(study["table"])
    table = Table(title=f"Does the head search pay? {study['framework']} on {study['dataset']} "
                        f"(seeds {', '.join(map(str, study['seeds']))})", caption=Text(study["budget"]["summary"]))
    for h in header:
        table.add_column(h, overflow="fold")
    for r in rows:
        table.add_row(*(Text(c) for c in r))
    console.print(table)
    arch = architecture_rows(study["table"])
    if arch:
        t2 = Table(title="Derived architectures")
        for h in ("arm", "seed", "architecture", "decided"):
            t2.add_column(h, overflow="fold")
        for r in arch:
            t2.add_row(*(Text(c) for c in r))
        console.print(t2)


def budget(cfg, data_sizes: dict) -> dict:
    m, d, s, e = cfg.model, cfg.data, cfg.search, cfg.evaluation
    summary = (f"{data_sizes['train']} train / {data_sizes['test']} test images ({cfg.data.dataset}"
               f"{', ' + cfg.data.root if cfg.data.root else ''}, {data_sizes['image_size']} px); "
               f"{m.backbone} width {m.backbone_width}, heads width {m.head_width}; batch {d.batch_size}, "
               f"{cfg.optim.optimizer} lr {cfg.optim.lr}; retrain {cfg.train.epochs} epochs on all train images; "
               f"search {s.strategy} {s.epochs} epochs (warm-up {s.warmup_epochs}, param-free penalty "
               f"{s.param_free_penalty}, arch lr {s.arch_lr}) on a {1 - d.search_split:.0%} weight / "
               f"{d.search_split:.0%} architecture split")
    return {"summary": summary, "train_epochs": cfg.train.epochs, "search_epochs": s.epochs,
            "train_images": data_sizes["train"], "test_images": data_sizes["test"],
            "image_size": data_sizes["image_size"], "knn_k": e.knn_k, "knn_temperature": e.knn_temperature,
            "linear_epochs": e.linear_epochs, "collapse_threshold": s.collapse_threshold}


def _data_sizes(cfg) -> dict:
    from experiments.core.assembly import build_data

    data = build_data(cfg)
    return {"train": len(data.train), "test": len(data.test), "image_size": data.image_size}


# --- the command -----------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--framework", required=True, help="simsiam, simclr, moco or byol")
    p.add_argument("--dataset", help="reads configs/study_<dataset>.yml (digits, cifar10) unless --config is given")
    p.add_argument("--config", help="base YAML config every arm derives from")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--arms", help=f"comma-separated subset of {','.join(ARM_NAMES)} (default: all that apply)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base config for every arm, e.g. --set train.epochs=5")
    p.add_argument("--output-dir", type=output_dir_argument,
                   help="runs go here (default: runs/study/<framework>-<dataset>)")
    p.add_argument("--docs-dir", default=str(RESULTS),
                   help="where head_study_<framework>_<dataset>.{md,json} go (default: docs/results)")
    p.add_argument("--fresh", action="store_true", help="rerun every arm, even ones finished with the same config")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: rewrite head_study_<framework>_<dataset>.md from its committed JSON")


def rewrite_table(args) -> int:
    """The Markdown page from the study's committed JSON (every number in it was computed when the study ran)."""
    from experiments.core.errors import ConfigError
    from experiments.core.files import write_text_atomic

    stem = f"head_study_{args.framework}_{args.dataset or Path(args.config or '').stem}"
    source = Path(args.docs_dir) / f"{stem}.json"
    if not source.is_file():
        raise ConfigError(f"--table-only: no committed study at {source}")
    write_text_atomic(source.with_suffix(".md"), markdown(json.loads(source.read_text())))
    print(f"written: {source.with_suffix('.md')}")
    return 0


def run(args) -> int:
    argv = args.argv
    from experiments.core.records import versions
    from experiments.core.files import write_json_atomic, write_text_atomic
    from experiments.core.config import parse_overrides
    from experiments.core.errors import EXIT_BAD_INPUT, ConfigError

    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if args.table_only:
            return rewrite_table(args)
        if not args.config and not args.dataset:
            raise ConfigError("give --dataset (digits, cifar10) or --config FILE")
        base = Path(args.config) if args.config else project_file("configs", f"study_{args.dataset}.yml")
        if not base.is_file():
            raise ConfigError(f"config file {str(base)!r} does not exist"
                              + ("" if args.config else "; --dataset takes digits or cifar10, or pass --config"))
        label = args.dataset or base.stem
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise ConfigError(f"--seeds: give distinct non-negative seeds, got {args.seeds}")
        wanted = ARM_NAMES if not args.arms else tuple(a.strip() for a in args.arms.split(",") if a.strip())
        unknown = [a for a in wanted if a not in ARM_NAMES]
        if unknown:
            raise ConfigError(f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARM_NAMES)}")
        from evaluators import FRAMEWORKS

        if args.framework not in FRAMEWORKS:
            raise ConfigError(f"--framework: unknown framework {args.framework!r}; choose one of "
                              f"{', '.join(sorted(FRAMEWORKS))}")
        arms = [a for a in ARMS if a.name in wanted and a.applies_to(args.framework)]
        skipped = [a.name for a in ARMS if a.name in wanted and not a.applies_to(args.framework)]
        out = Path(args.output_dir or f"runs/study/{args.framework}-{label}")
        runs = plan(base, parse_overrides(args.overrides), args.framework, args.seeds, arms, out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    command = "python -m experiments head-study " + " ".join(shlex.quote(a) for a in argv)
    for name in skipped:
        log(f"arm {name} skipped: it exists for {', '.join(next(a for a in ARMS if a.name == name).frameworks)} only")
    log(f"{len(runs)} runs ({len(arms)} arms x {len(args.seeds)} seeds) into {out}")
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = []
    try:
        for i, run in enumerate(runs, 1):
            log(f"--- run {i}/{len(runs)}: {run['arm'].name}, seed {run['seed']}")
            rows.append(run_one(run, args.framework, args.fresh, log))
            write_json_atomic(out / "study_progress.json", {"command": command, "rows": rows})
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume (finished runs are reused)", file=sys.stderr)
        return 130
    except SystemExit as err:  # Lightning turns SIGTERM into a SystemExit with status 0: not a success
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(err, SIGTERMException):
            raise
        print("error: terminated (SIGTERM); rerun the same command to resume (finished runs are reused)",
              file=sys.stderr)
        return 143
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    first = runs[0]["cfg"]
    study = {
        "kind": "head_study", "framework": args.framework, "dataset": label, "command": command,
        "seeds": args.seeds, "arms": [a.name for a in arms], "skipped_arms": skipped,
        "budget": budget(first, _data_sizes(first)), "versions": versions(),
        "load_average": [load_start, os.getloadavg()[0]],
        "wall_seconds": time.perf_counter() - start,
        "finished": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "reused_runs": sum(r["reused"] for r in rows),
        "run_seconds": sum((r.get("train_seconds") or 0) + ((r.get("search") or {}).get("seconds") or 0) for r in rows),
        "table": summarise(rows, arms, first.search.collapse_threshold), "runs": rows,
        "base_config": str(base), "overrides": args.overrides,
    }
    print_table(study)
    docs = Path(args.docs_dir)
    stem = f"head_study_{args.framework}_{label}"
    write_json_atomic(out / "study.json", study)
    write_json_atomic(docs / f"{stem}.json", study)
    write_text_atomic(docs / f"{stem}.md", markdown(study))
    log(f"written: {docs / (stem + '.md')}, {docs / (stem + '.json')}")
    return 0
