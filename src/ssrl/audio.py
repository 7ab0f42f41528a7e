"""Audio input/output and the waveform preprocessing of docs/method.md §2.

Every waveform in the library is a 16 kHz (``ssrl.SAMPLE_RATE``) mono float32
numpy array of shape ``(samples,)``.

* Reading: WAV/FLAC (and the other formats libsndfile knows) through
  ``soundfile``; ``.m4a``/``.aac``/``.mp4`` (VoxCeleb2) through PyAV (FFmpeg).
  Multi-channel audio is mixed to mono by the mean over channels; other sample
  rates are resampled to 16 kHz with ``scipy.signal.resample_poly`` (polyphase
  FIR, Kaiser window: exact rational ratio, e.g. 44.1 kHz -> 16 kHz is
  up 160 / down 441; output length ``ceil(n * up / down)``), numpy only so data
  workers need no torch threads.
* Preprocessing for every network input (docs/method.md §2): :func:`random_crop` ->
  augmentation (``ssrl.augment``) -> :func:`peak_normalise` ->
  :func:`pre_emphasis`.

Unreadable, empty, missing or non-finite audio raises :class:`AudioError`
whose message starts with the file path. :func:`audio_problems` names what is
suspicious in audio that users hand in (silent or near-silent, shorter than
its header says), for the CLI and corpus preparation.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from . import SAMPLE_RATE
from .fileio import atomic_path

PYAV_SUFFIXES = frozenset({".m4a", ".aac", ".mp4"})
"""Suffixes decoded with PyAV (FFmpeg); everything else goes through soundfile."""

_WRITE_FORMATS = {".flac": "FLAC", ".wav": "WAV"}


class AudioError(ValueError):
    """Unreadable or unusable audio; the message starts with the file path."""


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    return path


def _uses_pyav(path: Path) -> bool:
    return path.suffix.lower() in PYAV_SUFFIXES


def _to_mono(frames: np.ndarray) -> np.ndarray:
    """``(samples, channels)`` -> ``(samples,)`` float32 by the mean over channels."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    return frames.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(x: np.ndarray, orig_sr: int, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``(samples,)`` from ``orig_sr`` to ``new_sr`` Hz (polyphase, scipy).

    Returns float32 of length ``ceil(samples * new_sr / orig_sr)``; unchanged
    (same object) when the rates are equal.
    """
    if orig_sr == new_sr:
        return x
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    from scipy.signal import resample_poly  # imported here: scipy.signal costs seconds at start-up

    g = math.gcd(int(orig_sr), int(new_sr))
    return resample_poly(x, int(new_sr) // g, int(orig_sr) // g).astype(np.float32, copy=False)


@contextlib.contextmanager
def _soundfile(path: Path) -> Iterator[sf.SoundFile]:
    """Open ``path`` with soundfile; libsndfile errors (open or read) become AudioError."""
    try:
        with sf.SoundFile(str(path)) as fh:
            yield fh
    except (sf.SoundFileError, RuntimeError, OSError, TypeError) as err:
        raise AudioError(f"{path}: cannot read audio ({err})") from err


def _read_frames(fh: sf.SoundFile, frames: int) -> np.ndarray:
    """Read ``frames`` frames at the current position -> ``(frames, channels)`` float32."""
    return fh.read(frames, dtype="float32", always_2d=True)


def _read_pyav(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV -> (``(samples, channels)`` float32, rate)."""
    import av  # FFmpeg bindings; imported here since only m4a/aac/mp4 need them

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            # Planar float at the native layout and rate: one ndarray row per channel.
            converter = av.AudioResampler(format="fltp")
            chunks: list[np.ndarray] = []
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray() for out in converter.resample(frame))
            chunks.extend(out.to_ndarray() for out in converter.resample(None))
            sr = int(stream.rate or stream.codec_context.sample_rate)
    except av.FFmpegError as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), sr
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), sr


