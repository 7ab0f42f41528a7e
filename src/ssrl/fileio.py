"""Atomic file output: every stage writes to a temporary name and renames on success.

A killed job therefore never leaves a file that looks complete. Used by every
script and library writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file keeps the final suffix (so libraries that pick a format
    from the extension, e.g. ``np.savez`` or ``soundfile``, behave). On error
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates the file 0600; give it the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """``open()`` a temporary file that replaces ``path`` when the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are refused (not valid JSON)."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_embeddings(path: str | os.PathLike, utts: list[str], embeddings: np.ndarray) -> None:
    """Write an embedding file: ``utts`` (N,) str and ``embeddings`` (N, dim) float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(utts):
        raise ValueError(f"{path}: embeddings shape {embeddings.shape} does not match {len(utts)} utterances")
    with atomic_path(path) as tmp:
        np.savez(tmp, utts=np.asarray(utts, dtype=str), embeddings=embeddings)


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read an embedding file written by :func:`write_embeddings` -> (utts, (N, dim) float32)."""
    with np.load(path, allow_pickle=False) as data:
        return [str(u) for u in data["utts"]], data["embeddings"].astype(np.float32, copy=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints and model files)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
