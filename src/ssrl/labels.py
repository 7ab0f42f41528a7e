"""SSRL pseudo labels (docs/method.md §7 and §12): the phases, the queues and the label state. With
:mod:`ssrl.relabel` (relabelling, noisy-label modelling) the pure, vectorised building blocks of the
SSRL trainer; nothing here trains.

* Phases: :func:`relabel_start_epoch`, :func:`first_replace_epoch`, :func:`is_relabel_epoch`,
  :func:`is_replace_epoch` map ``(epoch, E_fix, L)`` to what happens in that
  epoch. Epoch indices are 0-based within one training run (a stage that
  continues another's state, e.g. WavLM step 2-ft, counts from 0 again). Their
  arguments are bounded where the stage reads its hyper-parameters
  (:class:`ssrl.train.ssrl_config.SSRLConfig`: E_fix >= 0, L >= 1), not again here.
* Labels: :func:`vote` (mode of a queue, ties to the oldest entry) and
  :class:`LabelState` (queues, current labels, removed classes and p_clean of
  every training utterance, with numpy ``state_dict`` for checkpoints).

An epoch of SSRL training uses them like this (``e`` = epoch index; numpy
arrays on the host, tensors on the device; per-item arrays gathered over ranks)::

    removed_t = torch.from_numpy(state.removed).to(device)         # refresh after replace()
    ce = F.cross_entropy(mask_removed(student_logits, removed_t), labels_t, reduction="none")
    loss = weighted_ce(ce, p_clean_t, nlm=True)                     # labels_t, p_clean_t from state[idx]
    if is_relabel_epoch(e, e_fix, L):
        new, t_logits = relabel(teacher_cos, labels_t, removed_t, scale=s, margin=m)
        target = state.nlm_targets(idx, new.cpu().numpy(), replace_this_epoch=is_replace_epoch(e, e_fix))
        t_loss = F.cross_entropy(t_logits, torch.from_numpy(target).to(device), reduction="none")
    ... at the end of the epoch, with the epoch's (idx, new, t_loss) gathered:
        state.append(idx, new)
        state.update_p_clean(idx, t_loss)                           # NLM on
        if is_replace_epoch(e, e_fix):
            stats = state.replace()                                 # stats.num_live for the log
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .relabel import clean_probability

FILL = -1
"""Marks an empty queue slot (labels are >= 0)."""


# --------------------------------------------------------------------------- phases


def relabel_start_epoch(e_fix: int, queue_len: int) -> int:
    """First epoch index in which the teacher relabels: ``max(E_fix - (L // 2 + 1), 0)``.

    With E_fix = 5, L = 5 this is 2, so the epochs 2, 3, 4 fill the queue (2 k-means
    copies + 3 argmaxes = L entries) by the first replacement at the end of epoch 4.
    A negative value (E_fix = 0, or L // 2 + 1 > E_fix) clamps to 0: relabel from the start.
    """
    return max(e_fix - (queue_len // 2 + 1), 0)


def first_replace_epoch(e_fix: int) -> int:
    """First epoch index whose end replaces the labels: ``max(E_fix - 1, 0)``.

    E_fix = 0 (WavLM step 2-ft: no label-fixed epochs) replaces at the end of every
    epoch from epoch 0; no epoch index can be negative.
    """
    return max(e_fix - 1, 0)


def is_relabel_epoch(epoch: int, e_fix: int, queue_len: int) -> bool:
    """Whether the teacher relabels (and the queue receives an entry) in ``epoch``."""
    return epoch >= relabel_start_epoch(e_fix, queue_len)


def is_replace_epoch(epoch: int, e_fix: int) -> bool:
    """Whether the labels are replaced by the queue votes at the end of ``epoch``.

    Every replacement epoch is also a relabelling epoch (``L // 2 + 1 >= 1``).
    """
    return epoch >= first_replace_epoch(e_fix)


# --------------------------------------------------------------------------- voting


def vote(queues: np.ndarray, fill: int = FILL) -> np.ndarray:
    """Mode of each queue: ``(n_utts, L)`` int, oldest entry first -> ``(n_utts,)`` int.

    Slots equal to ``fill`` are ignored wherever they are. Ties go to the value that
    appears first in the queue (the oldest). A row with no entry gives ``fill``.
    Vectorised over rows: O(n_utts * L^2) element operations, O(n_utts * L) memory.
    """
    q = np.asarray(queues)
    if q.ndim != 2 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"vote: queues must be a 2-D integer array, got shape {q.shape} dtype {q.dtype}")
    n, length = q.shape
    if length == 1:
        return q[:, 0].copy()
    valid = q != fill
    # counts[:, j] = how many valid slots hold the value of slot j (0 for empty slots).
    count_dtype = np.int8 if length < 128 else np.int32
    counts = np.zeros((n, length), dtype=count_dtype)
    for j in range(length):
        col = q[:, j]
        for k in range(length):
            counts[:, j] += (q[:, k] == col) & valid[:, k]
    counts *= valid
    # argmax returns the first maximal slot: the oldest occurrence of the oldest most
    # frequent value. An all-empty row has all-zero counts and picks slot 0 (= fill).
    best = counts.argmax(axis=1)
    return np.take_along_axis(q, best[:, None], axis=1)[:, 0]


# --------------------------------------------------------------------------- label state


@dataclass(frozen=True)
class ReplaceStats:
    """What one :meth:`LabelState.replace` did."""

    num_live: int
    """Classes held by at least one utterance after the replacement."""
    num_newly_removed: int
    """Classes removed by this replacement."""
    num_changed: int
    """Utterances whose label changed."""


class LabelState:
    """Pseudo-label state of all training utterances (docs/method.md §7).

    Arrays (numpy, index = training item index):

    * ``queues`` ``(n_utts, L)`` int64, oldest entry first, empty slots :data:`FILL`.
      Entries are right-aligned: the newest is in the last column. Initially the
      last ``L // 2`` slots hold the k-means label (for L = 1: an empty queue).
    * ``labels`` ``(n_utts,)`` int64: the current labels, what the student trains on
      and the margin (Q2) is applied to. They change only in :meth:`replace` (Q6).
    * ``removed`` ``(n_classes,)`` bool: classes masked to -inf for student and
      teacher: initially none, then the classes no utterance holds after the last
      :meth:`replace`.
    * ``p_clean`` ``(n_utts,)`` float32: NLM weights, initially 1.

    Queue semantics: :meth:`append` adds one entry to the queue of each utterance it
    names and drops the oldest entry beyond L; utterances not named (not seen in the
    epoch) keep their queue unchanged, so their vote, and hence their label, does not
    change at the next replacement. An utterance whose queue has no (counted) entry
    keeps its current label.

    Removed classes (docs/method.md §7), by default as the reference: votes count every
    queue entry, also those naming removed classes, and each replacement recomputes the
    removed set, so a class that an utterance's vote brings back is live again (its NLM
    teacher loss in that epoch is infinite: the teacher masked the class;
    :func:`clean_probability` clips it). ``removed_permanent=True``: votes ignore
    entries of removed classes and the removed set only grows (a removed class never
    comes back).
    """

    def __init__(
        self,
        initial_labels: np.ndarray,
        n_classes: int | None = None,
        queue_len: int = 5,
        removed_permanent: bool = False,
    ):
        labels = np.asarray(initial_labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"LabelState: initial labels must be a non-empty 1-D integer array, "
                f"got shape {labels.shape} dtype {labels.dtype}"
            )
        # Checked here as well as in SSRLConfig: from_state_dict takes L from a saved state (a model
        # file's label state), not from a checked config.
        if queue_len < 1:
            raise ValueError(f"LabelState: queue length must be >= 1, got {queue_len}")
        if n_classes is None:
            n_classes = int(labels.max()) + 1
        bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if bad.size:
            raise ValueError(
                f"LabelState: initial label {labels[bad[0]]} of item {bad[0]} is outside "
                f"[0, {n_classes}) ({bad.size} such items)"
            )
        self.labels = labels.astype(np.int64)
        self.queues = np.full((labels.size, queue_len), FILL, dtype=np.int64)
        n_init = queue_len // 2
        if n_init:
            self.queues[:, queue_len - n_init :] = self.labels[:, None]
        self.removed = np.zeros(n_classes, dtype=bool)
        self.p_clean = np.ones(labels.size, dtype=np.float32)
        self.num_replacements = 0
        self.removed_permanent = bool(removed_permanent)

    @property
    def n_utts(self) -> int:
        return self.labels.size

    @property
    def queue_len(self) -> int:
        return self.queues.shape[1]

    @property
    def n_classes(self) -> int:
        return self.removed.size

    @property
    def num_live(self) -> int:
        """Classes not removed."""
        return int(self.n_classes - self.removed.sum())

    # -- relabelling

    def append(self, indices: np.ndarray, new_labels: np.ndarray) -> None:
        """Append this epoch's teacher argmax ``new_labels`` (n,) to the queues of ``indices`` (n,).

        Call once per relabelling epoch with everything relabelled in it, gathered
        over ranks (calling per batch is the same as long as every utterance appears
        once per epoch). A repeated index (a padded distributed sampler) appends its
        last value once. New labels must be live classes.
        """
        idx, new = self._unique_items(indices, new_labels, "append")
        if idx.size == 0:
            return
        q = self.queues
        if self.queue_len > 1:
            rows = np.zeros(self.n_utts, dtype=bool)
            rows[idx] = True
            # a whole-array select streams memory in order, unlike a gather/scatter by idx
            q[:, :-1] = np.where(rows[:, None], q[:, 1:], q[:, :-1])
        q[idx, -1] = new

    def vote_after_append(self, indices: np.ndarray, new_labels: np.ndarray) -> np.ndarray:
        """The label each queue would vote if ``new_labels`` were appended (no state change).

        ``indices`` (n,), ``new_labels`` (n,) -> (n,) int64. Use it before :meth:`append`
        of the same entries. Same vote rules as :meth:`replace`.
        """
        idx = self._check_indices(indices, "vote_after_append")
        new = self._check_new_labels(new_labels, idx.size, "vote_after_append")
        queues = np.concatenate([self.queues[idx, 1:], new[:, None]], axis=1)
        return self._vote(queues, self.labels[idx])

    def nlm_targets(self, indices: np.ndarray, new_labels: np.ndarray, replace_this_epoch: bool) -> np.ndarray:
        """Targets of the per-utterance teacher loss for noisy-label modelling (docs/method.md §7).

        In an epoch that ends with a replacement (:func:`is_replace_epoch`): the label
        the queue votes once this epoch's argmax is appended, i.e. the label the
        utterance will hold after this epoch's replacement (by default possibly a class
        removed now, which the teacher scored -inf: an infinite loss). In the relabelling
        epochs before the first replacement epoch: the argmax ``new_labels`` itself.
        """
        if replace_this_epoch:
            return self.vote_after_append(indices, new_labels)
        idx = self._check_indices(indices, "nlm_targets")
        return self._check_new_labels(new_labels, idx.size, "nlm_targets").copy()

    def replace(self) -> ReplaceStats:
        """End-of-epoch label replacement: labels <- queue votes; the removed classes become those
        no utterance holds (``removed_permanent``: added to the removed ones)."""
        new_labels = self._vote(self.queues, self.labels)
        num_changed = int(np.count_nonzero(new_labels != self.labels))
        self.labels = new_labels
        held = np.bincount(new_labels, minlength=self.n_classes).astype(bool)
        newly = int(np.count_nonzero(~held & ~self.removed))
        self.removed = (self.removed | ~held) if self.removed_permanent else ~held
        self.num_replacements += 1
        return ReplaceStats(num_live=self.num_live, num_newly_removed=newly, num_changed=num_changed)

    def update_p_clean(self, indices: np.ndarray, teacher_losses: np.ndarray, **gmm: Any) -> np.ndarray:
        """Refit noisy-label modelling on one epoch's teacher losses and store p_clean.

        ``indices`` (n,) with ``teacher_losses`` (n,) from :meth:`nlm_targets` targets;
        utterances not named keep their p_clean. ``gmm`` goes to
        :func:`clean_probability`. Returns the new p_clean of the (deduplicated) items.
        """
        idx, losses = self._unique_items(indices, teacher_losses, "update_p_clean", labels=False)
        p = clean_probability(losses, **gmm)
        self.p_clean[idx] = p
        return p

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Numpy arrays and ints (copies) for a checkpoint."""
        return {
            "queues": self.queues.copy(),
            "labels": self.labels.copy(),
            "removed": self.removed.copy(),
            "p_clean": self.p_clean.copy(),
            "num_replacements": int(self.num_replacements),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; sizes must match this state's (n_utts, L, n_classes).

        CPU torch tensors are accepted in place of the arrays (``torch.load`` with
        ``weights_only=True`` refuses numpy arrays; store ``torch.from_numpy`` copies).
        """
        expected = {
            "queues": ((self.n_utts, self.queue_len), np.integer),
            "labels": ((self.n_utts,), np.integer),
            "removed": ((self.n_classes,), np.bool_),
            "p_clean": ((self.n_utts,), np.floating),
        }
        missing = [k for k in [*expected, "num_replacements"] if k not in state]
        if missing:
            raise ValueError(f"LabelState.load_state_dict: missing keys {missing}")
        arrays = {}
        for key, (shape, kind) in expected.items():
            arr = np.asarray(state[key])
            if arr.shape != shape or not np.issubdtype(arr.dtype, kind):
                raise ValueError(
                    f"LabelState.load_state_dict: state['{key}'] has shape {arr.shape} dtype "
                    f"{arr.dtype}, expected shape {shape} of {kind.__name__}"
                )
            arrays[key] = arr
        for key, allowed_below in (("queues", FILL), ("labels", 0)):
            arr = arrays[key]
            bad = (arr >= self.n_classes) | ((arr < 0) & (arr != allowed_below))
            if bad.any():
                raise ValueError(
                    f"LabelState.load_state_dict: state['{key}'] holds labels outside [0, {self.n_classes})"
                )
        self.queues = arrays["queues"].astype(np.int64)
        self.labels = arrays["labels"].astype(np.int64)
        self.removed = arrays["removed"].copy()
        self.p_clean = arrays["p_clean"].astype(np.float32)
        self.num_replacements = int(state["num_replacements"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], removed_permanent: bool = False) -> LabelState:
        """A state rebuilt from :meth:`state_dict` output alone (sizes taken from it)."""
        queues = np.asarray(state["queues"])
        if queues.ndim != 2:
            raise ValueError(f"LabelState.from_state_dict: state['queues'] must be 2-D, got shape {queues.shape}")
        out = cls(
            np.zeros(queues.shape[0], dtype=np.int64),
            n_classes=np.asarray(state["removed"]).size,
            queue_len=queues.shape[1],
            removed_permanent=removed_permanent,
        )
        out.load_state_dict(state)
        return out

    # -- helpers

    def _vote(self, queues: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Vote ``queues`` (n, L) (``removed_permanent``: ignoring removed classes); rows without a
        counted entry keep ``current``."""
        if self.removed_permanent:
            valid = queues != FILL
            queues = np.where(valid & ~self.removed[np.where(valid, queues, 0)], queues, FILL)
        voted = vote(queues)
        return np.where(voted == FILL, current, voted)

    def _check_indices(self, indices: np.ndarray, where: str) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"LabelState.{where}: indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}"
            )
        bad = np.flatnonzero((idx < 0) | (idx >= self.n_utts))
        if bad.size:
            raise ValueError(f"LabelState.{where}: index {idx[bad[0]]} is outside [0, {self.n_utts})")
        return idx

    def _check_new_labels(self, new_labels: np.ndarray, n: int, where: str) -> np.ndarray:
        new = np.asarray(new_labels)
        if new.shape != (n,) or not np.issubdtype(new.dtype, np.integer):
            raise ValueError(
                f"LabelState.{where}: new labels must be ({n},) integers, got shape {new.shape} dtype {new.dtype}"
            )
        bad = np.flatnonzero((new < 0) | (new >= self.n_classes))
        if bad.size:
            raise ValueError(
                f"LabelState.{where}: new label {new[bad[0]]} (position {bad[0]}) is outside [0, {self.n_classes})"
            )
        dead = np.flatnonzero(self.removed[new])
        if dead.size:
            raise ValueError(
                f"LabelState.{where}: new label {new[dead[0]]} (position {dead[0]}) is a removed "
                f"class ({dead.size} such labels); mask removed classes before the argmax"
            )
        return new.astype(np.int64, copy=False)

    def _unique_items(
        self, indices: np.ndarray, values: np.ndarray, where: str, labels: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validate and deduplicate ``(indices, values)``, keeping each index's last value."""
        idx = self._check_indices(indices, where)
        if labels:
            vals = self._check_new_labels(values, idx.size, where)
        else:
            vals = np.asarray(values)
            if vals.shape != idx.shape:
                raise ValueError(
                    f"LabelState.{where}: values of shape {vals.shape} do not match indices of shape {idx.shape}"
                )
        if idx.size < 2 or np.bincount(idx, minlength=self.n_utts).max() < 2:
            return idx, vals
        # Last occurrence of each index: first occurrence in the reversed arrays.
        _, first_rev = np.unique(idx[::-1], return_index=True)
        keep = idx.size - 1 - first_rev
        return idx[keep], vals[keep]
