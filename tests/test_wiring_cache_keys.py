"""Every cache key holds every field that changes the result: the head study's finished runs, the run
fingerprint that decides whether a directory's checkpoint resumes this run, and ViTAS's score cache.

Each test changes one field at a time (every config field, by a value of the same type) and checks
that the key changes, and that the fields that change nothing (where the output goes, a progress bar,
worker and thread counts, a ViT's layers past its depth) leave it alone.
"""
from __future__ import annotations

import dataclasses
import json

from tests.test_wiring_options import search_objects


def flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: node}


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return value + value[:1] if value else [1]
    if isinstance(value, dict):
        return {"other": 1}
    return 1  # None


def with_field(config: dict, dotted: str, value) -> dict:
    out = json.loads(json.dumps(config))
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


def test_the_config_has_fields_of_every_kind(tiny_config):
    fields = flat(tiny_config().to_dict())
    assert len(fields) > 60
    kinds = {type(v) for v in fields.values()}
    assert {bool, int, float, str, list} <= kinds


def test_head_study_reuses_a_run_only_when_every_result_changing_field_is_the_same(tiny_config, tmp_path):
    from experiments.studies.head_study import _reusable

    cfg = tiny_config()
    config = cfg.to_dict()
    path = tmp_path / "retrain_results.json"

    def reused(stored: dict):
        path.write_text(json.dumps({"config": stored, "metrics": {}}))
        return _reusable(path, cfg) is not None

    assert reused(config)
    volatile = {"output_dir", "trainer.progress_bar"}  # where the files go, what the terminal shows
    for dotted, value in flat(config).items():
        assert reused(with_field(config, dotted, changed(value))) == (dotted in volatile), dotted


def test_run_fingerprint_holds_every_result_changing_field_and_the_architecture(tiny_config):
    from experiments.core.run_dir import VOLATILE_FIELDS, run_record

    cfg = tiny_config()
    base = run_record(cfg, "retrain", {"architecture": {"a": 1}})["fingerprint"]
    assert run_record(cfg, "retrain", {"architecture": {"a": 1}})["fingerprint"] == base
    assert run_record(cfg, "retrain", {"architecture": {"a": 2}})["fingerprint"] != base
    assert run_record(cfg, "prune", {"architecture": {"a": 1}})["fingerprint"] != base
    assert set(VOLATILE_FIELDS) == {"output_dir", "trainer.progress_bar", "data.num_workers", "trainer.threads",
                                    "trainer.logger", "trainer.logger_options"}  # where the metrics also go
    for dotted, value in flat(cfg.to_dict()).items():
        other = dataclasses.replace(cfg)
        other.to_dict = (lambda d: (lambda: d))(with_field(cfg.to_dict(), dotted, changed(value)))
        same = run_record(other, "retrain", {"architecture": {"a": 1}})["fingerprint"] == base
        assert same == (dotted in VOLATILE_FIELDS), dotted


def test_vitas_scores_a_network_once_and_two_networks_twice(tmp_path):
    job = search_objects(tmp_path / "run", **{
        "model.backbone": "vit", "model.backbone_options": {"image_size": 8, "patch_sizes": [4],
                                                            "embed_dims": [8, 16], "max_depth": 2,
                                                            "heads": [1, 2], "mlp_ratios": [1, 2]},
        "backbone_search.strategy": "vitas", "backbone_search.max_flops": None,
        "backbone_search.strategy_options": {"sharing": "prefix", "tune_identity": False, "population": 3}})
    scored = []
    ctx = dataclasses.replace(job.ctx, scorer=lambda network: scored.append(network) or float(len(scored)))
    score_of = job.strategy.score_function(ctx, job.supernet)
    one_layer = {"backbone.embed_dim": 8, "backbone.depth": 1, "backbone.layer1.heads": "1",
                 "backbone.layer1.mlp_ratio": 1, "backbone.layer2.heads": "1", "backbone.layer2.mlp_ratio": 1}
    assert score_of(one_layer) == 1.0
    # layer 2 is past the depth: the same network, scored once
    assert score_of({**one_layer, "backbone.layer2.heads": "2", "backbone.layer2.mlp_ratio": 2}) == 1.0
    # every field of a layer within the depth, the width and the depth change the network: scored anew
    for field, value in (("backbone.layer1.heads", "2"), ("backbone.layer1.mlp_ratio", 2),
                         ("backbone.embed_dim", 16), ("backbone.depth", 2)):
        before = len(scored)
        assert score_of({**one_layer, field: value}) == before + 1, field
    assert len(scored) == 5

