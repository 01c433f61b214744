"""NNI 3.0's ``remote`` training service for real: two trials over SSH to this machine.

A throw-away ``sshd`` (Debian's openssh-server; the test installs nothing and skips where it is
absent or cannot start) listens on a free loopback port with its own host key and accepts one
throw-away client key. That key's login gets its own HOME, the "remote host's" home: NNI keeps the
trial directories there (``~/nni-experiments/<ID>/environments/remote-worker1/trials/<trial>``),
and its ``~/.bashrc`` puts a decoy ``python`` first on PATH, as a conda or pyenv line does
(quirk 28). The shipped ``nni_configs/remote_example.yml``, its placeholders filled and shrunk
to digits, runs two head trials (``retrain --nni``); the test reads each trial's results where
the trial wrote them and compares them with what the manager recorded. nnictl is stopped by
its id, the remote trial keeper and sshd by their process ids, also when a test fails.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.test_nnictl_e2e import NNICTL, Experiment, group_alive, metric_value, rest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "nni_configs" / "remote_example.yml"
PLACEHOLDERS = ("<REPO>", "<HOST>", "<USER>", "<NNI_MANAGER_IP>")
TINY_ARGS = ("--config configs/digits_simsiam.yml --set data.train_subset=256 --set data.test_subset=100 "
             "--set data.batch_size=64 --set model.backbone_width=0.125 --set model.head_width=0.0625 "
             "--set train.epochs=1 --set evaluation.knn_k=10 --set evaluation.linear_epochs=5 "
             "--set trainer.accelerator=cpu")


def _sshd() -> str | None:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").is_file() else None)
    return os.path.abspath(found) if found else None  # sshd re-executes itself: an absolute path


SSHD = _sshd()
needs_sshd = pytest.mark.skipif(
    not NNICTL.exists() or SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="nnictl, or Debian's openssh-server (apt-get install openssh-server), is not installed")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


class SshServer:
    """sshd on 127.0.0.1:<free port>, its own host key, one authorized throw-away key with its own HOME."""

    def __init__(self, base: Path):
        self.base = base
        base.mkdir()
        self.port = free_port()
        self.user = getpass.getuser()
        self.key = base / "client_key"
        self.home = base / "remote_home"
        self.markers = base / "markers"
        self.log = base / "sshd.log"
        self.proc = None

    def write(self) -> None:
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.base / name)], check=True)
        self.home.mkdir()
        self.markers.mkdir()
        decoy = self.base / "decoy"
        decoy.mkdir()
        for name in ("python", "python3"):
            (decoy / name).write_text(f"#!/bin/sh\ntouch {self.markers}/decoy-ran\necho 'decoy python' >&2\nexit 97\n")
            (decoy / name).chmod(0o755)
        # The host's ~/.bashrc, as conda or pyenv leave it: another python first on PATH. It marks
        # every trial shell that reads it, so the test knows the trap was live.
        (self.home / ".bashrc").write_text(
            f'[ -n "$NNI_TRIAL_JOB_ID" ] && touch "{self.markers}/bashrc-$NNI_TRIAL_JOB_ID"\n'
            f'export PATH="{decoy}:$PATH"\n')
        # PIP_*: NNI runs `python -m pip install nni --upgrade` on the host; without an index it
        # finds nni installed and changes nothing (no network, no upgrade of the venv).
        options = f'environment="HOME={self.home}",environment="PIP_NO_INDEX=1",environment="PIP_CONFIG_FILE={os.devnull}"'
        (self.base / "authorized_keys").write_text(f"{options} {(self.base / 'client_key.pub').read_text()}")
        (self.base / "sshd_config").write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {self.base / 'host_key'}",
            f"PidFile {self.base / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            "UsePAM no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "StrictModes no",
            "PermitUserEnvironment yes", "Subsystem sftp internal-sftp", ""]))

    def start(self) -> None:
        self.write()
        if os.geteuid() == 0:  # sshd's privilege separation directory, which Debian's service creates
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.base / "sshd_config")], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while self.proc.poll() is None:  # until it listens (or exits)
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        pytest.skip(f"sshd could not start: {self.log.read_text()[-500:]}")

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
                               "-o", "LogLevel=ERROR", f"{self.user}@127.0.0.1", command],
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def trial_keepers(self) -> list[int]:
        """NNI's trial keeper on the "host" runs in a process group of its own: found by its pid file."""
        pids = []
        for pid_file in self.home.glob("nni-experiments/*/environments/*/trial_keeper*/trial_keeper.pid"):
            pid = int(pid_file.read_text())
            if alive(pid):
                pids.append(pid)
        return pids


