"""Stage 1, DINO (docs/method.md §4), as a :class:`~ssrl.train.loop.Stage` of the shared trainer.

Student = log-mel ECAPA-TDNN (:class:`~ssrl.models.SpeakerModel`) + DINO head; the
teacher is its EMA copy. Each item gives ``n_global`` global and ``n_local``
local augmented crops: the student sees all of them, the teacher the global
ones. The model used downstream is the teacher's SpeakerModel (``eval_state``).

Hyper-parameters (the ``dino:`` config section, :class:`DINOConfig`); the paper
pairs ``lr = 0.25`` with a global batch of 240; the two are separate keys and
the learning rate is used as given (no automatic scaling with the batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from ..augment import Augmenter, AugmentPolicy
from ..data import EpochSampler, MultiCropDataset
from ..dino import DINOCenter, DINOModel, dino_loss, output_std
from ..manifest import check_audio_exists, read_wav_scp
from ..models import DINOHead, build_speaker_model, save_model_file
from . import schedules
from .config import check_bounds, config_from_dict
from .ema import make_teacher
from .optim import clip_grad_per_tensor, decay_param_groups
from .stage import Stage, file_digest
from .validation import ValidationSet, validation_eer


@dataclass
class HeadConfig:
    """DINO head sizes (docs/method.md §3.2): MLP ``emb -> hidden -> hidden -> mid -> bottleneck``,
    then ``n_prototypes`` weight-normalised prototypes."""

    n_prototypes: int = 65536
    hidden: int = 2048
    mid: int = 8192
    bottleneck: int = 256


@dataclass
class DINOConfig:
    """The ``dino:`` config section (paper values as defaults; docs/method.md §4).

    epochs, batch_size (global, all ranks), lr (peak, used as given), min_lr (end of the
    cosine), warmup_epochs (linear from 0), momentum, weight_decay (weights only),
    clip_grad (per parameter tensor), freeze_last_layer_epochs (prototype layer gets no
    update in the first N epochs), ema_start / ema_end (teacher decay, linear per step),
    center_momentum, student_temp, teacher_temp, n_global / global_crop_s, n_local /
    local_crop_s (views and their durations in seconds), head (:class:`HeadConfig`),
    init_bn_batches (BatchNorm statistics estimated on N batches before training, see
    :meth:`DINOStage.on_train_start`; 0: off), seed, val_every (validation EER every N
    epochs and after the last; 0: never), val_max_batch_seconds (padded audio per
    validation batch).
    """

    epochs: int = 150
    batch_size: int = 240
    lr: float = 0.25
    min_lr: float = 1e-5
    warmup_epochs: int = 10
    momentum: float = 0.9
    weight_decay: float = 5e-5
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 1
    ema_start: float = 0.999
    ema_end: float = 0.9999
    center_momentum: float = 0.9
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    n_global: int = 2
    global_crop_s: float = 4.0
    n_local: int = 4
    local_crop_s: float = 2.0
    head: HeadConfig = field(default_factory=HeadConfig)
    init_bn_batches: int = 0
    seed: int = 0
    val_every: int = 5
    val_max_batch_seconds: float = 240.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "dino") -> DINOConfig:
        """Validate and build; errors name ``where.key``."""
        d = dict(d)
        head = config_from_dict(HeadConfig, d.pop("head", {}) or {}, f"{where}.head")
        cfg = config_from_dict(cls, d, where, skip=("head",))
        cfg.head = head
        check_bounds(
            cfg,
            where,
            at_least_one=("epochs", "batch_size", "n_global"),
            non_negative=(
                "warmup_epochs",
                "freeze_last_layer_epochs",
                "n_local",
                "val_every",
                "seed",
                "init_bn_batches",
            ),
        )
        if cfg.warmup_epochs > cfg.epochs:
            raise ValueError(f"{where}.warmup_epochs ({cfg.warmup_epochs}) exceeds epochs ({cfg.epochs})")
        if cfg.n_global + cfg.n_local < 2:
            raise ValueError(f"{where}: need at least two views (n_global + n_local >= 2)")
        check_bounds(
            cfg,
            where,
            fraction=("ema_start", "ema_end", "center_momentum", "momentum"),
            positive=(
                "lr",
                "clip_grad",
                "student_temp",
                "teacher_temp",
                "global_crop_s",
                "local_crop_s",
                "val_max_batch_seconds",
            ),
        )
        return cfg


class DINOStage(Stage):
    """DINO pre-training (docs/method.md §4) on the shared trainer.

    ``hparams``: ``{"dino": {...} (DINOConfig), "model": arch for
    ``build_speaker_model``, "augment": {"snr_db", "babble_count", ...}, "train": ...}``;
    ``train_scp``: the training wav.scp; ``augment_lists``: ``{"noise", "music",
    "babble", "rir"}`` list files (None: clean crops, for tests only);
    ``val_scp`` + ``val_trials``: validation set (None: no validation).

    Logged per step: loss, ``teacher_std`` / ``student_std`` (:func:`ssrl.dino.output_std`
    of the teacher's global-view and the student's all-view prototype logits,
    this rank's batch, averaged over ranks), lr. Per validated epoch: ``val_eer``
    (teacher encoder, cosine scoring, a fraction).
    """

    name = "dino"
    step_metrics = ("teacher_std", "student_std")
    epoch_metrics = ("val_eer",)

    def __init__(
        self,
        hparams: Mapping[str, Any],
        train_scp: str | Path,
        augment_lists: Mapping[str, str | Path] | None,
        val_scp: str | Path | None = None,
        val_trials: str | Path | None = None,
    ):
        missing = [k for k in ("dino", "model") if k not in hparams]
        if missing:
            raise ValueError(f"DINO hparams: missing section(s) {missing}")
        self.hparams = dict(hparams)
        self.cfg = DINOConfig.from_dict(hparams["dino"])
        self.epochs, self.batch_size, self.seed = self.cfg.epochs, self.cfg.batch_size, self.cfg.seed
        self.train_scp = Path(train_scp)
        self.augment_lists = dict(augment_lists) if augment_lists is not None else None
        if (val_scp is None) != (val_trials is None):
            raise ValueError("DINO: give both the validation wav.scp and its trial list, or neither")
        self.val_scp, self.val_trials = val_scp, val_trials
        self.val_every = self.cfg.val_every if val_scp is not None else 0

    # ---- building ------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        scp = read_wav_scp(self.train_scp)
        check_audio_exists(scp, self.train_scp)
        self.inputs_digest = file_digest(self.train_scp)
        if len(scp) < cfg.batch_size:
            raise ValueError(
                f"{self.train_scp}: {len(scp)} utterances cannot fill one batch of dino.batch_size={cfg.batch_size}"
            )
        self.val = ValidationSet.from_files(self.val_scp, self.val_trials) if self.val_scp is not None else None
        model = build_speaker_model(self.hparams["model"])
        head = DINOHead(in_dim=model.emb_dim, **dataclasses.asdict(cfg.head))
        self.student = DINOModel(model, head)
        self.teacher = make_teacher(self.student)
        self.train_set = MultiCropDataset(
            list(scp.values()),
            seed=cfg.seed,
            augmenter=Augmenter.from_lists(self.augment_lists, self.hparams.get("augment"), "DINO"),
            policy=AugmentPolicy.dino(),
            n_global=cfg.n_global,
            global_s=cfg.global_crop_s,
            n_local=cfg.n_local,
            local_s=cfg.local_crop_s,
        )
        self.center = DINOCenter(cfg.head.n_prototypes, cfg.center_momentum, device=self.env.device)

    @torch.no_grad()
    def on_train_start(self) -> None:
        """Optionally estimate the student's BatchNorm running statistics, then copy the teacher.

        The teacher runs in eval mode, so its BatchNorm layers use running
        statistics, which start at mean 0 / variance 1: the initial teacher is then
        almost input-independent and only catches up with the student's statistics
        through the EMA (hundreds of steps at decay 0.99, thousands at 0.999).
        With the paper's ten warm-up epochs at a tiny learning rate this does not
        matter; a short run collapses before that. With ``init_bn_batches = n > 0``
        the student sees the crops of the first n batches of epoch 0 (train mode, no
        gradient, cumulative averages: the statistics of those n global batches),
        and the teacher is re-copied from the student, so both start calibrated.
        """
        n = self.cfg.init_bn_batches
        if n == 0:
            return
        sampler = EpochSampler(len(self.train_set), self.batch_size, self.seed, self.env.rank, self.env.world_size)
        n = min(n, len(sampler))
        norms = [m for m in self.student.modules() if isinstance(m, _BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the n batches
        self.train_set.set_epoch(0)
        sampler.set_epoch(0)
        loader = DataLoader(
            self.train_set,
            batch_sampler=[b for b, _ in zip(sampler, range(n))],
            num_workers=min(self.runtime.workers, n),
        )
        self.student.train()
        for glob, loc in loader:
            self.student(glob.to(self.env.device), loc.to(self.env.device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.teacher.load_state_dict(self.student.state_dict())

    def configure_optimizer(self, student: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(decay_param_groups(student, self.cfg.weight_decay), lr=0.0, momentum=self.cfg.momentum)

    def lr_schedule(self, steps_per_epoch: int) -> np.ndarray:
        return schedules.warmup_cosine(
            self.cfg.lr, self.cfg.min_lr, self.epochs * steps_per_epoch, self.cfg.warmup_epochs * steps_per_epoch
        )

    def ema_schedule(self, steps_per_epoch: int) -> np.ndarray:
        return schedules.ema_decay(self.cfg.ema_start, self.cfg.ema_end, self.epochs * steps_per_epoch)

    # ---- one step ------------------------------------------------------------------------
    def train_step(self, student: nn.Module, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        glob, loc = batch  # (B, n_global, Tg), (B, n_local, Tl)
        with torch.no_grad():
            _, t_logits = self.teacher(glob)  # (B, n_global, K)
        _, s_logits = student(glob, loc)  # (B, n_global + n_local, K), global first
        loss = dino_loss(s_logits, t_logits, self.center.value, self.cfg.student_temp, self.cfg.teacher_temp)
        self._teacher_logits = t_logits
        return loss, {"teacher_std": output_std(t_logits), "student_std": output_std(s_logits)}

    def after_backward(self, epoch: int, step: int) -> None:
        clip_grad_per_tensor(self.student.parameters(), self.cfg.clip_grad)
        if epoch < self.cfg.freeze_last_layer_epochs:
            for p in self.student.head.last_layer.parameters():
                p.grad = None  # no update at all (momentum, decay) this step

    def after_step(self, epoch: int, step: int) -> None:
        self.center.update(self._teacher_logits)
        del self._teacher_logits

    def validate(self, epoch: int) -> dict[str, float]:
        if self.val is None:
            return {}
        eer = validation_eer(self.teacher.model, self.val, self.env, max_batch_seconds=self.cfg.val_max_batch_seconds)
        return {"val_eer": eer}

    # ---- state and output ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.center.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center.load_state_dict(state)

    def write_model_file(self, path: Path) -> None:
        student, teacher = self.student, self.teacher
        save_model_file(
            path,
            system="dino",
            arch=teacher.model.arch,
            eval_state=teacher.model.state_dict(),
            student={"model": student.model.state_dict(), "head": student.head.state_dict()},
            teacher={"model": teacher.model.state_dict(), "head": teacher.head.state_dict()},
            head={"type": "dino", "in_dim": teacher.model.emb_dim, **dataclasses.asdict(self.cfg.head)},
            hparams=self.hparams,
            extra=self.center.state_dict(),
        )
