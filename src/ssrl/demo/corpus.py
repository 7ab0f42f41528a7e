"""The embedded demo corpus: a seeded synthetic multi-speaker corpus (docs/method.md §11).

:func:`generate_corpus` writes, under ``out_dir`` (``results/<run>/corpus``):

* ``train/<spk>/<utt>.flac`` and ``test/<spk>/<utt>.flac``: 16 kHz mono FLAC
  (16-bit) speech of disjoint training and test speakers;
* augmentation sources laid out like the real ones: ``musan/noise``,
  ``musan/music`` and ``musan/speech`` (``*.flac``) and
  ``RIRS_NOISES/simulated_rirs/<size>room/RoomNNN/RoomNNN-0000K.wav``;
* ``baseline.json``: the EER of a fixed MFCC-mean cosine baseline on the demo
  trials (:func:`mfcc_baseline`), so the difficulty is measured, not assumed;

and under ``data_dir`` (``results/<run>/data``) the manifests of
docs/internals.md: ``train/{wav.scp,utt2spk}``, ``test/{wav.scp,utt2spk}``,
``trials/demo.txt`` and ``augment/{noise,music,babble,rir}.lst``. Audio paths in
the manifests are ``out_dir``-based exactly as given (a relative ``out_dir``
gives paths relative to the working directory).

Every random draw comes from ``numpy.random.default_rng([seed, stream, ...])``
keyed by what is being made, so the corpus is identical for any number of
worker processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import write_audio
from ..fileio import write_json
from ..manifest import Trials, read_trials, read_wav_scp, write_list, write_trials, write_utt2spk, write_wav_scp
from ..progress import Progress
from .baseline import mfcc_baseline
from .synth import synthesise_music, synthesise_noise, synthesise_speech_source, synthesise_utterance
from .voice import (
    N_FFT,
    SR,
    STREAM_MUSIC,
    STREAM_NOISE,
    STREAM_RIR,
    STREAM_SPEECH,
    STREAM_TRIALS,
    STREAM_UTT,
    SessionStyle,
    Speaker,
    make_speaker,
    random_session,
    room_impulse_response,
)

TRIALS_NAME = "demo"
BASELINE_FILE = "baseline.json"


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class _Job:
    """One audio file to make: ``kind`` in utt/noise/music/speech/rir, its seed key and output path."""

    kind: str
    key: tuple
    path: str
    num_samples: int
    speaker: Speaker | None = None
    rt60: float = 0.0
    style: SessionStyle = SessionStyle()


def _run_job(job: _Job) -> tuple[int, float]:
    """Make and write one file -> (samples, CPU seconds spent)."""
    cpu0 = time.process_time()
    rng = np.random.default_rng(list(job.key))
    if job.kind == "utt":
        x = synthesise_utterance(job.speaker, rng, job.num_samples, random_session(rng, job.style))
    elif job.kind == "speech":
        x = synthesise_speech_source(job.speaker, rng, job.num_samples)
    elif job.kind == "noise":
        x = synthesise_noise(rng, job.num_samples)
    elif job.kind == "music":
        x = synthesise_music(rng, job.num_samples)
    elif job.kind == "rir":
        x = room_impulse_response(rng, job.rt60, direct_gain=rng.uniform(0.5, 2.0)) * np.float32(0.9)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")
    write_audio(job.path, x, subtype="FLOAT" if job.path.endswith(".wav") else "PCM_16")
    return len(x), time.process_time() - cpu0


def _samples(rng: np.random.Generator, lo: float, hi: float) -> int:
    return int(round(rng.uniform(lo, hi) * SR))


def make_trials(utt2spk: dict[str, str], rng: np.random.Generator) -> Trials:
    """All same-speaker pairs plus as many random different-speaker pairs, in random order.

    Each unordered pair appears at most once; enroll/test order is random.
    Requires at least 2 speakers with 2 utterances each (then enough distinct
    non-target pairs always exist).
    """
    utts = list(utt2spk)
    spk = np.array([utt2spk[u] for u in utts])
    by_speaker: dict[str, list[int]] = {}
    for i, s in enumerate(spk.tolist()):
        by_speaker.setdefault(s, []).append(i)
    pairs = [(m[a], m[b]) for m in by_speaker.values() for a in range(len(m)) for b in range(a + 1, len(m))]
    n_target = len(pairs)
    if n_target == 0 or len(set(spk.tolist())) < 2:
        raise ValueError("trials need at least 2 speakers and a speaker with 2 utterances")
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n_target:
        a = rng.integers(0, len(utts), size=2 * n_target)
        b = rng.integers(0, len(utts), size=2 * n_target)
        for i, j in zip(a.tolist(), b.tolist()):
            if spk[i] != spk[j] and len(chosen) < n_target:
                chosen.add((min(i, j), max(i, j)))
    labels = [1] * n_target + [0] * n_target
    all_pairs = pairs + sorted(chosen)
    order = rng.permutation(len(all_pairs))
    swap = rng.random(len(all_pairs)) < 0.5
    enroll, test = [], []
    for k in order.tolist():
        i, j = all_pairs[k]
        if swap[k]:
            i, j = j, i
        enroll.append(utts[i])
        test.append(utts[j])
    return Trials.from_lists([labels[k] for k in order.tolist()], enroll, test)


def generate_corpus(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    n_train_speakers: int = 48,
    n_test_speakers: int = 16,
    utts_per_speaker: int = 24,
    min_dur: float = 2.0,
    max_dur: float = 8.0,
    seed: int = 0,
    n_noise: int = 12,
    n_music: int = 8,
    n_speech: int = 10,
    n_rir: int = 24,
    workers: int = 1,
    style: SessionStyle = SessionStyle(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the demo corpus, its manifests and ``baseline.json`` (see the module docstring).

    Speakers ``spk001``... (training first, then test; disjoint), utterances
    ``<spk>-<k:05d>`` of uniform random duration in [min_dur, max_dur] seconds.
    Augmentation sources: ``n_noise`` noise files (5-15 s), ``n_music`` music
    files (10-30 s), ``n_speech`` babble speech files (10-30 s, voices of
    training speakers), ``n_rir`` room impulse responses (RT60 0.2-1.2 s in
    small/medium/large rooms, two positions per room). ``style``: the ranges of
    the per-utterance session variability. ``workers`` processes synthesise in
    parallel; the result does not depend on it. ``log`` receives progress
    messages (e.g. ``print``).

    Returns a summary dict (counts, hours, the baseline result), also stored in
    ``baseline.json`` under ``corpus``.
    """
    _check_sizes(
        n_train_speakers=n_train_speakers,
        n_test_speakers=n_test_speakers,
        utts_per_speaker=utts_per_speaker,
        n_noise=n_noise,
        n_music=n_music,
        n_speech=n_speech,
        n_rir=n_rir,
        workers=workers,
    )
    if not 0 < min_dur <= max_dur:
        raise ValueError(f"need 0 < min_dur <= max_dur, got min_dur={min_dur}, max_dur={max_dur}")
    if min_dur * SR < N_FFT:
        raise ValueError(f"min_dur={min_dur} s is shorter than one analysis window ({N_FFT / SR} s)")
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    log = log or (lambda msg: None)
    t0 = time.monotonic()

    width = max(3, len(str(n_train_speakers + n_test_speakers)))
    speakers = [make_speaker(seed, i, f"spk{i + 1:0{width}d}") for i in range(n_train_speakers + n_test_speakers)]
    jobs: list[_Job] = []
    wav: dict[str, dict[str, str]] = {"train": {}, "test": {}}
    utt2spk: dict[str, dict[str, str]] = {"train": {}, "test": {}}
    for sp in speakers:
        split = "train" if sp.index < n_train_speakers else "test"
        for k in range(utts_per_speaker):
            utt = f"{sp.spk_id}-{k + 1:05d}"
            path = str(out_dir / split / sp.spk_id / f"{utt}.flac")
            n = _samples(np.random.default_rng([seed, STREAM_UTT, sp.index, k, 0]), min_dur, max_dur)
            jobs.append(_Job("utt", (seed, STREAM_UTT, sp.index, k), path, n, speaker=sp, style=style))
            wav[split][utt] = path
            utt2spk[split][utt] = sp.spk_id

    aug: dict[str, list[str]] = {"noise": [], "music": [], "babble": [], "rir": []}
    for i in range(n_noise):
        path = str(out_dir / "musan" / "noise" / f"demo-noise-{i + 1:04d}.flac")
        n = _samples(np.random.default_rng([seed, STREAM_NOISE, i, 0]), 5.0, 15.0)
        jobs.append(_Job("noise", (seed, STREAM_NOISE, i), path, n))
        aug["noise"].append(path)
    for i in range(n_music):
        path = str(out_dir / "musan" / "music" / f"demo-music-{i + 1:04d}.flac")
        n = _samples(np.random.default_rng([seed, STREAM_MUSIC, i, 0]), 10.0, 30.0)
        jobs.append(_Job("music", (seed, STREAM_MUSIC, i), path, n))
        aug["music"].append(path)
    speech_order = np.random.default_rng([seed, STREAM_SPEECH]).permutation(n_train_speakers)
    for i in range(n_speech):
        sp = speakers[int(speech_order[i % n_train_speakers])]
        path = str(out_dir / "musan" / "speech" / f"demo-speech-{i + 1:04d}.flac")
        n = _samples(np.random.default_rng([seed, STREAM_SPEECH, i, 0]), 10.0, 30.0)
        jobs.append(_Job("speech", (seed, STREAM_SPEECH, i), path, n, speaker=sp))
        aug["babble"].append(path)
    sizes = ("small", "medium", "large")
    rt60_ranges = {"small": (0.2, 0.5), "medium": (0.4, 0.8), "large": (0.6, 1.2)}
    for i in range(n_rir):
        room, position = divmod(i, 2)
        size = sizes[room % 3]
        rt60 = float(np.random.default_rng([seed, STREAM_RIR, room]).uniform(*rt60_ranges[size]))
        path = str(
            out_dir
            / "RIRS_NOISES"
            / "simulated_rirs"
            / f"{size}room"
            / f"Room{room + 1:03d}"
            / f"Room{room + 1:03d}-{position + 1:05d}.wav"
        )
        jobs.append(_Job("rir", (seed, STREAM_RIR, room, position + 1), path, 0, rt60=rt60))
        aug["rir"].append(path)

    total_samples, cpu = _run_jobs(jobs, workers)
    log(
        f"synthesised {len(jobs)} files ({total_samples / SR / 3600:.2f} h of audio) in "
        f"{time.monotonic() - t0:.1f} s wall, {cpu:.1f} s CPU in {workers} process(es)"
    )

    for split in ("train", "test"):
        write_wav_scp(data_dir / split / "wav.scp", wav[split])
        write_utt2spk(data_dir / split / "utt2spk", utt2spk[split])
    trials = make_trials(utt2spk["test"], np.random.default_rng([seed, STREAM_TRIALS]))
    trials_path = data_dir / "trials" / f"{TRIALS_NAME}.txt"
    write_trials(trials_path, trials)
    for name, paths in aug.items():
        write_list(data_dir / "augment" / f"{name}.lst", paths)

    t1 = time.monotonic()
    baseline = mfcc_baseline(read_wav_scp(data_dir / "test" / "wav.scp"), read_trials(trials_path))
    log(
        f"MFCC baseline EER {100 * baseline['eer']:.2f} % on {baseline['n_trials']} trials "
        f"({time.monotonic() - t1:.1f} s)"
    )
    lengths = {"train": 0, "test": 0}
    for job in jobs:
        if job.kind == "utt":
            lengths["train" if job.speaker.index < n_train_speakers else "test"] += job.num_samples
    summary = {
        "seed": seed,
        "n_train_speakers": n_train_speakers,
        "n_test_speakers": n_test_speakers,
        "utts_per_speaker": utts_per_speaker,
        "min_dur": min_dur,
        "max_dur": max_dur,
        "n_train_utts": len(wav["train"]),
        "n_test_utts": len(wav["test"]),
        "train_hours": round(lengths["train"] / SR / 3600, 4),
        "test_hours": round(lengths["test"] / SR / 3600, 4),
        "n_trials": len(trials),
        "n_target_trials": int(trials.labels.sum()),
        "augment_files": {name: len(paths) for name, paths in aug.items()},
        "high_voice_speakers": {
            "train": sum(s.high_voice for s in speakers[:n_train_speakers]),
            "test": sum(s.high_voice for s in speakers[n_train_speakers:]),
        },
    }
    write_json(
        out_dir / BASELINE_FILE,
        {
            "eer": baseline["eer"],
            "baseline": baseline["baseline"],
            "trials": str(trials_path),
            "n_trials": baseline["n_trials"],
            "n_target": baseline["n_target"],
            "corpus": summary,
        },
    )
    return {**summary, "baseline_eer": baseline["eer"]}


def _check_sizes(**sizes: int) -> None:
    minimum = {
        "n_train_speakers": 2,
        "n_test_speakers": 2,
        "utts_per_speaker": 2,
        "n_noise": 1,
        "n_music": 1,
        "n_speech": 1,
        "n_rir": 1,
        "workers": 1,
    }
    for key, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < minimum[key]:
            raise ValueError(f"{key} must be an integer >= {minimum[key]}, got {value!r}")


def _run_jobs(jobs: list[_Job], workers: int) -> tuple[int, float]:
    """Run the jobs (in ``workers`` processes when > 1) with progress lines.

    Returns (total samples written, total CPU seconds of the jobs).
    """
    progress = Progress(len(jobs), "demo corpus", unit="files", every_s=10.0)
    samples, cpu = 0, 0.0
    ordered = sorted(jobs, key=lambda job: -job.num_samples)  # long files first: a short tail
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # forkserver: workers do not inherit a parent's torch/OpenMP thread state
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
            )
            results = pool.map(_run_job, ordered, chunksize=4)
        else:
            results = map(_run_job, ordered)
        for n, seconds in results:
            samples, cpu = samples + n, cpu + seconds
            progress.update()
    return samples, cpu
