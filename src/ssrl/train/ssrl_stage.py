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
  ``wavlm_lr_scale`` (an unfrozen WavLM is its own param group with this LR factor) and
  ``gradient_checkpointing`` (recompute WavLM layer activations in the backward pass); the
  WavLM options are applied by :mod:`ssrl.train.ssrl_wavlm`.

Labels: the k-means labels the stage sees are renumbered to 0..C-1 (C = number of distinct
labels, docs/method.md §7) in increasing order of their k-means id; the matching rows of the centers
initialise the AAM weights; the model file's ``extra["classes"]`` maps class c back to its
k-means id. Truth (``utt2spk``) is read only for the per-epoch label log, never for training.

Outputs: the model file (``extra``: ``classes``, ``n_utts``, ``train_list_sha256``,
``label_state``) and the label log (:data:`LABEL_LOG_COLUMNS`, one row per epoch), kept live
in the checkpoint directory and restored with the checkpoints, so it survives kill/resume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..augment import Augmenter, AugmentPolicy
from ..data import LabelledCropDataset
from ..kmeans import cluster_quality
from ..labels import is_relabel_epoch, is_replace_epoch
from ..manifest import check_audio_exists, read_utt2spk, read_wav_scp
from ..models import (
    AAMSoftmax,
    save_model_file,
)
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
from .ema import make_teacher
from .ssrl_config import SSRLConfig
from .ssrl_init import ClassifierModel, SSRLInit, utt_list_sha256
from .ssrl_wavlm import param_groups, setup_wavlm
from .stage import Stage, file_digest
from .validation import ValidationSet, validation_eer

