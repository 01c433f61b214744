"""The pieces of the nnictl flow, without nnictl: trial metrics, the head trial, quirk 10,
export from NNI's database, the generated head search space, the pre-flight check, plots."""
from __future__ import annotations

import json
import socket
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

import nni
import nni.runtime.trial_command_channel as channels
from nni.runtime.trial_command_channel import TrialCommandChannel

from conftest import ROOT, tiny_overrides
from experiments import nni_compat
from experiments.core.errors import ConfigError


# ---------------------------------------------------------------- metrics

def test_epoch_and_final_metrics_put_knn_first_and_drop_missing_values():
    from experiments.jobs.trial import final_metric, intermediate_metric

    record = {"epoch": 3, "knn_top1": 0.41, "collapse": 0.7, "ssl_loss": None, "architecture": {}}
    assert intermediate_metric(record) == {"default": 0.41, "collapse": 0.7, "epoch": 3}
    result = {"metrics": {"knn_top1": 0.5, "linear_top1": 0.6, "collapse": 0.9},
              "history": [{"ssl_loss": -0.2}, {"ssl_loss": float("nan")}]}
    assert final_metric(result) == {"default": 0.5, "linear_top1": 0.6, "collapse": 0.9}
    result["history"].append({"ssl_loss": -0.9})
    assert final_metric(result)["ssl_loss"] == -0.9


# ---------------------------------------------------------------- quirk 10

class _Manager(BaseHTTPRequestHandler):
    jobs: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        job = self.jobs.get(self.path.rsplit("/", 1)[-1])
        body = json.dumps(job).encode() if job else b""
        self.send_response(200 if job else 500)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_manager():
    server = HTTPServer(("127.0.0.1", 0), _Manager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_quirk10_the_trial_runs_the_parameters_the_manager_recorded_for_it(fake_manager, monkeypatch):
    recorded = {"parameter_id": 1, "parameter_source": "algorithm", "parameters": {"seed": 1}, "parameter_index": 0}
    _Manager.jobs = {"TRIAL": {"trialJobId": "TRIAL", "hyperParameters": [json.dumps(recorded)]}}
    received = {"parameter_id": 0, "parameter_source": "algorithm", "parameters": {"seed": 0}, "parameter_index": 0}
    monkeypatch.setenv("NNI_TRIAL_COMMAND_CHANNEL", f"http://127.0.0.1:{fake_manager}/env/local-env/TRIAL")
    monkeypatch.setenv("NNI_TRIAL_JOB_ID", "TRIAL")
    assert nni_compat.manager_parameter_record(received) == recorded
    monkeypatch.setenv("NNI_TRIAL_JOB_ID", "OTHER")  # the manager does not know it: keep what came
    assert nni_compat.manager_parameter_record(received, wait_seconds=0) is received
    with socket.socket() as s:  # nobody listens there (a remote trial keeper): keep what came
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("NNI_TRIAL_COMMAND_CHANNEL", f"http://127.0.0.1:{closed}/env/local-env/TRIAL")
    assert nni_compat.manager_parameter_record(received, wait_seconds=0) is received


# ---------------------------------------------------------------- the head trial

class RecordingChannel(TrialCommandChannel):
    def __init__(self, parameters):
        self.parameters, self.sent = parameters, []

    def receive_parameter(self):
        return {"parameter_id": 5, "parameter_source": "algorithm", "parameters": self.parameters,
                "parameter_index": 0}

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002
        self.sent.append((type, parameter_id, sequence, value))


def as_nni_trial(job, config: str, overrides: dict, parameters: dict, tmp_path, monkeypatch):
    """Run a trial job as nnictl would, the tuner handing it ``parameters``; returns (status, channel)."""
    recorder = RecordingChannel(parameters)
    saved = channels._channel, nni.trial._params, nni.trial._intermediate_seq
    channels.set_default_trial_command_channel(recorder)
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(tmp_path / "trial"))
    monkeypatch.delenv("NNI_TRIAL_COMMAND_CHANNEL", raising=False)
    try:
        status = job(str(ROOT / "configs" / config), [f"{k}={json.dumps(v)}" for k, v in overrides.items()],
                     log_fn=lambda _: None)
    finally:
        channels._channel, nni.trial._params, nni.trial._intermediate_seq = saved
    return status, recorder


