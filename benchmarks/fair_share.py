"""A fair share on a shared CPU: a default search epoch idle, then beside a busy process this script starts itself.

For each thread policy, a short search of the Quick start config (``configs/digits_simsiam.yml``,
``--epochs`` search epochs after one warm-up epoch) runs idle, then again beside ``--neighbours``
CPU-bound processes of one thread each (a Python busy loop, or a torch matmul loop with
``--neighbour matmul``), started and stopped by this script, each in a session of its own (``--neighbour-session new``:
as another terminal's or job's process; under Linux's scheduler autogroup a process in this
script's own session would share this script's part of a loaded CPU). Policies:

- ``old``: torch's own choice before issue 24: as many threads as usable cores, the loader in
  the job's process (``trainer.threads`` = the cores, ``data.num_workers: 0``);
- ``new``: the package's policy (``experiments/core/machine.py``: one core left free, the
  loader in the job's process), as a new user meets it: ``OMP_NUM_THREADS`` is hidden from
  the job while it is measured (and restored after);
- ``new+1worker``: the same with one loader worker process per loader (``data.num_workers: 1``):
  for the per-image path (``--set data.batched_augment=false``), where the worker makes the views.

The epoch time of a run is the median of its search epochs (the warm-up epoch, weights only and
the first batches, is left out; the per-epoch kNN monitor is outside the epoch time). Every
measurement records the 1-minute load average and the number of running tasks
(``/proc/loadavg``) at its start, the process's peak resident set, and its CPU seconds.
The runs alternate (policy by policy, idle then busy) ``--rounds`` times, so a change of
load on the machine hits all of them; the ratios compare medians over rounds:
busy / idle of the same policy, and busy / the ``old`` policy's idle (what a user sees
against the fastest idle epoch). On a machine that other jobs already load, "idle" is only
"without this script's neighbour": read the load averages beside the ratios.

    python -m benchmarks.fair_share                       # old and new, 1 busy neighbour, 2 rounds
    python -m benchmarks.fair_share --set data.batched_augment=false   # the per-image path
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks._util import ROOT, PeakMemory, median, report

DEFAULTS = {"search.warmup_epochs": 1, "evaluation.linear_epochs": 1, "search.collapse_threshold": 0.0,
            "trainer.progress_bar": False, "trainer.accelerator": "cpu"}
NEIGHBOURS = {
    "busy": "while True: pass",
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a @ a",
}


def policies() -> dict:
    """Config overrides of each thread policy on this machine."""
    from experiments.core.machine import usable_cores

    return {"old": {"trainer.threads": usable_cores(), "data.num_workers": 0}, "new": {},
            "new+1worker": {"data.num_workers": 1}}


def load() -> tuple[float, int]:
    """The 1-minute load average and the tasks running now (the 4th field of /proc/loadavg, less this reader)."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        return float(fields[0]), int(fields[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0], -1


def autogroup() -> bool:
    """Linux's scheduler autogroup is on: each session shares the CPU as one group (a neighbour in this
    script's session would take its CPU from this script's share, one in another session from everyone's)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


@contextmanager
def neighbours(kind: str, count: int, settle_s: float, own_session: bool = True):
    """``count`` one-thread CPU-bound processes for the block's duration (none when ``count`` is 0), each in a
    session of its own (as a neighbour from another terminal or job) unless ``own_session`` is false."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", NEIGHBOURS[kind]], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=own_session) for _ in range(count)]
    try:
        if procs:
            time.sleep(settle_s)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


