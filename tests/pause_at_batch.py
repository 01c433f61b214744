"""Run the command line and pause the process (SIGSTOP) right after one given training batch.

A test that must kill a run in the middle of an epoch waits for this pause, an event, instead of
sleeping for a fraction of a measured epoch: the kill lands after the same batch on a fast
machine, a slow one and a busy one alike.

    python -m tests.pause_at_batch EPOCH BATCH -- search --config ... (the `python -m experiments` arguments)

EPOCH and BATCH count from 0, as Lightning's ``current_epoch`` and ``batch_idx`` do.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def is_paused(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state T in /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def install_pause(epoch: int, batch: int) -> None:
    """Add to every Lightning Trainer built from now on a callback that stops this process after the batch."""
    import pytorch_lightning as pl

    class PauseAfterBatch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch_data, batch_idx):
            if trainer.current_epoch == epoch and batch_idx == batch:
                os.kill(os.getpid(), signal.SIGSTOP)

    original_init = pl.Trainer.__init__

    def init_with_pause(self, *args, **kwargs):
        callbacks = kwargs.get("callbacks") or []
        kwargs["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), PauseAfterBatch()]
        original_init(self, *args, **kwargs)

    pl.Trainer.__init__ = init_with_pause


def main(argv: list[str]) -> int:
    epoch, batch, separator, *command = argv
    if separator != "--":
        raise SystemExit("usage: python -m tests.pause_at_batch EPOCH BATCH -- JOB ARGS...")
    install_pause(int(epoch), int(batch))
    from experiments.cli import main as cli_main

    sys.argv = ["experiments", *command]
    return cli_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
