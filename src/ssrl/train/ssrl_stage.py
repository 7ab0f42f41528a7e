"""Stage 2, SSRL (docs/method.md §7), the iterative-clustering rounds (docs/method.md §8) and the ablations, as one
:class:`~ssrl.train.loop.Stage` of the shared trainer.

Student = :class:`~ssrl.models.SpeakerModel` (built from the init model file's ``arch``, so a
log-mel or a WavLM front-end works alike) + a classification head (AAM-softmax or softmax) on
the pseudo labels; the teacher is its EMA copy (``teacher: false``: no teacher, a plain
supervised student that is validated and exported itself, WavLM step 1). Each training item gives an augmented student
crop, an independent clean teacher crop, the current label, p_clean and the item index
(:class:`~ssrl.data.LabelledCropDataset`). One step::

    relabelling epochs (e >= E_fix - (L // 2 + 1)): teacher on the clean crop (no grad, eval mode)
                   -> relabel logits (removed at -inf; Q2 margin on the current label)
                   -> new label = argmax (optionally after Sinkhorn), NLM teacher loss;
                   (index, new label, teacher loss) gathered over all ranks for the epoch
    student loss = CE(student logits with removed classes at -inf, current label), per item;
                   sum(p_clean * CE) / sum(p_clean) with noisy-label modelling (NLM), else the mean

Every forward sets its module's mode first: the teacher's eval, the student's train (a frozen
WavLM stays in eval mode). With quirk Q3 the two share the WavLM module, which therefore runs in
train mode for the student and in eval mode for the teacher; the teacher goes first, so that a
gradient-checkpointed student WavLM recomputes its activations in the backward pass in train mode.
Under bf16 autocast the relabelling logits and the NLM teacher losses are computed in fp32.

End of a relabelling epoch: the epoch's argmaxes enter the label queues, p_clean is refitted
(NLM), and from epoch E_fix - 1 on the labels are replaced by the queue votes, classes held by
no utterance become removed (-inf for student and teacher from the next epoch on); by default
the removed set is recomputed at every replacement (a class voted back is live again) and
votes count entries of removed classes, ``removed_permanent`` keeps removed classes removed
(:class:`ssrl.labels.LabelState`).

The same stage, by its hyper-parameters (:class:`SSRLConfig`), runs

* SSRL and its ablations (``nlm``, ``queue_len``, ``head``, ``none_is_noise`` = Q1,
  ``margin_quirk`` = Q2, ``sinkhorn_iters``);
* an iterative round (docs/method.md §8): ``label_update: false``, ``nlm: false``,
  ``fixed_epochs = E_round``, ``update_epochs = 0`` (the label-fixed LR segment stretched to
  E_round epochs); the EMA teacher is kept and evaluated exactly as in SSRL, so an SSRL run and
  the rounds differ only in the online label update;
* the WavLM steps (docs/method.md §9): ``teacher`` (false in step 1), ``init`` (``scratch``: a new model
  built from ``hparams["arch"]``, e.g. a WavLM checkpoint + a random back-end, and a random head
  (step 1); ``encoder``: the init model's ``eval_state`` + a new head; ``student``: its student
  incl. head, as the student and as the teacher (a copy), labels from its label state (step 2);
  ``full``: its student and teacher incl. heads and its whole label state: queues, removed
  classes, p_clean (step 2-ft)), ``head_init`` (k-means centers or random),
  ``schedule`` (``ssrl``: the two cosine segments, with ``fixed_epochs = 0`` a single cosine from
  ``lr * lr_update_start`` to ``lr * lr_final``; ``warmup_cosine``: linear 0 -> lr over
  ``warmup_epochs``, then cosine to ``lr * lr_final``), ``augment_prob``, ``freeze_wavlm``
  (WavLM under ``torch.no_grad()`` in eval mode, out of the optimiser), ``teacher_shares_wavlm``
  (quirk Q3: the teacher runs the student's WavLM module instead of an EMA copy),
  ``wavlm_lr_scale`` (an unfrozen WavLM is its own pair of param groups with this LR factor) and
  ``gradient_checkpointing`` (recompute WavLM layer activations in the backward pass).

Labels: the k-means labels the stage sees are renumbered to 0..C-1 (C = number of distinct
labels, docs/method.md §7) in increasing order of their k-means id; the matching rows of the centers
initialise the AAM weights; the model file's ``extra["classes"]`` maps class c back to its
k-means id. Truth (``utt2spk``) is read only for the per-epoch label log, never for training.

Outputs: the model file (``extra``: ``classes``, ``n_utts``, ``train_list_sha256``,
``label_state``) and the label log (:data:`LABEL_LOG_COLUMNS`, one row per epoch), kept live
in the checkpoint directory and restored with the checkpoints, so it survives kill/resume.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..augment import AUGMENT_SOURCES, Augmenter, AugmentPolicy
from ..cluster import cluster_quality
from ..data import LabelledCropDataset
from ..labels import LabelState, is_relabel_epoch, is_replace_epoch
from ..manifest import check_audio_exists, check_labels_cover, read_labels, read_list, read_utt2spk, read_wav_scp
from ..models import (
    AAMSoftmax,
    ModelFileError,
    SoftmaxHead,
    SpeakerModel,
    build_head,
    build_speaker_model,
    read_model_file,
    save_model_file,
)
from ..models.wavlm import WavLMFrontend
from ..relabel import (
    clean_detector_stats,
    distributed_all_reduce,
    majority_label_correct,
    mask_removed,
    relabel,
    weighted_ce,
)
from ..results import LABEL_LOG_COLUMNS, write_tsv
from . import distributed as D
from . import schedules
from .config import config_from_dict
from .ema import make_teacher
from .stage import Stage, file_digest
from .validation import ValidationSet, validation_eer

INIT_SOURCES = ("scratch", "encoder", "student", "full")
HEAD_TYPES = ("aam", "softmax")
HEAD_INITS = ("centers", "random")
SCHEDULES = ("ssrl", "warmup_cosine")

LABEL_LOG = "label_log.tsv"
"""Name of the live label log inside the checkpoint directory."""



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

    Model: ``init`` (see the module docstring), ``head`` (aam | softmax), ``head_init``
    (centers | random; ``encoder`` init only, ``scratch`` needs random), ``aam_scale`` /
    ``aam_margin``, ``softmax_dropout``; WavLM front-ends only: ``freeze_wavlm``,
    ``teacher_shares_wavlm`` (Q3; implies nothing else), ``wavlm_lr_scale`` (LR factor of the
    WavLM param groups when it is trained), ``gradient_checkpointing``.

    Data: ``student_crop_s`` / ``teacher_crop_s`` (seconds), ``augment_prob`` (probability
    that a student crop is augmented), ``none_is_noise`` (Q1: a drawn "none" becomes additive
    noise, so student crops are never clean), ``seed``; validation EER of the teacher (of the student without one) every
    ``val_every`` epochs and after the last (0: only after the last), ``val_max_batch_seconds``.
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
        for key, allowed in (("init", INIT_SOURCES), ("head", HEAD_TYPES), ("head_init", HEAD_INITS),
                             ("schedule", SCHEDULES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{where}.{key}: expected one of {list(allowed)}, got {getattr(self, key)!r}")
        for key in ("fixed_epochs", "update_epochs", "warmup_epochs", "sinkhorn_iters", "seed", "val_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("batch_size", "queue_len", "gmm_max_iter"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "lr_fixed_start", "lr_update_start", "lr_final", "sinkhorn_epsilon", "gmm_tol",
                    "aam_scale", "student_crop_s", "teacher_crop_s", "val_max_batch_seconds", "wavlm_lr_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{where}.{key}: must be > 0, got {getattr(self, key)}")
        for key in ("ema_start", "ema_end", "augment_prob", "softmax_dropout"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{where}.{key}: must be in [0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.aam_margin < math.pi / 2:
            raise ValueError(f"{where}.aam_margin: must be in [0, pi/2) radians, got {self.aam_margin}")
        if self.epochs < 1:
            raise ValueError(f"{where}: fixed_epochs + update_epochs must be >= 1")
        if self.schedule == "warmup_cosine" and self.warmup_epochs > self.epochs:
            raise ValueError(f"{where}.warmup_epochs ({self.warmup_epochs}) exceeds the {self.epochs} epochs")
        if not self.label_update:
            if self.update_epochs:
                raise ValueError(f"{where}: update_epochs is {self.update_epochs} but label_update is false "
                                 f"(fixed labels train for fixed_epochs only)")
            if self.nlm:
                raise ValueError(f"{where}.nlm needs label_update (p_clean is fitted on the relabelling "
                                 f"teacher's losses); set nlm: false for fixed labels")
        if not self.teacher:
            if self.label_update:
                raise ValueError(f"{where}.teacher: false leaves nobody to relabel; it needs label_update: false")
            if self.teacher_shares_wavlm or self.init == "full":
                raise ValueError(f"{where}.teacher: false, but " + ("teacher_shares_wavlm is set" if
                                 self.teacher_shares_wavlm else "init 'full' continues a teacher"))
        if self.init == "scratch" and self.head_init != "random":
            raise ValueError(f"{where}.head_init: init 'scratch' trains a new back-end, so k-means centers "
                             f"of another embedding space cannot initialise its head; use head_init: random")
        if self.init in ("student", "full") and self.head_init != "centers":
            raise ValueError(f"{where}.head_init: the head comes from the init model with init "
                             f"{self.init!r}; head_init applies to init 'encoder' only")


class ClassifierModel(nn.Module):
    """Speaker model + classification head; one forward for DDP.

    ``forward(wave (B, samples), labels (B,) or None)`` -> ``(embeddings (B, emb_dim),
    logits (B, n_classes))``; with labels an AAM head puts the margin on the target logit.
    """

    def __init__(self, model: SpeakerModel, head: AAMSoftmax | SoftmaxHead):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, wave: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model(wave)
        return emb, self.head(emb, labels)


def utt_list_sha256(utts: list[str]) -> str:
    """Hex SHA-256 of the training utterance ids in order (identifies the item indexing)."""
    return hashlib.sha256("\n".join(utts).encode()).hexdigest()


def renumber_labels(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels (n,) -> ``(labels (n,) in 0..C-1, classes (C,))`` with ``classes[labels] == raw``.

    C = number of distinct labels; classes are in increasing order of their k-means id.
    """
    classes, labels = np.unique(np.asarray(raw, dtype=np.int64), return_inverse=True)
    return labels.astype(np.int64), classes