def load_audio(path: str | os.PathLike, max_seconds: float | None = None) -> np.ndarray:
    """Read a whole file -> ``(samples,)`` float32 mono at 16 kHz.

    ``max_seconds`` keeps only the first ``round(max_seconds * 16000)`` samples
    (soundfile formats read only that part). Raises :class:`AudioError` for a
    missing, unreadable, empty (zero samples) or non-finite file.
    """
    path = _check_file(path)
    if _uses_pyav(path):
        frames, sr = _read_pyav(path)
    else:
        with _soundfile(path) as fh:
            sr, limit = fh.samplerate, fh.frames
            if max_seconds is not None:
                limit = min(limit, math.ceil(max_seconds * sr) + 1)
            frames = _read_frames(fh, limit)
    if frames.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (zero samples)")
    x = resample(_to_mono(frames), sr)
    if max_seconds is not None:
        x = x[: max(1, round(max_seconds * SAMPLE_RATE))]
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(x, dtype=np.float32)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header (soundfile) or container metadata (PyAV).

    An empty file gives 0.0; falls back to decoding when a container does not
    state its duration. Raises :class:`AudioError` for a missing/unreadable file.
    """
    path = _check_file(path)
    if not _uses_pyav(path):
        with _soundfile(path) as fh:
            return fh.frames / fh.samplerate
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
    except av.FFmpegError as err:
        raise AudioError(f"{path}: cannot read audio header ({err})") from err
    frames, sr = _read_pyav(path)
    return frames.shape[0] / sr


SILENCE_DBFS = -60.0
"""Audio whose RMS level is below this (dB relative to full scale) counts as near-silent: speech
recorded at a usual level sits around -35 to -15 dBFS, a quiet room's noise floor near -70 dBFS."""

SHORT_TOLERANCE_S = 0.1
"""A file counts as shorter than its header says when it decodes to more than this many seconds
less than the header states (AAC decodes in whole frames of 64 ms at 16 kHz)."""


def wav_declared_frames(path: str | os.PathLike) -> int | None:
    """Frames that a RIFF/WAVE file's header declares (``data`` chunk bytes / block align), or None
    for another format or a header without sizes (streamed WAV: 0 or 0xFFFFFFFF). Read here because
    libsndfile quietly shortens the count of a truncated file to what is there."""
    import struct

    block_align = None
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = fh.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif cid == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)


def declared_seconds(path: str | os.PathLike) -> float:
    """The length that ``path``'s header states, in seconds: a WAV's ``data`` chunk size
    (:func:`wav_declared_frames`), else :func:`audio_duration`."""
    path = _check_file(path)
    if not _uses_pyav(path):
        frames = wav_declared_frames(path)
        if frames is not None:
            with _soundfile(path) as fh:
                return frames / fh.samplerate
    return audio_duration(path)


def level_dbfs(x: np.ndarray) -> float:
    """RMS level of ``(samples,)`` audio in dB relative to full scale (-inf when all zero)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def audio_problems(path: str | os.PathLike, x: np.ndarray | None = None) -> list[str]:
    """What is suspicious about audio handed in by a user, as messages without the path, e.g.
    ``silent: every sample is zero``, ``near-silent: RMS level -72.0 dBFS (below -60 dBFS)``,
    ``shorter than its header says: 0.15 s of audio, the header states 3.00 s (truncated?)``.

    ``x`` is the file's audio as :func:`load_audio` returns it (read here when None). Raises
    :class:`AudioError` when the file cannot be read at all.
    """
    if x is None:
        x = load_audio(path)
    problems = []
    level = level_dbfs(x)
    if level == -math.inf:
        problems.append("silent: every sample is zero")
    elif level < SILENCE_DBFS:
        problems.append(f"near-silent: RMS level {level:.1f} dBFS (below {SILENCE_DBFS:.0f} dBFS)")
    stated, decoded = declared_seconds(path), x.shape[0] / SAMPLE_RATE
    if decoded < stated - SHORT_TOLERANCE_S:
        problems.append(
            f"shorter than its header says: {decoded:.2f} s of audio, the header states {stated:.2f} s (truncated?)"
        )
    return problems


def _crop_offset(length: int, num_samples: int, rng: np.random.Generator) -> int:
    """The one random draw of a crop: offset in ``[0, length - num_samples]``, or in
    ``[0, length)`` (a start point in the tiled signal) when the signal is shorter."""
    if length >= num_samples:
        return int(rng.integers(0, length - num_samples + 1))
    return int(rng.integers(0, length))


def _tile(x: np.ndarray, offset: int, num_samples: int) -> np.ndarray:
    return x[(offset + np.arange(num_samples)) % x.shape[0]]


def random_crop(x: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(num_samples,)`` float32 crop of ``x`` at a random offset (docs/method.md §2 step 1).

    ``x`` at least ``num_samples`` long: offset uniform in ``[0, len - num_samples]``.
    Shorter: ``x`` is repeated end to end and the crop starts at a uniform
    offset in ``[0, len)``, i.e. ``y[i] = x[(offset + i) % len]``. One draw from ``rng``.
    """
    if num_samples <= 0:
        raise ValueError(f"crop length must be positive, got {num_samples}")
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"random_crop expects a non-empty (samples,) array, got shape {x.shape}")
    offset = _crop_offset(x.shape[0], num_samples, rng)
    if x.shape[0] >= num_samples:
        return np.array(x[offset : offset + num_samples], dtype=np.float32)
    return _tile(x, offset, num_samples).astype(np.float32, copy=False)