def test_head_trial_trains_the_head_its_parameters_spell(tmp_path, monkeypatch, optimised_weights):
    from experiments.core.assembly import build_space
    from experiments.core.validation import load_config
    from experiments.jobs.trial import run_head_trial

    overrides = tiny_overrides(tmp_path / "unused", **{"data.train_subset": 256, "data.test_subset": 100,
                                                       "evaluation.linear_epochs": 5, "evaluation.knn_k": 10})
    cfg = load_config(ROOT / "configs" / "bench_digits_simsiam.yml", overrides)
    labels = build_space(cfg).simplify()
    architecture = {str(k): list(m.values)[(i * 3) % len(m.values)] for i, (k, m) in enumerate(labels.items())}
    status, recorder = as_nni_trial(run_head_trial, "bench_digits_simsiam.yml", overrides,
                                    {**architecture, "seed": 3}, tmp_path, monkeypatch)
    assert status == 0
    result = json.loads((tmp_path / "trial" / "retrain_results.json").read_text())
    assert result["architecture"] == architecture and result["config"]["seed"] == 3
    # trains: the one optimiser of the trial moved every weight of that network, its heads' included
    assert len(optimised_weights.runs) == 1 and optimised_weights.moved() == optimised_weights.names()
    assert optimised_weights.moved("projector.") and optimised_weights.moved("predictor.")
    kinds = [(t, pid) for t, pid, _, _ in recorder.sent]
    assert kinds == [("PERIODICAL", 5), ("FINAL", 5)]
    assert recorder.sent[-1][3]["default"] == pytest.approx(result["metrics"]["knn_top1"])


def test_backbone_search_trial_reports_its_epochs_and_final_result(tmp_path, monkeypatch):
    """``python -m experiments backbone-search --nni`` (the shipped nni_configs/*_backbone_*.yml)."""
    from experiments.jobs.trial import run_backbone_trial
    from tests.test_backbone_search import tiny_backbone_overrides

    overrides = tiny_backbone_overrides(tmp_path / "unused", **{"backbone_search.max_flops": 40000})
    status, recorder = as_nni_trial(run_backbone_trial, "digits_backbone_spos.yml", overrides, {"seed": 2},
                                    tmp_path, monkeypatch)
    assert status == 0
    result = json.loads((tmp_path / "trial" / "best_architecture.json").read_text())
    assert result["kind"] == "backbone_search" and result["config"]["seed"] == 2
    assert result["cost"]["flops"] <= 40000
    kinds = [(t, pid) for t, pid, _, _ in recorder.sent]
    assert kinds == [("PERIODICAL", 5), ("FINAL", 5)]
    assert recorder.sent[-1][3]["default"] == pytest.approx(result["metrics"]["knn_top1"])


def test_a_failing_trial_exits_non_zero_with_its_reason_on_stderr(tmp_path, capsys):
    from experiments.cli import main

    status = main(["search", "--nni", "--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"),
                   "--set", "search.arch_lrr=0.1", "--output-dir", str(tmp_path / "x")])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: search.arch_lrr: unknown field; did you mean 'arch_lr'?"
    assert not (tmp_path / "x").exists()

    from experiments.jobs.trial import guarded

    def boom():
        raise RuntimeError("CUDA out of memory")

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert guarded(boom) == 1
    assert err.getvalue().strip().splitlines()[-1] == "error: trial failed: RuntimeError: CUDA out of memory"


# ---------------------------------------------------------------- export

