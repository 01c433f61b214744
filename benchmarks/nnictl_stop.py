"""How ``nnictl stop`` ends a running search trial: a check by hand (not a test: about 1-2 minutes).

NNI 3.0's local training service stops a trial with SIGINT, then SIGKILL 5 s later, and closes
the trial's channel to the manager at the same time. This starts one tiny trial of
``nni_configs/darts_simsiam.yml`` (30 epochs, so it is still running) on a free loopback port
with its own HOME and working directory, waits for its first checkpoint, runs ``nnictl stop``
and prints the trial's ``status.json``, its ``error:`` lines and the checkpoint's RunState. The
experiment is always stopped and its process group ended.

    OMP_NUM_THREADS=1 python -m benchmarks.nnictl_stop /tmp/nnictl_stop
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tests import test_nnictl_e2e as e2e  # noqa: E402  (its Experiment: create, stop, clean up)


def main(base: Path) -> None:
    import torch

    base.mkdir(parents=True, exist_ok=True)
    exp = e2e.Experiment(base)
    e2e.ARCH_LRS = [0.001]
    exp.env["SSLNAS_ARGS"] = e2e.TINY_ARGS.replace("search.epochs=1", "search.epochs=30")
    try:
        exp.create()
        deadline, ckpt = time.monotonic() + 400, None
        while ckpt is None and time.monotonic() < deadline:
            ckpt = next(iter(exp.workdir.glob(f"{exp.id}/**/checkpoints/last.ckpt")), None)
            time.sleep(0.5)
        if ckpt is None:
            raise SystemExit("the trial wrote no checkpoint in 400 s")
        trial = ckpt.parent.parent
        exp.stop()
        print("status.json:", (trial / "status.json").read_text())
        stderr = (trial / "trial.stderr").read_text()
        print("error lines:", [line for line in stderr.splitlines() if line.startswith("error:")])
        print("traceback:", "Traceback" in stderr)
        print("warnings:", [line for line in (trial / "trial.log").read_text().splitlines() if "warning:" in line])
        state = torch.load(ckpt, weights_only=True)["callbacks"]["RunState"]
        print("RunState:", {k: v for k, v in state.items() if k != "rng"})
    finally:
        exp.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
