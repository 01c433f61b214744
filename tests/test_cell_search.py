"""CI-sized backbone searches on the cell space, one per cell strategy, that export JSON the retrain job rebuilds."""
from __future__ import annotations

import pytest

from tests.test_backbone_search import load, run

CELLS = {"channels": 4, "num_cells": 3, "num_nodes": 2}
DST_CELLS = {**CELLS, "inputs_per_node": 3, "ops": ["sep_conv_3x3", "max_pool_3x3", "skip_connect", "none"]}


@pytest.mark.parametrize("strategy,framework,cells,options,max_flops", [
    ("darts", "simsiam", CELLS, {}, None),
    ("darts", "supervised", CELLS, {}, None),
    ("toponas", "simsiam", CELLS, {}, 55_000),  # this space spans 43k to 100k FLOPs at 8x8
    ("entrannas", "byol", DST_CELLS, {"dst": True}, None),  # the survey's rule: every non-zero pair, slots allowing
    ("entrannas", "simsiam", DST_CELLS, {"dst": True, "dst_rule": "edges"}, None),  # the earlier rule
])
def test_a_cell_search_exports_what_retrain_rebuilds(tmp_path, strategy, framework, cells, options, max_flops):
    from experiments.core.records import build_fixed, read_architecture
    from search_spaces.cost import count_fixed

    cfg = load(tmp_path / "run", **{"framework": framework, "model.backbone": "cells", "model.backbone_width": 1.0,
                                    "model.backbone_options": cells, "backbone_search.strategy": strategy,
                                    "backbone_search.strategy_options": options,
                                    "backbone_search.max_flops": max_flops, "evaluation.linear_epochs": 2})
    record = run(cfg, tmp_path / "run")
    arch = record["architecture"]
    assert record["strategy"] == strategy
    assert max_flops is None or record["cost"]["flops"] <= max_flops
    assert all(isinstance(arch[f"backbone.normal/input_3_{k}"], list) for k in range(cells.get("inputs_per_node", 2)))
    network, rebuilt = build_fixed(read_architecture(tmp_path / "run" / "best_architecture.json"), cfg)
    assert rebuilt == arch
    rebuilt_cost = count_fixed(network.backbone, 8)  # the hook count of the rebuilt network, as recorded
    assert (rebuilt_cost.flops, rebuilt_cost.params) == (record["cost"]["flops"], record["cost"]["params"])
    if options.get("dst"):  # a node's inputs vary (pairs, pads): the retrain builds and trains the export
        from experiments.jobs.retrain import run_retrain

        result = run_retrain(cfg, read_architecture(tmp_path / "run" / "best_architecture.json"), tmp_path / "retrain",
                             log_fn=lambda line: None)
        assert result["architecture"] == arch


@pytest.mark.parametrize("overrides,message", [
    ({"model.backbone": "macro", "backbone_search.strategy": "toponas"},
     r"toponas cannot search space macro \(its layer choices; use"),
    ({"model.backbone": "cells", "backbone_search.strategy": "spos"}, r"spos cannot search space cells"),
    ({"model.backbone": "cells", "backbone_search.strategy": "entrannas",
      "backbone_search.strategy_options": {"dst": True}}, r"entrannas with dst needs 'none' among the ops"),
    ({"model.backbone": "cells", "backbone_search.strategy": "entrannas",
      "backbone_search.strategy_options": {"dst_threshold": 1.0}}, r"dst_threshold: must be in \[0, 1\)"),
    ({"model.backbone": "cells", "backbone_search.strategy": "entrannas",
      "backbone_search.strategy_options": {"dst_rule": "nodes"}}, r"dst_rule: must be one of pairs, edges, got 'nodes'"),
])
def test_a_config_the_cell_strategies_cannot_run_is_refused(tmp_path, overrides, message):
    from experiments.core.errors import ConfigError
    from experiments.jobs.backbone_search import validate

    with pytest.raises(ConfigError, match=message):
        validate(load(tmp_path / "x", **{"backbone_search.max_flops": None, **overrides}))
