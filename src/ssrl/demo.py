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

Speech model (source-filter, vectorised with numpy)
---------------------------------------------------
A *speaker* (:class:`Speaker`) has stable voice traits: f0 level and intonation
range in two broad groups (low/high voices), a vocal-tract length factor that
scales every formant, per-vowel formant offsets, speaker-specific higher
formants and bandwidths, glottal open quotient and spectral tilt, breathiness,
jitter, shimmer and speaking rate.

An *utterance* is a random sequence of syllables built from vowels, nasals,
approximants, fricatives and stops, with pauses between words. Formant targets
are linearly interpolated between neighbouring phones (coarticulated
trajectories). A Rosenberg glottal pulse train (f0 contour with declination and
accents, per-cycle jitter and shimmer) plus aspiration noise excites the vocal
tract: a cascade of 8 resonators (F1-F3 moving, F4-F8 fixed per speaker) and the
speaker's piriform antiresonance, evaluated per 16 ms frame in the STFT domain
(sine-window weighted overlap-add); frication and bursts are shaped noise. The
long-term spectrum is close to the natural one (about -20 dB at 4 kHz re 500 Hz).

Each utterance is its own *session* (:class:`SessionStyle` sets the ranges):
random channel colouring (a few spectral bumps and a tilt) and band-limiting,
optional mild reverberation, coloured background noise (optionally with mains
hum) at a random SNR, and a random level. The session effects are what defeat
the long-term average spectrum that an MFCC mean captures (16 test speakers x
16 utterances of 2-5 s: with no session variability the baseline's EER is about
13 %, with the default sessions about 32 %); a static channel is removed by the
per-band instance normalisation of the ECAPA front-end, while f0, formant
positions and trajectories, voice quality and the other speaker traits remain
for a learned model to use. The speaker traits are spread widely (f0 80-290 Hz,
formant scale 0.84-1.30, per-vowel formant offsets of about 10 %) and the
utterance-to-utterance f0 shift is small, so that a few minutes of CPU
self-supervised training already separate speakers that the channel-coloured
MFCC mean confuses.

Every random draw comes from ``numpy.random.default_rng([seed, stream, ...])``
keyed by what is being made, so the corpus is identical for any number of
worker processes.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.fft
from scipy.signal import oaconvolve

from . import SAMPLE_RATE
from .audio import load_audio, write_audio
from .fileio import write_json
from .manifest import Trials, read_trials, read_wav_scp, write_list, write_trials, write_utt2spk, write_wav_scp
from .progress import Progress

SR = SAMPLE_RATE
N_FFT = 512                      # synthesis STFT: 32 ms sine window ...
HOP = N_FFT // 2                 # ... 16 ms hop (perfect reconstruction with w**2 summing to 1)
_FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR).astype(np.float32)          # (257,) Hz
_WINDOW = np.sin(np.pi * (np.arange(N_FFT) + 0.5) / N_FFT).astype(np.float32)

# Random streams: the first key after the seed says what a generator draws for.
_STREAM_SPEAKER, _STREAM_UTT, _STREAM_TRIALS = 1, 2, 3
_STREAM_NOISE, _STREAM_MUSIC, _STREAM_SPEECH, _STREAM_RIR = 10, 11, 12, 13

TRIALS_NAME = "demo"
BASELINE_FILE = "baseline.json"

# --------------------------------------------------------------------------- phone inventory
# Vowel formant targets F1-F3 in Hz for an adult low (male-like) voice, close to
# the classic American-English averages (Hillenbrand et al. 1995).
_VOWELS = np.array([
    [342, 2322, 3000],   # i
    [427, 2034, 2684],   # I
    [476, 2089, 2691],   # e
    [580, 1799, 2605],   # E
    [588, 1952, 2601],   # ae
    [768, 1333, 2522],   # a
    [652, 997, 2538],    # o (open)
    [497, 910, 2459],    # o
    [469, 1122, 2434],   # U
    [378, 997, 2343],    # u
    [623, 1200, 2550],   # V
    [474, 1379, 1710],   # r-coloured
], dtype=np.float32)
N_VOWELS = len(_VOWELS)

# Consonant places: F1-F3 loci that the formants move towards.
_LOCI = {"lab": (250, 900, 2200), "alv": (280, 1700, 2600), "pal": (280, 1900, 2500), "vel": (280, 2000, 2300)}

