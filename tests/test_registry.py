"""The redesign's promises: one strategy registry, a framework in one file, no import cycles, one CLI."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_backbone_search import load


def make_toy_strategy():
    """A toy backbone strategy with an option of its own: SPOS training, then every layer set to ``op``."""
    from evaluators.options import Option
    from experiments.core.errors import ConfigError
    from experiments.strategies import Selection, Strategy

    class OneOperation(Strategy):
        name = "one_op"
        summary = "SPOS supernet training, then the network whose every layer is the option's operation"
        handles = frozenset({"layer", "width", "depth"})
        option_specs = {"op": Option("identity", why="the operation every layer takes")}

        def check(self, cfg, target):
            if cfg.backbone_search.strategy == self.name and self.settings(cfg)["op"] not in ("identity", "mb3_k3"):
                raise ConfigError("backbone_search.strategy_options.op: must be identity or mb3_k3")

        def build(self, ctx):
            from nni.nas.strategy import RandomOneShot

            return RandomOneShot()

        def select(self, ctx, nni_strategy):
            return Selection({label: self.settings(ctx.cfg)["op"] for label in ctx.cost.labels})

    return OneOperation()


def test_a_strategy_with_its_own_options_added_through_the_registry_alone_searches_and_exports(tmp_path,
                                                                                                monkeypatch):
    from experiments.core.errors import ConfigError
    from experiments.core.records import build_fixed, read_architecture
    from experiments.jobs.backbone_search import run_backbone_search
    from experiments.strategies import STRATEGIES

    with pytest.raises(ConfigError, match="backbone_search.strategy"):
        load(tmp_path / "before", **{"backbone_search.strategy": "one_op"})
    monkeypatch.setitem(STRATEGIES, "one_op", make_toy_strategy())
    with pytest.raises(ConfigError, match="strategy_options.op: must be identity or mb3_k3"):
        load(tmp_path / "bad", **{"backbone_search.strategy": "one_op", "backbone_search.strategy_options.op": "x"})
    cfg = load(tmp_path / "toy", **{"backbone_search.strategy": "one_op",
                                    "backbone_search.strategy_options.op": "mb3_k3", "backbone_search.max_flops": None})
    record = run_backbone_search(cfg, tmp_path / "toy", log_fn=lambda line: None)
    assert record["strategy"] == "one_op"
    backbone = {label: value for label, value in record["architecture"].items() if label.startswith("backbone.")}
    assert len(backbone) == 8 and set(backbone.values()) == {"mb3_k3"}  # the option reached select
    network, architecture = build_fixed(read_architecture(tmp_path / "toy" / "best_architecture.json"), cfg)
    assert architecture == record["architecture"]


def make_toy_framework():
    """A toy framework: a cosine loss between two views' projections, scaled by its own option."""
    import torch.nn.functional as F

    from evaluators.base import SSLFramework
    from evaluators.options import Option
    from search_spaces.heads import HeadDims, HeadSpec

    class Toy(SSLFramework):
        name = "toy"
        option_specs = {"scale": Option(1.0, "(0, 10]", "the loss's scale")}
        heads = HeadSpec("toy", HeadDims(projector_hidden=64, projector_out=32))
        loss_floor = -10.0
        losses: list = []

        def ssl_loss(self, views, arch_step):
            z1, z2 = self.embed(views[0], arch_step), self.embed(views[1], arch_step)
            loss = -self.options["scale"] * F.cosine_similarity(z1, z2).mean()
            Toy.losses.append(float(loss.detach()))
            return loss

    return Toy


