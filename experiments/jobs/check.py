"""Check an nnictl experiment file before ``nnictl create`` starts trials that would all fail.

``python -m experiments check nni_configs/darts_simsiam.yml [--port 8080]`` checks, in
a few seconds: the NNI file itself (NNI's own schema), the trial command (our entry, ``--nni``, a
``python`` on PATH that has the requirements), the SSL config it names with its ``--set``
overrides and ``$SSLNAS_ARGS``, every search-space key and the ends of its range against that
config, that the dataset is on disk, and that the port is free. The first problem ends it with
one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from experiments.core.errors import ConfigError, existing_file
from experiments.core.validation import load_config
from experiments.jobs.command import OneLineParser

DEFAULT_PORT = 8080
# Training services whose manager also listens on port + 1 (NNI 3.0 launcher).
WEBSOCKET_PLATFORMS = ("hybrid", "remote", "openpai", "kubeflow", "frameworkcontroller", "adl")
JOBS = ("search", "backbone-search", "retrain")  # the jobs an nnictl trial runs
NAME = "check"
HELP = "check an nnictl experiment file (and its SSL config, data, port) before nnictl create"


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def trial_parser() -> argparse.ArgumentParser:
    """The command line of the jobs a trial runs, exactly as ``python -m experiments`` reads it."""
    from experiments.jobs import backbone_search, retrain, search

    p = OneLineParser(prog="python -m experiments")
    sub = p.add_subparsers(dest="job", required=True)
    for module in (search, backbone_search, retrain):
        module.add_arguments(sub.add_parser(module.NAME, job=module.NAME))
    return p


def load_experiment_config(path: str | Path):
    """NNI's own parse and validation of the experiment file, errors as one line."""
    from experiments import nni_compat

    p = existing_file(path, "nnictl config")
    try:
        canonical = nni_compat.load_experiment_config(p)
    except Exception as err:  # noqa: BLE001 - NNI raises AttributeError, ValueError, TypeError, yaml errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{p}: {first}") from None
    return canonical


def representative_values(spec: Any, key: str) -> list:
    """The values of a search-space entry worth checking: every choice, or the ends of a range."""
    if not isinstance(spec, dict) or "_type" not in spec or "_value" not in spec:
        raise ConfigError(f"searchSpace.{key}: needs _type and _value (NNI's search-space format)")
    kind, value = spec["_type"], spec["_value"]
    # NNI's own validation lets some of these through (randint: [a, b], choice: 5), and the tuner fails later
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"searchSpace.{key}: choice needs a non-empty list of values, got {value!r}")
        return list(value)
    arity = RANGE_ARITY.get(kind)
    if arity is None:
        raise ConfigError(f"searchSpace.{key}: unknown _type {kind!r}")
    if not isinstance(value, list) or len(value) != arity or not all(_is_number(v) for v in value):
        raise ConfigError(f"searchSpace.{key}: {kind} needs a list of {arity} numbers, got {value!r}")
    if kind == "randint":
        if not all(float(v).is_integer() for v in value) or value[0] >= value[1]:
            raise ConfigError(f"searchSpace.{key}: randint needs [lower, upper) integers with lower < upper, "
                              f"got {value!r}")
        return [int(value[0]), int(value[1]) - 1]
    if kind.startswith("q") and value[2] <= 0:
        raise ConfigError(f"searchSpace.{key}: {kind}'s q must be > 0, got {value[2]!r}")
    if "normal" in kind:
        if value[1] <= 0:
            raise ConfigError(f"searchSpace.{key}: {kind}'s sigma must be > 0, got {value[1]!r}")
        return [value[0]]
    if value[0] > value[1] or ("log" in kind and value[0] <= 0):
        raise ConfigError(f"searchSpace.{key}: {kind} needs low <= high{' and low > 0' if 'log' in kind else ''}, "
                          f"got {value!r}")
    return [value[0], value[1]]