# Noise spectra for frication and bursts: (centre Hz, width Hz, floor) of a Gaussian bump.
_NOISE_SHAPES = np.array([
    [6000, 1800, 0.03],  # s, z
    [3200, 1000, 0.05],  # sh
    [4000, 5000, 0.30],  # f, v, th (flat, weak)
    [1000, 900, 0.10],   # labial burst
    [4200, 1500, 0.10],  # alveolar burst
    [2200, 700, 0.10],   # velar burst
], dtype=np.float32)
_BURST_SHAPE = {"lab": 3, "alv": 4, "vel": 5}
# Frication noise of amplitude 1 through a (unit-power) noise shape, relative to the voiced
# source: puts /s/ about 15 dB and /f/ about 25 dB below a full vowel, as in natural speech.
_FRICATION_GAIN = 0.2

# Consonants: kind, place, voiced, noise shape (fricatives), relative amplitude, duration range (s).
_CONSONANTS = [
    ("nasal", "lab", True, None, 0.35, (0.05, 0.09)),       # m
    ("nasal", "alv", True, None, 0.35, (0.05, 0.09)),       # n
    ("approx", "alv", True, None, 0.55, (0.04, 0.08)),      # l
    ("approx", "pal", True, None, 0.55, (0.04, 0.07)),      # j
    ("approx", "lab", True, None, 0.5, (0.04, 0.07)),       # w
    ("fric", "alv", False, 0, 0.35, (0.08, 0.15)),          # s
    ("fric", "pal", False, 1, 0.40, (0.08, 0.14)),          # sh
    ("fric", "lab", False, 2, 0.12, (0.07, 0.12)),          # f
    ("fric", "alv", True, 0, 0.20, (0.06, 0.11)),           # z
    ("fric", "lab", True, 2, 0.10, (0.05, 0.10)),           # v
    ("h", "vel", False, None, 0.30, (0.05, 0.09)),          # h
    ("stop", "lab", False, None, 0.6, (0.04, 0.08)),        # p
    ("stop", "alv", False, None, 0.6, (0.04, 0.08)),        # t
    ("stop", "vel", False, None, 0.6, (0.05, 0.09)),        # k
    ("stop", "lab", True, None, 0.5, (0.04, 0.07)),         # b
    ("stop", "alv", True, None, 0.5, (0.04, 0.07)),         # d
    ("stop", "vel", True, None, 0.5, (0.04, 0.07)),         # g
]

# Added to every source spectrum (dB/octave above 500 Hz): brings the long-term average spectrum
# of the Rosenberg-pulse voice up to the natural one (about -20 dB at 4 kHz re 500 Hz per Hz).
_SOURCE_TILT = 3.0
# F4-F8 of the reference voice (F6-F8 stand in for the higher poles of the tract) and F1-F8 bandwidths.
_BASE_HIGH_FORMANTS = (3500.0, 4500.0, 5500.0, 6500.0, 7500.0)
_BASE_BANDWIDTHS = np.array([70, 90, 130, 220, 300, 500, 600, 700], dtype=np.float32)


# --------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    """Stable voice traits of one synthetic speaker (units in the field comments)."""

    spk_id: str
    index: int                   # global speaker index (seeds the speaker's random stream)
    high_voice: bool             # the group: higher f0 and shorter vocal tract (female-like)
    f0: float                    # Hz, median fundamental frequency
    f0_range: float              # semitones, std of the intonation contour
    vtl: float                   # formant scale factor (1 = reference voice; > 1 shorter tract)
    vowel_offsets: np.ndarray    # (N_VOWELS, 3) multiplicative offsets on F1-F3 per vowel
    high_formants: np.ndarray    # (5,) Hz, F4-F8
    bandwidths: np.ndarray       # (8,) Hz, bandwidths of F1-F8
    tilt: float                  # dB per octave above 500 Hz, added to the source spectrum
    open_quotient: float         # fraction of a glottal cycle with the glottis open
    speed_quotient: float        # opening / closing time of the glottal pulse
    breathiness: float           # aspiration-noise amplitude relative to the voiced source
    jitter: float                # relative std of the per-cycle f0
    shimmer: float               # relative std of the per-cycle amplitude
    rate: float                  # speaking-rate factor (> 1 faster)
    antiformant: float           # Hz, piriform-fossa spectral zero on voiced sounds
    antiformant_bw: float        # Hz, its bandwidth