def fill(example: dict, port: int, user: str, key: Path) -> dict:
    """The shipped example as a user fills it, pointed at this machine, shrunk to two tiny trials."""
    text = yaml.safe_dump(example)
    for placeholder in PLACEHOLDERS:
        assert placeholder in text, placeholder
    raw = json.loads(json.dumps(example))
    machine = raw["trainingService"]["machineList"][0]
    machine.update(host="127.0.0.1", port=port, user=user, sshKeyFile=str(key),
                   pythonPath=machine["pythonPath"].replace("<REPO>/.venv/bin", str(BIN)))
    raw["nniManagerIp"] = "127.0.0.1"
    raw["trialCommand"] = raw["trialCommand"].replace("<REPO>/.venv/bin/python", sys.executable) + " " + TINY_ARGS
    raw["trialCodeDirectory"] = str(ROOT)
    raw["searchSpaceFile"] = str(EXAMPLE.parent / raw["searchSpaceFile"])
    # One trial at a time: with two at once, which trial runs which queued parameters depends on
    # which asks first (quirk 10), and a remote trial cannot reach the manager to correct it.
    raw.update(trialConcurrency=1, maxTrialNumber=2, maxTrialDuration="5m", maxExperimentDuration="10m")
    assert "<" not in yaml.safe_dump(raw)
    return raw


class RemoteExperiment(Experiment):
    def __init__(self, base: Path, raw: dict):
        super().__init__(base)
        self.raw = dict(raw, experimentWorkingDirectory=str(self.workdir))

    def write_config(self) -> Path:
        path = self.base / "remote.yml"
        path.write_text(yaml.safe_dump(self.raw))
        return path


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    base = tmp_path_factory.mktemp("remote")
    server = SshServer(base / "ssh")
    exp = None
    try:
        server.start()
        login = server.ssh("echo $HOME")
        assert login.returncode == 0 and login.stdout.strip() == str(server.home), \
            f"ssh to the test's sshd failed: {login}; sshd says: {server.log.read_text()[-1000:]}"
        raw = fill(yaml.safe_load(EXAMPLE.read_text()), server.port, server.user, server.key)
        exp = RemoteExperiment(base, raw)
        exp.create()
        exp.status = exp.wait(timeout=420)  # a cap, not a trigger: idle, the whole test takes under 2 minutes
        exp.server = server
        yield exp
    finally:
        pid = exp.pid if exp is not None else None
        try:
            if exp is not None:
                exp.stop()  # nnictl stop <id>, then the manager's process group
        finally:
            deadline = time.monotonic() + 30
            while server.trial_keepers() and time.monotonic() < deadline:  # nnictl stop shuts it down
                time.sleep(0.5)
            keepers = server.trial_keepers()
            for keeper in keepers:  # we started it: end it by its group id
                os.killpg(keeper, signal.SIGKILL)
            server.stop()
        assert keepers == [], f"NNI's trial keeper outlived nnictl stop: {keepers}"
        if pid is not None:
            assert group_alive(pid) == [], f"processes left behind: {group_alive(pid)}"


