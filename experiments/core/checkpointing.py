"""Checkpoint and resume I/O: the checkpoint file, the random state, and the callback that makes a resume exact.

- ``checkpoints/last.ckpt``: Lightning's checkpoint at every epoch end (network and
  architecture weights, both optimisers, schedulers, momentum encoders and queues, loop
  progress, the monitor's history) plus ``RunState``: RNG states, the data seed, the
  sampler position and the run's fingerprint. Written to a temporary file that is renamed
  into place, so the last good checkpoint survives any crash; loaded with
  ``torch.load(weights_only=True)``.
- ``RunState`` also stops a run on SIGINT and SIGTERM after the current batch and saves a
  checkpoint there first (its signal handlers and its saved state are one mechanism: the
  stop is exact because the state says which batches are done).

Which directory a run owns, and whether it resumes or starts, is ``experiments.core.run_dir``.
"""
from __future__ import annotations

import contextlib
import random
import signal
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from experiments import nni_compat

import numpy as np
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from experiments.core.errors import ConfigError, RunInterrupted, RunStoppedAtOnce, one_line
from experiments.core.files import atomic_torch_save

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
STATE_FORMAT = 1

# We restore the sampler's position ourselves (RunState), so a mid-epoch checkpoint resumes
# exactly; Lightning cannot see that and warns that the loader is not resumable.
warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
# A resumed run finds its own checkpoint: ModelCheckpoint replaces last.ckpt.
warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used for this run; one line for the user."""


# --- checkpoint files ---------------------------------------------------------------------------
def load_failure(err: BaseException, limit: int = 240) -> str:
    """Why ``torch.load`` failed, as one whole sentence: for a file that holds objects beyond tensors,
    the object it met, never torch's advice to load it with ``weights_only=False`` (that runs its code)."""
    text = one_line(err)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip()
        detail = detail.split(" Please ", 1)[0].split(" Check the ", 1)[0].rstrip(" .")
        return f"it holds more than tensors, so it is not safe to load ({detail})"
    sentence = text.split(". ", 1)[0].rstrip(" .") or type(err).__name__
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(err).__name__}: {sentence}"


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """A checkpoint loaded with ``weights_only=True``; a bad file is one clear line."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, foreign or unsafe: all the same to the user
        raise CheckpointError(f"{path}: cannot load checkpoint ({load_failure(err)})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this package")
    return payload


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with an atomic rename on save and ``weights_only=True`` on load."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        return load_checkpoint(Path(path), map_location if map_location is not None else "cpu")


# --- RNG states, safe to load with weights_only=True --------------------------------------------
def capture_rng() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors, lists and numbers only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": py_gauss},
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# --- a run's checkpoint ------------------------------------------------------------------------------
def checkpoint_callbacks(fingerprint: str, seed: int, checkpoint_dir: Path, samplers: Sequence[Any] = (),
                         batch_size: int = 1) -> tuple["RunState", ModelCheckpoint]:
    """Our RunState and Lightning's ModelCheckpoint writing ``checkpoint_dir/last.ckpt`` at every epoch end."""
    state = RunState(fingerprint, seed, samplers, batch_size, checkpoint_dir / LAST)
    # One file, replaced at every epoch end. (``save_last=True`` with ``save_top_k=0`` would
    # write only when training ends: Lightning saves "last" only after a top-k save.)
    checkpoint = ModelCheckpoint(dirpath=str(checkpoint_dir), filename=LAST.removesuffix(".ckpt"),
                                 monitor=None, save_top_k=1, save_last=False, every_n_epochs=1,
                                 save_on_train_epoch_end=True, enable_version_counter=False)
    return state, checkpoint


def check_resumable(path: Path, record: dict) -> dict:
    """The resumable checkpoint must load safely and come from this very run; returns its RunState."""
    try:
        payload = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; pass --overwrite to start over or choose another --output-dir") from None
    state = (payload.get("callbacks") or {}).get(RunState.__qualname__)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} was not written by this package's {record['job']}; pass --overwrite to "
                              f"start over or choose another --output-dir")
    if state.get("fingerprint") != record["fingerprint"]:
        what = "architecture" if "architecture" in record else "config"
        raise CheckpointError(f"{path} comes from a run with another {what} (fingerprint {state.get('fingerprint')}, "
                              f"this run {record['fingerprint']}); pass --overwrite to start over or choose another "
                              f"--output-dir")
    return state


def resume_note(state: dict) -> str:
    """Where a resumed run starts: after a whole epoch, or inside one."""
    epoch = int(state.get("epoch", 0)) + 1
    if state.get("mid_epoch"):
        return f"in epoch {epoch}, after its batch {int(state.get('batches_done', 0))}"
    return f"epoch {epoch} done"


