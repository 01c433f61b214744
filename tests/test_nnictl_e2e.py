"""End to end through nnictl: create, trials, REST API, dashboard, export, stop.

One tiny experiment (digits, one search epoch, two trials of nni_configs/darts_simsiam.yml's
own trial command, shrunk through $SSLNAS_ARGS) on a free loopback port, with its own HOME
(nnictl's experiment list lives in ~/nni-experiments) and working directory. The fixture's
finalizer stops it and kills its process group, also when a test fails.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NNICTL = BIN / "nnictl"
TINY_ARGS = ("--config configs/bench_digits_simsiam.yml --set data.train_subset=256 --set data.test_subset=100 "
             "--set data.batch_size=64 --set model.backbone_width=0.125 --set model.head_width=0.0625 "
             "--set search.epochs=1 --set search.warmup_epochs=0 --set search.collapse_threshold=0 "
             "--set evaluation.knn_k=10 --set evaluation.linear_epochs=5 --set trainer.accelerator=cpu")
ARCH_LRS = [0.001, 0.003]

pytestmark = pytest.mark.skipif(not NNICTL.exists(), reason="nnictl is not installed next to this python")




def rest(port: int, api: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{api}", timeout=20) as resp:
        return json.loads(resp.read())


def metric_value(data: str):
    value = json.loads(data)
    while isinstance(value, str):
        value = json.loads(value)
    return value


def group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    alive.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return alive


class Experiment:
    def __init__(self, base: Path):
        self.base = base
        self.home = base / "home"
        self.home.mkdir()
        self.workdir = base / "exps"
        self.env = dict(os.environ, HOME=str(self.home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        SSLNAS_ARGS=TINY_ARGS, OMP_NUM_THREADS="1")
        self.id = None
        self.port = None
        self.pid = None
        self.running = False
        self.create_output = ""

    def write_config(self) -> Path:
        raw = yaml.safe_load((ROOT / "nni_configs" / "darts_simsiam.yml").read_text())
        raw.update(searchSpace={"search.arch_lr": {"_type": "choice", "_value": ARCH_LRS}},
                   tuner={"name": "GridSearch"}, trialConcurrency=2, maxTrialNumber=2, maxTrialDuration="10m", maxExperimentDuration="15m",
                   trialCodeDirectory=str(ROOT), experimentWorkingDirectory=str(self.workdir))
        path = self.base / "tiny.yml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def nnictl(self, *args, timeout=180) -> subprocess.CompletedProcess:
        return subprocess.run([str(NNICTL), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)

    def create(self) -> None:
        config = self.write_config()
        for _attempt in range(2):  # on a loaded machine nnictl's 3 s wait for the manager can run out
            self.port = free_port()
            done = self.nnictl("create", "--config", str(config), "--port", str(self.port))
            self.create_output = done.stdout + done.stderr
            found = re.search(r"Experiment ID: \S*?([a-z0-9]{8})\b", re.sub(r"\x1b\[[0-9;]*m", "", self.create_output))
            if done.returncode == 0 and found:
                self.id = found.group(1)
                entry = json.loads((self.home / "nni-experiments" / ".experiment").read_text())[self.id]
                self.pid = int(entry["pid"])
                self.running = True
                return
        raise AssertionError(f"nnictl create failed:\n{self.create_output[-3000:]}")

    def wait(self, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = rest(self.port, "check-status")["status"]
            if status in ("DONE", "ERROR", "STOPPED"):
                return status
            time.sleep(3)
        raise AssertionError(f"experiment {self.id} still {status} after {timeout} s")

    def stop(self) -> None:
        """``nnictl stop``, then make sure the manager's process group (trials included) is gone."""
        if not self.running:
            return
        try:
            self.nnictl("stop", self.id, timeout=120)
        finally:
            if self.pid is not None:
                deadline = time.monotonic() + 30
                while group_alive(self.pid) and time.monotonic() < deadline:
                    time.sleep(0.5)
                if group_alive(self.pid):  # we started it: end it by its group id
                    os.killpg(self.pid, signal.SIGKILL)
            self.running = False


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    exp = Experiment(tmp_path_factory.mktemp("nnictl"))
    try:
        exp.create()
        exp.status = exp.wait()
        yield exp
    finally:
        pid = exp.pid
        exp.stop()
        if pid is not None:
            assert group_alive(pid) == [], f"processes left behind: {group_alive(pid)}"