def _fake_experiment(base: Path, exp_id: str = "abcd1234") -> Path:
    """NNI's database schema with what NNI 3.0 really wrote in a run with two concurrent trials:
    trial A recorded with parameter 0 but ran parameter 1, trial B the other way round."""
    exp = base / exp_id
    (exp / "db").mkdir(parents=True)
    con = sqlite3.connect(exp / "db" / "nni.sqlite")
    con.executescript("""
        CREATE TABLE TrialJobEvent (timestamp integer, trialJobId text, event text, data text, logPath text,
                                    sequenceId integer, message text, environmentId text);
        CREATE TABLE MetricData (timestamp integer, trialJobId text, parameterId text, type text, sequence integer,
                                 data text);
        CREATE TABLE ExperimentProfile (params text, id text, execDuration integer, startTime integer,
                                        endTime integer, logDir text, nextSequenceId integer, revision integer);""")
    profile = {"experimentName": "fake", "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}}}
    con.execute("INSERT INTO ExperimentProfile VALUES (?, ?, 0, 0, 0, '', 3, 1)", (json.dumps(profile), exp_id))

    def rec(pid, lr):
        return json.dumps({"parameter_id": pid, "parameter_source": "algorithm",
                           "parameters": {"search.arch_lr": lr}, "parameter_index": 0})

    def metric(value):
        return json.dumps(json.dumps(value))

    rows = [("A", 0, rec(0, 0.001)), ("B", 1, rec(1, 0.003)), ("C", 2, rec(2, 0.01))]
    for name, seq, data in rows:
        out = exp / "environments" / "local-env" / "trials" / name
        out.mkdir(parents=True)
        con.execute("INSERT INTO TrialJobEvent VALUES (1, ?, 'RUNNING', ?, ?, ?, NULL, 'local-env')",
                    (name, data, str(out), seq))
        status = "FAILED" if name == "C" else "SUCCEEDED"
        con.execute("INSERT INTO TrialJobEvent VALUES (2, ?, ?, NULL, ?, ?, NULL, 'local-env')",
                    (name, status, str(out), seq))
        (out / "best_architecture.json").write_text(json.dumps(
            {"space": {"framework": "simsiam", "head_space": "nasiam"}, "architecture": {"x": name}}))
    (exp / "environments/local-env/trials/C/trial.stderr").write_text("Traceback\nerror: data.root: gone\n")
    con.executemany("INSERT INTO MetricData VALUES (?, ?, ?, ?, ?, ?)", [
        (3, "A", "1", "PERIODICAL", 0, metric({"default": 0.2})), (4, "A", "1", "FINAL", 0, metric({"default": 0.3})),
        (3, "B", "0", "PERIODICAL", 0, metric({"default": 0.5})), (4, "B", "0", "FINAL", 0, metric({"default": 0.6})),
        (5, "C", "2", "FINAL", 0, metric(0.9))])  # a failed trial's result is not a candidate
    con.commit()
    con.close()
    return exp


def test_export_reads_nnis_database_reconciles_parameters_and_writes_the_best(tmp_path):
    from experiments.jobs.export import export_best, read_experiment

    _fake_experiment(tmp_path)
    exp = read_experiment("abcd1234", str(tmp_path))
    by_id = {t.trial_id: t for t in exp.trials}
    assert by_id["A"].parameters == {"search.arch_lr": 0.003} and by_id["A"].swapped
    assert by_id["B"].parameters == {"search.arch_lr": 0.001} and by_id["B"].parameter_id == 0
    assert by_id["C"].error_line() == "error: data.root: gone" and by_id["C"].default == 0.9
    best, record = export_best(exp, tmp_path / "best.json")
    assert best.trial_id == "B" and record["architecture"] == {"x": "B"}
    written = json.loads((tmp_path / "best.json").read_text())
    assert written["nni"]["parameters"] == {"search.arch_lr": 0.001} and written["nni"]["trial_id"] == "B"
    exp.profile["tuner"]["classArgs"]["optimize_mode"] = "minimize"
    assert exp.best().trial_id == "A"


def test_export_says_why_it_cannot(tmp_path):
    from experiments.cli import main

    assert main(["export", "--experiment", "nope0000", "--experiment-dir", str(tmp_path)]) == 2
    exp = _fake_experiment(tmp_path)
    con = sqlite3.connect(exp / "db" / "nni.sqlite")
    con.execute("UPDATE TrialJobEvent SET event = 'FAILED' WHERE event = 'SUCCEEDED'")
    con.commit()
    con.close()
    out = tmp_path / "best.json"
    assert main(["export", "--experiment", "abcd1234", "--experiment-dir", str(tmp_path), "--output", str(out)]) == 2
    assert not out.exists()


# ---------------------------------------------------------------- the generated head space

def test_committed_head_search_space_is_what_the_space_generates(tmp_path):
    from experiments.core.validation import load_config
    from experiments.jobs.export_space import head_search_space, render

    (tmp_path / "train" / "a").mkdir(parents=True)
    nni_config = yaml.safe_load((ROOT / "nni_configs" / "heads_simsiam.yml").read_text())
    committed = ROOT / "nni_configs" / nni_config["searchSpaceFile"]
    cfg = load_config(ROOT / "configs" / "cifar10_simsiam.yml", {"data.root": str(tmp_path)})
    assert committed.read_text() == render(head_search_space(cfg))
    space = json.loads(committed.read_text())
    assert len(space) == 10 and all(v["_type"] == "choice" and len(v["_value"]) == 7 for v in space.values())


# ---------------------------------------------------------------- the pre-flight check

def _nni_config(tmp_path, name="exp", **changes) -> Path:
    raw = yaml.safe_load((ROOT / "nni_configs" / "darts_simsiam.yml").read_text())
    raw["trialCodeDirectory"] = str(ROOT)
    raw.update(changes)
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env(args: str) -> dict:
    import os

    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", SSLNAS_ARGS=args)


DIGITS = "--config configs/digits_simsiam.yml --set search.epochs=6"


def test_check_passes_a_good_experiment_and_names_each_problem(tmp_path):
    from experiments.jobs.check import check

    good = _nni_config(tmp_path)
    assert any("searchSpace: 4 keys" in note for note in check(good, None, _env(DIGITS)))
    bad_nni = _nni_config(tmp_path, "bad_nni", trialConcurency=2)
    with pytest.raises(ConfigError, match="does not have field"):
        check(bad_nni, None, _env(DIGITS))
    space = yaml.safe_load(good.read_text())["searchSpace"]
    with pytest.raises(ConfigError, match=r"searchSpace.search.arch_lrr = .*did you mean 'arch_lr'"):
        bad_space = {**space, "search.arch_lrr": {"_type": "choice", "_value": [1]}}
        check(_nni_config(tmp_path, "bad_key", searchSpace=bad_space), None, _env(DIGITS))
    with pytest.raises(ConfigError, match=r"search.warmup_epochs = 5: .*must be below search.epochs \(4\)"):
        check(good, None, _env(f"{DIGITS} --set search.epochs=4 --set search.warmup_epochs=0"))
    with pytest.raises(ConfigError, match="data.root: dataset path '/no/such/cifar10' does not exist"):
        check(good, None, _env("--set data.root=/no/such/cifar10"))
    with pytest.raises(ConfigError, match="add --nni"):
        no_nni = "python -m experiments search --config configs/digits_simsiam.yml"
        check(_nni_config(tmp_path, "no_nni", trialCommand=no_nni), None, _env(""))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} is taken"):
            check(good, port, _env(DIGITS))


