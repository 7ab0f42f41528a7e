"""Resumable checkpoints: atomic files in the stage's checkpoint directory.

A checkpoint is one ``torch.save`` dict named ``ckpt-<global step>.pt``,
written atomically (``ssrl.fileio.save_torch``), so every file present is
complete; the newest ones (``keep``) are kept. The directory also holds the
live training log (``train_log.tsv``) that the trainer copies to the stage's
output at the end. The directory is a ``params:`` value of its rule, never an
output, so an interrupted job finds it on restart.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import save_torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
FORMAT = "ssrl-ckpt/1"


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (CPU, and every CUDA device in use)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Save, list, load and prune the checkpoints of one stage in ``directory``.

    Only the main process should call :meth:`save`; every process may load.
    """

    def __init__(self, directory: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, global_step: int) -> Path:
        return self.directory / f"ckpt-{global_step:09d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(global step, path)`` of the checkpoints present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, state: dict[str, Any], global_step: int) -> Path:
        """Write ``state`` as the checkpoint of ``global_step`` (replacing one of the same
        step), then delete all but the newest ``keep``."""
        path = self.path_for(global_step)
        save_torch(path, {"format": FORMAT, **state})
        for _, old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, as ``(path, state)``, or None if there is none.

        A file that fails to load (e.g. a disk filled up outside the atomic
        write) is reported and skipped in favour of the previous one.
        """
        for _, path in reversed(self.checkpoints()):
            try:
                # Our own files (they hold numpy RNG states and stage state): full unpickling.
                state = torch.load(path, map_location=map_location, weights_only=False)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
                log.warning("%s: cannot be loaded (%s: %s); trying an older checkpoint", path, type(exc).__name__, exc)
                continue
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                log.warning("%s: not a %s checkpoint; skipped", path, FORMAT)
                continue
            return path, state
        return None

    def clear(self) -> list[Path]:
        """Delete every checkpoint (used when they were made with other hyper-parameters)."""
        removed = [p for _, p in self.checkpoints()]
        for p in removed:
            p.unlink(missing_ok=True)
        return removed
