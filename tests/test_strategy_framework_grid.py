"""Every strategy of the registry under every framework of the registry, a few steps on digits.

Each pairing either searches (the optimiser moved the weights, the loss is finite, and the exported
JSON rebuilds a network that takes ``search_model.pt`` strictly) or is refused at validation with one
``error:`` line. CI-sized: one epoch of one batch, the tiniest widths, the fewest scored sub-networks
each strategy allows. Measured: about 160 s of one core for the whole grid (ENAS skipped without
tianshou), i.e. about 2.5 minutes on an idle machine; each pairing costs 1-3 s, mostly the job's own
setup (NNI's experiment, the run directory, the kNN), so sharing more would mean bypassing the jobs.
"""
from __future__ import annotations

import math

import pytest
import torch

from evaluators import FRAMEWORKS
from experiments.core.errors import ConfigError
from experiments.strategies import STRATEGIES
from tests.conftest import ROOT, tiny_overrides
from tests.test_backbone_search import enas_available

TINY = {
    "data.batch_size": 16, "data.train_subset": 32, "data.test_subset": 32, "data.num_workers": 0,
    "model.backbone_width": 0.125, "model.head_width": 0.0625,
    "search.epochs": 1, "train.epochs": 1, "evaluation.knn_k": 5, "evaluation.linear_epochs": 1,
    "backbone_search.bn_batches": 1, "search.collapse_threshold": 0.0, "backbone_search.score_images": 16, "backbone_search.trials": 2,
}
EVOLUTION = {"population": 2, "tournament": 1}
BACKBONE = ROOT / "configs" / "digits_backbone_spos.yml"
WIDTH = ROOT / "configs" / "digits_width_search.yml"
VIT = ROOT / "configs" / "digits_backbone_vitas.yml"
CELLS = ROOT / "configs" / "digits_backbone_cells.yml"
#: a normal and a reduction cell of two nodes (the config's five cells of four nodes take ten times as long)
SMALL_CELLS = {"model.backbone_options": {"channels": 4, "num_cells": 2, "num_nodes": 2, "inputs_per_node": 2}}
HEADS = ROOT / "configs" / "bench_digits_simsiam.yml"
#: strategy -> (config, target, its options[, overrides]): a space each strategy can search, at its cheapest
SETUPS = {
    "darts": (HEADS, "heads", {}),
    "gdarts": (HEADS, "heads", {}),
    "proxyless": (BACKBONE, "backbone", {}),
    "spos": (BACKBONE, "backbone", EVOLUTION),
    "kshot": (BACKBONE, "backbone", {**EVOLUTION, "k": 2, "spos_epochs": 0, "simplex_hidden": 4}),
    "enas": (BACKBONE, "backbone", {"batches_per_update": 1}),
    # distinct-network sampling (SPOS's and MCT-NAS's option) rides along here; plain MCT-NAS: tests/test_mctnas.py
    "mctnas": (BACKBONE, "backbone", {"min_visits": 1, "num_leaves": 2, "distinct": True}),
    "vitas": (VIT, "backbone", {"population": 2, "generations": 1, "tournament": 1, "tuning_samples": 20,
                                "min_flops_ratio": 0.0},
              {"model.backbone_width": 1.0, "backbone_search.max_flops": 3e5, "backbone_search.bn_batches": 0}),
    "autoslim": (WIDTH, "backbone", EVOLUTION),
    "bcnet": (WIDTH, "backbone", {**EVOLUTION, "loss_records": 2}),
    "cafenet": (WIDTH, "backbone", {**EVOLUTION, "placements": 1}),
    "toponas": (CELLS, "backbone", {}, SMALL_CELLS),
    "entrannas": (CELLS, "backbone", {}, SMALL_CELLS),
}


def test_every_strategy_of_the_registry_has_a_setup():
    assert set(SETUPS) == set(STRATEGIES)


def grid():
    for strategy in STRATEGIES:
        marks = [pytest.mark.skipif(not enas_available(), reason="tianshou/gym missing")] if strategy == "enas" else []
        for framework in FRAMEWORKS:
            yield pytest.param(strategy, framework, marks=marks, id=f"{strategy}-{framework}")


def grid_overrides(out, strategy: str, framework: str, **options) -> dict:
    """The config overrides of ``strategy`` under ``framework`` at its cheapest, ``options`` over its own."""
    path, target, own, *overrides = SETUPS[strategy]
    section = "search" if target == "heads" else "backbone_search"
    extra = {**TINY, **(overrides[0] if overrides else {}), "framework": framework, f"{section}.strategy": strategy,
             f"{section}.strategy_options": {**own, **options}}
    if target == "backbone":
        extra["model.head_space"] = "fixed"
    return tiny_overrides(out, **extra)


def grid_config(out, strategy: str, framework: str):
    from experiments.core.validation import load_config

    path, target, *_ = SETUPS[strategy]
    return target, load_config(path, grid_overrides(out, strategy, framework))


def search_job(target: str):
    if target == "heads":
        from experiments.jobs.search import run_search
        return run_search
    from experiments.jobs.backbone_search import run_backbone_search
    return run_backbone_search


def refusal(out, strategy: str, framework: str):
    """The validation's one line for a pairing it refuses, or None."""
    try:
        grid_config(out, strategy, framework)
    except ConfigError as error:
        return str(error)
    return None


@pytest.mark.parametrize("strategy,framework", list(grid()))
def test_strategy_under_framework_searches_or_is_refused(tmp_path, strategy, framework, optimised_weights):
    from experiments.core.records import build_fixed, read_architecture

    out = tmp_path / "run"
    refused = refusal(out, strategy, framework)
    if refused is not None:
        assert "\n" not in refused and framework in refused, refused
        return
    target, cfg = grid_config(out, strategy, framework)
    try:
        record = search_job(target)(cfg, out, log_fn=lambda line: None)
    except ConfigError as error:  # refused as the job prepares, before anything trains (a space's own check)
        assert "\n" not in str(error) and framework in str(error), error
        assert not optimised_weights.runs
        return
    assert record["status"] == "ok"
    assert math.isfinite(record["history"][-1]["ssl_loss"])
    moved = optimised_weights.moved("backbone." if target == "backbone" else "projector.", run=0)
    assert moved, "the search's optimiser moved none of its weights"
    saved = torch.load(out / "search_model.pt", weights_only=True)
    network, architecture = build_fixed(read_architecture(out / "best_architecture.json"), cfg)
    assert architecture == saved["architecture"] == record["architecture"]
    network.load_state_dict(saved["state_dict"])  # strict: the export rebuilds the searched network


@pytest.mark.parametrize("strategy,framework,message", [
    ("darts", "supervised", "model.head_space: the supervised framework trains a linear classifier"),
    ("vitas", "wcl", "framework: wcl makes 4 px views beside the 8 px ones"),
    ("mctnas", "simsiam", "simsiam's loss reaches -1, so mctnas needs loss_shift >= 1"),
])
def test_a_pairing_that_cannot_work_is_one_error_line_and_writes_nothing(tmp_path, capsys, strategy, framework,
                                                                         message):
    import json

    from experiments.cli import main

    path, target, *_ = SETUPS[strategy]
    out = tmp_path / "run"
    options = {"loss_shift": 0.5} if strategy == "mctnas" else {}
    argv = ["search" if target == "heads" else "backbone-search", "--config", str(path), "--output-dir", str(out)]
    for key, value in grid_overrides(out, strategy, framework, **options).items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (out / "best_architecture.json").exists()