def read_random_crop(path: str | os.PathLike, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``random_crop(load_audio(path), num_samples, rng)`` reading only the crop when possible.

    16 kHz soundfile formats (WAV, FLAC: MUSAN, RIRs, prepared VoxCeleb) seek to
    the drawn offset and decode ``num_samples`` frames; other rates and PyAV
    formats load the whole file. Same draw and same result as
    :func:`random_crop` on the loaded file.
    """
    path = _check_file(path)
    if num_samples <= 0:
        raise ValueError(f"crop length must be positive, got {num_samples}")
    if not _uses_pyav(path):
        with _soundfile(path) as fh:
            if fh.samplerate == SAMPLE_RATE and fh.frames > num_samples:
                offset = _crop_offset(fh.frames, num_samples, rng)
                fh.seek(offset)
                frames = _read_frames(fh, num_samples)
                if frames.shape[0] != num_samples:
                    raise AudioError(
                        f"{path}: header says {fh.frames} samples but reading "
                        f"{num_samples} at offset {offset} returned {frames.shape[0]}"
                    )
                x = _to_mono(frames)
                if not np.isfinite(x).all():
                    raise AudioError(f"{path}: audio contains NaN or infinite samples")
                return x
    return random_crop(load_audio(path), num_samples, rng)


def preload_audio(paths: Sequence[str | os.PathLike], budget_mb: float) -> dict[str, np.ndarray]:
    """``{path: load_audio(path)}`` of every distinct path when the files together take at most
    ``budget_mb`` MiB on disk, else ``{}`` (also for ``budget_mb`` 0 or a missing file, which is
    then reported with its name when it is read). Decoded float32 takes about twice the disk
    size of 16-bit PCM. The sizes are summed only until the budget is passed, so a list of a
    million files costs a few thousand ``stat`` calls. Used to cut crops from memory
    (:func:`random_crop`, the same crops as :func:`read_random_crop` from disk) when a corpus is
    small, e.g. the demo's.
    """
    if budget_mb < 0:
        raise ValueError(f"preload budget must be >= 0 MiB, got {budget_mb}")
    if budget_mb == 0:
        return {}
    unique = sorted({str(p) for p in paths})
    budget, on_disk = budget_mb * 2**20, 0
    try:
        for p in unique:
            on_disk += os.path.getsize(p)
            if on_disk > budget:
                return {}
    except OSError:
        return {}
    return {p: load_audio(p) for p in unique}


def peak_normalise(x: np.ndarray) -> np.ndarray:
    """``x / max|x|`` as float32 (docs/method.md §2 step 3); an all-zero signal is returned unchanged."""
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x.copy()
    return x / np.float32(peak)


def pre_emphasis(x: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """``y[n] = x[n] - coef * x[n-1]``, ``y[0] = x[0]`` (docs/method.md §2 step 4); float32, same shape."""
    x = np.asarray(x, dtype=np.float32)
    y = x.copy()
    y[1:] -= np.float32(coef) * x[:-1]
    return y


def write_audio(
    path: str | os.PathLike, x: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16"
) -> None:
    """Write ``(samples,)`` (or ``(samples, channels)``) audio atomically; FLAC or WAV by extension.

    ``subtype`` is a soundfile subtype (``PCM_16``, ``PCM_24``; WAV also
    ``FLOAT``). Integer subtypes require samples within [-1, 1] (libsndfile
    would otherwise clip silently).
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: cannot write audio with suffix {path.suffix!r} (use .flac or .wav)")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise AudioError(f"{path}: expected non-empty (samples,) or (samples, channels) audio, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    if subtype.startswith("PCM") and float(np.max(np.abs(x))) > 1.0:
        raise AudioError(
            f"{path}: samples exceed [-1, 1] (peak {float(np.max(np.abs(x))):.3f}); "
            f"normalise first or write WAV with subtype='FLOAT'"
        )
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, sample_rate, subtype=subtype, format=fmt)
