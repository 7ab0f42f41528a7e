"""Training and evaluation datasets, batch samplers and collation (docs/method.md §2, §4, §5, §7).

* :class:`MultiCropDataset` (DINO): global and local augmented crops per utterance.
* :class:`LabelledCropDataset` (SSRL, iterative rounds, WavLM steps): an
  augmented student crop, an independent clean teacher crop, label, p_clean.
* :class:`EvalDataset` + :func:`length_bucketed_batches` + :func:`collate_padded`:
  whole utterances for embedding extraction, batched by similar length.
* :class:`EpochSampler`: deterministic per-epoch shuffling, split across ranks,
  resumable mid-epoch.

Randomness: item ``index`` in epoch ``epoch`` draws only from
``numpy.random.default_rng([seed, epoch, index])``, so crops do not depend on
the number of DataLoader workers or ranks, and a resumed run sees the same
crops. Call ``set_epoch`` (and ``set_labels`` / ``set_p_clean``) *before*
creating the epoch's DataLoader iterator: workers hold a copy of the dataset
made when the iterator starts, so use ``persistent_workers=False`` (the default)
whenever this state changes between epochs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from . import SAMPLE_RATE
from .audio import (
    audio_duration,
    load_audio,
    peak_normalise,
    pre_emphasis,
    preload_audio,
    random_crop,
    read_random_crop,
)
from .augment import Augmenter, AugmentPolicy
from .progress import Progress

_SAMPLER_ENTROPY_TAG = (0, 1)
"""Appended to ``(seed, epoch)`` for :class:`EpochSampler`'s permutation. numpy pads
seed sequences shorter than four words with zeros, so ``(seed, epoch, 0, 1)``
differs from every item stream ``(seed, epoch, index)`` and its spawned children."""


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one item: ``default_rng([seed, epoch, index])`` (all >= 0)."""
    if seed < 0 or epoch < 0 or index < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {seed}, {epoch}, {index}")
    return np.random.default_rng([seed, epoch, index])


def seconds_to_samples(seconds: float) -> int:
    """Duration in seconds -> number of 16 kHz samples (rounded)."""
    n = round(seconds * SAMPLE_RATE)
    if n <= 0:
        raise ValueError(f"crop duration must be positive, got {seconds} s")
    return n


def normalise_waveform(x: np.ndarray) -> np.ndarray:
    """docs/method.md §2 steps 3-4: peak normalisation then pre-emphasis; ``(samples,)`` float32."""
    return pre_emphasis(peak_normalise(x))


def finish_crop(
    crop: np.ndarray, rng: np.random.Generator, augmenter: Augmenter | None = None, policy: AugmentPolicy | None = None
) -> np.ndarray:
    """docs/method.md §2 steps 2-4 on a crop ``(samples,)``: augmentation (when ``augmenter`` and
    ``policy`` are given) -> peak normalisation -> pre-emphasis. Returns float32."""
    if augmenter is not None and policy is not None and policy.augments:
        crop = augmenter(crop, policy, rng)
    return normalise_waveform(crop)


def make_crop(
    wave: np.ndarray,
    num_samples: int,
    rng: np.random.Generator,
    augmenter: Augmenter | None = None,
    policy: AugmentPolicy | None = None,
) -> np.ndarray:
    """docs/method.md §2 steps 1-4 for one network input: random crop of ``wave`` (tiled when
    short), then :func:`finish_crop`. Returns ``(num_samples,)`` float32."""
    return finish_crop(random_crop(wave, num_samples, rng), rng, augmenter, policy)


def _check_paths(paths: Sequence[str | os.PathLike], what: str) -> list[str]:
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError(f"{what}: no utterances")
    return paths