#: how many numbers each range _type takes in NNI's search-space format
RANGE_ARITY = {"randint": 2, "uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3,
               "normal": 2, "lognormal": 2, "qnormal": 3, "qlognormal": 3}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def expand(command: str, env: dict) -> str:
    """``$NAME`` and ``${NAME}`` as bash expands them (unset is empty), e.g. ``$SSLNAS_ARGS``."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), command)


def trial_arguments(command: str, env: dict) -> tuple[list[str], Optional[Any]]:
    """``(tokens, parsed args)`` of the trial command; args is None when it is not our entry."""
    expanded = expand(command, env)
    try:
        tokens = shlex.split(expanded)
    except ValueError as err:
        raise ConfigError(f"trialCommand: cannot split {expanded!r}: {err}") from None
    if len(tokens) < 4 or tokens[1:3] != ["-m", "experiments"] or tokens[3] not in JOBS:
        return tokens, None
    try:
        args = trial_parser().parse_args(tokens[3:])
    except ConfigError as err:
        raise ConfigError(f"trialCommand: {err}") from None
    return tokens, args


def check_python(executable: str, code_dir: Path, env: dict) -> str:
    """The trial's ``python`` must exist on PATH and import the requirements."""
    found = shutil.which(executable, path=env.get("PATH", ""))
    if found is None:
        raise ConfigError(f"trialCommand: {executable!r} is not on PATH; activate the project's virtual "
                          f"environment (source .venv/bin/activate) before nnictl create")
    if os.path.realpath(found) == os.path.realpath(sys.executable):
        return found
    probe = subprocess.run([found, "-c", "import torch, nni, pytorch_lightning, experiments"], cwd=code_dir,
                           env=env, capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["it failed"])[-1]
        raise ConfigError(f"trialCommand: {executable!r} on PATH is {found}, which cannot import the "
                          f"requirements ({last}); activate the project's virtual environment before nnictl create")
    return found


def check_port_number(port: int, platform: str) -> None:
    last = 65535 - (1 if platform in WEBSOCKET_PLATFORMS else 0)  # the manager's port + 1 must exist too
    if not 1 <= port <= last:
        raise ConfigError(f"--port {port}: a port is 1 to {last} here (0 would let the system pick one, which "
                          f"nnictl cannot be told); pass another --port")


def check_port(port: int, platform: str) -> None:
    check_port_number(port, platform)
    ports = [port] + ([port + 1] if platform in WEBSOCKET_PLATFORMS else [])
    for p in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", p)) == 0:
                raise ConfigError(f"port {p} is taken (another experiment or program listens there); "
                                  f"pass another --port to nnictl create")
        with socket.socket() as probe:
            try:
                probe.bind(("", p))
            except OSError as err:
                raise ConfigError(f"port {p} cannot be used: {err.strerror}; pass another --port") from None


def check_dataset(cfg) -> None:
    from experiments.core.data import DATASETS

    d = cfg.data
    if not DATASETS[d.dataset].folder:
        return
    for split in ("train", "test"):
        folder = Path(d.root) / split
        if not folder.is_dir() or not any(child.is_dir() for child in folder.iterdir()):
            raise ConfigError(f"data.root: {folder} is missing or has no class folders (an ImageFolder "
                              f"layout with train/ and test/ splits is needed)")


def check_budget_of(cfg, costs: dict) -> None:
    """A backbone search's own budget check (``check_budget``, which the job runs before it claims its
    directory): a ``max_flops`` or ``max_params`` below the space's smallest network would make the trial
    exit 2. ``costs`` keeps each space's cost model, so choices of the budget alone build it once."""
    b = cfg.backbone_search
    if b.max_flops is None and b.max_params is None:
        return
    from experiments.core.assembly import build_space
    from experiments.core.data import DataError, load_images
    from experiments.strategies.budget import check_budget
    from search_spaces.head_widths import network_cost

    d = cfg.data
    key = json.dumps([cfg.to_dict()["framework"], cfg.to_dict()["model"], d.dataset, d.root, d.image_size],
                     sort_keys=True, default=str)
    if key not in costs:
        try:
            train = load_images(d.dataset, "train", d.root, 1, cfg.seed, d.image_size)  # one image: its size
        except DataError as err:
            raise ConfigError(f"data: {err}") from None
        try:
            space = build_space(cfg, num_classes=len(train.classes))
            costs[key] = network_cost(space, int(train.images.shape[-1]))
        except (ValueError, TypeError) as err:  # as the job says it: a backbone option of the wrong type
            raise ConfigError(f"model: {' '.join(str(err).split())}") from None
    check_budget(b.max_flops, b.max_params, costs[key], cfg.model.backbone)