def test_check_command_fails_fast_with_one_error_line(tmp_path, capsys, monkeypatch):
    from experiments.cli import main

    path = _nni_config(tmp_path)
    for key, value in _env("--set data.root=/no/such/cifar10").items():
        monkeypatch.setenv(key, value)
    assert main(["check", str(path), "--port", "8080"]) == 2  # the range is fine; the data fails first
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ["error: data.root: dataset path '/no/such/cifar10' does not exist"]
    assert captured.out == ""


# ---------------------------------------------------------------- pictures

def _history(epochs=4):
    return [{"epoch": e, "knn_top1": 0.1, "architecture": {
        "projector.layer1.op": {"identity": 0.5 - 0.1 * e, "linear_relu": 0.5 + 0.1 * e},
        "predictor.layer1.op": {"identity": 0.5, "linear_relu": 0.5}}} for e in range(1, epochs + 1)]


def test_architecture_weights_become_a_png_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from experiments.core.plots import ArchitectureScalars, architecture_series, plot_architecture_history

    epochs, series = architecture_series(_history())
    assert epochs == [1, 2, 3, 4]
    assert series["projector.layer1.op"]["linear_relu"] == pytest.approx([0.6, 0.7, 0.8, 0.9])
    png = plot_architecture_history(_history(), tmp_path / "w.png", "t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plot_architecture_history([{"epoch": 1, "architecture": {}}], tmp_path / "none.png") is None
    scalars = ArchitectureScalars(tmp_path / "tb")
    for record in _history():
        scalars(record)
    scalars.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    values = [e.value for e in acc.Scalars("architecture/projector.layer1.op/linear_relu")]
    assert values == pytest.approx([0.6, 0.7, 0.8, 0.9])