@needs_sshd
def test_two_head_trials_run_on_the_ssh_host_and_leave_their_results_there(remote):
    assert remote.status == "DONE", (remote.workdir / remote.id / "log" / "nnimanager.log").read_text()[-3000:]
    trials = rest(remote.port, "trial-jobs")
    metrics = rest(remote.port, "metric-data")
    assert len(trials) == 2
    trial_root = remote.server.home / "nni-experiments" / remote.id / "environments" / "remote-worker1" / "trials"
    architectures = []
    for trial in trials:
        assert trial["status"] == "SUCCEEDED", trial
        recorded = json.loads(trial["hyperParameters"][0])
        final = [m for m in metrics if m["trialJobId"] == trial["trialJobId"] and m["type"] == "FINAL"]
        assert len(final) == 1 and str(final[0]["parameterId"]) == str(recorded["parameter_id"])
        results = json.loads((trial_root / trial["trialJobId"] / "retrain_results.json").read_text())
        assert results["architecture"] == recorded["parameters"]  # the head this trial's parameters name
        assert metric_value(final[0]["data"])["default"] == pytest.approx(results["metrics"]["knn_top1"])
        assert results["config"]["data"]["dataset"] == "digits"  # the trial command's own options reached it
        architectures.append(results["architecture"])
        # the trial's bash read the host's ~/.bashrc (quirk 28's trap was live) and the absolute python won
        assert (remote.server.markers / f"bashrc-{trial['trialJobId']}").exists()
    assert architectures[0] != architectures[1]
    assert not (remote.server.markers / "decoy-ran").exists()


@pytest.fixture
def filled(tmp_path) -> dict:
    key = tmp_path / "key"
    key.write_text("a key file NNI's validation finds\n")
    raw = fill(yaml.safe_load(EXAMPLE.read_text()), 2222, "me", key)
    return raw


def test_quirk28_check_accepts_the_filled_example_and_refuses_a_bare_python(filled, tmp_path, capsys):
    from experiments.cli import main

    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(filled))
    assert main(["check", str(good), "--port", str(free_port())]) == 0
    assert "ok: remote trials: the interpreter is named by absolute path" in capsys.readouterr().out
    bare = tmp_path / "bare.yml"
    bare.write_text(yaml.safe_dump(dict(filled, trialCommand=filled["trialCommand"].replace(sys.executable, "python"))))
    assert main(["check", str(bare), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: trialCommand starts with a bare 'python'")


def test_quirk28_only_a_bare_python_is_refused():
    from experiments import nni_compat

    assert "bare 'python3'" in nni_compat.remote_trial_python("python3 -m experiments retrain --nni")
    assert nni_compat.remote_trial_python("/opt/ssl-nas/.venv/bin/python -m experiments retrain --nni") is None
    assert nni_compat.remote_trial_python("'unclosed") is None  # NNI's own checks report that one


def test_quirk29_nniignore_keeps_a_venv_out_of_the_upload(tmp_path, filled, capsys):
    from experiments import nni_compat
    from experiments.cli import main

    code = tmp_path / "repo"
    (code / ".venv" / "lib").mkdir(parents=True)
    (code / "experiments").mkdir()
    for i in range(nni_compat.REMOTE_UPLOAD_MAX_FILES):  # 2,000 files of a venv and 2 of code: one too many
        (code / ".venv" / "lib" / f"m{i}.py").write_text("")
    (code / "experiments" / "a.py").write_text("")
    (code / "experiments" / "b.py").write_text("")
    problem = nni_compat.remote_upload_problem(code)
    assert problem is not None and "more than 2000 files" in problem
    config = tmp_path / "big.yml"
    config.write_text(yaml.safe_dump(dict(filled, trialCodeDirectory=str(code))))
    assert main(["check", str(config), "--port", str(free_port())]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: trialCodeDirectory {code} holds more than 2000 files")
    shutil.copy(ROOT / ".nniignore", code / ".nniignore")  # the repository's own list
    assert nni_compat.remote_upload_problem(code) is None
    (code / "experiments" / "c.pyc").write_bytes(b"x" * 10)  # ignored by name pattern: still fine
    (code / "runs").mkdir()  # ignored folder: its files do not count
    assert nni_compat.remote_upload_problem(code) is None
    assert nni_compat.remote_upload_problem(ROOT) is None  # this checkout, whatever lies in .venv/ and runs/
