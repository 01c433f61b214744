"""The ownership of a run's output directory: who may write there, what it holds, resume or start.

A search or retrain owns its output directory while it runs:

- ``.lock``: an exclusive ``flock`` held for the whole run, so a second run on the same
  directory (another nnictl trial, a second terminal) is refused; the kernel releases it
  when the process ends, even by SIGKILL.
- ``run.json``: what the run is (job, config, architecture). Running the same command
  again resumes; a different config on that directory is refused, never overwritten.
- ``checkpoints/``: the run's checkpoint (``experiments.core.checkpointing``).
- ``status.json``: running, interrupted, failed (with the reason) or finished.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pytorch_lightning.utilities.exceptions import SIGTERMException

from experiments.core.checkpointing import (CHECKPOINT_DIR, LAST, RunState, check_resumable, checkpoint_callbacks,
                                            resume_note)
from experiments.core.config import Config
from experiments.core.errors import (ConfigError, OutputUnwritable, RunFailed, RunInterrupted, describe_os_error,
                                     is_filesystem_error, one_line)
from experiments.core.files import write_json_atomic, write_text_in_place
from experiments.core.machine import apply_thread_policy, check_trainer, log_thread_policy
from experiments.core.run_log import open_run_log

RUN_RECORD = "run.json"
STATUS = "status.json"
LOCK = ".lock"
#: what a job writes into its output directory; ``--overwrite`` clears exactly these
JOB_OUTPUTS = (CHECKPOINT_DIR, RUN_RECORD, STATUS, "logs", "tensorboard", "nni", "wandb", "mlruns")
#: what run.json holds beside the record, which no config difference is about
RECORD_NOTES = ("fingerprint", "created")
#: config fields that do not change a run's results (a resume may differ in them)
VOLATILE_FIELDS = ("output_dir", "trainer.progress_bar", "data.num_workers", "trainer.threads", "trainer.logger",
                   "trainer.logger_options")

# A resumed run finds its own logs: the earlier metrics.csv was moved aside (_keep_csv_log),
# and TensorBoard adds an event file.
warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")


# --- the run record ------------------------------------------------------------------------------
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def run_record(cfg: Config, job: str, extra: Optional[dict] = None) -> dict:
    """What identifies a run: the job, the config less its volatile fields, and ``extra`` (the architecture)."""
    config = json.loads(json.dumps(cfg.to_dict()))
    for dotted in VOLATILE_FIELDS:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    record = {"job": job, "config": config, **(json.loads(json.dumps(extra)) if extra else {})}
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


def _differences(old: dict, new: dict, limit: int = 3) -> str:
    a, b = _flatten({k: v for k, v in old.items() if k not in RECORD_NOTES}), \
        _flatten({k: v for k, v in new.items() if k not in RECORD_NOTES})
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    parts = [f"{k.removeprefix('config.')} {b.get(k, '<unset>')!r} here, {a.get(k, '<unset>')!r} there"
             for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def global_rank() -> int:
    """This process's rank under DDP (0 without it), as Lightning set it."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


@dataclass
class Run:
    """A claimed output directory: what to add to the trainer, and where to resume from."""

    out: Path
    job: str
    record: dict
    resume_from: Optional[Path] = None
    resumed_epoch: Optional[int] = None
    state: Optional["RunState"] = field(default=None, repr=False)
    lock_fd: Optional[int] = field(default=None, repr=False)
    previous_handlers: dict = field(default_factory=dict, repr=False)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR

    def callbacks(self, cfg: Config, samplers: Sequence[Any] = (), batch_size: int = 1) -> list:
        """Lightning's ModelCheckpoint (``last.ckpt`` at every epoch end) and our RunState."""
        self.state, checkpoint = checkpoint_callbacks(self.record["fingerprint"], cfg.seed, self.checkpoint_dir,
                                                      samplers, batch_size)
        return [self.state, checkpoint]

    def fit_kwargs(self) -> dict:
        """``trainer.fit`` arguments (also for NNI's ``Lightning(fit_kwargs=...)``): resume if possible."""
        return {"ckpt_path": str(self.resume_from)} if self.resume_from else {}

    def set_status(self, state: str, **extra: Any) -> None:
        if self.lock_fd is None:
            return
        status = {"state": state, "job": self.job, "pid": os.getpid(), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  **extra}
        try:
            write_json_atomic(self.out / STATUS, status)
        except OSError as err:  # a full disk has no room for a temporary file: the old status's block will do
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not (self.out / STATUS).is_file():
                raise
            write_text_in_place(self.out / STATUS, json.dumps(status, indent=2) + "\n")

    def release(self, error: Optional[BaseException] = None) -> None:
        """Record how the run ended in ``status.json`` (where it can still be written) and release the lock."""
        if self.lock_fd is None:
            return
        try:
            last = self.checkpoint_dir / LAST
            checkpoint = str(last) if last.is_file() else None
            if error is None:
                self.set_status("finished")
            elif isinstance(error, (RunInterrupted, SIGTERMException, KeyboardInterrupt, SystemExit)):
                # SystemExit: Lightning turns a KeyboardInterrupt (a second Ctrl-C) into sys.exit(1)
                reason = str(error) if isinstance(error, RunInterrupted) else \
                    "interrupted by SIGTERM" if isinstance(error, SIGTERMException) else "stopped at once, not saved"
                self.set_status("interrupted", reason=reason, checkpoint=checkpoint)
            else:
                reason = str(error) if isinstance(error, (RunFailed, ConfigError, OutputUnwritable)) else \
                    f"{type(error).__name__}: {error}"
                self.set_status("failed", reason=one_line(reason), checkpoint=checkpoint)
        except OSError:  # the disk that failed the run cannot take its status either; the error line says why
            pass
        finally:
            self._restore_handlers()
            os.close(self.lock_fd)
            self.lock_fd = None

    def hold_signals(self) -> None:
        """SIGINT and SIGTERM outside training (building, the final evaluation, writing results) end the
        run with an ``interrupted`` status and 128 + the signal, not a silent kill; training has RunState's."""
        def stop(signum, frame):
            raise RunInterrupted(signum)

        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous_handlers[signum] = signal.signal(signum, stop)

    def _restore_handlers(self) -> None:
        for signum, previous in self.previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        self.previous_handlers = {}