# --- the callback ---------------------------------------------------------------------------------
class RunState(Callback):
    """What Lightning's checkpoint lacks for an exact resume, and a graceful stop on SIGINT/SIGTERM.

    Saved in every checkpoint: RNG states, the data seed, the epoch and batches done (so the
    seeded samplers resume where they were) and the run's fingerprint. A signal sets a flag;
    the run stops before the next batch, saves ``last.ckpt`` there and raises RunInterrupted.
    A second signal stops at once. Under DDP the ranks agree before every batch on whether any
    of them got a signal, so all stop before the same batch; they keep the last epoch's
    checkpoint (see ``on_exception``).
    """

    def __init__(self, fingerprint: str, seed: int, samplers: Sequence[Any] = (), batch_size: int = 1,
                 checkpoint_path: Optional[Path] = None):
        self.fingerprint, self.seed = fingerprint, int(seed)
        self.samplers, self.batch_size = list(samplers), int(batch_size)
        self.checkpoint_path = checkpoint_path
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._trainer = None
        self._replay_epoch_start = False
        self._pending_rng: Optional[dict] = None
        self._training_ended = False

    # state ---------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        trainer = self._trainer
        epoch = int(trainer.current_epoch) if trainer is not None else 0
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed) if trainer is not None else 0
        total = getattr(trainer, "num_training_batches", float("inf")) if trainer is not None else float("inf")
        return {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "seed": self.seed,
                "epoch": epoch, "batches_done": done, "mid_epoch": bool(done < total),
                "rng": capture_rng()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"the checkpoint comes from another run (fingerprint {state.get('fingerprint')}, "
                                  f"this run {self.fingerprint})")
        if int(state.get("seed", self.seed)) != self.seed:
            raise CheckpointError(f"the checkpoint was made with seed {state.get('seed')}, this run has {self.seed}")
        epoch, done, mid = int(state["epoch"]), int(state["batches_done"]), bool(state["mid_epoch"])
        # Every new DataLoader iterator draws a seed from the global generator. After an epoch
        # end the uninterrupted run creates the next epoch's iterators too: restore now, before
        # Lightning creates them. In mid-epoch it creates none: restore once they exist.
        if mid:
            self._pending_rng = state["rng"]
        else:
            restore_rng(state["rng"])
        self._replay_epoch_start = mid
        for sampler in self.samplers:
            if mid:
                sampler.resume_at(epoch, done * self.batch_size)
            # Set the epoch now: Lightning creates the first iterator before it calls set_epoch.
            sampler.set_epoch(epoch if mid else epoch + 1)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        nni_compat.forward_checkpoint_hook(pl_module, "on_save_checkpoint", checkpoint)
        for logger in trainer.loggers:  # the logs are as durable as the checkpoint (CSV flushes every 100 steps)
            logger.save()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        nni_compat.forward_checkpoint_hook(pl_module, "on_load_checkpoint", checkpoint)

    # signals -------------------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: stop now, without a checkpoint
            self._restore_handlers()
            # not KeyboardInterrupt: Lightning turns that into sys.exit(1), and the user's 130 is lost
            raise RunStoppedAtOnce(signum)
        self.signum = signum

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending_rng is not None:  # after Lightning created the resumed epoch's iterators
            restore_rng(self._pending_rng)
            self._pending_rng = None
        # Under DDP too: Lightning's own SIGTERM handler would stop rank zero alone, mid-batch (a
        # collective inside the handler), and leave the other ranks to crash; ours only sets the flag.
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handler)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._replay_epoch_start:  # resumed mid-epoch: Lightning skipped the epoch-start hook
            self._replay_epoch_start = False
            nni_compat.replay_epoch_start(pl_module)
        # Checked before a batch, when the previous one is fully counted: the checkpoint
        # then says exactly which batches are done.
        signum = self._agreed_signal(trainer) if trainer.world_size > 1 else self.signum
        if signum is not None:
            raise RunInterrupted(signum)

    def _agreed_signal(self, trainer) -> Optional[int]:
        """Under DDP: the signal any rank received (the highest number), so every rank stops before the same
        batch and takes part in the checkpoint's save. A signal often reaches one rank only: ``kill`` of
        rank zero's pid, or nnictl's SIGINT to the trial process."""
        mine = torch.tensor([self.signum or 0], device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(mine, reduce_op="max").item()) or None

    def on_train_end(self, trainer, pl_module) -> None:
        # A signal in the last batch or the last epoch's end found no next batch to stop before: the
        # final checkpoint is written, and the run stops here instead of going on to its evaluation.
        signum = self._agreed_signal(trainer) if trainer.world_size > 1 else self.signum
        self._restore_handlers()
        if signum is not None:
            self._training_ended = True  # the last epoch's checkpoint is the final one: nothing to save
            raise RunInterrupted(signum)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
        interrupted = isinstance(exception, (RunInterrupted, SIGTERMException)) \
            and not isinstance(exception, RunStoppedAtOnce)
        if interrupted and self.checkpoint_path is not None:
            # Under DDP Lightning shards our sampler's order itself, and a mid-epoch start would skip
            # the wrong samples: keep the last epoch's checkpoint, and the resume repeats this epoch.
            saved = trainer.fit_loop.epoch_loop.batch_progress.current.completed > 0 and trainer.world_size == 1 \
                and not self._training_ended
            if saved:
                trainer.save_checkpoint(str(self.checkpoint_path))
            if isinstance(exception, RunInterrupted):
                exception.checkpoint = self.checkpoint_path if self.checkpoint_path.is_file() else None
                exception.saved_now = saved
                exception.args = (exception.describe(),)
