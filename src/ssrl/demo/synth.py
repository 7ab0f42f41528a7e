"""The demo synthesiser: utterances of a :class:`~ssrl.demo.voice.Speaker` in a :class:`~ssrl.demo.voice.Session`,
and the augmentation sources (noise, music, babble speech); the speech model is described in
:mod:`ssrl.demo.voice`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import oaconvolve

from .voice import (
    BURST_SHAPE,
    CONSONANTS,
    FREQS,
    FRICATION_GAIN,
    HOP,
    LOCI,
    N_VOWELS,
    NOISE_SHAPES,
    SOURCE_TILT,
    SR,
    VOWELS,
    Session,
    Speaker,
    clean_session,
    coloured_noise,
    frame_count,
    istft,
    resonance_gain,
    smooth,
    stft,
)

# --------------------------------------------------------------------------- utterance synthesis


@dataclass
class _Segment:
    """One synthesis segment (a phone or part of one)."""

    n: int  # samples
    voice: float = 0.0  # voiced-source amplitude
    aspiration: float = 0.0  # aspiration noise through the vocal tract
    frication: float = 0.0  # frication / burst noise amplitude
    shape: int = 0  # row of NOISE_SHAPES
    formants: tuple | None = None  # F1-F3 target (Hz) at the segment centre; None: interpolate


def _phone_segments(
    sp: Speaker,
    rng: np.random.Generator,
    rate: float,
    stress: float,
    cons: int | None,
    vowel: int | None,
    next_vowel: int | None,
) -> list[_Segment]:
    """Segments of one consonant (``cons`` index) or one vowel (``vowel`` index)."""

    def dur(lo: float, hi: float) -> int:
        return max(1, int(rng.uniform(lo, hi) / rate * SR))

    if vowel is not None:
        target = tuple((VOWELS[vowel] * sp.vowel_offsets[vowel] * sp.vtl).tolist())
        n = dur(0.07, 0.16) + int(stress * 0.06 * SR / rate)
        # two anchor points at 1/4 and 3/4 of the vowel: a steady state with transitions on both sides
        quarter = max(1, n // 4)
        return [
            _Segment(quarter, voice=stress),
            _Segment(n - 2 * quarter, voice=stress, formants=target),
            _Segment(quarter, voice=stress),
        ]

    kind, place, voiced, shape, amp, (lo, hi) = CONSONANTS[cons]
    locus = tuple(v * sp.vtl for v in LOCI[place])
    if kind in ("nasal", "approx"):
        f = (locus[0], locus[1] * (0.9 if kind == "nasal" else 1.0), locus[2])
        return [_Segment(dur(lo, hi), voice=amp, formants=f)]
    if kind == "fric":
        return [_Segment(dur(lo, hi), voice=0.25 if voiced else 0.0, frication=amp, shape=shape, formants=locus)]
    if kind == "h":
        nv = next_vowel if next_vowel is not None else 5
        return [
            _Segment(dur(lo, hi), aspiration=amp, formants=tuple((VOWELS[nv] * sp.vowel_offsets[nv] * sp.vtl).tolist()))
        ]
    # stop: closure (with a voice bar if voiced), burst, then aspiration if voiceless
    segs = [
        _Segment(dur(lo, hi), voice=0.04 if voiced else 0.0, formants=locus),
        _Segment(dur(0.008, 0.015), frication=amp, shape=BURST_SHAPE[place]),
    ]
    if not voiced:
        segs.append(_Segment(dur(0.02, 0.05), aspiration=0.25))
    return segs


def _utterance_segments(sp: Speaker, rng: np.random.Generator, n_total: int, rate: float) -> list[_Segment]:
    """Random words (1-3 syllables of (C)V(C)) with pauses, until ``n_total`` samples are filled."""
    segs = [_Segment(int(rng.uniform(0.05, 0.25) * SR))]
    filled = segs[0].n
    n_cons = len(CONSONANTS)
    while filled < n_total:
        for _ in range(rng.integers(1, 4)):
            vowel = int(rng.integers(N_VOWELS))
            stress = float(rng.uniform(0.55, 1.0))
            word: list[_Segment] = []
            if rng.random() < 0.75:
                word += _phone_segments(sp, rng, rate, stress, int(rng.integers(n_cons)), None, vowel)
            word += _phone_segments(sp, rng, rate, stress, None, vowel, None)
            if rng.random() < 0.35:
                word += _phone_segments(sp, rng, rate, stress, int(rng.integers(n_cons)), None, None)
            segs += word
            filled += sum(s.n for s in word)
        if rng.random() < 0.3:
            pause = _Segment(int(rng.uniform(0.08, 0.35) * SR))
            segs.append(pause)
            filled += pause.n
    return segs


def _tracks(segs: Sequence[_Segment], n: int, sp: Speaker) -> dict[str, np.ndarray]:
    """Sample-level amplitude tracks, frame-level formant tracks and noise-shape ids."""
    lengths = np.array([s.n for s in segs])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ramp = int(0.006 * SR)

    def amp(attr: str) -> np.ndarray:
        return smooth(np.repeat(np.array([getattr(s, attr) for s in segs], np.float32), lengths)[:n], ramp)

    anchors = [(st + s.n / 2, s.formants) for st, s in zip(starts, segs) if s.formants is not None]
    centres = np.arange(frame_count(n), dtype=np.float64) * HOP
    if anchors:
        at = np.array([a[0] for a in anchors])
        vals = np.array([a[1] for a in anchors], dtype=np.float64)
        f123 = np.stack([np.interp(centres, at, vals[:, k]) for k in range(3)], axis=1)
    else:
        f123 = np.tile(VOWELS[5] * sp.vtl, (len(centres), 1))
    formants = np.concatenate([f123, np.tile(sp.high_formants, (len(centres), 1))], axis=1)
    # keep the cascade ordered and apart (F_k+1 >= F_k + 200 Hz)
    for k in range(1, formants.shape[1]):
        formants[:, k] = np.maximum(formants[:, k], formants[:, k - 1] + 200.0)
    shape_frames = np.repeat(np.array([s.shape for s in segs]), lengths)[:n][np.minimum(centres.astype(int), n - 1)]
    return {
        "voice": amp("voice"),
        "aspiration": amp("aspiration"),
        "frication": amp("frication"),
        "formants": formants.astype(np.float32),
        "shape": shape_frames,
    }


def _f0_contour(sp: Speaker, rng: np.random.Generator, n: int, shift_st: float) -> np.ndarray:
    """(n,) float64 Hz: speaker median, utterance shift, declination and smooth accents."""
    knots = max(2, int(n / SR / 0.25) + 2)
    st = rng.normal(0.0, sp.f0_range, knots)
    contour = np.interp(np.arange(n), np.linspace(0, n - 1, knots), st)
    contour = smooth(contour.astype(np.float32), int(0.1 * SR)).astype(np.float64)
    declination = -rng.uniform(1.0, 4.0) * np.arange(n) / max(n - 1, 1)
    return sp.f0 * 2.0 ** ((contour + declination + shift_st) / 12.0)


def _glottal_source(sp: Speaker, rng: np.random.Generator, f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg-pulse flow derivative with jitter and shimmer, and the glottal-open mask.

    ``f0`` (n,) Hz -> (source (n,) float32 of about unit peak per cycle, open (n,) float32 0/1).
    """
    phase0 = np.cumsum(f0 / SR)
    cycles = int(phase0[-1]) + 2
    jitter = 1.0 + sp.jitter * rng.standard_normal(cycles)
    f = f0 * jitter[phase0.astype(np.int64)]
    phase = np.cumsum(f / SR)
    cyc = phase.astype(np.int64)
    frac = (phase - cyc).astype(np.float32)
    tp = sp.open_quotient * sp.speed_quotient / (1 + sp.speed_quotient)
    tn = sp.open_quotient / (1 + sp.speed_quotient)
    flow = np.where(
        frac < tp,
        0.5 * (1 - np.cos(np.pi * frac / tp)),
        np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0),
    ).astype(np.float32)
    deriv = np.diff(flow, prepend=np.float32(0.0)) / (f / SR).astype(np.float32) * (tn / np.pi)
    shimmer = (1.0 + sp.shimmer * rng.standard_normal(int(cyc[-1]) + 1)).astype(np.float32)
    return deriv * shimmer[cyc], (frac < sp.open_quotient).astype(np.float32)


