"""The redesign's promises: one strategy registry, a framework in one file, no import cycles, one CLI."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_backbone_search import load


def make_toy_strategy():
    """A toy backbone strategy, registered alone: uniform SPOS training, then the smallest network."""
    from experiments.strategies import Selection, Strategy

    class SmallestNetwork(Strategy):
        name = "smallest"
        summary = "SPOS supernet training, then the network with the fewest FLOPs"
        handles = frozenset({"layer", "width", "depth"})

        def build(self, ctx):
            from nni.nas.strategy import RandomOneShot

            return RandomOneShot()

        def select(self, ctx, nni_strategy):
            return Selection(ctx.cost.smallest("flops")[0])

    return SmallestNetwork()


def test_a_strategy_added_through_the_registry_alone_searches_and_exports(tmp_path, monkeypatch):
    from experiments.core.errors import ConfigError
    from experiments.core.records import build_fixed, read_architecture
    from experiments.jobs.backbone_search import run_backbone_search
    from experiments.strategies import STRATEGIES

    with pytest.raises(ConfigError, match="backbone_search.strategy"):
        load(tmp_path / "before", **{"backbone_search.strategy": "smallest"})
    monkeypatch.setitem(STRATEGIES, "smallest", make_toy_strategy())
    cfg = load(tmp_path / "toy", **{"backbone_search.strategy": "smallest"})
    record = run_backbone_search(cfg, tmp_path / "toy", log_fn=lambda line: None)
    assert record["strategy"] == "smallest"
    assert all(value == "identity" for label, value in record["architecture"].items() if label.startswith("backbone."))
    network, architecture = build_fixed(read_architecture(tmp_path / "toy" / "best_architecture.json"), cfg)
    assert architecture == record["architecture"]


def test_registry_says_what_each_strategy_takes():
    from experiments.strategies import STRATEGIES, strategy_names

    assert strategy_names("heads") == ["darts", "gdarts"]
    assert strategy_names("backbone") == ["darts", "gdarts", "proxyless", "spos", "kshot", "enas", "mctnas", "vitas",
                                          "autoslim", "bcnet", "cafenet", "toponas", "entrannas"]
    assert [n for n, s in STRATEGIES.items() if s.interleaved] == ["darts", "gdarts", "proxyless", "kshot",
                                                                     "toponas", "entrannas"]
    assert "search.gumbel_temperature" in STRATEGIES["gdarts"].config_fields
    assert "search.gumbel_temperature" not in STRATEGIES["darts"].config_fields


def test_a_darts_strategy_cannot_search_width_and_depth_choices(tmp_path):
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import validate

    cfg = load(tmp_path / "x", **{"model.backbone": "resnet", "backbone_search.strategy": "darts",
                                  "backbone_search.max_flops": None})
    with pytest.raises(ConfigError, match=r"darts cannot search space resnet .*use spos, enas"):
        validate(cfg)


@pytest.mark.parametrize("option,value,message", [
    ("teacher_momentum", 1.5, r"must be in \(0, 1\): an EMA coefficient"),
    ("queue_size", 0, r"must be in \[1, 1048576\]"),
    ("queue_size", 2.5, "must be an integer"),
    ("student_temperature", 0.0, r"must be in \[0.001, 100\]"),
])
def test_each_framework_option_has_its_own_range(option, value, message):
    from experiments.core.config import load_config
    from experiments.core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"framework_options.{option}: {message}"):
        load_config(ROOT / "configs" / "digits_ressl.yml", {f"framework_options.{option}": value})


def test_label_smoothing_zero_is_a_valid_option():
    from experiments.core.config import load_config

    cfg = load_config(ROOT / "configs" / "digits_backbone_spos.yml",
                      {"framework": "supervised", "framework_options.label_smoothing": 0})
    assert cfg.framework_options == {"label_smoothing": 0}


def test_every_framework_declares_its_heads_options_and_views():
    from evaluators import FRAMEWORKS
    from evaluators.base import SSLFramework

    for name, framework in FRAMEWORKS.items():
        assert framework.heads is not None and framework.heads.name == name
        assert framework.defaults == {k: o.default for k, o in framework.option_specs.items()}
        assert framework.view_transforms is not None
        assert issubclass(framework, SSLFramework)
    momentum = {n for n, f in FRAMEWORKS.items() if f.heads.momentum}
    assert momentum == {"moco", "byol", "ressl"}


def _project_imports() -> dict[str, set[str]]:
    """module -> project modules it imports (top-level and function-level), tests excluded."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "docs", "runs") or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                targets += [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    found.add(t)
        graph[name] = found
    return graph


