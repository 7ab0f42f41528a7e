"""How an SSRL-family stage starts (``SSRLConfig.init``, docs/method.md §7, §8, §9): the student model,
its head, the label state and the classes, from the init model file, the k-means labels and centers, or
a new architecture. :class:`SSRLInit` builds them; :class:`~ssrl.train.ssrl_stage.SSRLStage` trains.

=========  ===================================================  ==============================================
init       model                                                head, labels
=========  ===================================================  ==============================================
scratch    built from ``hparams["arch"]`` (WavLM step 1)        new head (random); k-means labels
encoder    the init model's ``eval_state`` (SSRL, iterative)    new head (k-means centers or random); k-means
                                                                labels
student    the init model's student (WavLM step 2)              its student head; its labels (new queues)
full       the init model's student, and its teacher for the    its heads; its whole label state (queues,
           teacher (WavLM step 2-ft)                            removed classes, p_clean)
=========  ===================================================  ==============================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..labels import LabelState
from ..manifest import check_labels_cover, read_labels
from ..models import (
    AAMSoftmax,
    ModelFileError,
    SoftmaxHead,
    SpeakerModel,
    build_head,
    build_speaker_model,
    read_model_file,
)
from ..results import read_centers
from .ssrl_config import SSRLConfig


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


@dataclass
class Start:
    """What a stage starts from: ``model`` (SpeakerModel) and ``head`` with its build spec, the label
    state over the training list, ``classes`` (class c = k-means label ``classes[c]``) and, init
    ``full`` only, the init model's ``teacher`` part (``{"model", "head"}`` state dicts)."""

    model: SpeakerModel
    head: nn.Module
    head_spec: dict
    label_state: LabelState
    classes: np.ndarray
    teacher: dict | None = None