class EpochDataset(Dataset):
    """Utterance paths + ``seed`` + the current epoch (the shared part of the crop datasets).

    ``preload_mb``: when the utterance files together take at most this many MiB on disk
    they are decoded once here (:func:`ssrl.audio.preload_audio`; the demo's 576 training
    utterances: ~65 MB on disk, ~130 MB decoded) and every crop is cut from memory, in
    the DataLoader processes forked afterwards too; otherwise (VoxCeleb) each item reads
    its file. Both ways give the same crops. 0: always read.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], seed: int, preload_mb: float = 256.0):
        self.paths = _check_paths(paths, type(self).__name__)
        if seed < 0:
            raise ValueError(f"{type(self).__name__}: seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.epoch = 0
        self._audio = preload_audio(self.paths, preload_mb)

    @property
    def preloaded(self) -> int:
        """Utterances held in memory (0: every item reads its file)."""
        return len(self._audio)

    def load(self, index: int) -> np.ndarray:
        """Utterance ``index``, whole: ``(samples,)`` float32."""
        audio = self._audio.get(self.paths[index])
        return load_audio(self.paths[index]) if audio is None else audio

    def crop(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A random crop of utterance ``index`` (:func:`ssrl.audio.random_crop`, one draw from ``rng``);
        from disk only the crop is decoded (:func:`ssrl.audio.read_random_crop`)."""
        audio = self._audio.get(self.paths[index])
        if audio is None:
            return read_random_crop(self.paths[index], num_samples, rng)
        return random_crop(audio, num_samples, rng)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` returns (before creating the iterator)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self, index: int) -> np.random.Generator:
        return item_rng(self.seed, self.epoch, index)


class MultiCropDataset(EpochDataset):
    """DINO views (docs/method.md §4): ``n_global`` crops of ``global_s`` seconds and ``n_local`` of
    ``local_s`` seconds per utterance, each cropped and augmented independently.

    Item: ``(global (n_global, Tg), local (n_local, Tl))`` float32 tensors,
    ``T = round(seconds * 16000)``, peak-normalised and pre-emphasised.
    Without ``augmenter`` the crops are clean.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        seed: int = 0,
        augmenter: Augmenter | None = None,
        policy: AugmentPolicy | None = None,
        n_global: int = 2,
        global_s: float = 4.0,
        n_local: int = 4,
        local_s: float = 2.0,
        preload_mb: float = 256.0,
    ):
        super().__init__(paths, seed, preload_mb)
        if n_global < 1 or n_local < 0:
            raise ValueError(f"MultiCropDataset: need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        self.augmenter = augmenter
        self.policy = policy if policy is not None else AugmentPolicy.dino()
        self.n_global, self.n_local = int(n_global), int(n_local)
        self.global_samples = seconds_to_samples(global_s)
        self.local_samples = seconds_to_samples(local_s)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._rng(index)
        wave = self.load(index)
        views = [
            make_crop(wave, n, rng, self.augmenter, self.policy)
            for n in [self.global_samples] * self.n_global + [self.local_samples] * self.n_local
        ]
        glob = np.stack(views[: self.n_global])
        loc = np.stack(views[self.n_global :]) if self.n_local else np.zeros((0, self.local_samples), np.float32)
        return torch.from_numpy(glob), torch.from_numpy(loc)


class LabelledCropDataset(EpochDataset):
    """Student/teacher crops with the current pseudo label (docs/method.md §7; also iterative rounds, WavLM).

    Item (a dict that the default collate batches):

    * ``student``: ``(Ts,)`` float32, a ``student_s``-second crop augmented with ``policy``;
    * ``teacher``: ``(Tt,)`` float32, an independent clean ``teacher_s``-second crop
      (key absent when ``teacher_s`` is None);
    * ``label``: int64 scalar, ``p_clean``: float32 scalar, ``index``: int64 scalar.

    The student and teacher crops draw from two children of the item's stream,
    so the teacher crop does not depend on the augmentation policy.
    ``labels`` ``(N,)`` non-negative ints; ``p_clean`` ``(N,)`` in [0, 1] (default 1).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: np.ndarray,
        seed: int = 0,
        student_s: float = 2.0,
        teacher_s: float | None = 6.0,
        augmenter: Augmenter | None = None,
        policy: AugmentPolicy | None = None,
        p_clean: np.ndarray | None = None,
        preload_mb: float = 256.0,
    ):
        super().__init__(paths, seed, preload_mb)
        self.augmenter = augmenter
        self.policy = policy if policy is not None else AugmentPolicy.ssrl_student()
        self.student_samples = seconds_to_samples(student_s)
        self.teacher_samples = None if teacher_s is None else seconds_to_samples(teacher_s)
        self.set_labels(labels)
        self.set_p_clean(np.ones(len(self.paths), dtype=np.float32) if p_clean is None else p_clean)

    def set_labels(self, labels: np.ndarray) -> None:
        """Replace the labels ``(N,)`` (takes effect for iterators created afterwards)."""
        labels = np.asarray(labels)
        if labels.shape != (len(self.paths),):
            raise ValueError(f"labels must have shape ({len(self.paths)},), got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {labels.min()} at index {int(np.argmin(labels))}")
        self.labels = labels.astype(np.int64, copy=True)

    def set_p_clean(self, p_clean: np.ndarray) -> None:
        """Replace the clean-label probabilities ``(N,)`` in [0, 1] (for iterators created afterwards)."""
        p = np.asarray(p_clean, dtype=np.float32)
        if p.shape != (len(self.paths),):
            raise ValueError(f"p_clean must have shape ({len(self.paths)},), got {p.shape}")
        bad = ~((p >= 0.0) & (p <= 1.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"p_clean must be in [0, 1], got {p[i]} at index {i}")
        self.p_clean = p.copy()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # Each crop is cut on its own (from disk: seek + decode of the crop only, see self.crop).
        student_rng, teacher_rng = self._rng(index).spawn(2)
        student = self.crop(index, self.student_samples, student_rng)
        item = {"student": torch.from_numpy(finish_crop(student, student_rng, self.augmenter, self.policy))}
        if self.teacher_samples is not None:
            teacher = self.crop(index, self.teacher_samples, teacher_rng)
            item["teacher"] = torch.from_numpy(normalise_waveform(teacher))
        item["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        item["p_clean"] = torch.tensor(self.p_clean[index], dtype=torch.float32)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


class EvalDataset(Dataset):
    """Whole utterances for extraction (docs/method.md §5): peak-normalised, pre-emphasised, not augmented.

    ``max_seconds`` keeps only the first ``max_seconds`` of each file (WavLM: 100 s).
    Item: ``(index, waveform (samples,) float32 tensor)``; batch with
    :func:`length_bucketed_batches` and :func:`collate_padded`.
    """

    def __init__(self, utts: Sequence[str], paths: Sequence[str | os.PathLike], max_seconds: float | None = None):
        self.paths = _check_paths(paths, "EvalDataset")
        self.utts = [str(u) for u in utts]
        if len(self.utts) != len(self.paths):
            raise ValueError(f"EvalDataset: {len(self.utts)} utterance ids but {len(self.paths)} paths")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"EvalDataset: max_seconds must be positive, got {max_seconds}")
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.paths)

    def num_samples(self, progress: bool = True) -> np.ndarray:
        """Approximate lengths ``(N,)`` int64 in 16 kHz samples from the file headers (for bucketing)."""
        out = np.empty(len(self.paths), dtype=np.int64)
        cap = None if self.max_seconds is None else round(self.max_seconds * SAMPLE_RATE)
        meter = Progress(len(self.paths), "audio headers", unit="files", every_s=30.0, enabled=progress)
        for i, path in enumerate(self.paths):
            n = int(np.ceil(audio_duration(path) * SAMPLE_RATE))
            out[i] = n if cap is None else min(n, cap)
            meter.update()
        return out

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        wave = load_audio(self.paths[index], max_seconds=self.max_seconds)
        return index, torch.from_numpy(normalise_waveform(wave))


def length_bucketed_batches(
    lengths: Sequence[int] | np.ndarray, max_batch_samples: int, max_batch_size: int
) -> list[list[int]]:
    """Group item indices into batches of similar length (deterministic).

    Items are sorted by length, longest first (ties by index), and cut greedily:
    a batch grows while ``batch_size * longest_length <= max_batch_samples``
    (the padded size) and ``batch_size <= max_batch_size``. An item longer than
    ``max_batch_samples`` gets a batch of its own. Usable as a DataLoader
    ``batch_sampler``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if max_batch_samples <= 0 or max_batch_size <= 0:
        raise ValueError(
            f"max_batch_samples and max_batch_size must be positive, got {max_batch_samples}, {max_batch_size}"
        )
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order.tolist():
        if current and (len(current) + 1 > max_batch_size or (len(current) + 1) * longest > max_batch_samples):
            batches.append(current)
            current = []
        if not current:
            longest = int(lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate_padded(items: Sequence[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[(index, (samples,))...]`` -> ``(indices (B,) int64, padded (B, Tmax) float32, lengths (B,) int64)``.

    Shorter waveforms are zero-padded at the end; ``lengths`` are the true sample counts.
    """
    if not items:
        raise ValueError("collate_padded: empty batch")
    indices = torch.tensor([int(i) for i, _ in items], dtype=torch.int64)
    lengths = torch.tensor([w.shape[0] for _, w in items], dtype=torch.int64)
    padded = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for row, (_, wave) in enumerate(items):
        padded[row, : wave.shape[0]] = wave
    return indices, padded, lengths


class EpochSampler(Sampler[list[int]]):
    """Deterministic, distributed, resumable batch sampler.

    Each epoch shuffles ``range(n_items)`` with a permutation drawn from
    ``(seed, epoch)`` and cuts it into global batches of ``batch_size`` items;
    rank ``r`` of ``world_size`` yields the ``r``-th contiguous slice of
    ``batch_size // world_size`` items of every global batch. Hence the ranks
    together see exactly the batches of one process with the whole global
    batch, in the same order when their slices are concatenated by rank.

    ``drop_last=False`` keeps a final partial global batch, split as evenly as
    possible (``np.array_split``); if it holds fewer items than ranks, it is
    topped up from the start of the epoch's permutation so that every rank
    gets at least one item. ``set_epoch(epoch, start_batch)`` selects the epoch
    and skips its first ``start_batch`` batches (mid-epoch resume); ``len()``
    is the number of batches in a full epoch.
    """

    def __init__(
        self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = True
    ):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"EpochSampler: global batch_size {batch_size} must be a positive multiple of world_size {world_size}"
            )
        if seed < 0:
            raise ValueError(f"EpochSampler: seed must be >= 0, got {seed}")
        if n_items < (batch_size if drop_last else 1):
            raise ValueError(f"EpochSampler: {n_items} items cannot fill one batch of {batch_size}")
        self.n_items, self.batch_size, self.seed = int(n_items), int(batch_size), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self.start_batch = 0

    @property
    def per_rank_batch_size(self) -> int:
        """Items per step on this rank (``batch_size // world_size``)."""
        return self.batch_size // self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select ``epoch`` and skip its first ``start_batch`` batches (already trained)."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ValueError(
                f"EpochSampler.set_epoch: need epoch >= 0 and 0 <= start_batch <= {len(self)}, "
                f"got {epoch}, {start_batch}"
            )
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n_items // self.batch_size
        return -(-self.n_items // self.batch_size)

    def _global_batches(self) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, self.epoch, *_SAMPLER_ENTROPY_TAG]).permutation(self.n_items)
        batches = [perm[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]
        if batches and len(batches[-1]) < self.world_size:
            batches[-1] = np.concatenate([batches[-1], perm[: self.world_size - len(batches[-1])]])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches()[self.start_batch :]:
            yield np.array_split(batch, self.world_size)[self.rank].tolist()