def make_speaker(seed: int, index: int, spk_id: str) -> Speaker:
    """Draw the traits of speaker ``index`` (deterministic in ``(seed, index)``)."""
    rng = np.random.default_rng([seed, _STREAM_SPEAKER, index])
    high = index % 2 == 1                         # the two groups alternate: balanced in every split
    f0 = float(rng.uniform(165, 290) if high else rng.uniform(80, 155))
    vtl = float(rng.uniform(1.08, 1.30) if high else rng.uniform(0.84, 1.06))
    offsets = np.exp(rng.normal(0.0, [0.12, 0.10, 0.06], size=(N_VOWELS, 3))).astype(np.float32)
    high_f = np.array(_BASE_HIGH_FORMANTS) * vtl * np.exp(rng.normal(0.0, 0.08, len(_BASE_HIGH_FORMANTS)))
    return Speaker(
        spk_id=spk_id, index=index, high_voice=high, f0=f0,
        f0_range=float(rng.uniform(1.0, 3.5)), vtl=vtl, vowel_offsets=offsets,
        high_formants=np.sort(high_f).astype(np.float32),
        bandwidths=(_BASE_BANDWIDTHS * rng.uniform(0.8, 1.4)).astype(np.float32),
        tilt=float(rng.uniform(-2.5, 2.5)),
        open_quotient=float(rng.uniform(0.45, 0.75)), speed_quotient=float(rng.uniform(1.5, 3.5)),
        breathiness=float(rng.uniform(0.01, 0.25)), jitter=float(rng.uniform(0.003, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.10)), rate=float(rng.uniform(0.8, 1.25)),
        antiformant=float(4500.0 * vtl * np.exp(rng.normal(0.0, 0.08))),
        antiformant_bw=float(rng.uniform(150, 400)),
    )


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SessionStyle:
    """How strongly sessions vary (the demo's difficulty); the defaults are tuned so that the
    MFCC-mean baseline lands between 10 % and 35 % EER (see ``baseline.json``)."""

    eq_db: float = 3.0                               # std of each channel bump / notch, dB
    tilt_db: float = 1.5                             # std of the channel's spectral slope, dB/octave
    telephone_prob: float = 0.15                     # probability of a 3.3-4.5 kHz upper band edge
    reverb_prob: float = 0.4                         # probability of mild reverberation (RT60 0.1-0.35 s)
    snr_db: tuple[float, float] = (20.0, 45.0)       # background-noise SNR range, dB
    noise_tilt: tuple[float, float] = (-5.0, -2.0)   # background-noise slope range, dB/octave
    hum_prob: float = 0.1                            # probability of mains hum in the noise
    level_dbfs: tuple[float, float] = (-32.0, -18.0)  # RMS level range, dB re full scale


@dataclass(frozen=True)
class Session:
    """Recording conditions of one utterance.

    ``channel_db`` (257,) is the channel's gain in dB on the synthesis STFT bins
    (colouring and band-limiting); ``rir`` an impulse response or None;
    ``snr_db`` the background-noise SNR (None: no noise); ``noise_tilt`` its
    slope in dB/octave; ``hum_hz`` mains-hum frequency or 0; ``level_dbfs`` the
    final RMS level.
    """

    channel_db: np.ndarray
    rir: np.ndarray | None
    snr_db: float | None
    noise_tilt: float
    hum_hz: float
    level_dbfs: float


def _channel_db(rng: np.random.Generator, style: SessionStyle) -> np.ndarray:
    """A random channel response in dB on the STFT bins: bumps, tilt and band limits."""
    logf = np.log2(np.maximum(_FREQS, 20.0) / 1000.0)
    gain = rng.normal(0.0, style.tilt_db) * logf                             # tilt, dB/octave
    for _ in range(rng.integers(2, 6)):                                      # resonances / notches
        centre = rng.uniform(np.log2(0.15), np.log2(6.5))
        width = rng.uniform(0.25, 1.0)
        gain = gain + rng.normal(0.0, style.eq_db) * np.exp(-0.5 * ((logf - centre) / width) ** 2)
    low_cut = rng.uniform(60.0, 300.0)
    if rng.random() < style.telephone_prob:
        high_cut = rng.uniform(3300.0, 4500.0)
    else:
        high_cut = rng.uniform(5000.0, 7800.0)
    f = np.maximum(_FREQS, 1.0)
    band = -10 * np.log10(1 + (low_cut / f) ** 4) - 10 * np.log10(1 + (f / high_cut) ** 8)
    return (gain + band).astype(np.float32)


def random_session(rng: np.random.Generator, style: SessionStyle = SessionStyle()) -> Session:
    """Draw the recording conditions of one utterance."""
    channel = _channel_db(rng, style)
    rir = None
    if rng.random() < style.reverb_prob:
        rir = room_impulse_response(rng, rt60=rng.uniform(0.1, 0.35), direct_gain=rng.uniform(2.0, 6.0))
    return Session(channel_db=channel, rir=rir, snr_db=float(rng.uniform(*style.snr_db)),
                   noise_tilt=float(rng.uniform(*style.noise_tilt)),
                   hum_hz=float(rng.choice([50.0, 60.0])) if rng.random() < style.hum_prob else 0.0,
                   level_dbfs=float(rng.uniform(*style.level_dbfs)))