@contextmanager
def hidden_env(name: str, hide: bool):
    value = os.environ.pop(name, None) if hide else None
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def measure(config: str, overrides: dict, policy: str, busy: int, args) -> dict:
    """One short search under ``policy`` beside ``busy`` neighbours: its epoch time, load, memory."""
    from experiments.core.validation import load_config
    from experiments.core.machine import thread_policy
    from experiments.jobs.search import run_search

    out = Path(tempfile.mkdtemp(prefix="bench-fair-share-"))
    cfg = load_config(config, {**overrides, **policies()[policy], "output_dir": str(out)})
    beside = neighbours(args.neighbour, busy, args.settle, own_session=args.neighbour_session == "new")
    with hidden_env("OMP_NUM_THREADS", hide=policy.startswith("new")), beside:
        load_1m, running = load()
        chosen = thread_policy(cfg)
        wall, cpu = time.perf_counter(), time.process_time()
        with PeakMemory("cpu") as memory:
            record = run_search(cfg, out, log_fn=lambda line: None, overwrite=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    warmup = cfg.search.warmup_epochs
    epochs = [h["epoch_seconds"] for h in record["history"] if h["epoch"] > warmup] or \
        [h["epoch_seconds"] for h in record["history"]]
    return {"policy": policy, "neighbours": busy, "threads": chosen.threads, "workers": chosen.workers,
            "load_1m": load_1m, "running": running, "epoch_s": median(epochs),
            "epochs_s": [round(e, 3) for e in epochs],
            "wall_s": wall, "cpu_s": cpu, "peak_mib": memory.mib}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fair_share", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits_simsiam.yml"))
    parser.add_argument("--policies", default="old,new", help="comma list of: old, new, new+1worker")
    parser.add_argument("--epochs", type=int, default=4, help="search epochs per run (after one warm-up epoch)")
    parser.add_argument("--neighbour", default="busy", choices=sorted(NEIGHBOURS),
                        help="busy: a Python busy loop; matmul: a one-thread torch matmul loop")
    parser.add_argument("--neighbours", type=int, default=1, help="competing processes in the busy runs")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between starting them and the run")
    parser.add_argument("--neighbour-session", default="new", choices=("new", "same"),
                        help="new: each neighbour in a session of its own, as another terminal's or job's process; "
                             "same: in this script's session (under scheduler autogroup it then shares this "
                             "script's part of a loaded CPU)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.device = "cpu"

    from experiments.core.config import parse_overrides

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = sorted(set(names) - set(policies()))
    if unknown:
        raise SystemExit(f"error: --policies: unknown {', '.join(unknown)} (choose from {', '.join(policies())})")
    overrides = {**DEFAULTS, "search.epochs": args.epochs + DEFAULTS["search.warmup_epochs"],
                 **parse_overrides(args.set)}
    omp = os.environ.get("OMP_NUM_THREADS")
    rows = []
    for round_ in range(args.rounds):
        for policy in names:
            for busy in (0, args.neighbours):
                row = {"round": round_, **measure(args.config, overrides, policy, busy, args)}
                rows.append(row)
                print(f"round {round_} {policy:3s} {'busy' if busy else 'idle'}: {row['epoch_s']:.2f} s/epoch, "
                      f"{row['threads']} thread(s), load {row['load_1m']:.1f} ({row['running']} running), "
                      f"{row['peak_mib']:.0f} MiB", flush=True)
    summary = {}
    idle = {p: median(r["epoch_s"] for r in rows if r["policy"] == p and not r["neighbours"]) for p in names}
    busy = {p: median(r["epoch_s"] for r in rows if r["policy"] == p and r["neighbours"]) for p in names}
    for p in names:
        summary[f"{p}: busy / idle (target <= 1.5)"] = busy[p] / idle[p]
        if "old" in idle and p != "old":
            summary[f"{p}: busy / old idle"] = busy[p] / idle["old"]
            summary[f"{p}: idle / old idle"] = idle[p] / idle["old"]
    summary["load_1m at the start of the runs (min, max)"] = \
        f"{min(r['load_1m'] for r in rows):.2f}, {max(r['load_1m'] for r in rows):.2f}"
    report("fair_share", f"Fair share: {args.epochs}-epoch digits search, idle and beside {args.neighbours} "
           f"{args.neighbour} process(es)", ["policy", "round", "neighbours", "threads", "workers", "load_1m",
                                             "running", "epoch_s", "wall_s", "cpu_s", "peak_mib"],
           rows, args, summary,
           notes=[f"overrides: {overrides}", f"OMP_NUM_THREADS in the environment: {omp or 'unset'} "
                  "(hidden from the new policy's runs)",
                  f"neighbour session: {args.neighbour_session}; scheduler autogroup: {'on' if autogroup() else 'off'}",
                  "epoch_s: median search epoch (warm-up epoch excluded); load_1m / running: /proc/loadavg at "
                  "the run's start, the neighbours already started; wall_s, cpu_s: the whole job (data, monitor, "
                  "final evaluation); peak_mib: the process's peak RSS during the run."])


if __name__ == "__main__":
    main()
