"""Validation during training: embeddings of the test utterances and the EER on a trial list.

Extraction is sharded over ranks and gathered, so every rank returns the same
result and no rank waits in a collective that another skips. The model is a
:class:`ssrl.models.SpeakerModel` (e.g. the EMA teacher's); validation uses
whole utterances (WavLM systems: the first 100 s), exactly as the extraction stage
does (docs/method.md §5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from .. import SAMPLE_RATE
from ..data import EvalDataset, collate_padded, length_bucketed_batches
from ..extract import extract_embeddings as models_extract
from ..manifest import Trials, check_trials_cover, read_trials, read_wav_scp
from ..models import SpeakerModel, default_max_seconds
from ..score import compute_eer, score_trials
from . import distributed as D


@dataclass
class ValidationSet:
    """The utterances named by one trial list, their audio paths and lengths (16 kHz samples)."""

    utts: list[str]
    paths: list[str]
    trials: Trials
    name: str = "trials"
    lengths: np.ndarray | None = None

    @classmethod
    def from_files(cls, wav_scp: str | os.PathLike, trials: str | os.PathLike) -> ValidationSet:
        """Read ``wav.scp`` and a trial list; every trial utterance must be in ``wav.scp``
        (ManifestError naming the trial file otherwise). Only those utterances are kept."""
        scp = read_wav_scp(wav_scp)
        tr = read_trials(trials)
        check_trials_cover(tr, scp.keys(), trials)
        utts = tr.utterances
        paths = [scp[u] for u in utts]
        lengths = EvalDataset(utts, paths).num_samples(progress=False)
        return cls(utts=utts, paths=paths, trials=tr, name=os.path.basename(os.fspath(trials)), lengths=lengths)


def extract_embeddings(
    model: SpeakerModel, val: ValidationSet, env: D.DistEnv, max_batch_seconds: float = 240.0, max_batch_size: int = 64
) -> np.ndarray:
    """Embeddings ``(N, emb_dim)`` float32 of ``val``'s whole utterances, in its order.

    Every rank must call it: rank r embeds the utterances r, r + W, ... of the
    length-sorted list (similar amounts of audio per rank) in length-bucketed
    padded batches (:func:`ssrl.extract.extract_embeddings`), then the shares are
    gathered. The model's train/eval mode is restored afterwards.
    """
    lengths = val.lengths if val.lengths is not None else EvalDataset(val.utts, val.paths).num_samples(False)
    max_seconds = default_max_seconds(model)
    if max_seconds is not None:
        lengths = np.minimum(lengths, round(max_seconds * SAMPLE_RATE))
    mine = np.argsort(-lengths, kind="stable")[env.rank :: env.world_size]
    was_training = model.training
    emb = np.zeros((0, model.emb_dim), dtype=np.float32)
    try:
        if mine.size:
            dataset = EvalDataset([val.utts[i] for i in mine], [val.paths[i] for i in mine], max_seconds=max_seconds)
            batches = length_bucketed_batches(
                lengths[mine], max(1, round(max_batch_seconds * SAMPLE_RATE)), max_batch_size
            )
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_padded)
            emb = models_extract(model, loader, dataset.utts, device=env.device)
    finally:
        model.train(was_training)
    order = D.all_gather_array(mine.astype(np.int64))
    gathered = D.all_gather_array(emb)
    out = np.empty_like(gathered)
    out[order] = gathered
    return out


def validation_eer(model: SpeakerModel, val: ValidationSet, env: D.DistEnv, **kwargs) -> float:
    """EER (a fraction) of ``model``'s cosine scores on ``val``'s trial list; the same value on
    every rank. ``kwargs`` go to :func:`extract_embeddings`."""
    emb = extract_embeddings(model, val, env, **kwargs)
    scores, labels = score_trials(val.utts, emb, val.trials)
    return float(compute_eer(scores, labels))