def test_no_import_cycle_among_the_projects_modules():
    graph = _project_imports()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_library_imports_no_job_and_nni_compat_imports_nothing_of_the_project():
    graph = _project_imports()
    for name, imported in graph.items():
        if name.split(".")[0] in ("evaluators", "search_spaces"):
            assert not any(m.startswith(("experiments.jobs", "experiments.studies", "experiments.cli"))
                           for m in imported), (name, imported)
            assert not any(m.startswith("experiments.core") for m in imported), (name, imported)
    assert graph["experiments.nni_compat"] == set()


def test_help_lists_every_job_and_study():
    help_text = subprocess.run([sys.executable, "-m", "experiments", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120).stdout
    for job in ("search", "backbone-search", "retrain", "prune", "evaluate", "export", "check", "export-space",
                "head-study", "backbone-study", "screenshot"):
        assert f"    {job}" in help_text, job


def test_old_alias_modules_are_gone():
    """The four aliases kept "for one release" are deleted: the jobs run only as subcommands."""
    for alias in ("study", "backbone_study", "export_space", "screenshot"):
        assert not (ROOT / "experiments" / f"{alias}.py").exists(), alias
    out = subprocess.run([sys.executable, "-m", "experiments", "export-space", "--config", "configs/digits_simsiam.yml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert '"projector.layer1.op"' in out.stdout


def test_a_study_added_through_the_registry_alone_runs_its_grid_and_reuses_its_cache(tmp_path, monkeypatch, capsys):
    """A toy study: one module-like object and one ``STUDIES`` entry; two arms x two seeds of a tiny training
    (a seeded linear fit), each run cached as one JSON keyed by its config, the table between a page's markers."""
    import types

    from experiments.cli import main
    from experiments.studies import STUDIES, kit

    trained = []

    def tiny_run(config: dict) -> dict:
        import torch

        trained.append((config["arm"], config["seed"]))
        torch.manual_seed(config["seed"])
        x = torch.randn(32, 2)
        y = x @ torch.tensor([1.0, -2.0])
        w = torch.zeros(2, requires_grad=True)
        for _ in range(config["steps"]):
            loss = ((x @ w - y) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, w)
            w = (w - config["lr"] * grad).detach().requires_grad_(True)
        return {"loss": float(((x @ w - y) ** 2).mean())}

    def add_arguments(p):
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
        p.add_argument("--cache", required=True)
        p.add_argument("--page", required=True)

    def run(args):
        cache = kit.RunCache(args.cache)
        arms = {"slow": 0.01, "fast": 0.2}
        losses = {}
        for arm, seed in kit.grid(arms, args.seeds):
            config = {"arm": arm, "seed": seed, "lr": arms[arm], "steps": 5}
            result, _ = cache.run(f"{arm}-seed{seed}", config, lambda config=config: tiny_run(config))
            losses.setdefault(arm, []).append(result["loss"])
        rows = [f"| {arm} | {kit.mean_sd_text(values)} |" for arm, values in losses.items()]
        kit.write_between_markers(args.page, "\n".join(["| arm | loss |", "|---|---|", *rows]), "<!-- toy -->",
                                  "<!-- /toy -->")
        return 0

    monkeypatch.setitem(STUDIES, "toy", types.SimpleNamespace(HELP="a toy study", add_arguments=add_arguments,
                                                                 run=run))
    page = tmp_path / "page.md"
    page.write_text("# Toy\n\n<!-- toy -->\nold\n<!-- /toy -->\nafter\n")
    argv = ["study", "toy", "--cache", str(tmp_path / "cache"), "--page", str(page)]
    assert main(argv) == 0
    assert trained == [("slow", 0), ("fast", 0), ("slow", 1), ("fast", 1)]  # the grid: every arm, seed by seed
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4  # one JSON per run
    first = page.read_text()
    assert first.startswith("# Toy\n\n<!-- toy -->\n| arm | loss |") and first.endswith("<!-- /toy -->\nafter\n")
    assert "| slow | " in first and "| fast | " in first and "old" not in first
    assert main(argv) == 0  # the second call trains nothing: every run comes from its cache
    assert len(trained) == 4 and page.read_text() == first
    assert main([*argv, "--seeds", "0", "2"]) == 0  # a new seed trains only its own runs
    assert trained[4:] == [("slow", 2), ("fast", 2)]