def synthesise_utterance(sp: Speaker, rng: np.random.Generator, num_samples: int, session: Session) -> np.ndarray:
    """One utterance of speaker ``sp`` recorded in ``session`` -> (num_samples,) float32 in [-1, 1]."""
    n = num_samples
    rate = sp.rate * float(rng.uniform(0.92, 1.08))
    segs = _utterance_segments(sp, rng, n, rate)
    tr = _tracks(segs, n, sp)
    f0 = _f0_contour(sp, rng, n, shift_st=float(rng.normal(0.0, 0.6)))
    glottal, open_mask = _glottal_source(sp, rng, f0)
    breath = sp.breathiness * (0.4 + 0.6 * open_mask)
    noise_v = rng.standard_normal(n).astype(np.float32)
    tract_in = tr["voice"] * (glottal + breath * noise_v) + tr["aspiration"] * noise_v
    fric_in = tr["frication"] * rng.standard_normal(n).astype(np.float32) * np.float32(FRICATION_GAIN)

    # static spectral shaping: source correction + speaker tilt (+ per-utterance vocal effort) on the
    # source, the channel on everything
    effort_tilt = SOURCE_TILT + sp.tilt + float(rng.normal(0.0, 0.5))
    octaves = np.log2(np.maximum(FREQS, 500.0) / 500.0)
    channel = 10 ** (session.channel_db / 20.0)
    tract_static = (10 ** (effort_tilt * octaves / 20.0)) * channel
    shapes = NOISE_SHAPES.copy()
    shapes[:, :2] *= math.sqrt(sp.vtl)
    noise_env = shapes[:, 2:3] + np.exp(-0.5 * ((FREQS[None, :] - shapes[:, 0:1]) / shapes[:, 1:2]) ** 2)
    noise_env = noise_env / np.sqrt(np.mean(noise_env**2, axis=1, keepdims=True)) * channel  # unit power gain

    zero = 1.0 / resonance_gain(np.array([[sp.antiformant]], np.float32), np.array([sp.antiformant_bw], np.float32))
    env = resonance_gain(tr["formants"], sp.bandwidths) * (tract_static * zero[0])
    spec = stft(tract_in) * env + stft(fric_in) * noise_env[tr["shape"]]
    x = istft(spec, n)

    if session.rir is not None:
        x = oaconvolve(x, session.rir)[:n].astype(np.float32)
    return _finish(x, rng, session)


