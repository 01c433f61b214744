"""``pip install .`` gives the ``ssl-nas`` command with the jobs of ``python -m experiments``.

Offline and in seconds: a throwaway venv without pip sees the project venv's packages through
a ``.pth`` file; the project venv's pip installs this checkout into it with no dependencies and
no build isolation (no index is asked).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import ROOT


def test_pip_install_gives_the_ssl_nas_command_with_every_job(tmp_path):
    from experiments.cli import job_modules

    source = tmp_path / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    for name in ("experiments", "evaluators", "search_spaces", "configs", "architectures"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                              "--no-build-isolation", str(source)], capture_output=True, text=True, env=env,
                             timeout=240, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    command = venv / "bin" / "ssl-nas"
    away = tmp_path / "elsewhere"  # not the checkout: the installed copy must be what runs
    away.mkdir()
    where = subprocess.run([str(python), "-c", "import experiments; print(experiments.__file__)"], cwd=away,
                           capture_output=True, text=True, env=env, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    help_text = subprocess.run([str(command), "--help"], cwd=away, capture_output=True, text=True, env=env,
                               timeout=120)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert help_text.stdout.startswith("usage: ssl-nas")
    for module in job_modules():
        assert module.NAME in help_text.stdout, module.NAME
    studies = subprocess.run([str(command), "study", "--help"], cwd=away, capture_output=True, text=True, env=env,
                             timeout=120)
    assert studies.returncode == 0 and studies.stdout.startswith("usage: ssl-nas study"), studies.stderr[-2000:]
    from experiments.studies import STUDIES

    for name in STUDIES:
        assert f"    {name}" in studies.stdout, name
    assert (venv / "share" / "ssl-nas" / "configs" / "study_digits.yml").is_file()
    # one job through the installed command, on the installed copy of the Quick start's config
    config = venv / "share" / "ssl-nas" / "configs" / "digits_simsiam.yml"
    job = subprocess.run([str(command), "export-space", "--config", str(config)], cwd=away, capture_output=True,
                         text=True, env=env, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    space = json.loads(job.stdout)
    assert space["projector.layer1.op"]["_value"][:3] == ["maxpool_3x3", "avgpool_3x3", "identity"]
