"""The head study command: plan, table and files, on a tiny digits budget (about half a minute)."""
from __future__ import annotations

import json


from experiments.cli import main
from experiments.studies import head_study as study
from tests.conftest import ROOT


def study_main(argv: list) -> int:
    return main(["head-study", *argv])

TINY = ["--set", "train.epochs=1", "--set", "search.epochs=1", "--set", "search.warmup_epochs=0",
        "--set", "data.train_subset=128", "--set", "data.test_subset=64", "--set", "data.batch_size=64",
        "--set", "model.backbone_width=0.125", "--set", "model.head_width=0.0625",
        "--set", "evaluation.linear_epochs=2", "--set", "evaluation.knn_k=5", "--set", "trainer.accelerator=cpu"]


def test_plan_derives_every_arm_from_one_base_at_one_budget(tmp_path):
    runs = study.plan(ROOT / "configs" / "study_digits.yml", {"train.epochs": 3}, "simsiam", [0, 1],
                      list(study.ARMS), tmp_path)
    assert len(runs) == 2 * len(study.ARMS)
    by = {(r["arm"].name, r["seed"]): r["cfg"] for r in runs}
    assert {c.train.epochs for c in by.values()} == {3}
    assert len({c.search.epochs for c in by.values()}) == 1
    assert by["hand-made", 0].model.head_space == "fixed"
    assert by["darts-mlp", 1].model.head_space == "mlp" and by["darts-mlp", 1].seed == 1
    assert by["darts-nasiam-no-warmup", 0].search.warmup_epochs == 0
    assert by["darts-nasiam", 0].search.warmup_epochs > 0
    assert by["darts-nasiam-no-penalty", 0].search.param_free_penalty == 0
    assert by["darts-nasiam", 0].search.param_free_penalty > 0
    # apart from the arm's own fields (and where it writes), the configs are the same
    a, b = by["darts-nasiam", 0].to_dict(), by["darts-nasiam-no-penalty", 0].to_dict()
    a["search"].pop("param_free_penalty"), b["search"].pop("param_free_penalty")
    a.pop("output_dir"), b.pop("output_dir")
    assert a == b


def test_verdict_and_architecture_text():
    base = {"knn_top1": (0.60, 0.01), "linear_top1": (0.70, 0.02)}
    assert study.verdict({"knn_top1": (0.65, 0.01)}, base, "knn_top1") == "win"
    assert study.verdict({"knn_top1": (0.61, 0.01)}, base, "knn_top1") == "tie"
    assert study.verdict({"knn_top1": (0.50, 0.05)}, base, "knn_top1") == "loss"
    assert study.verdict({"knn_top1": (0.65, None)}, base, "knn_top1") == "n/a"
    text = study.short_architecture({"projector.depth": 2, "projector.layer1.activation": "relu",
                                     "projector.layer2.activation": "gelu", "projector.layer3.activation": "tanh",
                                     "predictor.layer1.op": "avgpool_3x3", "predictor.layer2.op": "linear_relu"})
    assert text == "projector: depth 2 (relu gelu) · predictor: avg relu"


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert study_main(["--framework", "simsiam", "--dataset", "digits", "--arms", "hand-made,bogus",
                       "--output-dir", str(out), "--docs-dir", str(tmp_path / "docs")]) == 2
    assert "error: --arms: unknown arm(s) bogus" in capsys.readouterr().err
    assert study_main(["--framework", "simsiam", "--dataset", "digits", "--set", "train.epochs=0",
                       "--output-dir", str(out), "--docs-dir", str(tmp_path / "docs")]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "docs").exists()


def test_study_command_prints_and_writes_the_table(tmp_path, capsys):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    arms = "raw-pixels,untrained,hand-made,nasiam-published,darts-nasiam,darts-mlp"
    argv = ["--framework", "simsiam", "--dataset", "digits", "--seeds", "0", "--arms", arms,
            "--output-dir", str(out), "--docs-dir", str(docs), *TINY]
    assert study_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Does the head search pay? simsiam on digits" in printed and "Derived architectures" in printed

    result = json.loads((docs / "head_study_simsiam_digits.json").read_text())
    assert result == json.loads((out / "study.json").read_text())
    assert [e["arm"] for e in result["table"]] == arms.split(",")
    assert result["budget"]["train_epochs"] == 1 and result["budget"]["search_epochs"] == 1
    assert result["seeds"] == [0] and result["versions"]["torch"]
    rows = {e["arm"]: e for e in result["table"]}
    # each row holds its own run's numbers: what that run wrote in its results file
    ran = {"untrained": out / "untrained" / "seed0" / "untrained_results.json",
           "raw-pixels": out / "raw-pixels" / "seed0" / "pixels_results.json"}
    for name in ("untrained", "raw-pixels", "hand-made", "nasiam-published", "darts-nasiam", "darts-mlp"):
        path = ran.get(name, out / name / "seed0" / "retrain" / "retrain_results.json")
        metrics = json.loads(path.read_text())["metrics"]
        assert rows[name]["knn_top1"] == [metrics["knn_top1"], None], name  # one seed: no spread
        assert rows[name]["linear_top1"] == [metrics["linear_top1"], None], name
        assert rows[name]["collapse_min"] == metrics["collapse"], name  # None for raw pixels
    assert rows["raw-pixels"]["collapse_min"] is None and rows["hand-made"]["collapse_min"] > 0
    assert rows["hand-made"]["vs_hand_made"] is None
    vs = rows["darts-mlp"]["vs_hand_made"]
    assert vs["knn"] == "n/a" and vs["knn_seeds_above"][1] == 1  # one seed: no verdict, one paired seed
    assert vs["knn_delta"] == rows["darts-mlp"]["knn_top1"][0] - rows["hand-made"]["knn_top1"][0]
    assert rows["darts-nasiam"]["search_seconds"] > 0 and rows["hand-made"]["search_seconds"] is None
    assert "projector.depth" in rows["darts-mlp"]["architectures"]["0"]
    assert rows["nasiam-published"]["architectures"]["0"]["predictor.layer2.op"] == "avgpool_3x3"

    md = (docs / "head_study_simsiam_digits.md").read_text()
    assert md.startswith("# Does the head search pay? simsiam on digits")
    assert "python -m experiments study head --framework simsiam" in md and "machine:" in md and "budget:" in md
    for name in arms.split(","):
        assert f"\n| {name} |" in md

    # Rerunning the same command reuses every finished run and gives the same table.
    assert study_main(argv) == 0
    again = json.loads((docs / "head_study_simsiam_digits.json").read_text())
    assert again["reused_runs"] == len(arms.split(",")) and again["run_seconds"] == result["run_seconds"] > 0
    assert [e["knn_top1"] for e in again["table"]] == [e["knn_top1"] for e in result["table"]]


def test_sigterm_during_a_run_is_an_error_not_a_success(tmp_path, capsys, monkeypatch):
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    def terminated(*args, **kwargs):
        raise SIGTERMException  # what Lightning raises on SIGTERM: a SystemExit whose status is 0

    monkeypatch.setattr(study, "run_one", terminated)
    code = study_main(["--framework", "simsiam", "--dataset", "digits", "--seeds", "0", "--arms", "hand-made",
                       "--output-dir", str(tmp_path / "out"), "--docs-dir", str(tmp_path / "docs"), *TINY])
    assert code == 143 and "error: terminated (SIGTERM)" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()
