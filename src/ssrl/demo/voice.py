"""The demo voices: speakers, sessions and the signal helpers of the synthesiser (:mod:`ssrl.demo.synth`).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .. import SAMPLE_RATE

SR = SAMPLE_RATE
N_FFT = 512  # synthesis STFT: 32 ms sine window ...
HOP = N_FFT // 2  # ... 16 ms hop (perfect reconstruction with w**2 summing to 1)
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR).astype(np.float32)  # (257,) Hz
_WINDOW = np.sin(np.pi * (np.arange(N_FFT) + 0.5) / N_FFT).astype(np.float32)

# Random streams: the first key after the seed says what a generator draws for.
STREAM_SPEAKER, STREAM_UTT, STREAM_TRIALS = 1, 2, 3
STREAM_NOISE, STREAM_MUSIC, STREAM_SPEECH, STREAM_RIR = 10, 11, 12, 13

# --------------------------------------------------------------------------- phone inventory
# Vowel formant targets F1-F3 in Hz for an adult low (male-like) voice, close to
# the classic American-English averages (Hillenbrand et al. 1995).
VOWELS = np.array(
    [
        [342, 2322, 3000],  # i
        [427, 2034, 2684],  # I
        [476, 2089, 2691],  # e
        [580, 1799, 2605],  # E
        [588, 1952, 2601],  # ae
        [768, 1333, 2522],  # a
        [652, 997, 2538],  # o (open)
        [497, 910, 2459],  # o
        [469, 1122, 2434],  # U
        [378, 997, 2343],  # u
        [623, 1200, 2550],  # V
        [474, 1379, 1710],  # r-coloured
    ],
    dtype=np.float32,
)
N_VOWELS = len(VOWELS)

# Consonant places: F1-F3 loci that the formants move towards.
LOCI = {"lab": (250, 900, 2200), "alv": (280, 1700, 2600), "pal": (280, 1900, 2500), "vel": (280, 2000, 2300)}

# Noise spectra for frication and bursts: (centre Hz, width Hz, floor) of a Gaussian bump.
NOISE_SHAPES = np.array(
    [
        [6000, 1800, 0.03],  # s, z
        [3200, 1000, 0.05],  # sh
        [4000, 5000, 0.30],  # f, v, th (flat, weak)
        [1000, 900, 0.10],  # labial burst
        [4200, 1500, 0.10],  # alveolar burst
        [2200, 700, 0.10],  # velar burst
    ],
    dtype=np.float32,
)
BURST_SHAPE = {"lab": 3, "alv": 4, "vel": 5}
# Frication noise of amplitude 1 through a (unit-power) noise shape, relative to the voiced
# source: puts /s/ about 15 dB and /f/ about 25 dB below a full vowel, as in natural speech.
FRICATION_GAIN = 0.2

# Consonants: kind, place, voiced, noise shape (fricatives), relative amplitude, duration range (s).
CONSONANTS = [
    ("nasal", "lab", True, None, 0.35, (0.05, 0.09)),  # m
    ("nasal", "alv", True, None, 0.35, (0.05, 0.09)),  # n
    ("approx", "alv", True, None, 0.55, (0.04, 0.08)),  # l
    ("approx", "pal", True, None, 0.55, (0.04, 0.07)),  # j
    ("approx", "lab", True, None, 0.5, (0.04, 0.07)),  # w
    ("fric", "alv", False, 0, 0.35, (0.08, 0.15)),  # s
    ("fric", "pal", False, 1, 0.40, (0.08, 0.14)),  # sh
    ("fric", "lab", False, 2, 0.12, (0.07, 0.12)),  # f
    ("fric", "alv", True, 0, 0.20, (0.06, 0.11)),  # z
    ("fric", "lab", True, 2, 0.10, (0.05, 0.10)),  # v
    ("h", "vel", False, None, 0.30, (0.05, 0.09)),  # h
    ("stop", "lab", False, None, 0.6, (0.04, 0.08)),  # p
    ("stop", "alv", False, None, 0.6, (0.04, 0.08)),  # t
    ("stop", "vel", False, None, 0.6, (0.05, 0.09)),  # k
    ("stop", "lab", True, None, 0.5, (0.04, 0.07)),  # b
    ("stop", "alv", True, None, 0.5, (0.04, 0.07)),  # d
    ("stop", "vel", True, None, 0.5, (0.04, 0.07)),  # g
]

# Added to every source spectrum (dB/octave above 500 Hz): brings the long-term average spectrum
# of the Rosenberg-pulse voice up to the natural one (about -20 dB at 4 kHz re 500 Hz per Hz).
SOURCE_TILT = 3.0
# F4-F8 of the reference voice (F6-F8 stand in for the higher poles of the tract) and F1-F8 bandwidths.
_BASE_HIGH_FORMANTS = (3500.0, 4500.0, 5500.0, 6500.0, 7500.0)
_BASE_BANDWIDTHS = np.array([70, 90, 130, 220, 300, 500, 600, 700], dtype=np.float32)


# --------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    """Stable voice traits of one synthetic speaker (units in the field comments)."""

    spk_id: str
    index: int  # global speaker index (seeds the speaker's random stream)
    high_voice: bool  # the group: higher f0 and shorter vocal tract (female-like)
    f0: float  # Hz, median fundamental frequency
    f0_range: float  # semitones, std of the intonation contour
    vtl: float  # formant scale factor (1 = reference voice; > 1 shorter tract)
    vowel_offsets: np.ndarray  # (N_VOWELS, 3) multiplicative offsets on F1-F3 per vowel
    high_formants: np.ndarray  # (5,) Hz, F4-F8
    bandwidths: np.ndarray  # (8,) Hz, bandwidths of F1-F8
    tilt: float  # dB per octave above 500 Hz, added to the source spectrum
    open_quotient: float  # fraction of a glottal cycle with the glottis open
    speed_quotient: float  # opening / closing time of the glottal pulse
    breathiness: float  # aspiration-noise amplitude relative to the voiced source
    jitter: float  # relative std of the per-cycle f0
    shimmer: float  # relative std of the per-cycle amplitude
    rate: float  # speaking-rate factor (> 1 faster)
    antiformant: float  # Hz, piriform-fossa spectral zero on voiced sounds
    antiformant_bw: float  # Hz, its bandwidth


def make_speaker(seed: int, index: int, spk_id: str) -> Speaker:
    """Draw the traits of speaker ``index`` (deterministic in ``(seed, index)``)."""
    rng = np.random.default_rng([seed, STREAM_SPEAKER, index])
    high = index % 2 == 1  # the two groups alternate: balanced in every split
    f0 = float(rng.uniform(165, 290) if high else rng.uniform(80, 155))
    vtl = float(rng.uniform(1.08, 1.30) if high else rng.uniform(0.84, 1.06))
    offsets = np.exp(rng.normal(0.0, [0.12, 0.10, 0.06], size=(N_VOWELS, 3))).astype(np.float32)
    high_f = np.array(_BASE_HIGH_FORMANTS) * vtl * np.exp(rng.normal(0.0, 0.08, len(_BASE_HIGH_FORMANTS)))
    return Speaker(
        spk_id=spk_id,
        index=index,
        high_voice=high,
        f0=f0,
        f0_range=float(rng.uniform(1.0, 3.5)),
        vtl=vtl,
        vowel_offsets=offsets,
        high_formants=np.sort(high_f).astype(np.float32),
        bandwidths=(_BASE_BANDWIDTHS * rng.uniform(0.8, 1.4)).astype(np.float32),
        tilt=float(rng.uniform(-2.5, 2.5)),
        open_quotient=float(rng.uniform(0.45, 0.75)),
        speed_quotient=float(rng.uniform(1.5, 3.5)),
        breathiness=float(rng.uniform(0.01, 0.25)),
        jitter=float(rng.uniform(0.003, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.10)),
        rate=float(rng.uniform(0.8, 1.25)),
        antiformant=float(4500.0 * vtl * np.exp(rng.normal(0.0, 0.08))),
        antiformant_bw=float(rng.uniform(150, 400)),
    )


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SessionStyle:
    """How strongly sessions vary (the demo's difficulty); the defaults are tuned so that the
    MFCC-mean baseline lands between 10 % and 35 % EER (see ``baseline.json``)."""

    eq_db: float = 3.0  # std of each channel bump / notch, dB
    tilt_db: float = 1.5  # std of the channel's spectral slope, dB/octave
    telephone_prob: float = 0.15  # probability of a 3.3-4.5 kHz upper band edge
    reverb_prob: float = 0.4  # probability of mild reverberation (RT60 0.1-0.35 s)
    snr_db: tuple[float, float] = (20.0, 45.0)  # background-noise SNR range, dB
    noise_tilt: tuple[float, float] = (-5.0, -2.0)  # background-noise slope range, dB/octave
    hum_prob: float = 0.1  # probability of mains hum in the noise
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
    logf = np.log2(np.maximum(FREQS, 20.0) / 1000.0)
    gain = rng.normal(0.0, style.tilt_db) * logf  # tilt, dB/octave
    for _ in range(rng.integers(2, 6)):  # resonances / notches
        centre = rng.uniform(np.log2(0.15), np.log2(6.5))
        width = rng.uniform(0.25, 1.0)
        gain = gain + rng.normal(0.0, style.eq_db) * np.exp(-0.5 * ((logf - centre) / width) ** 2)
    low_cut = rng.uniform(60.0, 300.0)
    if rng.random() < style.telephone_prob:
        high_cut = rng.uniform(3300.0, 4500.0)
    else:
        high_cut = rng.uniform(5000.0, 7800.0)
    f = np.maximum(FREQS, 1.0)
    band = -10 * np.log10(1 + (low_cut / f) ** 4) - 10 * np.log10(1 + (f / high_cut) ** 8)
    return (gain + band).astype(np.float32)


def random_session(rng: np.random.Generator, style: SessionStyle = SessionStyle()) -> Session:
    """Draw the recording conditions of one utterance."""
    channel = _channel_db(rng, style)
    rir = None
    if rng.random() < style.reverb_prob:
        rir = room_impulse_response(rng, rt60=rng.uniform(0.1, 0.35), direct_gain=rng.uniform(2.0, 6.0))
    return Session(
        channel_db=channel,
        rir=rir,
        snr_db=float(rng.uniform(*style.snr_db)),
        noise_tilt=float(rng.uniform(*style.noise_tilt)),
        hum_hz=float(rng.choice([50.0, 60.0])) if rng.random() < style.hum_prob else 0.0,
        level_dbfs=float(rng.uniform(*style.level_dbfs)),
    )


def clean_session(rng: np.random.Generator) -> Session:
    """Near-studio conditions (for the babble sources): flat channel, quiet noise floor."""
    return Session(
        channel_db=np.zeros_like(FREQS),
        rir=None,
        snr_db=float(rng.uniform(35.0, 45.0)),
        noise_tilt=-3.0,
        hum_hz=0.0,
        level_dbfs=float(rng.uniform(-26.0, -20.0)),
    )


# --------------------------------------------------------------------------- signal helpers


def coloured_noise(rng: np.random.Generator, n: int, tilt_db_per_octave: float) -> np.ndarray:
    """(n,) float32 unit-RMS Gaussian noise with a spectral slope in dB/octave (re 1 kHz)."""
    m = scipy.fft.next_fast_len(n, real=True)
    spec = scipy.fft.rfft(rng.standard_normal(m).astype(np.float32))
    f = np.maximum(np.fft.rfftfreq(m, 1.0 / SR), 20.0).astype(np.float32)
    spec *= (f / 1000.0) ** np.float32(tilt_db_per_octave / (20 * math.log10(2)))
    x = scipy.fft.irfft(spec, m)[:n].astype(np.float32)
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, direct_gain: float = 1.0, distance_m: float | None = None
) -> np.ndarray:
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
    high = np.diff(rng.standard_normal(n + 1))  # crude high band: differentiated noise
    tail = low * np.exp(-6.91 * t / rt60) + 0.5 * high * np.exp(-6.91 * t / (0.6 * rt60))
    onset = d0 + int(rng.uniform(0.002, 0.006) * SR)
    tail[:onset] = 0.0
    h = 0.25 * tail / (np.max(np.abs(tail)) + 1e-12)
    for _ in range(rng.integers(4, 13)):
        extra = rng.uniform(0.5, 15.0)  # extra path length, metres
        k = d0 + int(extra / 343.0 * SR)
        if k < n:
            h[k] += rng.choice([-1.0, 1.0]) * 0.6 * dist / (dist + extra)
    h[d0] += direct_gain
    return (h / np.max(np.abs(h))).astype(np.float32)


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` samples, (n,) -> (n,) float32 (edges extended by repetition)."""
    if width <= 1:
        return x.astype(np.float32)
    padded = np.pad(x, (width // 2, width - width // 2 - 1), mode="edge")
    c = np.concatenate([[0.0], np.cumsum(padded, dtype=np.float64)])
    return ((c[width:] - c[:-width]) / width).astype(np.float32)


def frame_count(n: int) -> int:
    """Synthesis frames for ``n`` samples: centres 0, HOP, ... until every sample is in two frames."""
    return -(-n // HOP) + 1


def stft(x: np.ndarray) -> np.ndarray:
    """(n,) -> (frame_count(n), 257) complex; frame t is centred on sample t * HOP (sine window)."""
    n_frames = frame_count(len(x))
    padded = np.zeros((n_frames + 1) * HOP, dtype=np.float32)
    padded[HOP : HOP + len(x)] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    return scipy.fft.rfft(frames * _WINDOW, axis=1)


def istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`stft` (weighted overlap-add) -> (n,) float32."""
    frames = scipy.fft.irfft(spec, N_FFT, axis=1).astype(np.float32) * _WINDOW
    n_frames = frames.shape[0]
    out = np.zeros((n_frames + 1) * HOP, dtype=np.float32)
    out[: n_frames * HOP] += frames[:, :HOP].ravel()
    out[HOP:] += frames[:, HOP:].ravel()
    return out[HOP : HOP + n]


def resonance_gain(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade of 2-pole resonators, unit gain at 0 Hz.

    ``formants`` (frames, K) Hz, ``bandwidths`` (K,) Hz -> magnitude (frames, 257) float32.
    """
    f = FREQS[None, :]
    power = np.ones((formants.shape[0], len(FREQS)), dtype=np.float32)
    for k in range(formants.shape[1]):
        fk = formants[:, k : k + 1]
        b2 = np.float32((bandwidths[k] / 2) ** 2)
        power *= ((fk - f) ** 2 + b2) * ((fk + f) ** 2 + b2) / (fk**2 + b2) ** 2
    return 1.0 / np.sqrt(power)