def test_a_framework_added_through_the_registry_alone_trains_a_backbone_search(tmp_path, monkeypatch):
    from evaluators import FRAMEWORKS
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import run_backbone_search

    with pytest.raises(ConfigError, match="unknown framework 'toy'"):
        load(tmp_path / "before", framework="toy")
    toy = make_toy_framework()
    monkeypatch.setitem(FRAMEWORKS, "toy", toy)
    with pytest.raises(ConfigError, match=r"framework_options.scale: must be in \(0, 10\]"):
        load(tmp_path / "bad", framework="toy", **{"framework_options.scale": 0})
    cfg = load(tmp_path / "toy", framework="toy", **{"framework_options.scale": 3.0})
    record = run_backbone_search(cfg, tmp_path / "toy", log_fn=lambda line: None)
    assert record["space"]["framework"] == "toy"
    assert toy.losses and min(toy.losses) >= -3.0 - 1e-5 and min(toy.losses) < -1.0  # its loss, at its scale


def make_toy_backbone_space():
    """A toy backbone space: a stem and one layer that is a 3x3 convolution or an identity; it has a table."""
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace
    from torch import nn

    class ToySpace(ModelSpace):
        space_name = "toy"
        choice_kinds = frozenset({"layer"})

        def __init__(self, width: float = 1.0, in_channels: int = 3, prefix: str = "backbone", channels: int = 8):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
            self.layer = LayerChoice({"conv": nn.Conv2d(channels, channels, 3, padding=1), "identity": nn.Identity()},
                                     label=f"{prefix}.layer1.op")
            self.feature_dim = channels

        def forward(self, x):
            return self.layer(self.stem(x).relu()).mean((2, 3))

        @classmethod
        def benchmark_entry(cls, architecture):
            return {"toy_table": architecture["backbone.layer1.op"]}

    return ToySpace


def test_a_backbone_space_added_through_the_registry_alone_is_searched_with_its_properties(tmp_path, monkeypatch):
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import run_backbone_search
    from search_spaces.backbone_spaces import BACKBONE_SPACES

    with pytest.raises(ConfigError, match="model.backbone: unknown backbone 'toy'"):
        load(tmp_path / "before", **{"model.backbone": "toy"})
    monkeypatch.setitem(BACKBONE_SPACES, "toy", make_toy_backbone_space())
    with pytest.raises(ConfigError, match="model.backbone_options.chanels: .*did you mean 'channels'"):
        load(tmp_path / "bad", **{"model.backbone": "toy", "model.backbone_options": {"chanels": 4}})
    cfg = load(tmp_path / "toy", **{"model.backbone": "toy", "model.backbone_options": {"channels": 6},
                                    "backbone_search.max_flops": None})
    record = run_backbone_search(cfg, tmp_path / "toy", log_fn=lambda line: None)
    assert record["architecture"]["backbone.layer1.op"] in ("conv", "identity")
    assert record["benchmark"] == {"toy_table": record["architecture"]["backbone.layer1.op"]}  # its table's entry


def make_toy_head_space():
    """A toy head space: the projector is one Linear or two (a bottleneck of 4); the predictor the fixed one."""
    from nni.nas.nn.pytorch import LayerChoice
    from torch import nn

    from search_spaces.heads import HeadSpace, fixed_predictor

    class ToyHeads(HeadSpace):
        name = "toy_heads"

        def projector(self, heads, feature_dim, head_width, mlp_widths, mlp_depths, prefix="projector"):
            out = heads.scaled(head_width).projector_out
            return LayerChoice({"one": nn.Linear(feature_dim, out),
                                "bottleneck": nn.Sequential(nn.Linear(feature_dim, 4), nn.Linear(4, out))},
                               label=f"{prefix}.toy")

        def predictor(self, heads, head_width, mlp_widths, mlp_depths):
            return fixed_predictor(heads.scaled(head_width))

    return ToyHeads()


def test_a_head_space_added_through_the_registry_alone_is_searched_by_darts(tmp_path, monkeypatch):
    from experiments.core.errors import ConfigError
    from experiments.core.validation import load_config
    from experiments.jobs.search import run_search
    from search_spaces.head_spaces import HEAD_SPACES
    from tests.conftest import tiny_overrides

    def config(out, **extra):
        return load_config(ROOT / "configs" / "bench_digits_simsiam.yml", tiny_overrides(out, **{
            "model.head_space": "toy_heads", "search.epochs": 1, "data.train_subset": 128, "data.test_subset": 64,
            "evaluation.linear_epochs": 2, **extra}))

    with pytest.raises(ConfigError, match="model.head_space: unknown head space 'toy_heads'"):
        config(tmp_path / "before")
    monkeypatch.setitem(HEAD_SPACES, "toy_heads", make_toy_head_space())
    record = run_search(config(tmp_path / "toy"), tmp_path / "toy", log_fn=lambda line: None)
    assert record["space"]["head_space"] == "toy_heads"
    assert record["architecture"]["projector.toy"] in ("one", "bottleneck")


