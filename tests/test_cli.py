"""Bad input: one clear line on stderr, exit status 2, nothing written."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _run_in_process(args, capsys):
    """The CLI's ``main`` in this process (imports are paid once); same exit code and stderr."""
    from experiments.cli import main

    code = main(args)
    return _Result(code, capsys.readouterr().err)


def _run(args, cwd):
    """The real command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.mark.parametrize("setting,message", [
    (["--set", "framework=simsam"], "unknown framework 'simsam'"),
    (["--set", "search.epochs=-1"], "search.epochs: must be in [1, 100000], got -1"),
    (["--set", "data.dataset=imagefolder", "--set", "data.root=/nonexistent/cifar"], "does not exist"),
    (["--set", "data.batchsize=4"], "did you mean 'batch_size'"),
    (["--set", "optim.lr=fast"], "optim.lr: must be a finite number"),
])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, setting, message):
    out = tmp_path / "out"
    result = _run_in_process(["search", "--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"),
                              "--output-dir", str(out), *setting], capsys)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not out.exists()


HUGE = "9" * 401  # beyond any float: the OverflowError a range used to let through


@pytest.mark.parametrize("job,config,field", [
    ("search", "bench_digits_simsiam.yml", "search.epochs"),
    ("search", "bench_digits_simsiam.yml", "train.epochs"),
    ("search", "bench_digits_simsiam.yml", "evaluation.linear_epochs"),
    ("search", "bench_digits_simsiam.yml", "data.batch_size"),
    ("backbone-search", "digits_backbone_spos.yml", "backbone_search.trials"),
    ("backbone-search", "digits_backbone_spos.yml", "backbone_search.strategy_options.population"),
    ("backbone-search", "digits_backbone_spos.yml", "backbone_search.max_flops"),
])
def test_a_huge_number_is_refused_before_anything_is_written(tmp_path, capsys, job, config, field):
    out = tmp_path / "out"
    result = _run_in_process([job, "--config", str(ROOT / "configs" / config), "--output-dir", str(out),
                              "--set", f"{field}={HUGE}"], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: must be"), result.stderr
    assert "401-digit" in lines[0] or "finite" in lines[0]
    assert not out.exists()


def test_a_number_beyond_python_s_own_limit_is_one_line_too(tmp_path, capsys):
    out = tmp_path / "out"
    huge = tmp_path / "huge.yml"
    huge.write_text("search:\n  epochs: " + "9" * 5000 + "\n")
    for args in (["--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"), "--set", "search.epochs=" + "9" * 5000],
                 ["--config", str(huge)]):
        result = _run_in_process(["search", *args, "--output-dir", str(out)], capsys)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists()


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("framework: simsiam\ndata: [unclosed\n")
    result = _run(["search", "--config", str(bad), "--output-dir", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2 and "malformed YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path, capsys):
    result = _run_in_process(["search", "--config", str(tmp_path / "nope.yml")], capsys)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_finished_run_is_not_overwritten(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "best_architecture.json").write_text('{"keep": true}')
    result = _run(["search", "--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"),
                   "--output-dir", str(out)], tmp_path)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "best_architecture.json").read_text() == '{"keep": true}'


def test_malformed_architecture_json(tmp_path, capsys):
    bad = tmp_path / "arch.json"
    bad.write_text('{"architecture": {"projector.layer1.op": "linear_relu"')
    result = _run_in_process(["retrain", "--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"),
                              "--arch", str(bad), "--output-dir", str(tmp_path / "out")], capsys)
    assert result.returncode == 2 and "malformed architecture JSON" in result.stderr
    assert not (tmp_path / "out").exists()


def test_architecture_with_unknown_label_or_value(tmp_path, capsys):
    import json

    record = json.loads((ROOT / "architectures" / "nasiam_simsiam_cifar10_resnet18.json").read_text())
    record["architecture"]["projector.layer1.op"] = "linear_gelu"
    bad = tmp_path / "arch.json"
    bad.write_text(json.dumps(record))
    result = _run_in_process(["retrain", "--config", str(ROOT / "configs" / "bench_digits_simsiam.yml"),
                              "--arch", str(bad), "--output-dir", str(tmp_path / "out")], capsys)
    assert result.returncode == 2 and "'linear_gelu' is not one of its choices" in result.stderr
    assert not (tmp_path / "out").exists()


def test_faults_as_real_processes_one_error_line_and_exit_2(tmp_path):
    """Issue 23, at the process level: an --output-dir that is a file, and a port out of range."""
    from concurrent.futures import ThreadPoolExecutor

    blocker = tmp_path / "blocker"
    blocker.write_text("kept")
    cases = [(["search", "--config", "configs/digits_simsiam.yml", "--set", "trainer.accelerator=cpu",
               "--output-dir", str(blocker / "run")], f"lies under {blocker}, which is a file"),
             (["check", "nni_configs/darts_simsiam.yml", "--port", "99999"], "--port 99999: a port is 1 to 65535")]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(lambda case: _run(case[0], ROOT), cases))
    for (argv, expected), result in zip(cases, results):
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (argv, result.stderr[-1500:])
        assert "Traceback" not in result.stderr
    assert blocker.read_text() == "kept"
