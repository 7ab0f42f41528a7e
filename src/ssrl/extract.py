"""Embedding extraction (docs/method.md §5), the extract stage's library (rules/extract.smk,
workflow/scripts/extract.py), also used by validation during training and by the ``ssrl embed``
command.

* :func:`embed_files`: whole-utterance embeddings of audio files with the pipeline's preprocessing
  (:class:`ssrl.data.EvalDataset`: peak normalisation + pre-emphasis), length-bucketed padded
  batches and :func:`extract_embeddings`;
* :func:`extract_embeddings`: embeddings of a model over a DataLoader of padded batches;
* :func:`min_samples`, :func:`resolve_device`, :func:`utterance_ids`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import SAMPLE_RATE
from .data import EvalDataset, collate_padded, length_bucketed_batches
from .models import SpeakerModel
from .progress import Progress

# --------------------------------------------------------------------------- devices and lengths


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r} (auto, cpu, cuda or cuda:N)")
    return device


def min_samples(model: SpeakerModel) -> int:
    """Shortest waveform (16 kHz samples) ``model`` can embed: the front-end must give at
    least the encoder's minimum number of frames."""
    need = model.encoder.min_frames
    hi = 1
    while model.frontend.num_frames(hi) < need:
        hi *= 2
    lo = hi // 2  # num_frames(lo) < need <= num_frames(hi) (lo may be 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if model.frontend.num_frames(mid) >= need:
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------- embeddings


def utterance_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Utterance ids of audio files = their file stems (``a/spk1.wav`` -> ``spk1``).

    ValueError naming both files when two paths share a stem (ids must be unique).
    """
    seen: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if not stem:
            raise ValueError(f"{path}: no file name to use as utterance id")
        if stem in seen:
            raise ValueError(
                f"{path}: utterance id {stem!r} (file stem) is also the id of {seen[stem]}; "
                f"rename one file or list them in a wav.scp with distinct ids"
            )
        seen[stem] = os.fspath(path)
    return list(seen)


def embed_files(
    model: SpeakerModel,
    utts: Sequence[str],
    paths: Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
    max_batch_seconds: float = 240.0,
    max_batch_size: int = 64,
    workers: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings ``(N, emb_dim)`` float32 of whole audio files, in the order of ``paths``.

    Same path as the pipeline's extraction (docs/method.md §5): each file is loaded whole
    (first ``max_seconds`` only, if given), peak-normalised and pre-emphasised
    (:class:`ssrl.data.EvalDataset`), grouped into zero-padded batches of similar
    length holding at most ``max_batch_seconds`` of padded audio and
    ``max_batch_size`` files, and embedded by the eval-mode ``model`` on
    ``device`` (:func:`extract_embeddings`); the result equals
    one-at-a-time extraction up to float rounding. Files shorter than
    :func:`min_samples` are a ValueError naming them.
    """
    if max_batch_seconds <= 0 or max_batch_size <= 0 or workers < 0:
        raise ValueError(
            f"max_batch_seconds and max_batch_size must be positive and workers >= 0, got "
            f"{max_batch_seconds}, {max_batch_size}, {workers}"
        )
    dataset = EvalDataset(utts, paths, max_seconds=max_seconds)
    lengths = dataset.num_samples(progress=progress)
    shortest = min_samples(model)
    short = np.flatnonzero(lengths < shortest)
    if short.size:
        names = ", ".join(f"{dataset.paths[i]} ({lengths[i]} samples)" for i in short[:5])
        raise ValueError(
            f"{short.size} file(s) shorter than the {shortest} samples ({shortest / SAMPLE_RATE:.3f} s "
            f"at 16 kHz) this model needs: {names}"
        )
    batches = length_bucketed_batches(lengths, max(1, round(max_batch_seconds * SAMPLE_RATE)), max_batch_size)
    device = torch.device(device)
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_padded, num_workers=workers, pin_memory=device.type == "cuda"
    )
    meter = Progress(len(dataset), "embed", unit="files", every_s=10.0, enabled=progress)
    return extract_embeddings(model.to(device), loader, dataset.utts, device=device, progress=meter)


@torch.no_grad()
def extract_embeddings(
    model: SpeakerModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    utts: list[str],
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Embeddings ``(N, emb_dim)`` float32 of ``utts`` in their order (docs/method.md §5).

    ``batches`` yields ``(indices (B,), padded waves (B, S), lengths (B,))`` as
    :func:`ssrl.data.collate_padded` makes them; every index in ``range(N)``
    must appear once. The model runs in eval mode without gradients. Fails
    naming the utterance on a non-finite embedding or a missing one.
    """
    model.eval()
    out = np.zeros((len(utts), model.emb_dim), dtype=np.float32)
    seen = np.zeros(len(utts), dtype=bool)
    for indices, wave, lengths in batches:
        emb = model(wave.to(device, non_blocking=True), lengths.to(device, non_blocking=True))
        emb = emb.float().cpu().numpy()
        idx = indices.numpy()
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            names = [utts[i] for i in idx[bad]]
            raise ValueError(f"non-finite embedding for {len(names)} utterance(s): {', '.join(names[:10])}")
        out[idx] = emb
        seen[idx] = True
        if progress is not None:
            progress.update(len(idx))
    if not seen.all():
        missing = [utts[i] for i in np.flatnonzero(~seen)[:10]]
        raise ValueError(f"{int((~seen).sum())} utterance(s) were never extracted, e.g. {', '.join(missing)}")
    return out