def _finish(x: np.ndarray, rng: np.random.Generator, session: Session) -> np.ndarray:
    """Add the session's background noise and hum at its SNR, set the level, keep the peak < 1."""
    n = len(x)
    power = float(np.mean(x.astype(np.float64) ** 2)) + 1e-12
    if session.snr_db is not None:
        noise = coloured_noise(rng, n, session.noise_tilt)
        if session.hum_hz:
            t = np.arange(n) / SR
            hum = sum(np.sin(2 * np.pi * k * session.hum_hz * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
            noise = noise + rng.uniform(0.5, 2.0) * hum.astype(np.float32)
            noise /= np.sqrt(np.mean(noise.astype(np.float64) ** 2))
        x = x + noise * np.float32(math.sqrt(power / 10 ** (session.snr_db / 10)))
    return _set_level(x, session.level_dbfs)


def _set_level(x: np.ndarray, level_dbfs: float, max_peak: float = 0.95) -> np.ndarray:
    """Scale (n,) to an RMS of ``level_dbfs`` dB re full scale, then down if the peak exceeds ``max_peak``."""
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    if rms <= 0:
        return x.astype(np.float32)
    x = x * np.float32(10 ** (level_dbfs / 20) / rms)
    peak = float(np.max(np.abs(x)))
    if peak > max_peak:
        x = x * np.float32(max_peak / peak)
    return x.astype(np.float32)


# --------------------------------------------------------------------------- augmentation sources


def synthesise_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """MUSAN-``noise``-like source -> (num_samples,) float32.

    Stationary coloured noise (random slope, optional machine hum with
    harmonics) or non-stationary noise (slowly modulated level, impulsive
    knocks, chirps, crackle); chosen at random.
    """
    n = num_samples
    t = np.arange(n) / SR
    x = coloured_noise(rng, n, rng.uniform(-8.0, 2.0))
    if rng.random() < 0.5:  # stationary, maybe a machine hum
        if rng.random() < 0.5:
            f = rng.uniform(40.0, 240.0)
            x = x + sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f * t) for k in range(1, 6))
        return _set_level(x.astype(np.float32), -20.0)
    knots = max(2, int(n / SR * 2))  # non-stationary
    mod = np.exp(np.interp(np.arange(n), np.linspace(0, n - 1, knots), rng.normal(0.0, 1.0, knots)))
    x = x * mod
    for _ in range(rng.integers(2, 3 + int(n / SR))):  # knocks: decaying noise bursts
        k = int(rng.integers(0, n))
        m = min(n - k, int(rng.uniform(0.05, 0.4) * SR))
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (rng.uniform(0.01, 0.08) * SR))
        x[k : k + m] += rng.uniform(2.0, 8.0) * burst
    if rng.random() < 0.5:  # a chirp / siren
        f_lo, f_hi = sorted(rng.uniform(300.0, 3000.0, 2))
        inst = f_lo + (f_hi - f_lo) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
        x = x + rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * np.cumsum(inst) / SR)
    if rng.random() < 0.5:  # crackle: sparse clicks
        clicks = (rng.random(n) < rng.uniform(1e-4, 2e-3)) * rng.normal(0.0, 6.0, n)
        x = x + clicks
    return _set_level(x.astype(np.float32), -20.0)