def test_trials_report_intermediate_and_final_results_under_their_own_parameter_id(experiment):
    assert experiment.status == "DONE"
    trials = rest(experiment.port, "trial-jobs")
    metrics = rest(experiment.port, "metric-data")
    assert len(trials) == 2
    parameter_ids = set()
    for trial in trials:
        assert trial["status"] == "SUCCEEDED", trial
        record = json.loads(trial["hyperParameters"][0])
        own = str(record["parameter_id"])
        parameter_ids.add(own)
        mine = [m for m in metrics if m["trialJobId"] == trial["trialJobId"]]
        periodical = [m for m in mine if m["type"] == "PERIODICAL"]
        final = [m for m in mine if m["type"] == "FINAL"]
        assert len(periodical) >= 1 and len(final) == 1
        assert {m["parameterId"] for m in mine} == {own}  # quirk 8 would put the final result under "0"
        value = metric_value(final[0]["data"])
        assert set(value) >= {"default", "linear_top1", "ssl_loss"} and 0.0 <= value["default"] <= 1.0
        assert "ssl_loss" in metric_value(periodical[0]["data"])
        out = Path(trial["logPath"])
        for name in ("best_architecture.json", "architecture_weights.png", "search_model.pt"):
            assert (out / name).is_file(), name
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert parameter_ids == {"0", "1"}  # two trials, so a wrong id cannot pass by luck
    log = next(experiment.workdir.glob(f"{experiment.id}/log/dispatcher.log")).read_text()
    assert "KeyError" not in log
    manifest = json.loads((experiment.home / "nni-experiments" / ".experiment").read_text())
    assert list(manifest) == [experiment.id]  # quirk 9: the trials' searches stay out of it


def test_dashboard_trial_list_shows_the_trials(experiment, tmp_path):
    from experiments.jobs import screenshot

    if screenshot.find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    url = screenshot.dashboard_url(experiment.port, "detail")
    dom = screenshot.dump_dom(url)
    trials = rest(experiment.port, "trial-jobs")
    assert "Trial jobs" in dom
    for trial in trials:
        assert trial["trialJobId"] in dom
    assert dom.count("SUCCEEDED") >= 2
    png = screenshot.screenshot(url, tmp_path / "detail.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    save = os.environ.get("SSLNAS_SAVE_SCREENSHOT")
    if save:
        Path(save).write_bytes(png.read_bytes())


def test_export_after_stop_writes_an_architecture_retrain_accepts(experiment, tmp_path, capsys):
    from conftest import tiny_overrides
    from experiments.core.records import build_fixed, read_architecture
    from experiments.cli import main
    from experiments.core.validation import load_config

    experiment.stop()  # export reads NNI's stored data, no manager needed
    output = tmp_path / "best.json"
    assert main(["export", "--experiment", experiment.id, "--experiment-dir", str(experiment.workdir),
                 "--output", str(output)]) == 0
    table = capsys.readouterr().out
    assert table.count("SUCCEEDED") == 2 and "★" in table
    record = read_architecture(output)
    assert record["nni"]["parameters"]["search.arch_lr"] in ARCH_LRS
    finals = {}
    for trial_dir in experiment.workdir.glob("*/environments/*/trials/*"):
        finals[trial_dir.name] = json.loads((trial_dir / "best_architecture.json").read_text())["metrics"]["knn_top1"]
    assert finals[record["nni"]["trial_id"]] == max(finals.values())
    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml", tiny_overrides(tmp_path / "r"))
    network, architecture = build_fixed(record, cfg)  # what `retrain --arch` does with it
    assert architecture == record["architecture"]
