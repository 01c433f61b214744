"""The Quick start job's terminal output: its start and end lines, none of NNI's or Lightning's chatter.

The chatter is not lost: it is in the run's ``logs/run.log``.
"""
import json
import logging
import subprocess
import sys
import warnings

from experiments.core import run_log
from experiments.core.validation import load_config
from experiments.core.machine import thread_policy
from tests.conftest import ROOT, tiny_overrides

CHATTER = (
    "will be ignored for sequential execution engine",  # NNI writes `training_service` in backticks
    "Safe to ignore this warning",
    "Checkpoint callback does not have last_model_path",
    "Config is not provided. Will try to infer.",
    "Checkpoint saved to",
    "litlogger",
    "LeafSpec",
    "GPU available:",
)


def test_quickstart_job_prints_its_start_and_end_and_no_chatter(tmp_path):
    out = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in tiny_overrides(out).items() if k != "trainer.progress_bar"]
    proc = subprocess.run([sys.executable, "-m", "experiments", "search", "--config", "configs/digits_simsiam.yml",
                           *sets, "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-3000:]
    for chatter in CHATTER:
        assert chatter not in printed, chatter
    lines = printed.splitlines()
    threads = thread_policy(load_config(ROOT / "configs" / "digits_simsiam.yml")).short()  # the same environment
    assert lines[0] == (f"search: simsiam on digits, nasiam head space, gdarts, cpu ({threads}), 2 epochs, "
                        f"batched views -> {out}")
    assert any(line.startswith(f"results: {out / 'best_architecture.json'}") for line in lines), printed[-2000:]
    assert f"picture of the architecture: {out / 'architecture.png'}" in lines  # every search draws its pick
    metrics = json.loads((out / "best_architecture.json").read_text())["metrics"]
    assert any(line.startswith(f"kNN top-1 {metrics['knn_top1']:.3f} (untrained {metrics['untrained_knn_top1']:.3f})")
               for line in lines)  # the trained figure beside the same architecture's untrained one
    assert any(line.startswith("how decided: mean probability of the chosen values ") for line in lines)
    assert (out / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one plain line per epoch, no bar leftovers
    assert not any(line.startswith("Epoch ") or "it/s" in line for line in lines)  # the bar's leftovers
    logged = (out / "logs" / "run.log").read_text()
    for chatter in ("will be ignored for sequential execution engine", "Config is not provided", "GPU available:",
                    "ssl_nas.machine: threads: "):
        assert chatter in logged, chatter  # nothing lost


def test_start_line_says_a_framework_with_its_own_views_falls_back(tiny_config, tmp_path):
    from experiments.core.console import start_line

    line = start_line("search", tiny_config(framework="ressl", **{"data.batched_augment": True}), tmp_path)
    assert "per-image views (ressl makes its own)" in line


def test_quirk26_nni_logs_to_our_handler_not_stdout():
    code = ("import logging, experiments.nni_compat as c; h = logging.StreamHandler(open('/dev/null', 'w'));"
            "import nni; c.nni_log_to(h); logging.getLogger('nni.nas.experiment').warning('quirk26 probe');"
            "print(h in logging.getLogger('nni').handlers)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True"], proc.stderr[-2000:]
    assert "quirk26 probe" not in proc.stdout + proc.stderr


def test_run_log_holds_records_until_a_run_opens_its_file(tmp_path):
    handler = run_log.RunLog()
    logger = logging.getLogger("tests.run_log")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before the claim")
        assert not (tmp_path / "logs").exists()
        handler.open(tmp_path / run_log.LOG_FILE)
        logger.warning("after the claim")
    finally:
        logger.removeHandler(handler)
    text = (tmp_path / run_log.LOG_FILE).read_text()
    assert text.index("before the claim") < text.index("after the claim")


def routed(warn) -> tuple[list[str], list[str]]:
    """What ``warn()`` shows on the terminal and what goes to the run log, with the package's routing."""
    handler = run_log.RunLog()
    saved, shown = warnings.showwarning, []
    try:
        warnings.showwarning = lambda message, *rest, **kw: shown.append(str(message))  # the terminal
        run_log._route_warnings(handler)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warn()
    finally:
        warnings.showwarning = saved
        logging.getLogger("ssl_nas.warnings").removeHandler(handler)
    return shown, [record.getMessage() for record in handler.pending]


def test_only_the_listed_warnings_leave_the_terminal():
    def warn():
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("a warning the user can act on", UserWarning)

    shown, logged = routed(warn)
    assert shown == ["a warning the user can act on"]
    assert len(logged) == 1 and logged[0].endswith("`isinstance(treespec, LeafSpec)` is deprecated, use ...")


def test_nni_and_lightning_warnings_raised_in_their_own_code_go_to_the_run_log():
    """NNI's Filter middleware (K-shot, BCNet) and Lightning's configuration validator warn from inside
    their code; a warning raised in this package's (or the user's) code still shows."""
    import nni.nas.strategy.middleware as nni_middleware
    import pytorch_lightning.trainer.configuration_validator as lightning_validator

    def warn():
        warnings.warn_explicit("Filter middleware currently does not list models", UserWarning,
                               nni_middleware.__file__, 323)
        warnings.warn_explicit("You defined a `validation_step` but have no `val_dataloader`", UserWarning,
                               lightning_validator.__file__, 70)
        warnings.warn("a warning of this package", UserWarning)

    shown, logged = routed(warn)
    assert shown == ["a warning of this package"]
    assert len(logged) == 2 and "Filter middleware" in logged[0] and "val_dataloader" in logged[1], logged


def test_a_retrain_start_line_names_the_architecture_and_the_retrain_epochs(tiny_config, tmp_path):
    from experiments.core.console import start_line

    cfg = tiny_config(**{"train.epochs": 3, "search.epochs": 2, "trainer.threads": 2, "data.num_workers": 0})
    line = start_line("retrain", cfg, tmp_path, architecture="a.json")
    assert line.startswith("retrain: simsiam on digits, architecture a.json, cpu (2 threads), 3 epochs, ")


def test_untrained_baseline_is_the_chosen_architecture_with_fresh_seeded_weights(tiny_config):
    """The untrained figure: the same architecture, fresh weights drawn from the run's seed (the same
    on every call, the global generator untouched), BatchNorm's statistics measured, no weight changed."""
    import types

    import torch

    from experiments.core.assembly import build_data, untrained_knn
    from experiments.jobs.search import fresh_network

    cfg = tiny_config()
    architecture = {f"projector.layer{i}.op": "linear_relu" for i in range(1, 7)}
    architecture.update({f"predictor.layer{i}.op": "linear_relu" for i in range(1, 5)})
    setup = types.SimpleNamespace(num_classes=10)
    before = torch.random.get_rng_state()
    first, second = fresh_network(cfg, setup, architecture), fresh_network(cfg, setup, architecture)
    assert torch.equal(torch.random.get_rng_state(), before)
    weights = {k: v.clone() for k, v in first.state_dict().items() if "running" not in k and "tracked" not in k}
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in weights.items())
    data = build_data(cfg)
    knn = untrained_knn(cfg, data, first)
    assert 0.0 <= knn <= 1.0 and knn == untrained_knn(cfg, data, second)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in weights.items())  # no weight moved
    with torch.no_grad():  # other weights give another figure: it is computed from this network's features
        for p in second.backbone.parameters():
            p.normal_()
    assert untrained_knn(cfg, data, second) != knn
