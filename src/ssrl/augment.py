"""MUSAN-style additive noise and RIR reverberation (docs/method.md §2.1).

An :class:`Augmenter` holds the four source lists (MUSAN ``noise``, ``music``,
``speech`` = babble, simulated RIRs) and turns one ``(samples,)`` float32 crop
into an augmented crop of the same length. An :class:`AugmentPolicy` says
which augmentation a crop gets:

* DINO crops: uniform over ``[reverb, noise, reverb, noise, none]``.
* SSRL student crops: uniform over ``[reverb, noise, none]``, where the
  reference turns "none" into additive noise too (quirk Q1, ``none_is_noise``;
  default on, so never clean), applied with probability ``apply_prob``
  (WavLM step 1: 0.66; a crop that is not augmented is clean).

All randomness comes from the numpy ``Generator`` passed in. RIRs are small
(about a second each) and are kept in a bounded in-memory cache after their
first use. When the noise/music/babble files together fit in ``preload_mb``
(the demo's 22 files: ~30 MB) they are decoded once at construction, so that
DataLoader processes forked afterwards share them; otherwise (MUSAN: ~100 h)
only the needed crop of each is read (:func:`ssrl.audio.read_random_crop`).
Both ways give the same crops.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft  # light; scipy.signal costs seconds at start-up in every loader process

from .audio import AudioError, load_audio, peak_normalise, preload_audio, random_crop, read_random_crop
from .manifest import read_list

ADDITIVE_SOURCES = ("noise", "music", "babble")
"""The additive sources among :data:`AUGMENT_SOURCES` (minutes-long files; preloaded when they fit)."""

AUGMENT_SOURCES = (*ADDITIVE_SOURCES, "rir")
"""The augmentation source lists (data/augment/<source>.lst), the keyword arguments of :class:`Augmenter`."""

AUGMENTATIONS = ("reverb", "noise", "none")
"""Names an :class:`AugmentPolicy` may choose from."""

ADDITIVE_KINDS = ("noise", "music", "babble_music", "babble")
"""The four additive mixtures of docs/method.md §2.1, drawn uniformly."""

DINO_CHOICES = ("reverb", "noise", "reverb", "noise", "none")
SSRL_STUDENT_CHOICES = ("reverb", "noise", "none")


@dataclass(frozen=True)
class AugmentPolicy:
    """Which augmentation a crop gets.

    ``choices``: drawn uniformly (repeat a name to weight it). ``none_is_noise``:
    a drawn "none" becomes additive noise (quirk Q1). ``apply_prob``: probability
    that the crop is augmented at all; otherwise it stays clean.
    """

    choices: tuple[str, ...] = DINO_CHOICES
    none_is_noise: bool = False
    apply_prob: float = 1.0

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("AugmentPolicy.choices must not be empty")
        unknown = [c for c in self.choices if c not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"AugmentPolicy.choices: unknown augmentation(s) {unknown}; known: {AUGMENTATIONS}")
        if not 0.0 <= self.apply_prob <= 1.0:
            raise ValueError(f"AugmentPolicy.apply_prob must be in [0, 1], got {self.apply_prob}")
        object.__setattr__(self, "choices", tuple(self.choices))

    @classmethod
    def dino(cls) -> AugmentPolicy:
        """DINO views: 40 % reverb, 40 % additive, 20 % clean."""
        return cls(DINO_CHOICES)

    @classmethod
    def ssrl_student(cls, none_is_noise: bool = True, apply_prob: float = 1.0) -> AugmentPolicy:
        """SSRL / WavLM student crops. Default (Q1): 1/3 reverb, 2/3 additive, never clean;
        ``none_is_noise=False``: 1/3 each. ``apply_prob`` < 1 adds clean crops."""
        return cls(SSRL_STUDENT_CHOICES, none_is_noise=none_is_noise, apply_prob=apply_prob)

    @classmethod
    def clean(cls) -> AugmentPolicy:
        """No augmentation."""
        return cls(("none",))

    @property
    def augments(self) -> bool:
        """False when every draw is "none" (the policy never touches the crop)."""
        return self.apply_prob > 0.0 and (self.none_is_noise or any(c != "none" for c in self.choices))

    def draw(self, rng: np.random.Generator) -> str:
        """One of ``"reverb"``, ``"noise"``, ``"none"``.

        Draws ``rng.random()`` for ``apply_prob`` only when it is below 1, then one
        uniform index into ``choices``.
        """
        if self.apply_prob < 1.0 and rng.random() >= self.apply_prob:
            return "none"
        choice = self.choices[int(rng.integers(len(self.choices)))]
        if choice == "none" and self.none_is_noise:
            return "noise"
        return choice


@dataclass(frozen=True)
class AdditiveDraw:
    """What :meth:`Augmenter.additive_with_draw` drew: the mixture kind, source files, SNR (dB)."""

    kind: str
    sources: tuple[str, ...]
    snr_db: float


def _power(x: np.ndarray) -> float:
    """Mean power ``mean(x**2)`` in float64."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def prepare_rir(rir: np.ndarray) -> np.ndarray:
    """RIR ``(taps,)`` -> min-max normalised to [0, 1], cut to start at its peak |value| (docs/method.md §2.1).

    A constant RIR (max == min) is an error: it has no shape to normalise.
    """
    rir = np.asarray(rir, dtype=np.float64)
    if rir.ndim != 1 or rir.size == 0:
        raise ValueError(f"RIR must be a non-empty (taps,) array, got shape {rir.shape}")
    lo, hi = float(rir.min()), float(rir.max())
    if hi == lo:
        raise ValueError("RIR is constant; cannot min-max normalise it")
    rir = (rir - lo) / (hi - lo)
    peak = int(np.argmax(np.abs(rir)))
    return rir[peak:].astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve ``x`` ``(samples,)`` with a prepared RIR (:func:`prepare_rir`), keep the first
    ``samples`` outputs and rescale to the mean power of ``x``. Returns float32 ``(samples,)``."""
    # Linear convolution by single-precision real FFT (as scipy.signal.fftconvolve does): about
    # 1.6x faster than double, errors ~1e-7 of the signal.
    n = x.shape[0] + rir.shape[0] - 1
    nfft = scipy.fft.next_fast_len(n, real=True)
    spectrum = scipy.fft.rfft(x.astype(np.float32), nfft) * scipy.fft.rfft(rir.astype(np.float32), nfft)
    y = scipy.fft.irfft(spectrum, nfft)[: x.shape[0]]
    p_out = _power(y)
    if p_out > 0.0:
        y = y * np.float32(np.sqrt(_power(x) / p_out))
    return y.astype(np.float32, copy=False)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` such that ``10 log10(P(speech) / P(g * noise)) = snr_db``.

    Powers are means of squares. A silent ``noise`` leaves ``speech`` unchanged.
    Returns float32 of the common length.
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} must have the same shape")
    p_noise = _power(noise)
    if p_noise == 0.0:
        return speech.astype(np.float32, copy=True)
    gain = np.sqrt(_power(speech) / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech.astype(np.float64) + gain * noise.astype(np.float64)).astype(np.float32)


class Augmenter:
    """Reverb and additive augmentation from file lists (docs/method.md §2.1).

    ``noise``, ``music``, ``babble``, ``rir``: audio file paths (16 kHz expected;
    others are resampled on read). All four must be non-empty. ``snr_db``:
    the SNR range (dB, uniform, inclusive). ``babble_count``: the range of the
    number of babble speakers in the babble-only mixture (integers, inclusive).
    ``rir_cache_items``: prepared RIRs kept in memory per process (least recently
    used dropped; 2048 one-second RIRs take about 128 MB). ``preload_mb``: when the
    noise, music and babble files together take at most this many MiB on disk, they
    are decoded (float32) at construction and crops are cut from memory; 0: never.
    """

    @classmethod
    def from_lists(
        cls, lists: Mapping[str, str | os.PathLike] | None, ranges: Mapping[str, Any] | None, where: str
    ) -> Augmenter | None:
        """An Augmenter from the list file of every :data:`AUGMENT_SOURCES` (``lists``; None: no
        augmentation, returns None) and the config's ``snr_db`` / ``babble_count`` ranges (``ranges``,
        those given); ValueError naming ``where`` when the lists are not exactly the four sources."""
        if lists is None:
            return None
        if sorted(lists) != sorted(AUGMENT_SOURCES):
            raise ValueError(
                f"{where}: augmentation lists must be exactly {list(AUGMENT_SOURCES)}, got {sorted(lists)}"
            )
        kwargs = {k: tuple(ranges[k]) for k in ("snr_db", "babble_count") if k in (ranges or {})}
        return cls(**{k: read_list(lists[k]) for k in AUGMENT_SOURCES}, **kwargs)

    def __init__(
        self,
        noise: Sequence[str | os.PathLike],
        music: Sequence[str | os.PathLike],
        babble: Sequence[str | os.PathLike],
        rir: Sequence[str | os.PathLike],
        snr_db: tuple[float, float] = (0.0, 20.0),
        babble_count: tuple[int, int] = (3, 8),
        rir_cache_items: int = 2048,
        preload_mb: float = 256.0,
    ):
        self.sources = {
            "noise": [str(p) for p in noise],
            "music": [str(p) for p in music],
            "babble": [str(p) for p in babble],
            "rir": [str(p) for p in rir],
        }
        empty = [name for name, files in self.sources.items() if not files]
        if empty:
            raise ValueError(f"Augmenter: no files for {', '.join(empty)} (every source list must be non-empty)")
        lo, hi = (float(v) for v in snr_db)
        if lo > hi:
            raise ValueError(f"Augmenter: snr_db range {snr_db} is reversed")
        kmin, kmax = (int(v) for v in babble_count)
        if not 1 <= kmin <= kmax:
            raise ValueError(f"Augmenter: babble_count range {babble_count} must satisfy 1 <= min <= max")
        if rir_cache_items < 0:
            raise ValueError(f"Augmenter: rir_cache_items must be >= 0, got {rir_cache_items}")
        self.snr_db = (lo, hi)
        self.babble_count = (kmin, kmax)
        self.rir_cache_items = int(rir_cache_items)
        self._rir_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._preloaded = preload_audio([p for name in ADDITIVE_SOURCES for p in self.sources[name]], preload_mb)

    @property
    def preloaded(self) -> int:
        """Noise/music/babble files held in memory (0: every crop is read from disk)."""
        return len(self._preloaded)

    def _rir(self, path: str) -> np.ndarray:
        rir = self._rir_cache.get(path)
        if rir is not None:
            self._rir_cache.move_to_end(path)
            return rir
        raw = load_audio(path)
        try:
            rir = prepare_rir(raw)
        except ValueError as err:
            raise AudioError(f"{path}: {err}") from err
        if self.rir_cache_items:
            self._rir_cache[path] = rir
            if len(self._rir_cache) > self.rir_cache_items:
                self._rir_cache.popitem(last=False)
        return rir

    def reverb(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reverberate ``x`` ``(samples,)`` with a uniformly drawn RIR; same length and mean power."""
        files = self.sources["rir"]
        return reverberate(x, self._rir(files[int(rng.integers(len(files)))]))

    def _source_sum(self, names: Sequence[str], num_samples: int, rng: np.random.Generator) -> np.ndarray:
        total = np.zeros(num_samples, dtype=np.float64)
        for path in names:
            audio = self._preloaded.get(path)
            crop = read_random_crop(path, num_samples, rng) if audio is None else random_crop(audio, num_samples, rng)
            total += peak_normalise(crop)
        return total

    def additive_with_draw(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, AdditiveDraw]:
        """Additive augmentation of ``x`` ``(samples,)`` and what was drawn.

        The mixture is one of :data:`ADDITIVE_KINDS` (uniform); babble files are
        drawn without replacement when the list is long enough. Each source crop
        is peak-normalised, the sum is scaled to the drawn SNR against
        ``peak_normalise(x)``, and the result is ``peak_normalise(x) + scaled sum``
        (float32; the caller's later peak normalisation removes the overall scale).
        """
        kind = ADDITIVE_KINDS[int(rng.integers(len(ADDITIVE_KINDS)))]

        def pick(name: str, k: int = 1) -> list[str]:
            files = self.sources[name]
            return [files[i] for i in _choose(len(files), k, rng)]

        if kind == "noise":
            files = pick("noise")
        elif kind == "music":
            files = pick("music")
        elif kind == "babble_music":
            files = pick("babble") + pick("music")
        else:
            files = pick("babble", int(rng.integers(self.babble_count[0], self.babble_count[1] + 1)))
        noise = self._source_sum(files, x.shape[0], rng)
        snr = float(rng.uniform(*self.snr_db))
        return mix_at_snr(peak_normalise(x), noise, snr), AdditiveDraw(kind, tuple(files), snr)

    def additive(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Additive augmentation of ``x`` ``(samples,)`` (see :meth:`additive_with_draw`)."""
        return self.additive_with_draw(x, rng)[0]

    def apply(self, x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        """Apply ``kind`` (``"reverb"``, ``"noise"`` or ``"none"``) to ``x`` ``(samples,)``."""
        if kind == "reverb":
            return self.reverb(x, rng)
        if kind == "noise":
            return self.additive(x, rng)
        if kind == "none":
            return x
        raise ValueError(f"unknown augmentation {kind!r}; known: {AUGMENTATIONS}")

    def __call__(self, x: np.ndarray, policy: AugmentPolicy, rng: np.random.Generator) -> np.ndarray:
        """Draw an augmentation from ``policy`` and apply it to ``x`` ``(samples,)``."""
        return self.apply(x, policy.draw(rng), rng)


def _choose(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices into ``range(n)``, distinct when ``k <= n``."""
    if k == 1:
        return rng.integers(n, size=1)
    return rng.choice(n, size=k, replace=k > n)