def clean_session(rng: np.random.Generator) -> Session:
    """Near-studio conditions (for the babble sources): flat channel, quiet noise floor."""
    return Session(channel_db=np.zeros_like(_FREQS), rir=None, snr_db=float(rng.uniform(35.0, 45.0)),
                   noise_tilt=-3.0, hum_hz=0.0, level_dbfs=float(rng.uniform(-26.0, -20.0)))


# --------------------------------------------------------------------------- signal helpers


def coloured_noise(rng: np.random.Generator, n: int, tilt_db_per_octave: float) -> np.ndarray:
    """(n,) float32 unit-RMS Gaussian noise with a spectral slope in dB/octave (re 1 kHz)."""
    m = scipy.fft.next_fast_len(n, real=True)
    spec = scipy.fft.rfft(rng.standard_normal(m).astype(np.float32))
    f = np.maximum(np.fft.rfftfreq(m, 1.0 / SR), 20.0).astype(np.float32)
    spec *= (f / 1000.0) ** np.float32(tilt_db_per_octave / (20 * math.log10(2)))
    x = scipy.fft.irfft(spec, m)[:n].astype(np.float32)
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)


def room_impulse_response(rng: np.random.Generator, rt60: float, direct_gain: float = 1.0,
                          distance_m: float | None = None) -> np.ndarray:
    """A simulated room impulse response, (samples,) float32 with peak |h| = 1.

    A direct-path impulse after the source-microphone delay, 4-12 early
    reflections (random sign, amplitude falling with path length), and a diffuse
    tail of exponentially decaying noise (60 dB decay in ``rt60`` seconds, faster
    above 2 kHz) starting with the reflections. ``direct_gain`` scales the
    direct path relative to the tail (large = dry). Length ``rt60 + 0.05`` s.
    """
    n = int((rt60 + 0.05) * SR)
    dist = distance_m if distance_m is not None else rng.uniform(0.5, 4.0)
    d0 = int(dist / 343.0 * SR)
    t = np.arange(n) / SR
    low = rng.standard_normal(n)
    high = np.diff(rng.standard_normal(n + 1))                   # crude high band: differentiated noise
    tail = (low * np.exp(-6.91 * t / rt60) + 0.5 * high * np.exp(-6.91 * t / (0.6 * rt60)))
    onset = d0 + int(rng.uniform(0.002, 0.006) * SR)
    tail[:onset] = 0.0
    h = 0.25 * tail / (np.max(np.abs(tail)) + 1e-12)
    for _ in range(rng.integers(4, 13)):
        extra = rng.uniform(0.5, 15.0)                              # extra path length, metres
        k = d0 + int(extra / 343.0 * SR)
        if k < n:
            h[k] += rng.choice([-1.0, 1.0]) * 0.6 * dist / (dist + extra)
    h[d0] += direct_gain
    return (h / np.max(np.abs(h))).astype(np.float32)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` samples, (n,) -> (n,) float32 (edges extended by repetition)."""
    if width <= 1:
        return x.astype(np.float32)
    padded = np.pad(x, (width // 2, width - width // 2 - 1), mode="edge")
    c = np.concatenate([[0.0], np.cumsum(padded, dtype=np.float64)])
    return ((c[width:] - c[:-width]) / width).astype(np.float32)


def _n_frames(n: int) -> int:
    """Synthesis frames for ``n`` samples: centres 0, HOP, ... until every sample is in two frames."""
    return -(-n // HOP) + 1


def _stft(x: np.ndarray) -> np.ndarray:
    """(n,) -> (_n_frames(n), 257) complex; frame t is centred on sample t * HOP (sine window)."""
    n_frames = _n_frames(len(x))
    padded = np.zeros((n_frames + 1) * HOP, dtype=np.float32)
    padded[HOP:HOP + len(x)] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    return scipy.fft.rfft(frames * _WINDOW, axis=1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_stft` (weighted overlap-add) -> (n,) float32."""
    frames = scipy.fft.irfft(spec, N_FFT, axis=1).astype(np.float32) * _WINDOW
    n_frames = frames.shape[0]
    out = np.zeros((n_frames + 1) * HOP, dtype=np.float32)
    out[:n_frames * HOP] += frames[:, :HOP].ravel()
    out[HOP:] += frames[:, HOP:].ravel()
    return out[HOP:HOP + n]


def _resonances(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade of 2-pole resonators, unit gain at 0 Hz.

    ``formants`` (frames, K) Hz, ``bandwidths`` (K,) Hz -> magnitude (frames, 257) float32.
    """
    f = _FREQS[None, :]
    power = np.ones((formants.shape[0], len(_FREQS)), dtype=np.float32)
    for k in range(formants.shape[1]):
        fk = formants[:, k:k + 1]
        b2 = np.float32((bandwidths[k] / 2) ** 2)
        power *= ((fk - f) ** 2 + b2) * ((fk + f) ** 2 + b2) / (fk ** 2 + b2) ** 2
    return 1.0 / np.sqrt(power)


