"""The extension point of the shared trainer (:mod:`ssrl.train.loop`): a stage says *what* is trained.

What a stage provides (the signatures are :class:`Stage`'s):

* attributes ``name``, ``epochs``, ``batch_size`` (global, over all ranks),
  ``seed``, ``val_every``, ``step_metrics`` / ``epoch_metrics`` (the log
  columns), ``find_unused_parameters`` (DDP), ``inputs_digest`` (fingerprint of
  the input data, e.g. ``file_digest(wav_scp)``);
* :meth:`Stage.build` sets ``self.student`` (the trained module; its
  ``forward`` is what ``train_step`` calls through DDP, so put every trained
  piece behind one forward), ``self.teacher`` (``ema.make_teacher(student)``,
  or None) and ``self.train_set`` (a Dataset with ``set_epoch``; items batched
  by ``self.collate`` or the default collate);
* :meth:`Stage.configure_optimizer`, :meth:`Stage.lr_schedule`,
  :meth:`Stage.ema_schedule` (``ssrl.train.schedules``), :meth:`Stage.train_step`;
* optional hooks :meth:`Stage.on_train_start`, :meth:`Stage.after_backward`,
  :meth:`Stage.after_step`, :meth:`Stage.on_epoch_start`, :meth:`Stage.on_epoch_end`,
  :meth:`Stage.validate`;
* :meth:`Stage.state_dict` / :meth:`Stage.load_state_dict` for stage state
  that is neither a module nor the optimiser (DINO centre; SSRL queues,
  labels, removed classes, p_clean): it goes into every checkpoint;
* :meth:`Stage.write_model_file` (``ssrl.models.save_model_file``).

The stage's ``env`` (:class:`~ssrl.train.distributed.DistEnv`) and ``runtime``
(:class:`RuntimeConfig`) are set by the trainer before :meth:`Stage.build`.
Cross-rank reductions inside a stage use ``ssrl.train.distributed``
(``all_reduce_sum``, ``all_gather_tensor``, ``all_gather_array``,
``all_gather_objects``); every rank must call them the same number of times.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .config import RuntimeConfig
from .distributed import DistEnv


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class Stage:
    """What one training stage trains. Subclass it; see the module docstring for the loop.

    Attributes a subclass sets (class attributes or in ``__init__``):

    name                 system name, used in logs ("dino", "ssrl", "iter_r2", ...)
    hparams              the stage's hyper-parameters (dict); everything except the
                         ``train`` key is its fingerprint: checkpoints made with another
                         fingerprint are discarded instead of resumed
    epochs               number of epochs
    batch_size           global batch (items per optimiser step over all ranks; must be a
                         multiple of the number of ranks)
    seed                 seeds model initialisation (same on every rank) and the data order
    val_every            validate every N epochs and after the last (0: never)
    step_metrics         names of the extra values ``train_step`` returns (log columns)
    epoch_metrics        names of the values ``on_epoch_end`` and ``validate`` return
    find_unused_parameters  passed to DDP (True if some trained parameters may get no grad)
    inputs_digest        set in :meth:`build`: a digest of the input data (e.g. of the
                         training wav.scp, :func:`file_digest`); part of the fingerprint, so
                         checkpoints made on other data are not resumed

    Set by the trainer before :meth:`build`: ``env`` (DistEnv: rank, world size,
    device) and ``runtime`` (RuntimeConfig).
    """

    name: str = "stage"
    hparams: dict[str, Any] = {}
    epochs: int = 1
    batch_size: int = 1
    seed: int = 0
    val_every: int = 0
    step_metrics: tuple[str, ...] = ()
    epoch_metrics: tuple[str, ...] = ()
    find_unused_parameters: bool = False
    collate: Callable[[list[Any]], Any] | None = None
    inputs_digest: str = ""

    env: DistEnv
    runtime: RuntimeConfig
    student: nn.Module
    teacher: nn.Module | None = None
    train_set: Dataset

    # ---- required ------------------------------------------------------------------------
    def build(self) -> None:
        """Create ``self.student``, ``self.teacher`` (or None) and ``self.train_set``.

        Called once per process after every RNG was seeded with ``self.seed``, so
        random initialisation is identical on all ranks. Modules may stay on the
        CPU: the trainer moves them to ``self.env.device``. Read input files and
        fail on bad input here, before any training.
        """
        raise NotImplementedError

    def configure_optimizer(self, student: nn.Module) -> torch.optim.Optimizer:
        """The optimiser over ``student``'s trainable parameters (the unwrapped module,
        already on the device). Param groups may carry ``lr_scale`` (default 1): the
        trainer sets ``lr = lr_schedule[step] * lr_scale`` before every step."""
        raise NotImplementedError

    def lr_schedule(self, steps_per_epoch: int) -> np.ndarray:
        """Per-step learning rate, shape ``(epochs * steps_per_epoch,)``."""
        raise NotImplementedError

    def train_step(self, student: nn.Module, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward one batch (this rank's slice) and return ``(loss, metrics)``.

        ``student`` is the module to call (DDP-wrapped under torchrun); ``loss``
        a scalar tensor, the mean over this rank's items (equal slices on every
        rank make the DDP average the global-batch mean); ``metrics`` maps each
        name in ``step_metrics`` to a float or 0-d tensor (already detached).
        The trainer averages loss and metrics over ranks for the log.
        """
        raise NotImplementedError

    def write_model_file(self, path: Path) -> None:
        """Write the final model file (``ssrl.models.save_model_file``) to ``path``."""
        raise NotImplementedError

    # ---- optional ------------------------------------------------------------------------
    def ema_schedule(self, steps_per_epoch: int) -> np.ndarray | None:
        """Per-step EMA decay of the teacher, shape ``(epochs * steps_per_epoch,)``
        (``schedules.ema_decay``); required when ``self.teacher`` is not None."""
        return None

    def batch_to_device(self, batch: Any) -> Any:
        """Move a collated batch to ``self.env.device`` (tensors in tuples/lists/dicts)."""
        return _to_device(batch, self.env.device)

    def on_train_start(self) -> None:
        """Once, at the start of a fresh run (not when resuming): modules are on the device
        and BatchNorm is global-batch, but not yet DDP-wrapped. Every rank calls it."""

    def after_backward(self, epoch: int, step: int) -> None:
        """After ``loss.backward()``, before ``optimizer.step()`` (``step``: global step, 0-based)."""

    def after_step(self, epoch: int, step: int) -> None:
        """After the optimiser step and the EMA update of global step ``step`` (0-based)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the epoch's first batch (again when resuming inside ``epoch``)."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """After the epoch's last step; returns values for ``epoch_metrics`` columns."""
        return {}

    def validate(self, epoch: int) -> dict[str, float]:
        """Evaluate (e.g. EER of the teacher on the validation trials; see
        :func:`ssrl.train.validation.validation_eer`). Called on every rank; must
        return the same dict on every rank."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Stage state that is not a module or the optimiser (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called after :meth:`build` on resume)."""


def file_digest(*paths: str | os.PathLike) -> str:
    """SHA-256 of the contents of ``paths`` (in order), for :attr:`Stage.inputs_digest`."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
