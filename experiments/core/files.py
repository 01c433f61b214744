"""Atomic result files: written to a temporary file beside the target, then renamed into place.

A reader (or a resumed run) never sees half a file; a writer killed mid-write leaves only a
``.<name>.*.tmp`` file, which the next run on that directory removes under its lock.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # mkstemp's files are private (0600); results get what open() would give


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False, durable: bool = False) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s directory, then rename it to ``path``.

    ``durable`` also fsyncs the file and the directory (checkpoints: the rename survives power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda fh: fh.write(text))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_text_in_place(path: Path, text: str) -> None:
    """Rewrite an existing small file over its own blocks (not atomic): where the disk is full, a temporary
    file beside it gets no space, but a status of a few hundred bytes fits in the block the file holds."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically and durably. Serialised in memory first: torch's zip writer reports a full
    disk as a RuntimeError (``unexpected pos``), a plain write as the OSError it is (ENOSPC, EDQUOT, EIO)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(Path(path), lambda fh: fh.write(buffer.getbuffer()), binary=True, durable=True)

