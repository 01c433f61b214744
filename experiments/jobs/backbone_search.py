"""The backbone-search command: a one-shot strategy over a backbone space, under any framework's objective.

config -> data -> space (backbone space + the framework's heads) -> framework -> strategy ->
evaluation -> ``best_architecture.json``: the search job's pipeline (``experiments/jobs/search.py``,
the same selection, record, resume and summary as the head search); this module is its backbone
target: the checks, the cost model and budget, the held-out scorer and the benchmark entry.

The strategies (``experiments.strategies``: SPOS, K-shot, MCT-NAS, DARTS, GumbelDARTS, Proxyless,
ENAS, ViTAS, the width strategies AutoSlim, BCNet, CafeNet (docs/width-search.md) and, on the cell
space, TopoNAS and EnTranNAS) train the supernet through NNI and select the network within the
FLOPs/parameter budget; see each strategy's module. The job owns its output directory like the other jobs: ``run.json``,
``status.json``, ``checkpoints/last.ckpt`` (the supernet and architecture weights, resumed
exactly after a kill) and a ``.lock``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from evaluators import FRAMEWORKS
from experiments.core.assembly import build_space
from experiments.core.run_dir import claims_output_dir
from experiments.core.config import Config
from experiments.core.data import normalized
from experiments.core.errors import ConfigError
from experiments.jobs.command import add_config_arguments, run_search_job
from experiments.jobs.search import (ARCHITECTURE_FILE, MODEL_FILE, RESULT_FILES, SearchSetup, SearchTarget, load_split,
                                     search, train_supernet)
from experiments.strategies import STRATEGIES
from experiments.strategies.budget import check_budget
from search_spaces.backbone_spaces import BACKBONE_SPACES, benchmark_entry, choice_kinds, has_benchmark_table, \
    is_backbone_space
from search_spaces.head_spaces import HEAD_SPACES
from search_spaces.head_widths import network_cost

NAME = "backbone-search"
HELP = ("backbone search (SPOS, K-shot, MCT-NAS, DARTS, GumbelDARTS, Proxyless, ENAS, ViTAS, TopoNAS, EnTranNAS; "
        "widths: AutoSlim, BCNet, CafeNet) within a FLOPs/params budget")
__all__ = ["ARCHITECTURE_FILE", "MODEL_FILE", "RESULT_FILES", "BACKBONE", "prepare", "run_backbone_search",
           "train_supernet", "validate"]


def add_arguments(p) -> None:
    add_config_arguments(p)


def run(args) -> int:
    return run_search_job(args, RESULT_FILES, run_backbone_search)


def validate(cfg: Config) -> None:
    m, b = cfg.model, cfg.backbone_search
    if not is_backbone_space(m.backbone):
        raise ConfigError(f"model.backbone: {m.backbone!r} is a fixed ResNet; the backbone search needs a backbone "
                          f"space ({', '.join(BACKBONE_SPACES)})")
    strategy = STRATEGIES[b.strategy]
    kinds = choice_kinds(m.backbone) | HEAD_SPACES[m.head_space].choice_kinds(m.mlp_widths)  # the heads' too
    if not kinds <= strategy.handles:
        able = [name for name, s in STRATEGIES.items() if "backbone" in s.targets and kinds <= s.handles]
        raise ConfigError(f"backbone_search.strategy: {b.strategy} cannot search space {m.backbone} (its "
                          f"{', '.join(sorted(kinds - strategy.handles))} choices; use {', '.join(able)})")


def check_view_sides(cfg: Config, backbone, image_size: int) -> None:
    """A space built for one image size (ViT's position embeddings) cannot take a framework's smaller crops."""
    if not hasattr(backbone, "check_input_size"):
        return
    sides = FRAMEWORKS[cfg.framework].view_sides(image_size, cfg.framework_options)
    other = sorted(set(sides) - {image_size})
    if other:
        raise ConfigError(f"framework: {cfg.framework} makes {', '.join(map(str, other))} px views beside the "
                          f"{image_size} px ones (framework_options), and the {cfg.model.backbone} space takes "
                          f"{image_size} px images only")


def prepare(cfg: Config, log_fn: Callable[[str], None] = print) -> SearchSetup:
    """Validate, load data, build the space and its cost model, check the budget, build the scorer."""
    validate(cfg)
    b = cfg.backbone_search
    data, weight_idx, arch_idx = load_split(cfg)
    num_classes = len(data.train.classes)
    try:
        space = build_space(cfg, num_classes=num_classes)
        cost = network_cost(space, data.image_size)  # (a ViT's image size is checked here)
    except (ValueError, TypeError) as err:  # a backbone option of the wrong type (plan: [[1, 2]], ops: null)
        raise ConfigError(f"model: {' '.join(str(err).split())}") from None
    check_view_sides(cfg, space.backbone, data.image_size)
    smallest = check_budget(b.max_flops, b.max_params, cost, cfg.model.backbone)
    log_fn(f"backbone space {cfg.model.backbone} for {cfg.framework}: {len(cost.labels)} backbone choices, "
           f"{cost.size():.3g} backbones; smallest {smallest['flops']:,} FLOPs / {smallest['params']:,} params; "
           f"budget max_flops {b.max_flops} max_params {b.max_params}; strategy {b.strategy}")
    scorer = _scorer(cfg, data, weight_idx, arch_idx, num_classes)
    return SearchSetup(cfg, BACKBONE, data, weight_idx, arch_idx, num_classes, space, cost, smallest, scorer)


def measure(setup: SearchSetup, derived, architecture: dict) -> tuple[dict, dict]:
    """The derived backbone's held-out score (BatchNorm recalibrated first), its cost within the budget, and
    for NAS-Bench-Macro its benchmark entry."""
    cfg, b = setup.cfg, setup.cfg.backbone_search
    score = setup.scorer(derived)  # recalibrates BatchNorm, scores on held-out images
    backbone_cost = setup.cost(architecture)
    if not backbone_cost.within(b.max_flops, b.max_params):  # cannot happen: the strategies keep it in
        raise RuntimeError(f"derived network {backbone_cost} is outside the budget")
    fields = {"cost": {"flops": backbone_cost.flops, "params": backbone_cost.params,
                       "input_size": setup.data.image_size},
              "budget": {"max_flops": b.max_flops, "max_params": b.max_params, "smallest": setup.smallest}}
    if has_benchmark_table(cfg.model.backbone):
        fields["benchmark"] = benchmark_entry(cfg.model.backbone, architecture)
    return {"held_out_score": score}, fields


BACKBONE = SearchTarget("backbone", NAME, "backbone_search", lambda cfg: cfg.backbone_search.strategy, prepare,
                        measure=measure)


@claims_output_dir
def run_backbone_search(cfg: Config, out: Path, listeners: Sequence[Callable[[dict], None]] = (),
                        log_fn: Callable[[str], None] = print, overwrite: bool = False) -> Optional[dict]:
    """Run one backbone search into ``out``; returns the record written to ``best_architecture.json``."""
    return search(BACKBONE, cfg, out, listeners, log_fn, overwrite)


def _scorer(cfg: Config, data, weight_idx, arch_idx, num_classes: int):
    from evaluators.subnet import SubnetScorer

    images = normalized(data.train, data.mean, data.std)
    return SubnetScorer.from_splits(cfg.framework, images, data.train.labels, weight_idx, arch_idx, num_classes,
                                    limit=cfg.backbone_search.score_images, seed=cfg.seed,
                                    k=cfg.evaluation.knn_k, temperature=cfg.evaluation.knn_temperature,
                                    bn_batches=cfg.backbone_search.bn_batches, batch_size=cfg.data.batch_size)