def synthesise_music(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """MUSAN-``music``-like source -> (num_samples,) float32.

    1-3 voices playing notes of a random scale (harmonic tones with a random
    timbre and attack/decay envelope) at a random tempo, optionally with
    percussion (kick: falling sine; snare/hat: noise bursts).
    """
    n = num_samples
    x = np.zeros(n, dtype=np.float64)
    root = rng.uniform(110.0, 220.0)
    scale = np.array([0, 2, 4, 5, 7, 9, 11]) if rng.random() < 0.5 else np.array([0, 2, 3, 5, 7, 8, 10])
    beat = 60.0 / rng.uniform(60.0, 160.0)
    for voice in range(rng.integers(1, 4)):
        harmonics = rng.uniform(0.0, 1.0, 8) / np.arange(1, 9) ** rng.uniform(0.5, 2.0)
        octave = 2.0 ** (voice - 1 + rng.integers(0, 2))
        pos = 0
        while pos < n:
            length = int(beat * rng.choice([0.5, 1.0, 1.0, 2.0]) * SR)
            m = min(length, n - pos)
            step = int(rng.integers(len(scale)))
            f = root * octave * 2.0 ** (scale[step] / 12.0)
            tt = np.arange(m) / SR
            env = np.minimum(tt / 0.01, 1.0) * np.exp(-tt / rng.uniform(0.2, 1.5))
            ks = np.arange(1, 9)[f * np.arange(1, 9) < SR / 2 - 200]
            tone = (harmonics[ks - 1, None] * np.sin(2 * np.pi * f * ks[:, None] * tt[None, :])).sum(axis=0)
            x[pos : pos + m] += env * tone
            pos += length
    if rng.random() < 0.6:
        for pos in range(0, n, int(beat * SR)):
            m = min(int(0.25 * SR), n - pos)
            tt = np.arange(m) / SR
            kick = np.sin(2 * np.pi * np.cumsum(60.0 + 100.0 * np.exp(-tt / 0.03)) / SR) * np.exp(-tt / 0.08)
            x[pos : pos + m] += 2.0 * kick
            hat = rng.standard_normal(m) * np.exp(-tt / 0.02)
            half = pos + int(beat * SR / 2)
            if half + m <= n:
                x[half : half + m] += 0.5 * np.diff(hat, prepend=0.0)
    return _set_level(x.astype(np.float32), -20.0)


def synthesise_speech_source(sp: Speaker, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """MUSAN-``speech``-like source (for babble): a long, clean read by training speaker ``sp``."""
    return synthesise_utterance(sp, rng, num_samples, clean_session(rng))
