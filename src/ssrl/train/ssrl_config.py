"""The hyper-parameters of the SSRL-family stage (:class:`SSRLConfig`, the ``ssrl`` section of its
--hparams). Its named configurations (SSRL and ablations, iterative rounds, WavLM steps) are built from
the workflow config by :mod:`ssrl.variants`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import check_bounds, config_from_dict

INIT_SOURCES = ("scratch", "encoder", "student", "full")
HEAD_TYPES = ("aam", "softmax")
HEAD_INITS = ("centers", "random")
SCHEDULES = ("ssrl", "warmup_cosine")


@dataclass
class SSRLConfig:
    """The stage's hyper-parameters (paper values as defaults; docs/method.md §7, §8, §9, §12).

    Schedule: ``fixed_epochs`` (E_fix, label-fixed), ``update_epochs`` (E_upd, label-update);
    ``batch_size`` (global, all ranks); Adam ``lr`` (nominal) and ``weight_decay`` (Adam's, on
    all parameters, biases and 1-D ones included); ``schedule`` ``ssrl`` (cosine ``lr * lr_fixed_start -> lr *
    lr_final`` over E_fix epochs, then restart at ``lr * lr_update_start`` down to ``lr *
    lr_final`` over E_upd epochs) or ``warmup_cosine`` (linear 0 -> lr over ``warmup_epochs``,
    then cosine to ``lr * lr_final``); ``teacher`` (an EMA teacher, decay ``ema_start ->
    ema_end`` linearly over all steps; false: none, the student is validated and exported).

    Labels: ``label_update`` (online relabelling, queues and replacement; off for iterative
    rounds and WavLM step 1), ``removed_permanent`` (false: the removed set is recomputed at
    every replacement and votes count removed classes, as the reference; true: removed for
    good, votes ignore them), ``queue_len`` (L), ``nlm`` (noisy-label modelling: weighted
    student loss and the GMM refit; off = plain mean CE), ``margin_quirk`` (Q2),
    ``sinkhorn_iters`` / ``sinkhorn_epsilon`` (0 = plain argmax), ``gmm_max_iter`` /
    ``gmm_tol``.

    Model: ``init`` (:mod:`ssrl.train.ssrl_init`), ``head`` (aam | softmax), ``head_init``
    (centers | random; ``encoder`` init only, ``scratch`` needs random), ``aam_scale`` /
    ``aam_margin``, ``softmax_dropout``; WavLM front-ends only (applied by
    :mod:`ssrl.train.ssrl_wavlm`): ``freeze_wavlm``, ``teacher_shares_wavlm`` (Q3; implies nothing
    else), ``wavlm_lr_scale`` (LR factor of the WavLM param groups when it is trained),
    ``gradient_checkpointing``.

    Data: ``student_crop_s`` / ``teacher_crop_s`` (seconds), ``augment_prob`` (probability
    that a student crop is augmented), ``none_is_noise`` (Q1: a drawn "none" becomes additive
    noise, so student crops are never clean), ``seed``; validation EER of the teacher (of the student without one) every
    ``val_every`` epochs and after the last (0: only after the last), ``val_max_batch_seconds``.

    Why the four WavLM-only fields stay flat here rather than in a nested section: this class is
    the ``ssrl`` section of the stage's --hparams, which :mod:`ssrl.variants` writes, the rules pass
    as ``params`` (a rerun trigger), the trainer hashes into the checkpoint fingerprint and the model
    file records. Nesting them would change all of these for every WavLM step (its jobs rerun, its
    checkpoints no longer resume), and their checks (``teacher_shares_wavlm`` needs a teacher) read
    the other fields; with their defaults they are no-ops for every other stage.
    """

    fixed_epochs: int = 5
    update_epochs: int = 100
    batch_size: int = 480
    lr: float = 1e-3
    weight_decay: float = 5e-5
    schedule: str = "ssrl"
    lr_fixed_start: float = 0.1
    lr_update_start: float = 0.5
    lr_final: float = 0.01
    warmup_epochs: int = 0
    ema_start: float = 0.999
    ema_end: float = 0.9999
    teacher: bool = True
    label_update: bool = True
    removed_permanent: bool = False
    queue_len: int = 5
    nlm: bool = True
    margin_quirk: bool = True
    sinkhorn_iters: int = 0
    sinkhorn_epsilon: float = 0.05
    gmm_max_iter: int = 500
    gmm_tol: float = 1e-5
    init: str = "encoder"
    head: str = "aam"
    head_init: str = "centers"
    aam_scale: float = 32.0
    aam_margin: float = 0.2
    softmax_dropout: float = 0.5
    freeze_wavlm: bool = False
    teacher_shares_wavlm: bool = False
    wavlm_lr_scale: float = 1.0
    gradient_checkpointing: bool = False
    student_crop_s: float = 2.0
    teacher_crop_s: float = 6.0
    augment_prob: float = 1.0
    none_is_noise: bool = True
    seed: int = 0
    val_every: int = 5
    val_max_batch_seconds: float = 240.0

    @property
    def epochs(self) -> int:
        return self.fixed_epochs + self.update_epochs

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "ssrl") -> SSRLConfig:
        """Validate and build; unknown keys, wrong types and bad values raise ValueError naming ``where.key``."""
        cfg = config_from_dict(cls, d, where)
        cfg._check(where)
        return cfg

    def _check(self, where: str) -> None:
        for key, allowed in (
            ("init", INIT_SOURCES),
            ("head", HEAD_TYPES),
            ("head_init", HEAD_INITS),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{where}.{key}: expected one of {list(allowed)}, got {getattr(self, key)!r}")
        check_bounds(
            self,
            where,
            non_negative=("fixed_epochs", "update_epochs", "warmup_epochs", "sinkhorn_iters", "seed", "val_every"),
            at_least_one=("batch_size", "queue_len", "gmm_max_iter"),
            positive=(
                "lr",
                "lr_fixed_start",
                "lr_update_start",
                "lr_final",
                "sinkhorn_epsilon",
                "gmm_tol",
                "aam_scale",
                "student_crop_s",
                "teacher_crop_s",
                "val_max_batch_seconds",
                "wavlm_lr_scale",
            ),
            fraction=("ema_start", "ema_end", "augment_prob", "softmax_dropout"),
        )
        if not 0.0 <= self.aam_margin < math.pi / 2:
            raise ValueError(f"{where}.aam_margin: must be in [0, pi/2) radians, got {self.aam_margin}")
        if self.epochs < 1:
            raise ValueError(f"{where}: fixed_epochs + update_epochs must be >= 1")
        if self.schedule == "warmup_cosine" and self.warmup_epochs > self.epochs:
            raise ValueError(f"{where}.warmup_epochs ({self.warmup_epochs}) exceeds the {self.epochs} epochs")
        if not self.label_update:
            if self.update_epochs:
                raise ValueError(
                    f"{where}: update_epochs is {self.update_epochs} but label_update is false "
                    f"(fixed labels train for fixed_epochs only)"
                )
            if self.nlm:
                raise ValueError(
                    f"{where}.nlm needs label_update (p_clean is fitted on the relabelling "
                    f"teacher's losses); set nlm: false for fixed labels"
                )
        if not self.teacher:
            if self.label_update:
                raise ValueError(f"{where}.teacher: false leaves nobody to relabel; it needs label_update: false")
            if self.teacher_shares_wavlm or self.init == "full":
                raise ValueError(
                    f"{where}.teacher: false, but "
                    + (
                        "teacher_shares_wavlm is set"
                        if self.teacher_shares_wavlm
                        else "init 'full' continues a teacher"
                    )
                )
        if self.init == "scratch" and self.head_init != "random":
            raise ValueError(
                f"{where}.head_init: init 'scratch' trains a new back-end, so k-means centers "
                f"of another embedding space cannot initialise its head; use head_init: random"
            )
        if self.init in ("student", "full") and self.head_init != "centers":
            raise ValueError(
                f"{where}.head_init: the head comes from the init model with init "
                f"{self.init!r}; head_init applies to init 'encoder' only"
            )