def _acquire_lock(out: Path) -> int:
    """The directory's lock, held but not yet signed: the pid is written only once the claim is accepted
    (``_sign_lock``), so a refused claim leaves the pid of the run that made the directory."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"{out} is in use by another run (pid {holder}); wait for it to finish or choose "
                          f"another --output-dir") from None
    return fd


def _sign_lock(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of writers that died (SIGKILL mid-write); safe to remove under the lock."""
    for folder in (out, out / CHECKPOINT_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _keep_csv_log(out: Path) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts: on resume, keep
    the earlier part as ``metrics.1.csv`` (``.2`` after a second resume, ...)."""
    current = out / "logs" / "metrics.csv"
    if current.is_file():
        n = 1
        while (kept := current.with_name(f"metrics.{n}.csv")).exists():
            n += 1
        os.replace(current, kept)


def _clear_outputs(out: Path, result_files: Sequence[str]) -> None:
    import shutil

    for name in (*JOB_OUTPUTS, *result_files):
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _stored_record(out: Path) -> dict:
    path = out / RUN_RECORD
    try:
        stored = json.loads(path.read_text())
        stored["job"], stored["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        # Another job's claim as much as this one's: --overwrite would clear files whose owner is unknown.
        raise ConfigError(f"{path} is unreadable, so what made {out} is unknown; remove that directory yourself if "
                          f"its run is yours, or choose another --output-dir") from None
    return stored


def _refuse_other_job(out: Path, stored: dict, job: str) -> None:
    if stored["job"] != job:  # --overwrite does not help: it would remove another job's files
        raise ConfigError(f"{out} holds a {one_line(stored['job'])} run, not a {job} run; choose another "
                          f"--output-dir")


def _check_record(out: Path, record: dict, job: str) -> None:
    stored = _stored_record(out)
    stored_fingerprint = stored["fingerprint"]
    _refuse_other_job(out, stored, job)
    if stored_fingerprint != record["fingerprint"]:
        raise ConfigError(f"{out} holds a {job} run with another config ({_differences(stored, record)}); run its "
                          f"own command to resume it, or pass --overwrite (discards it) or another --output-dir")


def check_output_dir(out: Path) -> None:
    """``out`` is, or can become, a directory this process can write; one line if not."""
    existing = next((p for p in (out, *out.parents) if p.exists() or p.is_symlink()), None)
    if existing is None:
        return
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under {existing}, which is a file"
        raise ConfigError(f"--output-dir {out} {where}, not a directory; choose another --output-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-dir {out}: {existing} is not writable (permission denied or a read-only file "
                          f"system); choose another --output-dir")


def refuse_finished(out: Path, result_files: Sequence[str], overwrite: bool) -> None:
    """A finished run (one of its result files exists) is never overwritten unless ``overwrite``."""
    check_output_dir(Path(out))
    finished = [name for name in result_files if (Path(out) / name).exists()]
    if finished and not overwrite:
        raise ConfigError(f"{Path(out) / finished[0]} exists: this run is finished; pass --overwrite to replace it "
                          f"or choose another --output-dir")


def claim_output_dir(out: Path, cfg: Config, job: str, result_files: Sequence[str], extra: Optional[dict] = None,
                     overwrite: bool = False, log_fn=print) -> Run:
    """Claim ``out`` for one run: lock it, check what is there, and resume or start.

    Call it once the inputs are validated: nothing is written before it. It refuses, with one
    line: a directory in use by another run, a finished run (unless ``overwrite``), a run
    with another config or architecture (unless ``overwrite``), a foreign checkpoint. The
    claim ends with ``run.release(error)``, done for you by ``@claims_output_dir`` or ``open_run``.
    """
    out = Path(out)
    record = run_record(cfg, job, extra)
    check_trainer(cfg)
    policy = apply_thread_policy(cfg, log=False)
    if global_rank() != 0:  # DDP ranks > 0: rank zero owns the directory; all resume from the same file
        last = out / CHECKPOINT_DIR / LAST
        open_run_log(out, global_rank())  # rank zero made the directory before it started this rank
        log_thread_policy(policy)
        _announce()
        return _register(Run(out, job, record, last if last.is_file() else None))
    refuse_finished(out, result_files, overwrite)  # before anything is written, the lock included
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _acquire_lock(out)
    except OSError as err:
        raise ConfigError(f"--output-dir: cannot claim it: {describe_os_error(err, out)}") from None
    try:
        _remove_stale_temporaries(out)
        if overwrite:
            if (out / RUN_RECORD).exists():  # before a file is removed: an unreadable claim counts as another job's
                _refuse_other_job(out, _stored_record(out), job)
            _clear_outputs(out, result_files)
        last = out / CHECKPOINT_DIR / LAST
        if (out / RUN_RECORD).exists():
            _check_record(out, record, job)
        elif last.exists():
            raise ConfigError(f"{last} has no {RUN_RECORD} beside it, so what made it is unknown; pass --overwrite "
                              f"to start over or choose another --output-dir")
        run = Run(out, job, record, lock_fd=fd)
        state = check_resumable(last, record) if last.is_file() else None
        _announce()  # every check passed: the job starts
        if state is not None:
            run.resumed_epoch = int(state.get("epoch", 0))
            run.resume_from = last
            _keep_csv_log(out)
            log_fn(f"resuming the {job} from {last} ({resume_note(state)})")
        else:
            write_json_atomic(out / RUN_RECORD, {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        _sign_lock(fd)
        run.set_status("running")
        open_run_log(out)
        log_thread_policy(policy)
    except OSError as err:
        os.close(fd)
        raise ConfigError(f"--output-dir: cannot claim it: {describe_os_error(err, out)}") from None
    except BaseException:
        os.close(fd)
        raise
    run.hold_signals()
    return _register(run)


_claims: list[list[Run]] = []
_held: list[tuple[str, io.StringIO, Any]] = []  # (start line, what the job printed so far, the real stdout)


@contextlib.contextmanager
def announce_on_claim(line: str) -> Iterator[None]:
    """Print ``line`` (a job's start line), then what the job printed meanwhile, when the job inside claims
    its output directory: a job refused before then for bad input prints its one ``error:`` line and
    nothing else. Other errors before the claim print what was held, then go on."""
    entry = (line, io.StringIO(), sys.stdout)
    _held.append(entry)
    try:
        with contextlib.redirect_stdout(entry[1]):
            yield
    except ConfigError:
        raise
    except BaseException:
        _announce()
        raise
    finally:
        with contextlib.suppress(ValueError):
            _held.remove(entry)


def _announce() -> None:
    """The held start line and output go to the real stdout, which the job prints to from now on."""
    while _held:
        line, held, stdout = _held.pop()
        sys.stdout = stdout
        print(line, flush=True)
        stdout.write(held.getvalue())
        stdout.flush()


def _register(run: Run) -> Run:
    if _claims:
        _claims[-1].append(run)
    return run


def claims_output_dir(fn):
    """Decorate a job function that calls ``claim_output_dir``: when it returns or raises, each claim
    made inside records the outcome in ``status.json`` and releases its lock."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _claims.append([])
        error: Optional[BaseException] = None
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            claimed = _claims[-1]
            if not claimed or not is_filesystem_error(err):
                error = err
                raise
            error = OutputUnwritable(describe_os_error(err, claimed[-1].out))
            raise error from None
        except BaseException as err:
            error = err
            raise
        finally:
            for run in _claims.pop():
                run.release(error)
    return wrapper


@contextlib.contextmanager
def open_run(out: Path, cfg: Config, job: str, result_files: Sequence[str], extra: Optional[dict] = None,
             overwrite: bool = False, log_fn=print) -> Iterator[Run]:
    """``claim_output_dir`` as a context manager."""
    run = claim_output_dir(out, cfg, job, result_files, extra, overwrite, log_fn)
    error: Optional[BaseException] = None
    try:
        yield run
    except OSError as err:
        if not is_filesystem_error(err):
            error = err
            raise
        error = OutputUnwritable(describe_os_error(err, run.out))
        raise error from None
    except BaseException as err:
        error = err
        raise
    finally:
        run.release(error)
