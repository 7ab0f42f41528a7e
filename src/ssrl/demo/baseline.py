"""The demo corpus' difficulty, measured: a fixed MFCC-mean cosine baseline on the demo trials
(:func:`mfcc_baseline`, written to ``corpus/baseline.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..audio import load_audio
from ..manifest import Trials
from .voice import SR

MFCC_BASELINE = (
    "MFCC mean cosine: torchaudio MFCC c1..c19 (40 log-mel bands 20-7600 Hz, 25 ms Hann window, "
    "10 ms hop, no padding), mean over all frames of the utterance, centred by the mean vector of "
    "the trial utterances, cosine score"
)


def mfcc_means(waves: Sequence[np.ndarray]) -> np.ndarray:
    """MFCC-mean vector of each waveform (see :data:`MFCC_BASELINE`) -> (len(waves), 19) float64.

    Each waveform is (samples,) float32 at 16 kHz, at least 400 samples long.
    Runs torch single-threaded (small transforms; threads only contend).
    """
    import torch
    import torchaudio

    mfcc = torchaudio.transforms.MFCC(
        sample_rate=SR,
        n_mfcc=20,
        log_mels=True,
        melkwargs={
            "n_fft": 512,
            "win_length": 400,
            "hop_length": 160,
            "n_mels": 40,
            "f_min": 20.0,
            "f_max": 7600.0,
            "window_fn": torch.hann_window,
            "center": False,
        },
    )
    out = np.empty((len(waves), 19), dtype=np.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i, wave in enumerate(waves):
                x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
                out[i] = mfcc(x).mean(dim=1)[1:].double().numpy()
    finally:
        torch.set_num_threads(threads)
    return out


def cosine_trial_scores(vectors: np.ndarray, utts: Sequence[str], trials: Trials) -> np.ndarray:
    """Centre ``vectors`` (N, D) over the N utterances, L2-normalise, score each trial -> (n,) cosine."""
    v = vectors - vectors.mean(axis=0)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    index = {u: i for i, u in enumerate(utts)}
    e = np.array([index[u] for u in trials.enroll.tolist()])
    t = np.array([index[u] for u in trials.test.tolist()])
    return np.einsum("ij,ij->i", v[e], v[t])


def mfcc_baseline(wav_scp: dict[str, str], trials: Trials) -> dict[str, Any]:
    """EER (fraction) of the fixed MFCC-mean cosine baseline (:data:`MFCC_BASELINE`) on ``trials``.

    Reads the audio of every trial utterance from ``wav_scp`` -> dict with
    ``eer``, ``n_trials``, ``n_target`` and ``baseline`` (the description).
    """
    from ..score import compute_eer

    utts = trials.utterances
    vectors = mfcc_means([load_audio(wav_scp[u]) for u in utts])
    scores = cosine_trial_scores(vectors, utts, trials)
    return {
        "eer": compute_eer(scores, trials.labels),
        "n_trials": len(trials),
        "n_target": int(trials.labels.sum()),
        "baseline": MFCC_BASELINE,
    }