# --------------------------------------------------------------------------- utterance synthesis


@dataclass
class _Segment:
    """One synthesis segment (a phone or part of one)."""

    n: int                            # samples
    voice: float = 0.0                # voiced-source amplitude
    aspiration: float = 0.0           # aspiration noise through the vocal tract
    frication: float = 0.0            # frication / burst noise amplitude
    shape: int = 0                    # row of _NOISE_SHAPES
    formants: tuple | None = None     # F1-F3 target (Hz) at the segment centre; None: interpolate


def _phone_segments(sp: Speaker, rng: np.random.Generator, rate: float, stress: float,
                    cons: int | None, vowel: int | None, next_vowel: int | None) -> list[_Segment]:
    """Segments of one consonant (``cons`` index) or one vowel (``vowel`` index)."""
    def dur(lo: float, hi: float) -> int:
        return max(1, int(rng.uniform(lo, hi) / rate * SR))

    if vowel is not None:
        target = tuple((_VOWELS[vowel] * sp.vowel_offsets[vowel] * sp.vtl).tolist())
        n = dur(0.07, 0.16) + int(stress * 0.06 * SR / rate)
        # two anchor points at 1/4 and 3/4 of the vowel: a steady state with transitions on both sides
        quarter = max(1, n // 4)
        return [_Segment(quarter, voice=stress),
                _Segment(n - 2 * quarter, voice=stress, formants=target),
                _Segment(quarter, voice=stress)]

    kind, place, voiced, shape, amp, (lo, hi) = _CONSONANTS[cons]
    locus = tuple(v * sp.vtl for v in _LOCI[place])
    if kind in ("nasal", "approx"):
        f = (locus[0], locus[1] * (0.9 if kind == "nasal" else 1.0), locus[2])
        return [_Segment(dur(lo, hi), voice=amp, formants=f)]
    if kind == "fric":
        return [_Segment(dur(lo, hi), voice=0.25 if voiced else 0.0, frication=amp, shape=shape, formants=locus)]
    if kind == "h":
        nv = next_vowel if next_vowel is not None else 5
        return [_Segment(dur(lo, hi), aspiration=amp,
                         formants=tuple((_VOWELS[nv] * sp.vowel_offsets[nv] * sp.vtl).tolist()))]
    # stop: closure (with a voice bar if voiced), burst, then aspiration if voiceless
    segs = [_Segment(dur(lo, hi), voice=0.04 if voiced else 0.0, formants=locus),
            _Segment(dur(0.008, 0.015), frication=amp, shape=_BURST_SHAPE[place])]
    if not voiced:
        segs.append(_Segment(dur(0.02, 0.05), aspiration=0.25))
    return segs


def _utterance_segments(sp: Speaker, rng: np.random.Generator, n_total: int, rate: float
                        ) -> list[_Segment]:
    """Random words (1-3 syllables of (C)V(C)) with pauses, until ``n_total`` samples are filled."""
    segs = [_Segment(int(rng.uniform(0.05, 0.25) * SR))]
    filled = segs[0].n
    n_cons = len(_CONSONANTS)
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
        return _smooth(np.repeat(np.array([getattr(s, attr) for s in segs], np.float32), lengths)[:n], ramp)

    anchors = [(st + s.n / 2, s.formants) for st, s in zip(starts, segs) if s.formants is not None]
    centres = np.arange(_n_frames(n), dtype=np.float64) * HOP
    if anchors:
        at = np.array([a[0] for a in anchors])
        vals = np.array([a[1] for a in anchors], dtype=np.float64)
        f123 = np.stack([np.interp(centres, at, vals[:, k]) for k in range(3)], axis=1)
    else:
        f123 = np.tile(_VOWELS[5] * sp.vtl, (len(centres), 1))
    formants = np.concatenate([f123, np.tile(sp.high_formants, (len(centres), 1))], axis=1)
    # keep the cascade ordered and apart (F_k+1 >= F_k + 200 Hz)
    for k in range(1, formants.shape[1]):
        formants[:, k] = np.maximum(formants[:, k], formants[:, k - 1] + 200.0)
    shape_frames = np.repeat(np.array([s.shape for s in segs]), lengths)[:n][np.minimum(centres.astype(int), n - 1)]
    return {"voice": amp("voice"), "aspiration": amp("aspiration"), "frication": amp("frication"),
            "formants": formants.astype(np.float32), "shape": shape_frames}


def _f0_contour(sp: Speaker, rng: np.random.Generator, n: int, shift_st: float) -> np.ndarray:
    """(n,) float64 Hz: speaker median, utterance shift, declination and smooth accents."""
    knots = max(2, int(n / SR / 0.25) + 2)
    st = rng.normal(0.0, sp.f0_range, knots)
    contour = np.interp(np.arange(n), np.linspace(0, n - 1, knots), st)
    contour = _smooth(contour.astype(np.float32), int(0.1 * SR)).astype(np.float64)
    declination = -rng.uniform(1.0, 4.0) * np.arange(n) / max(n - 1, 1)
    return sp.f0 * 2.0 ** ((contour + declination + shift_st) / 12.0)


def _glottal_source(sp: Speaker, rng: np.random.Generator, f0: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
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
    flow = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0)).astype(np.float32)
    deriv = np.diff(flow, prepend=np.float32(0.0)) / (f / SR).astype(np.float32) * (tn / np.pi)
    shimmer = (1.0 + sp.shimmer * rng.standard_normal(int(cyc[-1]) + 1)).astype(np.float32)
    return deriv * shimmer[cyc], (frac < sp.open_quotient).astype(np.float32)