LABEL_LOG = "label_log.tsv"
"""Name of the live label log inside the checkpoint directory."""


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

    def __init__(
        self,
        hparams: Mapping[str, Any],
        system: str,
        train_scp: str | os.PathLike,
        init_model: str | os.PathLike | None,
        labels: str | os.PathLike | None = None,
        centers: str | os.PathLike | None = None,
        augment_lists: Mapping[str, str | os.PathLike] | None = None,
        val_scp: str | os.PathLike | None = None,
        val_trials: str | os.PathLike | None = None,
        utt2spk: str | os.PathLike | None = None,
        label_log: str | os.PathLike | None = None,
        live_dir: str | os.PathLike | None = None,
    ):
        if "ssrl" not in hparams:
            raise ValueError(f"{system} hparams: missing the 'ssrl' section")
        self.name = system
        self.hparams = dict(hparams)
        self.cfg = SSRLConfig.from_dict(hparams["ssrl"])
        cfg = self.cfg
        self.epochs, self.batch_size, self.seed = cfg.epochs, cfg.batch_size, cfg.seed
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
        self.init = SSRLInit(
            cfg, self.hparams, system, self.train_scp, self.init_model, self.labels_path, self.centers_path
        )
        # Validation: every val_every epochs and after the last; val_every 0 -> after the last only.
        self.val_every = 0 if val_scp is None else (cfg.val_every or cfg.epochs)

    # ---- building ------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        scp = read_wav_scp(self.train_scp)
        check_audio_exists(scp, self.train_scp)
        utts = list(scp)
        if len(utts) < cfg.batch_size:
            raise ValueError(
                f"{self.train_scp}: {len(utts)} utterances cannot fill one batch of batch_size={cfg.batch_size}"
            )
        list_sha = utt_list_sha256(utts)
        start = self.init.build(utts, list_sha)
        model, head, classes = start.model, start.head, start.classes
        self.head_spec, self.label_state = start.head_spec, start.label_state
        self.classes, self.n_utts, self.list_sha = classes, len(utts), list_sha
        source = self.init_model if self.init_model is not None else "hparams['arch']"
        self.find_unused_parameters = setup_wavlm(model, cfg, self.name, source)
        self.student = ClassifierModel(model, head)
        # init 'student': the teacher starts as a copy of the init model's student (incl. head).
        self.teacher = make_teacher(self.student) if cfg.teacher else None
        if start.teacher is not None:
            self.init.load_teacher(self.teacher, start.teacher)
        if cfg.teacher_shares_wavlm:
            # Quirk Q3: the teacher runs the student's WavLM (the same module), which the EMA skips.
            self.teacher.model.frontend.wavlm = self.student.model.frontend.wavlm

        self.truth = self._read_truth(utts)
        policy = AugmentPolicy.ssrl_student(none_is_noise=cfg.none_is_noise, apply_prob=cfg.augment_prob)
        self.train_set = LabelledCropDataset(
            [scp[u] for u in utts],
            self.label_state.labels,
            seed=cfg.seed,
            student_s=cfg.student_crop_s,
            teacher_s=cfg.teacher_crop_s if cfg.label_update else None,
            augmenter=Augmenter.from_lists(self.augment_lists, self.hparams.get("augment"), self.name),
            policy=policy,
            p_clean=self.label_state.p_clean,
        )
        self._teacher_samples = self.train_set.teacher_samples
        self.val = ValidationSet.from_files(self.val_scp, self.val_trials) if self.val_scp is not None else None
        # Checkpoints made from other inputs (e.g. a retrained DINO model) are not resumed.
        self.inputs_digest = file_digest(
            *(p for p in (self.train_scp, self.init_model, self.labels_path, self.centers_path) if p is not None),
            *self.init.arch_files(),
        )
        self._reset_epoch()
        self.label_rows: list[dict[str, Any]] = []

    def _read_truth(self, utts: list[str]) -> np.ndarray | None:
        if self.utt2spk is None:
            return None
        spk = read_utt2spk(self.utt2spk)
        missing = [u for u in utts if u not in spk]
        if missing:
            raise ValueError(
                f"{self.utt2spk}: no speaker for {len(missing)} of {len(utts)} training utterances "
                f"(first: {missing[0]!r})"
            )
        return np.array([spk[u] for u in utts])

    # ---- optimiser and schedules ---------------------------------------------------------
    def configure_optimizer(self, student: nn.Module) -> torch.optim.Optimizer:
        """Adam over the trainable parameters with Adam's own weight decay on all of them (biases and
        1-D parameters too, as the reference; only DINO exempts them): group ``model``, and a trained
        WavLM as group ``wavlm`` with ``lr_scale = wavlm_lr_scale``. Frozen parameters are left out."""
        groups = param_groups(student, self.cfg.weight_decay, self.cfg.wavlm_lr_scale)
        return torch.optim.Adam(groups, lr=0.0)

    def lr_schedule(self, steps_per_epoch: int) -> np.ndarray:
        cfg = self.cfg
        if cfg.schedule == "warmup_cosine":
            return schedules.warmup_cosine(
                cfg.lr, cfg.lr * cfg.lr_final, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
            )
        return schedules.ssrl_lr(
            cfg.lr,
            cfg.fixed_epochs * steps_per_epoch,
            cfg.update_epochs * steps_per_epoch,
            cfg.lr_fixed_start,
            cfg.lr_update_start,
            cfg.lr_final,
        )

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

    def student_logits(
        self, student: nn.Module, wave: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
            else:  # softmax head: logits as they are, no margin
                scores, scale, margin, quirk = head(emb).float(), 1.0, 0.0, False
        all_reduce = distributed_all_reduce() if self.env.distributed and cfg.sinkhorn_iters else None
        return relabel(
            scores,
            labels,
            self.removed,
            scale=scale,
            margin=margin,
            margin_quirk=quirk,
            sinkhorn_iters=cfg.sinkhorn_iters,
            epsilon=cfg.sinkhorn_epsilon,
            all_reduce=all_reduce,
        )

    def train_step(self, student: nn.Module, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.relabels(epoch):  # the teacher first: see the module docstring
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
                t_loss = F.cross_entropy(
                    t_logits.float(), torch.from_numpy(target).to(t_logits.device), reduction="none"
                )
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
            "epoch": epoch,
            "phase": "fixed" if epoch < cfg.fixed_epochs else "update",
            "relabelled": int(relabelled),
            "replaced": int(replaced),
            "live_classes": state.num_live,
            "changed": changed,
            "p_clean_mean": float(state.p_clean.mean()),
            "loss": means[0],
            "acc": means[1],
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
        return {
            "label_state": self.label_state.state_dict(),
            "relabelled": self._epoch_rows(),
            "sums": self._sums.clone(),
            "steps": self._steps,
            "label_rows": [dict(r) for r in self.label_rows],
        }

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
            path,
            system=self.name,
            arch=exported.model.arch,
            eval_state=exported.model.state_dict(),
            student={"model": student.model.state_dict(), "head": student.head.state_dict()},
            teacher=None
            if teacher is None
            else {"model": teacher.model.state_dict(), "head": teacher.head.state_dict()},
            head=self.head_spec,
            hparams=self.hparams,
            extra={
                "classes": self.classes,
                "n_utts": self.n_utts,
                "train_list_sha256": self.list_sha,
                "label_state": self.label_state.state_dict(),
            },
        )
        if self.label_log_out is not None:
            write_tsv(self.label_log_out, LABEL_LOG_COLUMNS, self.label_rows)