def check(path: str | Path, port: Optional[int] = DEFAULT_PORT, env: Optional[dict] = None) -> list[str]:
    """All checks; returns what was found, raises ConfigError on the first problem."""
    from experiments.core.config import parse_overrides

    env = dict(os.environ) if env is None else env
    notes = []
    exp = load_experiment_config(path)
    platform = exp.training_service.platform if not isinstance(exp.training_service, list) else "hybrid"
    if port is not None:  # before the slower checks
        check_port_number(port, platform)
    notes.append(f"{path}: NNI accepts it ({exp.tuner.name if exp.tuner else 'no'} tuner, {platform} "
                 f"training service, {exp.trial_concurrency} at a time, at most {exp.max_trial_number} trials)")
    code_dir = Path(exp.trial_code_directory)
    if platform == "remote":  # NNI 3.0's remote service: trial python and upload (nni_compat quirks 28, 29)
        from experiments import nni_compat

        for problem in (nni_compat.remote_trial_python(exp.trial_command), nni_compat.remote_upload_problem(code_dir)):
            if problem:
                raise ConfigError(problem)
        notes.append(f"remote trials: the interpreter is named by absolute path; {code_dir} uploads within NNI's limits")
    tokens, args = trial_arguments(exp.trial_command, env)
    if args is None:
        notes.append("trialCommand does not run `python -m experiments search|backbone-search|retrain`: only NNI's checks apply")
    else:
        if not args.nni:
            raise ConfigError("trialCommand: add --nni, or trials run without reporting to the dashboard")
        if platform == "local":
            notes.append(f"trial python: {check_python(tokens[0], code_dir, env)}")
        overrides = parse_overrides(args.overrides)
        with _cwd(code_dir):
            cfg = load_config(args.config, overrides)
            check_dataset(cfg)
            notes.append(f"SSL config {args.config}: {cfg.framework}, {cfg.model.head_space} heads, "
                         f"{cfg.data.dataset} data")
            labels = {}
            if args.job == "retrain" and not args.arch:
                from experiments.core.assembly import build_space

                labels = {str(k): list(m.values) for k, m in build_space(cfg).simplify().items()}
                missing = sorted(set(labels) - set(exp.search_space or {}))
                if missing:
                    raise ConfigError(f"searchSpace: a head trial needs every label of the space; missing "
                                      f"{', '.join(missing)} (regenerate it with python -m experiments export-space)")
            costs: dict = {}
            budgeted = args.job == "backbone-search"  # the job checks its budget against the space before it starts
            if budgeted:
                check_budget_of(cfg, costs)
            for key, spec in (exp.search_space or {}).items():
                for value in representative_values(spec, key):
                    if key in labels:
                        if value not in labels[key]:
                            raise ConfigError(f"searchSpace.{key}: {value!r} is not one of its choices {labels[key]}")
                        continue
                    try:
                        trial_cfg = load_config(args.config, {**overrides, key: value})
                        if budgeted:
                            check_budget_of(trial_cfg, costs)
                    except ConfigError as err:
                        raise ConfigError(f"searchSpace.{key} = {value!r}: {err}") from None
            notes.append(f"searchSpace: {len(exp.search_space or {})} keys, every choice and range end accepted")
    if port is not None:
        check_port(port, platform)
        notes.append(f"port {port} is free")
    return notes


def add_arguments(s) -> None:
    s.add_argument("nni_config", help="an nnictl experiment file, e.g. nni_configs/darts_simsiam.yml")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="the port nnictl create will use (default 8080)")


def run(args) -> int:
    notes = check(args.nni_config, args.port)
    for note in notes:
        print(f"ok: {note}")
    port = f" --port {args.port}" if args.port is not None else ""
    extra = os.environ.get("SSLNAS_ARGS")
    prefix = f"SSLNAS_ARGS={shlex.quote(extra)} " if extra else ""
    print(f"ready: {prefix}nnictl create --config {args.nni_config}{port}")
    return 0