def synthesise_utterance(sp: Speaker, rng: np.random.Generator, num_samples: int, session: Session
                         ) -> np.ndarray:
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
    fric_in = tr["frication"] * rng.standard_normal(n).astype(np.float32) * np.float32(_FRICATION_GAIN)

    # static spectral shaping: source correction + speaker tilt (+ per-utterance vocal effort) on the
    # source, the channel on everything
    effort_tilt = _SOURCE_TILT + sp.tilt + float(rng.normal(0.0, 0.5))
    octaves = np.log2(np.maximum(_FREQS, 500.0) / 500.0)
    channel = 10 ** (session.channel_db / 20.0)
    tract_static = (10 ** (effort_tilt * octaves / 20.0)) * channel
    shapes = _NOISE_SHAPES.copy()
    shapes[:, :2] *= math.sqrt(sp.vtl)
    noise_env = shapes[:, 2:3] + np.exp(-0.5 * ((_FREQS[None, :] - shapes[:, 0:1]) / shapes[:, 1:2]) ** 2)
    noise_env = noise_env / np.sqrt(np.mean(noise_env ** 2, axis=1, keepdims=True)) * channel   # unit power gain

    zero = 1.0 / _resonances(np.array([[sp.antiformant]], np.float32), np.array([sp.antiformant_bw], np.float32))
    env = _resonances(tr["formants"], sp.bandwidths) * (tract_static * zero[0])
    spec = _stft(tract_in) * env + _stft(fric_in) * noise_env[tr["shape"]]
    x = _istft(spec, n)

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
    if rng.random() < 0.5:                                           # stationary, maybe a machine hum
        if rng.random() < 0.5:
            f = rng.uniform(40.0, 240.0)
            x = x + sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f * t) for k in range(1, 6))
        return _set_level(x.astype(np.float32), -20.0)
    knots = max(2, int(n / SR * 2))                                  # non-stationary
    mod = np.exp(np.interp(np.arange(n), np.linspace(0, n - 1, knots), rng.normal(0.0, 1.0, knots)))
    x = x * mod
    for _ in range(rng.integers(2, 3 + int(n / SR))):                # knocks: decaying noise bursts
        k = int(rng.integers(0, n))
        m = min(n - k, int(rng.uniform(0.05, 0.4) * SR))
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (rng.uniform(0.01, 0.08) * SR))
        x[k:k + m] += rng.uniform(2.0, 8.0) * burst
    if rng.random() < 0.5:                                           # a chirp / siren
        f_lo, f_hi = sorted(rng.uniform(300.0, 3000.0, 2))
        inst = f_lo + (f_hi - f_lo) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
        x = x + rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * np.cumsum(inst) / SR)
    if rng.random() < 0.5:                                           # crackle: sparse clicks
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
            x[pos:pos + m] += env * tone
            pos += length
    if rng.random() < 0.6:
        for pos in range(0, n, int(beat * SR)):
            m = min(int(0.25 * SR), n - pos)
            tt = np.arange(m) / SR
            kick = np.sin(2 * np.pi * np.cumsum(60.0 + 100.0 * np.exp(-tt / 0.03)) / SR) * np.exp(-tt / 0.08)
            x[pos:pos + m] += 2.0 * kick
            hat = rng.standard_normal(m) * np.exp(-tt / 0.02)
            half = pos + int(beat * SR / 2)
            if half + m <= n:
                x[half:half + m] += 0.5 * np.diff(hat, prepend=0.0)
    return _set_level(x.astype(np.float32), -20.0)