def test_registry_says_what_each_strategy_takes():
    from experiments.strategies import STRATEGIES, strategy_names

    assert strategy_names("heads") == ["darts", "gdarts"]
    assert strategy_names("backbone") == ["darts", "gdarts", "proxyless", "spos", "kshot", "enas", "mctnas", "vitas",
                                          "autoslim", "bcnet", "cafenet", "toponas", "entrannas"]
    assert [n for n, s in STRATEGIES.items() if s.interleaved] == ["darts", "gdarts", "proxyless", "kshot",
                                                                     "toponas", "entrannas"]
    assert "temperature" in STRATEGIES["gdarts"].option_specs and "temperature" not in STRATEGIES["darts"].option_specs


def test_the_schema_keeps_no_strategy_setting():
    """Every setting one strategy reads is an Option of it; the schema's moved fields are gone."""
    import dataclasses

    from experiments.core.config import MOVED_TO_OPTIONS, Config
    from experiments.strategies import STRATEGIES

    sections = {f.name: {g.name for g in dataclasses.fields(f.type if isinstance(f.type, type) else
                                                             getattr(Config(), f.name))}
                for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))}
    for (section, name), (option, _) in MOVED_TO_OPTIONS.items():
        assert name not in sections[section]
        assert any(option in s.option_specs for s in STRATEGIES.values())


def test_a_head_strategy_option_reaches_nni():
    from experiments.core.errors import ConfigError
    from experiments.core.validation import load_config
    from experiments.strategies import STRATEGIES, SearchContext

    config = ROOT / "configs" / "bench_digits_simsiam.yml"
    cfg = load_config(config, {"search.strategy": "gdarts", "search.strategy_options.temperature": [2.0, 0.5]})
    assert STRATEGIES["gdarts"].nni_strategy(SearchContext(cfg, "heads")).temperature == (2.0, 0.5)
    with pytest.raises(ConfigError, match=r"search.strategy_options.temperature: must be \[initial, final\]"):
        load_config(config, {"search.strategy": "gdarts", "search.strategy_options.temperature": [0.5, 2.0]})
    with pytest.raises(ConfigError, match=r"search.strategy_options.temperature: darts has no such option"):
        load_config(config, {"search.strategy_options.temperature": [2.0, 0.5]})


def test_an_old_config_s_strategy_fields_reach_the_strategy_that_reads_them():
    from experiments.core.validation import load_config
    from experiments.strategies import STRATEGIES

    old = {"search.gumbel_temperature": [3.0, 1.0], "backbone_search.population": 5,
           "backbone_search.enas_batches_per_update": 7}
    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml", {**old, "search.strategy": "gdarts"})
    assert STRATEGIES["gdarts"].settings(cfg, "heads")["temperature"] == [3.0, 1.0]
    spos = load_config(ROOT / "configs" / "digits_backbone_spos.yml", old)
    assert STRATEGIES["spos"].settings(spos)["population"] == 5
    assert "batches_per_update" not in spos.backbone_search.strategy_options
    darts = load_config(ROOT / "configs" / "digits_backbone_spos.yml", {**old, "backbone_search.strategy": "darts"})
    assert darts.backbone_search.strategy_options == {}  # darts never read them


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
    from experiments.core.validation import load_config
    from experiments.core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"framework_options.{option}: {message}"):
        load_config(ROOT / "configs" / "digits_ressl.yml", {f"framework_options.{option}": value})


def test_label_smoothing_zero_is_a_valid_option():
    from experiments.core.validation import load_config

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
