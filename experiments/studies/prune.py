"""DAGGER against NNI's L1, FPGM and Taylor pruners and a narrower network trained from scratch, at 75/50/25% FLOPs.

One SimSiam ResNet-18 (the config's width, SimSiam's own heads at the config's head width) is pretrained once; each
method then prunes it to each FLOPs target and fine-tunes it under the same SSL loss for the
same epochs (DAGGER's gate learning and Taylor's scoring come on top, as many epochs, the
weights frozen).
``uniform`` is the config's ResNet-18 narrowed uniformly (the largest backbone width within the
target) and trained from scratch for the pretraining plus fine-tuning epochs. ``unpruned`` is
the control: the pretrained network fine-tuned for the same epochs, without pruning. Every run
is one JSON under ``--out`` (a killed study resumes where it stopped); the table goes to
``--table`` (markdown) and its JSON beside it.

    python -m experiments study prune                        # digits, seed 0, the budget below
    python -m experiments study prune --seeds 0,1,2 --pretrain-epochs 50 --finetune-epochs 20
    python -m experiments study prune --dataset cifar10 --train-images 2000   # a CIFAR-10 subset (../shared/data)
    python -m experiments study prune --backbone nas_bench_macro --targets 0.5  # NAS-Bench-Macro's best network

``--page`` runs nothing: it writes the short table (kNN top-1 per method and target, one column per committed
study in ``docs/results/prune_study_*.json``) between its markers on the results page (``docs/results.md``).

``--backbone nas_bench_macro`` puts a NAS-Bench-Macro network (``--nbm-key``, by default the
table's best) in ResNet-18's place at the config's backbone width: the same pretraining, methods
and fine-tuning; ``uniform`` narrows that network's width.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from experiments.studies.kit import (RESULTS, ROOT, cached, command, mean_sd_text, page_argument, quiet,
                                     write_between_markers)

NAME = "prune"
HELP = "DAGGER against NNI's L1, FPGM and Taylor pruners and a narrower network from scratch, at 3 FLOPs targets"

METHODS = ("dagger", "dagger-gentle", "dagger-floor", "l1", "fpgm", "taylor", "uniform")
#: DAGGER's gate-learning settings per study method: the job's defaults; a gentler penalty and
#: learning rate (added after seed 0's 25% run, where the default overshot the target in the
#: first epoch); and the defaults with a floor of 10% of every group's filters (added after a
#: NAS-Bench-Macro run whose gates left one channel in a layer with no shortcut). Each is
#: reported beside the default, not instead of it.
DAGGER_SETTINGS = {"dagger": {"penalty": 5.0, "gate_lr": 0.02}, "dagger-gentle": {"penalty": 1.0, "gate_lr": 0.005},
                   "dagger-floor": {"penalty": 5.0, "gate_lr": 0.02, "min_keep": 0.1}}
#: the control: the unpruned network fine-tuned for the same epochs (what the extra training alone gives)
CONTROL = "unpruned"
#: the config each dataset's study starts from (``--config`` replaces it)
DATASET_CONFIGS = {"digits": "digits_simsiam.yml", "cifar10": "study_cifar10.yml"}
BACKBONES = ("resnet18", "nas_bench_macro")
#: NAS-Bench-Macro's best network by its table's mean CIFAR-10 accuracy (93.13%)
NBM_BEST_KEY = "22212220"


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits", choices=sorted(DATASET_CONFIGS),
                   help="digits (bundled) or a CIFAR-10 subset from ../shared/data/cifar10 (ImageFolder)")
    p.add_argument("--train-images", type=int, default=2000, help="CIFAR-10 training images (a seeded subset)")
    p.add_argument("--test-images", type=int, default=1000, help="CIFAR-10 test images (a seeded subset)")
    p.add_argument("--backbone", default="resnet18", choices=BACKBONES)
    p.add_argument("--nbm-key", default=NBM_BEST_KEY, help="the NAS-Bench-Macro network (8 digits of 0/1/2)")
    p.add_argument("--config", default=None, help="default: configs/digits_simsiam.yml or configs/study_cifar10.yml")
    p.add_argument("--arch", default=None, help="a head architecture JSON (default: the framework's hand-made heads, "
                                                "head_space fixed)")
    p.add_argument("--targets", default="0.75,0.5,0.25", help="FLOPs fractions to keep")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--gate-epochs", type=int, default=5)
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="run cache (default runs/prune-study[-<dataset>][-<backbone>])")
    page_argument(p, "run nothing: write the short table of every committed study")
    p.add_argument("--table", default=None, help="default docs/results/prune_study_<dataset>[_<backbone>].md")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: rewrite --table from the runs committed beside it (its .json), given the "
                        "options of its Rerun line")


def resolve(args):
    """Check the options and fill the defaults that depend on them (ConfigError: one line, nothing written)."""
    from experiments.core.errors import ConfigError

    if not 1 <= args.train_images <= 50_000 or not 1 <= args.test_images <= 10_000:
        raise ConfigError("--train-images / --test-images: CIFAR-10 has 50,000 / 10,000 images")
    if args.backbone == "nas_bench_macro":
        from search_spaces.nas_bench_macro import key_to_arch

        key_to_arch(args.nbm_key)  # a BenchmarkKeyError (ValueError) names the rule
    suffix = "".join(f"-{x}" for x in (args.dataset, args.backbone) if x not in ("digits", "resnet18"))
    args.config = args.config or str(ROOT / "configs" / DATASET_CONFIGS[args.dataset])
    args.out = args.out or str(ROOT / "runs" / f"prune-study{suffix}")
    network = "" if args.backbone == "resnet18" else f"_{args.backbone}"
    args.table = args.table or str(ROOT / "docs" / "results" / f"prune_study_{args.dataset}{network}.md")
    return args


def dataset_overrides(args) -> list[str]:
    """``--set`` values that point the config at ``--dataset`` (none for digits: the config's own)."""
    if args.dataset == "digits":
        return []
    from experiments.core.errors import ConfigError
    from search_spaces.nas_bench_macro import shared_data_candidates

    cifar = next((d / "cifar10" for d in shared_data_candidates() if (d / "cifar10" / "train").is_dir()), None)
    if cifar is None:
        raise ConfigError("CIFAR-10 (ImageFolder) not found under ../shared/data/cifar10")
    return ["data.dataset=imagefolder", f"data.root={cifar}", f"data.train_subset={args.train_images}",
            f"data.test_subset={args.test_images}"]


def config(args, seed: int, out: Path, **extra):
    from experiments.core.validation import load_config

    values = [*([] if args.arch else ["model.head_space=fixed"]), *dataset_overrides(args),
              *([f"model.backbone={args.backbone}"] if args.backbone != "resnet18" else []), *args.overrides, f"seed={seed}", f"output_dir={out}", f"evaluation.linear_epochs={args.linear_epochs}",
              "trainer.progress_bar=false", *(f"{k}={v}" for k, v in extra.items())]
    return load_config(args.config, values)


def architecture(args, cfg) -> dict:
    """The heads every network of the study gets: ``--arch``'s, or the framework's hand-made ones."""
    from experiments.core.records import read_architecture

    if args.arch:
        return read_architecture(args.arch)
    if args.backbone == "nas_bench_macro":  # a backbone-space record: retrain rebuilds it at the record's width
        from experiments.core.records import space_record
        from search_spaces.nas_bench_macro import key_to_arch

        return {"space": space_record(cfg, head_space="fixed"), "architecture": key_to_arch(args.nbm_key)}
    return {"space": {"framework": cfg.framework, "head_space": "fixed"}, "architecture": {}}


def backbone_at(args, cfg, width: float):
    """The study's backbone network (no heads) at ``width``."""
    if args.backbone == "nas_bench_macro":
        from search_spaces.backbone_spaces import build_backbone_space
        from search_spaces.nas_bench_macro import key_to_arch

        return build_backbone_space(args.backbone, width).freeze(key_to_arch(args.nbm_key))
    from search_spaces.backbones import build_backbone

    return build_backbone(cfg.model.backbone, width)


def uniform_width(args, cfg, target: float, image_size: int) -> tuple[float, float]:
    """The largest backbone width whose network has at most ``target`` of the config width's FLOPs, and its ratio."""
    from search_spaces.cost import count_fixed

    def flops(width: float) -> int:
        return count_fixed(backbone_at(args, cfg, width), image_size).flops

    full = flops(cfg.model.backbone_width)
    low, high = 0.0, cfg.model.backbone_width
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if flops(mid) <= target * full else (low, mid)
    return low, flops(low) / full


def finetune_unpruned(args, seed: int, base: Path, out: Path) -> dict:
    """The pretrained network fine-tuned ``--finetune-epochs`` more, unpruned: the control every pruned row needs."""
    from experiments.core.assembly import build_data, downstream_metrics
    from experiments.core.run_dir import open_run
    from experiments.core.records import load_saved_model
    from experiments.jobs.retrain import fit_ssl

    cfg = config(args, seed, out)
    network, payload = load_saved_model(base, cfg)
    data = build_data(cfg)
    loader = data.loader(None, cfg)
    with open_run(out, cfg, "finetune", ("finetune.json",), {"checkpoint": str(base)}, overwrite=True,
                  log_fn=lambda _: None) as run:
        fit_ssl(cfg, network, payload["space"]["framework"], data, loader, args.finetune_epochs, out, run,
                log_fn=lambda _: None)
        (out / "finetune.json").write_text("{}")
    return {"metrics": downstream_metrics(cfg, data, network), "flops_ratio": 1.0, "epochs": args.finetune_epochs}


def run_one(args, seed: int, method: str, target: float, base: Path, out: Path) -> dict:
    from experiments.jobs.prune import run_prune
    from experiments.jobs.retrain import run_retrain

    quiet = lambda _: None  # noqa: E731
    if method == "uniform":
        cfg = config(args, seed, out, **{"train.epochs": args.pretrain_epochs + args.finetune_epochs})
        from experiments.core.assembly import build_data

        width, ratio = uniform_width(args, cfg, target, build_data(cfg).image_size)
        cfg = config(args, seed, out, **{"train.epochs": args.pretrain_epochs + args.finetune_epochs,
                                         "model.backbone_width": width})
        record = run_retrain(cfg, architecture(args, cfg), out, log_fn=quiet, overwrite=True)
        return {"metrics": record["metrics"], "flops_ratio": ratio, "backbone_width": width,
                "epochs": args.pretrain_epochs + args.finetune_epochs}
    cfg = config(args, seed, out)
    record = run_prune(cfg, base, out, "dagger" if method in DAGGER_SETTINGS else method, target, "flops",
                       finetune_epochs=args.finetune_epochs, gate_epochs=args.gate_epochs, log_fn=quiet,
                       overwrite=True, **DAGGER_SETTINGS.get(method, {}))
    p = record["pruning"]
    return {"metrics": record["metrics"], "flops_ratio": p["ratio"]["flops"], "params_ratio": p["ratio"]["params"],
            "before_finetune": p["metrics_before_finetune"], "channels": p["channels"],
            "gate_history": p["gate_history"], "epochs": args.finetune_epochs,
            "gate_epochs": p["gate_epochs"]}


def run(args) -> int:
    import sys

    from experiments.core.errors import ConfigError
    from experiments.jobs.retrain import run_retrain

    quiet()
    try:  # bad options: one error line and status 2, before anything is written
        args = resolve(args)
        if args.page is not None:
            return write_summary(args.page)
        if args.table_only:
            rows = Path(args.table).with_suffix(".json")
            if not rows.is_file():
                raise ConfigError(f"--table-only: no committed runs at {rows}")
            write_table(args, json.loads(rows.read_text()), Path(args.table))
            return 0
        dataset_overrides(args)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = Path(args.out)
    cache = root / "results"
    cache.mkdir(parents=True, exist_ok=True)
    targets = [float(t) for t in args.targets.split(",")]
    methods = args.methods.split(",")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        base_dir = root / f"base-seed{seed}"
        base = root / f"base-seed{seed}" / "retrain_model.pt"

        def pretrain(seed=seed, base_dir=base_dir) -> dict:
            cfg = config(args, seed, base_dir, **{"train.epochs": args.pretrain_epochs})
            record = run_retrain(cfg, architecture(args, cfg), base_dir, log_fn=print, overwrite=True)
            return {"metrics": record["metrics"], "epochs": args.pretrain_epochs}

        rows.append({"seed": seed, "method": "pretrained", "target": 1.0, "flops_ratio": 1.0,
                     **cached_run(cache / f"base-seed{seed}.json", pretrain)})
        rows.append({"seed": seed, "method": CONTROL, "target": 1.0, **cached_run(
            cache / f"{CONTROL}-seed{seed}.json",
            lambda seed=seed, base=base: finetune_unpruned(args, seed, base, root / f"{CONTROL}-seed{seed}"))})
        for target in targets:
            for method in methods:
                name = f"{method}-flops{target:g}-seed{seed}"
                rows.append({"seed": seed, "method": method, "target": target, **cached_run(
                    cache / f"{name}.json",
                    lambda seed=seed, method=method, target=target, base=base, name=name:
                    run_one(args, seed, method, target, base, root / name))})
    write_table(args, rows, Path(args.table))
    return 0


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (data-loader workers): the study's budget is CPU time."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cached_run(path: Path, train) -> dict:
    """``train()``'s result with its wall and CPU seconds, from ``path`` if an earlier (killed) study wrote it.

    A run whose representation collapses (the training guard stops it) is a result too: it is
    recorded as ``collapsed`` with the guard's message, counted in the table, left out of the means.
    """
    from experiments.core.errors import RepresentationCollapsed

    def timed() -> dict:
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            result = train()
        except RepresentationCollapsed as err:
            result = {"collapsed": str(err), "metrics": None, "flops_ratio": None}
        result = {**result, "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}
        scores = "collapsed" if result["metrics"] is None else \
            f"kNN {result['metrics']['knn_top1']:.3f} linear {result['metrics']['linear_top1']:.3f}"
        print(f"{path.stem}: {scores} ({result['seconds']:.0f} s, {result['cpu_seconds']:.0f} CPU s)", flush=True)
        return result

    return cached(path, timed, log=lambda line: None)


SUMMARY_BEGIN = f"<!-- pruning summary: written by {command(NAME, '--readme')} -->"
SUMMARY_END = "<!-- end of the pruning summary -->"
#: each committed study's column heading (file stem under docs/results/)
STUDIES = {"prune_study_digits": "digits, ResNet-18 x0.25", "prune_study_cifar10": "CIFAR-10 subset, ResNet-18 x0.125",
           "prune_study_digits_nas_bench_macro": "digits, NAS-Bench-Macro 22212220"}


def summary(studies: dict) -> str:
    """One row per method, one column per study: mean kNN top-1 at each FLOPs target (largest first), over the
    runs that did not collapse (a collapsed run is counted beside the mean)."""
    import statistics

    known = ["pretrained", CONTROL, *METHODS]
    methods = sorted(dict.fromkeys(r["method"] for rows in studies.values() for r in rows),
                     key=lambda m: known.index(m) if m in known else len(known))
    targets = {name: sorted({r["target"] for r in rows if r["target"] < 1}, reverse=True)
               for name, rows in studies.items()}
    seeds = {name: len({r["seed"] for r in rows}) for name, rows in studies.items()}
    lines = ["| method | " + " | ".join(f"{name}: {' / '.join(f'{t:.0%}' for t in targets[name])} "
                                        f"({seeds[name]} seed{'s' * (seeds[name] > 1)})" for name in studies) + " |",
             "|---" * (len(studies) + 1) + "|"]
    for method in methods:
        cells = []
        for name, rows in studies.items():
            values = []
            for target in ([1] if method in ("pretrained", CONTROL) else targets[name]):
                every = [r for r in rows if r["method"] == method and r["target"] == target]
                kept = [r["metrics"]["knn_top1"] for r in every if r["metrics"] is not None]
                lost = f" ({len(every) - len(kept)} collapsed)" if len(kept) < len(every) else ""
                values.append(f"{statistics.mean(kept):.3f}{lost}" if kept else ("collapsed" if every else "-"))
            cells.append(" / ".join(values) if any(r["method"] == method for r in rows) else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(path: Path) -> int:
    """The results page's pruning table from the committed studies' JSONs (every run of each)."""
    studies = {label: json.loads((RESULTS / f"{stem}.json").read_text())
               for stem, label in STUDIES.items() if (RESULTS / f"{stem}.json").is_file()}
    intro = ("kNN top-1 after fine-tuning, mean over seeds, at 75 / 50 / 25% of the FLOPs (pretrained and unpruned: "
             "the full network). SimSiam; budgets, machine and every run in each study's page under docs/results/ "
             "(the command that reruns it is at its top). Rebuild this table: "
             f"`{command(NAME, '--page')}`.")
    write_between_markers(path, intro + "\n\n" + summary(studies), SUMMARY_BEGIN, SUMMARY_END)
    return 0


def write_table(args, rows: list, path: Path) -> None:
    """Mean (± sd over seeds) per method and target, then every run."""
    import os

    network = "ResNet-18" if args.backbone == "resnet18" else f"NAS-Bench-Macro {args.nbm_key}"
    data = "digits" if args.dataset == "digits" else \
        f"a CIFAR-10 subset ({args.train_images} train / {args.test_images} test images)"
    options = [("dataset", args.dataset), ("backbone", args.backbone), ("pretrain_epochs", args.pretrain_epochs),
               ("finetune_epochs", args.finetune_epochs), ("gate_epochs", args.gate_epochs),
               ("linear_epochs", args.linear_epochs), ("seeds", args.seeds), ("methods", args.methods),
               ("targets", args.targets)]
    options += [("train_images", args.train_images), ("test_images", args.test_images)] * (args.dataset != "digits")
    options += [("nbm_key", args.nbm_key)] * (args.backbone != "resnet18")
    options += [("set", value) for value in args.overrides]
    lines = [f"# Pruning study: SimSiam {network} on {data} ({Path(args.config).name})", "",
             f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, shared with other jobs. "
             f"Budget: pretraining {args.pretrain_epochs} epochs; each pruned network fine-tuned "
             f"{args.finetune_epochs} epochs (DAGGER's gate learning and Taylor's scoring take {args.gate_epochs} "
             f"epochs before, the network frozen); `uniform` trained from scratch "
             f"{args.pretrain_epochs + args.finetune_epochs} epochs. Seeds: {args.seeds} (the seed also seeds the "
             f"pretraining). Linear probe {args.linear_epochs} epochs. kNN and linear top-1 on the test split.", "",
             f"Rerun: `{command(NAME)} " + " ".join(
                 f"--{k.replace('_', '-')} {v}" for k, v in options) + "`", "",
             "| method | FLOPs target | FLOPs kept | kNN top-1 | linear top-1 | kNN before fine-tuning | runs |",
             "|---|---|---|---|---|---|---|"]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["method"], r["target"]), []).append(r)
    for (method, target), every in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0] != "pretrained")):
        runs = [r for r in every if r["metrics"] is not None]
        collapsed = f" (+{len(every) - len(runs)} collapsed)" if len(runs) < len(every) else ""
        if not runs:
            lines.append(f"| {method} | {target:g} | | collapsed | collapsed | | 0{collapsed} |")
            continue
        before = [r["before_finetune"]["knn_top1"] for r in runs if "before_finetune" in r]
        lines.append(f"| {method} | {target:g} | {mean_sd_text([r['flops_ratio'] for r in runs])} | "
                     f"{mean_sd_text([r['metrics']['knn_top1'] for r in runs])} | "
                     f"{mean_sd_text([r['metrics']['linear_top1'] for r in runs])} | "
                     f"{mean_sd_text(before) if before else ''} | {len(runs)}{collapsed} |")
    lines += ["", "Every run:", "", "| seed | method | FLOPs target | FLOPs kept | kNN top-1 | linear top-1 | seconds | CPU seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = f"{r['cpu_seconds']:.0f}" if "cpu_seconds" in r else ""  # runs before CPU time was recorded
        if r["metrics"] is None:
            lines.append(f"| {r['seed']} | {r['method']} | {r['target']:g} | | collapsed | collapsed | "
                         f"{r['seconds']:.0f} | {cpu} |")
            continue
        lines.append(f"| {r['seed']} | {r['method']} | {r['target']:g} | {r['flops_ratio']:.3f} | "
                     f"{r['metrics']['knn_top1']:.3f} | {r['metrics']['linear_top1']:.3f} | "
                     f"{r.get('seconds', 0):.0f} | {cpu} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))