def synthesise_speech_source(sp: Speaker, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """MUSAN-``speech``-like source (for babble): a long, clean read by training speaker ``sp``."""
    return synthesise_utterance(sp, rng, num_samples, clean_session(rng))


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


MFCC_BASELINE = ("MFCC mean cosine: torchaudio MFCC c1..c19 (40 log-mel bands 20-7600 Hz, 25 ms Hann window, "
                 "10 ms hop, no padding), mean over all frames of the utterance, centred by the mean vector of "
                 "the trial utterances, cosine score")


def mfcc_means(waves: Sequence[np.ndarray]) -> np.ndarray:
    """MFCC-mean vector of each waveform (see :data:`MFCC_BASELINE`) -> (len(waves), 19) float64.

    Each waveform is (samples,) float32 at 16 kHz, at least 400 samples long.
    Runs torch single-threaded (small transforms; threads only contend).
    """
    import torch
    import torchaudio

    mfcc = torchaudio.transforms.MFCC(
        sample_rate=SR, n_mfcc=20, log_mels=True,
        melkwargs={"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40,
                   "f_min": 20.0, "f_max": 7600.0, "window_fn": torch.hann_window, "center": False})
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
    from .metrics import compute_eer

    utts = trials.utterances
    vectors = mfcc_means([load_audio(wav_scp[u]) for u in utts])
    scores = cosine_trial_scores(vectors, utts, trials)
    return {"eer": compute_eer(scores, trials.labels), "n_trials": len(trials),
            "n_target": int(trials.labels.sum()), "baseline": MFCC_BASELINE}


def generate_corpus(out_dir: str | os.PathLike, data_dir: str | os.PathLike, n_train_speakers: int = 48,
                    n_test_speakers: int = 16, utts_per_speaker: int = 24, min_dur: float = 2.0,
                    max_dur: float = 8.0, seed: int = 0, n_noise: int = 12, n_music: int = 8,
                    n_speech: int = 10, n_rir: int = 24, workers: int = 1,
                    style: SessionStyle = SessionStyle(),
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
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
    _check_sizes(n_train_speakers=n_train_speakers, n_test_speakers=n_test_speakers,
                 utts_per_speaker=utts_per_speaker, n_noise=n_noise, n_music=n_music, n_speech=n_speech,
                 n_rir=n_rir, workers=workers)
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
            n = _samples(np.random.default_rng([seed, _STREAM_UTT, sp.index, k, 0]), min_dur, max_dur)
            jobs.append(_Job("utt", (seed, _STREAM_UTT, sp.index, k), path, n, speaker=sp, style=style))
            wav[split][utt] = path
            utt2spk[split][utt] = sp.spk_id

    aug: dict[str, list[str]] = {"noise": [], "music": [], "babble": [], "rir": []}
    for i in range(n_noise):
        path = str(out_dir / "musan" / "noise" / f"demo-noise-{i + 1:04d}.flac")
        n = _samples(np.random.default_rng([seed, _STREAM_NOISE, i, 0]), 5.0, 15.0)
        jobs.append(_Job("noise", (seed, _STREAM_NOISE, i), path, n))
        aug["noise"].append(path)
    for i in range(n_music):
        path = str(out_dir / "musan" / "music" / f"demo-music-{i + 1:04d}.flac")
        n = _samples(np.random.default_rng([seed, _STREAM_MUSIC, i, 0]), 10.0, 30.0)
        jobs.append(_Job("music", (seed, _STREAM_MUSIC, i), path, n))
        aug["music"].append(path)
    speech_order = np.random.default_rng([seed, _STREAM_SPEECH]).permutation(n_train_speakers)
    for i in range(n_speech):
        sp = speakers[int(speech_order[i % n_train_speakers])]
        path = str(out_dir / "musan" / "speech" / f"demo-speech-{i + 1:04d}.flac")
        n = _samples(np.random.default_rng([seed, _STREAM_SPEECH, i, 0]), 10.0, 30.0)
        jobs.append(_Job("speech", (seed, _STREAM_SPEECH, i), path, n, speaker=sp))
        aug["babble"].append(path)
    sizes = ("small", "medium", "large")
    rt60_ranges = {"small": (0.2, 0.5), "medium": (0.4, 0.8), "large": (0.6, 1.2)}
    for i in range(n_rir):
        room, position = divmod(i, 2)
        size = sizes[room % 3]
        rt60 = float(np.random.default_rng([seed, _STREAM_RIR, room]).uniform(*rt60_ranges[size]))
        path = str(out_dir / "RIRS_NOISES" / "simulated_rirs" / f"{size}room" / f"Room{room + 1:03d}"
                   / f"Room{room + 1:03d}-{position + 1:05d}.wav")
        jobs.append(_Job("rir", (seed, _STREAM_RIR, room, position + 1), path, 0, rt60=rt60))
        aug["rir"].append(path)

    total_samples, cpu = _run_jobs(jobs, workers)
    log(f"synthesised {len(jobs)} files ({total_samples / SR / 3600:.2f} h of audio) in "
        f"{time.monotonic() - t0:.1f} s wall, {cpu:.1f} s CPU in {workers} process(es)")

    for split in ("train", "test"):
        write_wav_scp(data_dir / split / "wav.scp", wav[split])
        write_utt2spk(data_dir / split / "utt2spk", utt2spk[split])
    trials = make_trials(utt2spk["test"], np.random.default_rng([seed, _STREAM_TRIALS]))
    trials_path = data_dir / "trials" / f"{TRIALS_NAME}.txt"
    write_trials(trials_path, trials)
    for name, paths in aug.items():
        write_list(data_dir / "augment" / f"{name}.lst", paths)

    t1 = time.monotonic()
    baseline = mfcc_baseline(read_wav_scp(data_dir / "test" / "wav.scp"), read_trials(trials_path))
    log(f"MFCC baseline EER {100 * baseline['eer']:.2f} % on {baseline['n_trials']} trials "
        f"({time.monotonic() - t1:.1f} s)")
    lengths = {"train": 0, "test": 0}
    for job in jobs:
        if job.kind == "utt":
            lengths["train" if job.speaker.index < n_train_speakers else "test"] += job.num_samples
    summary = {
        "seed": seed,
        "n_train_speakers": n_train_speakers, "n_test_speakers": n_test_speakers,
        "utts_per_speaker": utts_per_speaker, "min_dur": min_dur, "max_dur": max_dur,
        "n_train_utts": len(wav["train"]), "n_test_utts": len(wav["test"]),
        "train_hours": round(lengths["train"] / SR / 3600, 4), "test_hours": round(lengths["test"] / SR / 3600, 4),
        "n_trials": len(trials), "n_target_trials": int(trials.labels.sum()),
        "augment_files": {name: len(paths) for name, paths in aug.items()},
        "high_voice_speakers": {"train": sum(s.high_voice for s in speakers[:n_train_speakers]),
                                "test": sum(s.high_voice for s in speakers[n_train_speakers:])},
    }
    write_json(out_dir / BASELINE_FILE, {
        "eer": baseline["eer"], "baseline": baseline["baseline"],
        "trials": str(trials_path), "n_trials": baseline["n_trials"], "n_target": baseline["n_target"],
        "corpus": summary,
    })
    return {**summary, "baseline_eer": baseline["eer"]}


def _check_sizes(**sizes: int) -> None:
    minimum = {"n_train_speakers": 2, "n_test_speakers": 2, "utts_per_speaker": 2, "n_noise": 1, "n_music": 1,
               "n_speech": 1, "n_rir": 1, "workers": 1}
    for key, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < minimum[key]:
            raise ValueError(f"{key} must be an integer >= {minimum[key]}, got {value!r}")


def _run_jobs(jobs: list[_Job], workers: int) -> tuple[int, float]:
    """Run the jobs (in ``workers`` processes when > 1) with progress lines.

    Returns (total samples written, total CPU seconds of the jobs).
    """
    progress = Progress(len(jobs), "demo corpus", unit="files", every_s=10.0)
    samples, cpu = 0, 0.0
    ordered = sorted(jobs, key=lambda job: -job.num_samples)     # long files first: a short tail
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # forkserver: workers do not inherit a parent's torch/OpenMP thread state
            pool = stack.enter_context(ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("forkserver")))
            results = pool.map(_run_job, ordered, chunksize=4)
        else:
            results = map(_run_job, ordered)
        for n, seconds in results:
            samples, cpu = samples + n, cpu + seconds
            progress.update()
    return samples, cpu
