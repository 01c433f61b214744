"""NNI quirks 7 and 8, met by DARTS over the mlp space (a searched depth and bias-free Linear layers)."""
from __future__ import annotations

import pytest
import torch

from experiments import nni_compat


def test_quirk12_label_parameter_dict_keeps_dotted_labels():
    d = nni_compat.LabelParameterDict({"projector.depth": torch.nn.Parameter(torch.zeros(3))})
    assert list(d.keys()) == ["projector.depth"] and d["projector.depth"].shape == (3,)
    assert [n for n, _ in d.named_parameters()] == ["projector__dot__depth"]
    with pytest.raises(KeyError):  # plain torch still refuses it: the quirk is real
        torch.nn.ParameterDict({"projector.depth": torch.nn.Parameter(torch.zeros(3))})


def test_darts_searches_and_exports_the_mlp_space(tiny_config, tmp_path):
    from experiments.core.records import build_fixed
    from experiments.jobs.search import SearchCollapsed, run_search

    cfg = tiny_config(**{"model.head_space": "mlp", "search.epochs": 1, "data.train_subset": 128,
                         "evaluation.linear_epochs": 2})
    try:
        record = run_search(cfg, tmp_path / "s", log_fn=lambda s: None)
    except SearchCollapsed:  # one epoch may collapse; the export is what this test is about
        import json
        record = json.loads((tmp_path / "s" / "best_architecture.json").read_text())
    assert record["architecture"]["projector.depth"] in (1, 2, 3)
    assert set(record["probabilities"]["projector.depth"]) == {"1", "2", "3"}
    network, _ = build_fixed(record, cfg)
    assert network(torch.zeros(2, 3, 8, 8)).shape[0] == 2