class SSRLStage(Stage):
    """SSRL / iterative round / WavLM step on the shared trainer (see the module docstring).

    ``hparams``: ``{"ssrl": {...} (SSRLConfig), "augment": {"snr_db", "babble_count"},
    "train": ..., "arch": {...} (init ``scratch`` only: the build_speaker_model architecture)}``;
    ``system``: the system name (``ssrl``, ``ssrl_no_nlm``, ``iter_r2``, ``wavlm_step1``, ...);
    ``train_scp``: training wav.scp (item i = line i); ``init_model``: the model file to start
    from (None with init ``scratch``); ``labels`` / ``centers``: k-means labels (``utt label``)
    and centers (K, dim) .npy (init ``scratch`` / ``encoder``; centers only with ``head_init:
    centers``); ``augment_lists``:
    ``{"noise", "music", "babble", "rir"}`` list files (None: clean student crops, tests only);
    ``val_scp`` + ``val_trials``: validation set (None: no validation); ``utt2spk``: true
    speakers for the label log only; ``label_log``: where to write the final label log;
    ``live_dir``: folder of the live label log (normally the checkpoint directory).

    Logged per step: loss, ``acc`` (student argmax of the masked logits without the margin = label);
    per epoch in train_log.tsv also ``live_classes`` and ``val_eer``; per epoch in the label
    log every column of :data:`LABEL_LOG_COLUMNS`.
    """

    step_metrics = ("acc",)
    epoch_metrics = ("live_classes", "val_eer")

    def __init__(self, hparams: Mapping[str, Any], system: str, train_scp: str | os.PathLike,
                 init_model: str | os.PathLike | None, labels: str | os.PathLike | None = None,
                 centers: str | os.PathLike | None = None,
                 augment_lists: Mapping[str, str | os.PathLike] | None = None,
                 val_scp: str | os.PathLike | None = None, val_trials: str | os.PathLike | None = None,
                 utt2spk: str | os.PathLike | None = None, label_log: str | os.PathLike | None = None,
                 live_dir: str | os.PathLike | None = None):
        if "ssrl" not in hparams:
            raise ValueError(f"{system} hparams: missing the 'ssrl' section")
        self.name = system
        self.hparams = dict(hparams)
        self.cfg = SSRLConfig.from_dict(hparams["ssrl"])
        cfg = self.cfg
        self.epochs, self.batch_size, self.seed = cfg.epochs, cfg.batch_size, cfg.seed
        if (init_model is None) != (cfg.init == "scratch"):
            raise ValueError(f"{system}: init 'scratch' builds the model from hparams['arch'] and takes no init "
                             f"model file; every other init needs one" if init_model is not None else
                             f"{system}: init {cfg.init!r} needs an init model file")
        if cfg.init == "scratch" and not isinstance(hparams.get("arch"), Mapping):
            raise ValueError(f"{system} hparams: init 'scratch' needs the model architecture under 'arch'")
        if cfg.init in ("scratch", "encoder"):
            if labels is None:
                raise ValueError(f"{system}: init {cfg.init!r} needs the k-means labels file")
            if cfg.head_init == "centers" and centers is None:
                raise ValueError(f"{system}: head_init 'centers' needs the k-means centers file")
        elif labels is not None or centers is not None:
            raise ValueError(f"{system}: with init {cfg.init!r} the labels and the head come from the init "
                             f"model; do not pass a labels or centers file")
        if (val_scp is None) != (val_trials is None):
            raise ValueError(f"{system}: give both the validation wav.scp and its trial list, or neither")
        self.train_scp = Path(train_scp)
        self.init_model = None if init_model is None else Path(init_model)
        self.labels_path = None if labels is None else Path(labels)
        self.centers_path = None if centers is None else Path(centers)
        self.augment_lists = dict(augment_lists) if augment_lists is not None else None
        self.val_scp, self.val_trials = val_scp, val_trials
        self.utt2spk = None if utt2spk is None else Path(utt2spk)
        self.label_log_out = None if label_log is None else Path(label_log)
        self.live_log = None if live_dir is None else Path(live_dir) / LABEL_LOG
        # Validation: every val_every epochs and after the last; val_every 0 -> after the last only.
        self.val_every = 0 if val_scp is None else (cfg.val_every or cfg.epochs)

    # ---- building ------------------------------------------------------------------------
    def _augmenter(self) -> Augmenter | None:
        if self.augment_lists is None:
            return None
        if sorted(self.augment_lists) != sorted(AUGMENT_SOURCES):
            raise ValueError(f"{self.name}: augmentation lists must be exactly {list(AUGMENT_SOURCES)}, "
                             f"got {sorted(self.augment_lists)}")
        aug = dict(self.hparams.get("augment") or {})
        kwargs = {k: tuple(aug[k]) for k in ("snr_db", "babble_count") if k in aug}
        return Augmenter(**{k: read_list(self.augment_lists[k]) for k in AUGMENT_SOURCES}, **kwargs)

    def _read_inputs(self, utts: list[str]) -> tuple[np.ndarray | None, np.ndarray | None, dict | None]:
        """Labels (n,) and classes (C,) from the labels file (init scratch / encoder), the init model
        file (None for init scratch)."""
        init = None if self.init_model is None else read_model_file(self.init_model)
        if self.labels_path is None:
            return None, None, init
        raw = read_labels(self.labels_path)
        check_labels_cover(raw, utts, self.labels_path)
        labels, classes = renumber_labels(np.array([raw[u] for u in utts], dtype=np.int64))
        return labels, classes, init

    def _centers(self, classes: np.ndarray, emb_dim: int) -> np.ndarray:
        path = self.centers_path
        try:
            centers = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable .npy file ({err})") from None
        if centers.ndim != 2 or centers.shape[1] != emb_dim:
            raise ValueError(f"{path}: centers have shape {centers.shape}, expected (K, {emb_dim}) for the "
                             f"{emb_dim}-d embeddings of {self.init_model}")
        if classes.max() >= centers.shape[0]:
            raise ValueError(f"{path}: {centers.shape[0]} centers but {self.labels_path} uses label "
                             f"{int(classes.max())}")
        rows = centers[classes].astype(np.float32)
        if not np.isfinite(rows).all() or (np.linalg.norm(rows, axis=1) == 0).any():
            raise ValueError(f"{path}: a center used by {self.labels_path} is zero or not finite")
        return rows

    def _new_head(self, emb_dim: int, n_classes: int) -> tuple[nn.Module, dict]:
        cfg = self.cfg
        if cfg.head == "aam":
            spec = {"type": "aam", "emb_dim": emb_dim, "n_classes": n_classes, "scale": cfg.aam_scale,
                    "margin": cfg.aam_margin}
        else:
            spec = {"type": "softmax", "emb_dim": emb_dim, "n_classes": n_classes, "dropout": cfg.softmax_dropout}
        return build_head(spec), spec

    @staticmethod
    def _init_head_from_centers(head: nn.Module, centers: np.ndarray) -> None:
        """AAM: the weight rows (normalised in forward); softmax: the linear weight (bias stays 0)."""
        if isinstance(head, AAMSoftmax):
            head.init_from_centers(centers)
        else:
            with torch.no_grad():
                head.fc.weight.copy_(torch.from_numpy(centers))

    def _load_state(self, module: nn.Module, state: Any, what: str) -> None:
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ModelFileError(f"{self.init_model}: {what} does not fit: {err}") from None

    def _init_part(self, init: dict, which: str) -> dict:
        """``init[which]`` (student / teacher: ``{"model", "head"}``), checked against this stage's head."""
        part = init.get(which)
        if not part or "head" not in part:
            raise ModelFileError(f"{self.init_model}: holds no {which} model + head (needed by init "
                                 f"{self.cfg.init!r})")
        spec = init.get("head") or {}
        if spec.get("type") != self.cfg.head:
            raise ModelFileError(f"{self.init_model}: head type {spec.get('type')!r}, but this stage trains a "
                                 f"{self.cfg.head!r} head")
        return part

    def _continued_label_state(self, init: dict, n_utts: int, list_sha: str, n_classes: int) -> tuple:
        """(LabelState, classes) carried over from an init model written by this stage."""
        path, cfg = self.init_model, self.cfg
        extra = init.get("extra") or {}
        missing = [k for k in ("label_state", "classes", "n_utts", "train_list_sha256") if k not in extra]
        if missing:
            raise ModelFileError(f"{path}: init {cfg.init!r} needs a model file written by the SSRL stage "
                                 f"(extra lacks {missing})")
        if int(extra["n_utts"]) != n_utts or extra["train_list_sha256"] != list_sha:
            raise ValueError(f"{path}: trained on another training list ({int(extra['n_utts'])} utterances) "
                             f"than {self.train_scp} ({n_utts}); the label state cannot be continued")
        saved = LabelState.from_state_dict(extra["label_state"], removed_permanent=cfg.removed_permanent)
        if saved.n_classes != n_classes:
            raise ModelFileError(f"{path}: label state has {saved.n_classes} classes, its head {n_classes}")
        if cfg.init == "full":
            if saved.queue_len != cfg.queue_len:
                raise ValueError(f"{path}: label queues of length {saved.queue_len}, but queue_len is "
                                 f"{cfg.queue_len}")
            state = saved
        else:
            state = LabelState(saved.labels, n_classes, cfg.queue_len, removed_permanent=cfg.removed_permanent)
        return state, np.asarray(extra["classes"], dtype=np.int64)

    def build(self) -> None:
        cfg = self.cfg
        scp = read_wav_scp(self.train_scp)
        check_audio_exists(scp, self.train_scp)
        utts = list(scp)
        if len(utts) < cfg.batch_size:
            raise ValueError(f"{self.train_scp}: {len(utts)} utterances cannot fill one batch of "
                             f"batch_size={cfg.batch_size}")
        list_sha = utt_list_sha256(utts)
        labels, classes, init = self._read_inputs(utts)

        if cfg.init == "scratch":
            model = build_speaker_model(dict(self.hparams["arch"]))
        else:
            model = build_speaker_model(init["arch"])
        if cfg.init in ("scratch", "encoder"):
            if cfg.init == "encoder":
                self._load_state(model, init["eval_state"], "eval_state")
            head, self.head_spec = self._new_head(model.emb_dim, int(classes.size))
            if cfg.head_init == "centers":
                self._init_head_from_centers(head, self._centers(classes, model.emb_dim))
            self.label_state = LabelState(labels, int(classes.size), cfg.queue_len,
                                          removed_permanent=cfg.removed_permanent)
        else:
            student = self._init_part(init, "student")
            self.head_spec = dict(init["head"])
            head = build_head(dict(self.head_spec))
            self._load_state(model, student["model"], "student model")
            self._load_state(head, student["head"], f"student head (spec {self.head_spec})")
            self.label_state, classes = self._continued_label_state(init, len(utts), list_sha,
                                                                     int(self.head_spec["n_classes"]))
        self.classes, self.n_utts, self.list_sha = classes, len(utts), list_sha
        self._setup_wavlm(model)
        self.student = ClassifierModel(model, head)
        # init 'student': the teacher starts as a copy of the init model's student (incl. head).
        self.teacher = make_teacher(self.student) if cfg.teacher else None
        if cfg.init == "full":
            teacher = self._init_part(init, "teacher")
            self._load_state(self.teacher.model, teacher["model"], "teacher model")
            self._load_state(self.teacher.head, teacher["head"], "teacher head")
        if cfg.teacher_shares_wavlm:
            # Quirk Q3: the teacher runs the student's WavLM (the same module), which the EMA skips.
            self.teacher.model.frontend.wavlm = self.student.model.frontend.wavlm

        self.truth = self._read_truth(utts)
        policy = AugmentPolicy.ssrl_student(none_is_noise=cfg.none_is_noise, apply_prob=cfg.augment_prob)
        self.train_set = LabelledCropDataset(
            [scp[u] for u in utts], self.label_state.labels, seed=cfg.seed, student_s=cfg.student_crop_s,
            teacher_s=cfg.teacher_crop_s if cfg.label_update else None, augmenter=self._augmenter(),
            policy=policy, p_clean=self.label_state.p_clean)
        self._teacher_samples = self.train_set.teacher_samples
        self.val = (ValidationSet.from_files(self.val_scp, self.val_trials) if self.val_scp is not None else None)
        # Checkpoints made from other inputs (e.g. a retrained DINO model) are not resumed.
        self.inputs_digest = file_digest(*(p for p in (self.train_scp, self.init_model, self.labels_path,
                                                       self.centers_path) if p is not None),
                                         *self._arch_files())
        self._reset_epoch()
        self.label_rows: list[dict[str, Any]] = []

    def _arch_files(self) -> list[Path]:
        """Files the init ``scratch`` architecture reads (a WavLM checkpoint file, or the files of a
        Hugging Face directory), for the inputs digest; none for other inits."""
        if self.cfg.init != "scratch":
            return []
        checkpoint = (self.hparams["arch"].get("frontend") or {}).get("checkpoint")
        if checkpoint is None:
            return []
        path = Path(checkpoint)
        return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]

    def _setup_wavlm(self, model: SpeakerModel) -> None:
        """Freeze (or unfreeze) the WavLM and set its gradient checkpointing, as configured."""
        cfg = self.cfg
        asked = [key for key, on in (("freeze_wavlm", cfg.freeze_wavlm), ("teacher_shares_wavlm", cfg.teacher_shares_wavlm),
                                     ("gradient_checkpointing", cfg.gradient_checkpointing),
                                     ("wavlm_lr_scale", cfg.wavlm_lr_scale != 1.0)) if on]
        if not isinstance(model.frontend, WavLMFrontend):
            if asked:
                source = self.init_model if self.init_model is not None else "hparams['arch']"
                raise ValueError(f"{self.name}: {' / '.join(asked)} need a WavLM front-end, but {source} has a "
                                 f"{type(model.frontend).__name__}")
            return
        model.frontend.freeze_wavlm(cfg.freeze_wavlm)
        model.frontend.set_gradient_checkpointing(cfg.gradient_checkpointing)
        # A trained WavLM with layer drop (or no gradient into its CNN) leaves parameters without a
        # gradient in some steps, which DDP must be told about.
        reg = model.frontend.wavlm.regularisation
        self.find_unused_parameters = not cfg.freeze_wavlm and (reg["encoder_layer_drop"] > 0
                                                                or reg["feature_grad_mult"] == 0)

    def _read_truth(self, utts: list[str]) -> np.ndarray | None:
        if self.utt2spk is None:
            return None
        spk = read_utt2spk(self.utt2spk)
        missing = [u for u in utts if u not in spk]
        if missing:
            raise ValueError(f"{self.utt2spk}: no speaker for {len(missing)} of {len(utts)} training utterances "
                             f"(first: {missing[0]!r})")
        return np.array([spk[u] for u in utts])

    # ---- optimiser and schedules ---------------------------------------------------------
    def configure_optimizer(self, student: nn.Module) -> torch.optim.Optimizer:
        """Adam over the trainable parameters with Adam's own weight decay on all of them (biases and
        1-D parameters too, as the reference; only DINO exempts them): group ``model``, and a trained
        WavLM as group ``wavlm`` with ``lr_scale = wavlm_lr_scale``. Frozen parameters are left out."""
        params = [p for p in student.parameters() if p.requires_grad]
        frontend = student.model.frontend
        wavlm = set()
        if isinstance(frontend, WavLMFrontend) and not frontend.wavlm_frozen:
            wavlm = {id(p) for p in frontend.wavlm.parameters()}
        groups = [{"name": "model", "params": [p for p in params if id(p) not in wavlm],
                   "weight_decay": self.cfg.weight_decay}]
        if wavlm:
            groups.append({"name": "wavlm", "params": [p for p in params if id(p) in wavlm],
                           "weight_decay": self.cfg.weight_decay, "lr_scale": self.cfg.wavlm_lr_scale})
        return torch.optim.Adam(groups, lr=0.0)

    def lr_schedule(self, steps_per_epoch: int) -> np.ndarray:
        cfg = self.cfg
        if cfg.schedule == "warmup_cosine":
            return schedules.warmup_cosine(cfg.lr, cfg.lr * cfg.lr_final, cfg.epochs * steps_per_epoch,
                                           cfg.warmup_epochs * steps_per_epoch)
        return schedules.ssrl_lr(cfg.lr, cfg.fixed_epochs * steps_per_epoch, cfg.update_epochs * steps_per_epoch,
                                 cfg.lr_fixed_start, cfg.lr_update_start, cfg.lr_final)

    def ema_schedule(self, steps_per_epoch: int) -> np.ndarray | None:
        if not self.cfg.teacher:
            return None
        return schedules.ema_decay(self.cfg.ema_start, self.cfg.ema_end, self.epochs * steps_per_epoch)

    # ---- phases --------------------------------------------------------------------------
    def relabels(self, epoch: int) -> bool:
        """Whether the teacher relabels in ``epoch`` (0-based)."""
        return self.cfg.label_update and is_relabel_epoch(epoch, self.cfg.fixed_epochs, self.cfg.queue_len)

    def replaces(self, epoch: int) -> bool:
        """Whether the labels are replaced at the end of ``epoch``."""
        return self.cfg.label_update and is_replace_epoch(epoch, self.cfg.fixed_epochs)

    # ---- one step ------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        state = self.label_state
        self.train_set.set_labels(state.labels)
        self.train_set.set_p_clean(state.p_clean)
        # The teacher crop is read only when the teacher relabels (its random stream is separate).
        self.train_set.teacher_samples = self._teacher_samples if self.relabels(epoch) else None
        self.removed = torch.from_numpy(state.removed).to(self.env.device)

    def student_logits(self, student: nn.Module, wave: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student logits (B, C) with removed classes at -inf: ``(training logits (AAM margin on the
        label), plain logits (no margin; for the accuracy))``; the plain ones carry no gradient.
        The student runs in train mode (set here, before its forward)."""
        student.train()
        emb, logits = student(wave, labels)
        head = self.student.head
        with torch.no_grad():
            plain = head.scale * head.cosine(emb.detach()) if isinstance(head, AAMSoftmax) else logits.detach()
        return mask_removed(logits.float(), self.removed), mask_removed(plain.float(), self.removed)

    @torch.no_grad()
    def teacher_relabel(self, wave: torch.Tensor, labels: torch.Tensor):
        """Teacher relabelling on clean crops (B, samples): :class:`ssrl.relabel.Relabelled` (new labels (B,),
        relabel logits (B, C) float32 with removed classes at -inf). The teacher runs in eval mode (set
        here, before its forward); the head and the logits are computed in fp32 even under autocast."""
        cfg, head = self.cfg, self.teacher.head
        self.teacher.eval()
        emb = self.teacher.model(wave)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            emb = emb.float()
            if isinstance(head, AAMSoftmax):
                scores, scale, margin, quirk = head.cosine(emb), head.scale, head.margin, cfg.margin_quirk
            else:                                # softmax head: logits as they are, no margin
                scores, scale, margin, quirk = head(emb).float(), 1.0, 0.0, False
        all_reduce = distributed_all_reduce() if self.env.distributed and cfg.sinkhorn_iters else None
        return relabel(scores, labels, self.removed, scale=scale, margin=margin, margin_quirk=quirk,
                       sinkhorn_iters=cfg.sinkhorn_iters, epsilon=cfg.sinkhorn_epsilon, all_reduce=all_reduce)

    def train_step(self, student: nn.Module, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.relabels(epoch):                 # the teacher first: see the module docstring
            self._relabel_step(batch, epoch)
        labels = batch["label"]
        logits, plain = self.student_logits(student, batch["student"], labels)
        ce = F.cross_entropy(logits, labels, reduction="none")
        p_clean = batch["p_clean"]
        # NLM normaliser: the global batch's sum(p) / ranks, so that the DDP gradient average is
        # the weighted mean over the global batch (as one process would compute it).
        p_sum = D.all_reduce_mean(p_clean.sum().detach()) if self.cfg.nlm else None
        loss = weighted_ce(ce, p_clean, nlm=self.cfg.nlm, p_sum=p_sum)
        acc = (plain.argmax(dim=1) == labels).float().mean()
        self._step_stats = torch.stack([loss.detach().float(), acc])
        return loss, {"acc": acc}

    def _relabel_step(self, batch: Any, epoch: int) -> None:
        """Relabel this rank's items; keep ``(index, new label, NLM teacher loss)`` rows (B, 3) float64."""
        labels, index = batch["label"], batch["index"]
        new, t_logits = self.teacher_relabel(batch["teacher"], labels)
        if self.cfg.nlm:
            target = self.label_state.nlm_targets(index.cpu().numpy(), new.cpu().numpy(), self.replaces(epoch))
            with torch.autocast(device_type=t_logits.device.type, enabled=False):
                t_loss = F.cross_entropy(t_logits.float(), torch.from_numpy(target).to(t_logits.device),
                                         reduction="none")
        else:
            t_loss = torch.zeros_like(new, dtype=torch.float64)
        self._relabelled = torch.stack([index.double(), new.double(), t_loss.double()], dim=1)

    def after_step(self, epoch: int, step: int) -> None:
        self._sums += D.all_reduce_sum(self._step_stats).double().cpu()
        self._steps += 1
        if self.relabels(epoch):
            self._gathered.append(D.all_gather_tensor(self._relabelled).cpu().numpy())
            del self._relabelled

    # ---- end of epoch --------------------------------------------------------------------
    def _reset_epoch(self) -> None:
        self._gathered: list[np.ndarray] = []
        self._sums = torch.zeros(2, dtype=torch.float64)
        self._steps = 0

    def _epoch_rows(self) -> np.ndarray:
        return np.concatenate(self._gathered) if self._gathered else np.zeros((0, 3))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        cfg, state = self.cfg, self.label_state
        relabelled, replaced = self.relabels(epoch), self.replaces(epoch)
        changed = 0
        if relabelled:
            rows = self._epoch_rows()
            idx, new = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
            state.append(idx, new)
            if cfg.nlm:
                state.update_p_clean(idx, rows[:, 2], max_iter=cfg.gmm_max_iter, tol=cfg.gmm_tol, seed=cfg.seed)
            if replaced:
                changed = state.replace().num_changed
        world = self.env.world_size
        means = (self._sums / max(self._steps * world, 1)).tolist()
        row: dict[str, Any] = {
            "epoch": epoch, "phase": "fixed" if epoch < cfg.fixed_epochs else "update",
            "relabelled": int(relabelled), "replaced": int(replaced), "live_classes": state.num_live,
            "changed": changed, "p_clean_mean": float(state.p_clean.mean()), "loss": means[0], "acc": means[1],
        }
        if self.truth is not None:
            quality = cluster_quality(state.labels, self.truth)
            detector = clean_detector_stats(state.p_clean, majority_label_correct(state.labels, self.truth))
            row.update({k: quality[k] for k in ("nmi", "accuracy", "purity")})
            row.update({f"clean_{k}": detector[k] for k in ("tp", "fp", "tn", "fn", "tpr", "fpr")})
        self.label_rows.append(row)
        self._write_live_log()
        self._reset_epoch()
        return {"live_classes": state.num_live}

    def validate(self, epoch: int) -> dict[str, float]:
        if self.val is None:
            return {}
        model = (self.student if self.teacher is None else self.teacher).model
        eer = validation_eer(model, self.val, self.env, max_batch_seconds=self.cfg.val_max_batch_seconds)
        self.label_rows[-1]["teacher_eer"] = eer
        self._write_live_log()
        return {"val_eer": eer}

    def _write_live_log(self) -> None:
        if self.live_log is not None and self.env.is_main:
            write_tsv(self.live_log, LABEL_LOG_COLUMNS, self.label_rows)

    # ---- state and output ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"label_state": self.label_state.state_dict(), "relabelled": self._epoch_rows(),
                "sums": self._sums.clone(), "steps": self._steps, "label_rows": [dict(r) for r in self.label_rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.label_state.load_state_dict(state["label_state"])
        rows = np.asarray(state["relabelled"], dtype=np.float64)
        self._gathered = [rows] if rows.size else []
        self._sums = state["sums"].clone().double()
        self._steps = int(state["steps"])
        self.label_rows = [dict(r) for r in state["label_rows"]]
        self._write_live_log()

    def write_model_file(self, path: Path) -> None:
        """eval_state: the teacher's model, or the student's when there is no teacher."""
        student, teacher = self.student, self.teacher
        exported = student if teacher is None else teacher
        save_model_file(
            path, system=self.name, arch=exported.model.arch, eval_state=exported.model.state_dict(),
            student={"model": student.model.state_dict(), "head": student.head.state_dict()},
            teacher=None if teacher is None else {"model": teacher.model.state_dict(),
                                                  "head": teacher.head.state_dict()},
            head=self.head_spec, hparams=self.hparams,
            extra={"classes": self.classes, "n_utts": self.n_utts, "train_list_sha256": self.list_sha,
                   "label_state": self.label_state.state_dict()},
        )
        if self.label_log_out is not None:
            write_tsv(self.label_log_out, LABEL_LOG_COLUMNS, self.label_rows)