class SSRLInit:
    """Builds the :class:`Start` of a stage from its inputs (see the module docstring); ``name`` is the
    system (for errors). The files must be those that ``cfg.init`` needs (ValueError otherwise); every
    file problem raises ValueError / ModelFileError naming the file."""

    def __init__(
        self,
        cfg: SSRLConfig,
        hparams: Mapping[str, Any],
        name: str,
        train_scp: Path,
        init_model: Path | None,
        labels_path: Path | None,
        centers_path: Path | None,
    ):
        if (init_model is None) != (cfg.init == "scratch"):
            raise ValueError(
                f"{name}: init 'scratch' builds the model from hparams['arch'] and takes no init "
                f"model file; every other init needs one"
                if init_model is not None
                else f"{name}: init {cfg.init!r} needs an init model file"
            )
        if cfg.init == "scratch" and not isinstance(hparams.get("arch"), Mapping):
            raise ValueError(f"{name} hparams: init 'scratch' needs the model architecture under 'arch'")
        if cfg.init in ("scratch", "encoder"):
            if labels_path is None:
                raise ValueError(f"{name}: init {cfg.init!r} needs the k-means labels file")
            if cfg.head_init == "centers" and centers_path is None:
                raise ValueError(f"{name}: head_init 'centers' needs the k-means centers file")
        elif labels_path is not None or centers_path is not None:
            raise ValueError(
                f"{name}: with init {cfg.init!r} the labels and the head come from the init "
                f"model; do not pass a labels or centers file"
            )
        self.cfg, self.hparams, self.name, self.train_scp = cfg, hparams, name, train_scp
        self.init_model, self.labels_path, self.centers_path = init_model, labels_path, centers_path

    def build(self, utts: list[str], list_sha: str) -> Start:
        """The start of a stage over training list ``utts`` (its ``utt_list_sha256``)."""
        labels, classes, init = self._read_inputs(utts)
        if self.cfg.init in ("scratch", "encoder"):
            return self._new(init, labels, classes)
        return self._continued(init, len(utts), list_sha)

    def _new(self, init: dict | None, labels: np.ndarray, classes: np.ndarray) -> Start:
        """init scratch / encoder: a new model (scratch) or the init model's eval_state, a new head."""
        cfg = self.cfg
        model = build_speaker_model(dict(self.hparams["arch"]) if cfg.init == "scratch" else init["arch"])
        if cfg.init == "encoder":
            self._load_state(model, init["eval_state"], "eval_state")
        head, head_spec = self._new_head(model.emb_dim, int(classes.size))
        if cfg.head_init == "centers":
            self._init_head_from_centers(head, self._centers(classes, model.emb_dim))
        state = LabelState(labels, int(classes.size), cfg.queue_len, removed_permanent=cfg.removed_permanent)
        return Start(model, head, head_spec, state, classes)

    def _continued(self, init: dict, n_utts: int, list_sha: str) -> Start:
        """init student / full: the init model's student (and, full, its teacher) and label state."""
        model = build_speaker_model(init["arch"])
        student = self._init_part(init, "student")
        head_spec = dict(init["head"])
        head = build_head(dict(head_spec))
        self._load_state(model, student["model"], "student model")
        self._load_state(head, student["head"], f"student head (spec {head_spec})")
        state, classes = self._continued_label_state(init, n_utts, list_sha, int(head_spec["n_classes"]))
        teacher = self._init_part(init, "teacher") if self.cfg.init == "full" else None
        return Start(model, head, head_spec, state, classes, teacher)

    def load_teacher(self, teacher: nn.Module, part: dict) -> None:
        """Load the init model's teacher ``part`` into ``teacher`` (a ClassifierModel; init full)."""
        self._load_state(teacher.model, part["model"], "teacher model")
        self._load_state(teacher.head, part["head"], "teacher head")

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
        centers = read_centers(path)
        if centers.shape[1] != emb_dim:
            raise ValueError(
                f"{path}: centers have shape {centers.shape}, expected (K, {emb_dim}) for the "
                f"{emb_dim}-d embeddings of {self.init_model}"
            )
        if classes.max() >= centers.shape[0]:
            raise ValueError(
                f"{path}: {centers.shape[0]} centers but {self.labels_path} uses label {int(classes.max())}"
            )
        rows = centers[classes].astype(np.float32)
        if not np.isfinite(rows).all() or (np.linalg.norm(rows, axis=1) == 0).any():
            raise ValueError(f"{path}: a center used by {self.labels_path} is zero or not finite")
        return rows

    def _new_head(self, emb_dim: int, n_classes: int) -> tuple[nn.Module, dict]:
        cfg = self.cfg
        if cfg.head == "aam":
            spec = {
                "type": "aam",
                "emb_dim": emb_dim,
                "n_classes": n_classes,
                "scale": cfg.aam_scale,
                "margin": cfg.aam_margin,
            }
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
            raise ModelFileError(f"{self.init_model}: holds no {which} model + head (needed by init {self.cfg.init!r})")
        spec = init.get("head") or {}
        if spec.get("type") != self.cfg.head:
            raise ModelFileError(
                f"{self.init_model}: head type {spec.get('type')!r}, but this stage trains a {self.cfg.head!r} head"
            )
        return part

    def _continued_label_state(self, init: dict, n_utts: int, list_sha: str, n_classes: int) -> tuple:
        """(LabelState, classes) carried over from an init model written by this stage."""
        path, cfg = self.init_model, self.cfg
        extra = init.get("extra") or {}
        missing = [k for k in ("label_state", "classes", "n_utts", "train_list_sha256") if k not in extra]
        if missing:
            raise ModelFileError(
                f"{path}: init {cfg.init!r} needs a model file written by the SSRL stage (extra lacks {missing})"
            )
        if int(extra["n_utts"]) != n_utts or extra["train_list_sha256"] != list_sha:
            raise ValueError(
                f"{path}: trained on another training list ({int(extra['n_utts'])} utterances) "
                f"than {self.train_scp} ({n_utts}); the label state cannot be continued"
            )
        saved = LabelState.from_state_dict(extra["label_state"], removed_permanent=cfg.removed_permanent)
        if saved.n_classes != n_classes:
            raise ModelFileError(f"{path}: label state has {saved.n_classes} classes, its head {n_classes}")
        if cfg.init == "full":
            if saved.queue_len != cfg.queue_len:
                raise ValueError(f"{path}: label queues of length {saved.queue_len}, but queue_len is {cfg.queue_len}")
            state = saved
        else:
            state = LabelState(saved.labels, n_classes, cfg.queue_len, removed_permanent=cfg.removed_permanent)
        return state, np.asarray(extra["classes"], dtype=np.int64)

    def arch_files(self) -> list[Path]:
        """Files the init ``scratch`` architecture reads (a WavLM checkpoint file, or the files of a
        Hugging Face directory), for the inputs digest; none for other inits."""
        if self.cfg.init != "scratch":
            return []
        checkpoint = (self.hparams["arch"].get("frontend") or {}).get("checkpoint")
        if checkpoint is None:
            return []
        path = Path(checkpoint)
        return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
