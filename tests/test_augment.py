"""ssrl.augment: reverb and additive noise (docs/method.md §2.1) with known answers, and the policies."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssrl import SAMPLE_RATE
from ssrl.audio import AudioError, peak_normalise
from ssrl.augment import ADDITIVE_KINDS, Augmenter, AugmentPolicy, mix_at_snr, prepare_rir, reverberate


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def write_augment_sources(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """Small synthetic MUSAN/RIR stand-ins (float WAV, 16 kHz): noise, music, babble, rir lists."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {"noise": [], "music": [], "babble": [], "rir": []}

    def put(kind: str, i: int, x: np.ndarray) -> None:
        path = root / f"{kind}{i}.wav"
        sf.write(path, x.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
        out[kind].append(str(path))

    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    for i in range(2):
        put("noise", i, rng.uniform(-0.3, 0.3, 3 * SAMPLE_RATE))
        put("music", i, 0.4 * np.sin(2 * np.pi * (220 + 110 * i) * t))
    for i in range(10):
        put("babble", i, 0.2 * np.sin(2 * np.pi * (150 + 37 * i) * t) * rng.uniform(0.5, 1, t.size))
    for i in range(3):
        taps = np.arange(2000)
        rir = rng.standard_normal(2000) * np.exp(-taps / (200 + 100 * i))
        rir[: 20 + 10 * i] = 0.0  # direct-path delay before the peak
        put("rir", i, 0.5 * rir / np.abs(rir).max())
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, list[str]]:
    return write_augment_sources(tmp_path_factory.mktemp("augsrc"))


@pytest.fixture
def speech() -> np.ndarray:
    rng = np.random.default_rng(42)
    t = np.arange(8000) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 200 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# --- reverb ----------------------------------------------------------------------------------


def test_prepare_rir_normalises_and_cuts_at_peak():
    np.testing.assert_allclose(prepare_rir(np.array([-1.0, 0.0, 0.0, 3.0, 1.0])), [1.0, 0.5])
    np.testing.assert_array_equal(prepare_rir(np.array([0.0, 0.0, 0.0, 2.0, 0.0, 0.0])), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="constant"):
        prepare_rir(np.ones(5))


def test_reverberate_known_answer(speech):
    y = reverberate(speech, np.array([1.0, 0.5], np.float32))
    conv = speech.astype(np.float64).copy()
    conv[1:] += 0.5 * speech[:-1]
    np.testing.assert_allclose(y, conv * np.sqrt(_power(speech) / _power(conv)), rtol=1e-5, atol=1e-6)


def test_delta_rir_after_its_peak_cut_returns_the_input(tmp_path, sources, speech):
    delayed = tmp_path / "delta.wav"
    sf.write(delayed, np.array([0, 0, 0, 0.8, 0, 0], np.float32), SAMPLE_RATE, subtype="FLOAT")
    aug = Augmenter(sources["noise"], sources["music"], sources["babble"], [str(delayed)])
    # Without the cut the output would be the input delayed by 3 samples.
    np.testing.assert_allclose(aug.reverb(speech, np.random.default_rng(0)), speech, atol=1e-6)


def test_reverb_keeps_length_and_mean_power(sources, speech):
    aug = Augmenter(**sources)
    for seed in range(5):
        y = aug.reverb(speech, np.random.default_rng(seed))
        assert y.shape == speech.shape and y.dtype == np.float32
        assert _power(y) == pytest.approx(_power(speech), rel=1e-5)
        assert not np.allclose(y, speech)


def test_rir_cache_is_bounded_and_bad_rir_names_file(tmp_path, sources, speech):
    aug = Augmenter(**sources, rir_cache_items=2)
    for seed in range(20):
        aug.reverb(speech, np.random.default_rng(seed))
    assert 1 <= len(aug._rir_cache) <= 2
    flat = tmp_path / "flat.wav"
    sf.write(flat, np.full(10, 0.5, np.float32), SAMPLE_RATE, subtype="FLOAT")
    bad = Augmenter(sources["noise"], sources["music"], sources["babble"], [str(flat)])
    with pytest.raises(AudioError, match=f"^{flat}: RIR is constant"):
        bad.reverb(speech, np.random.default_rng(0))


# --- additive -------------------------------------------------------------------------------


def test_mix_at_snr_known_answer():
    s = np.array([1.0, -1.0, 1.0, -1.0], np.float32)  # power 1
    n = np.array([2.0, 2.0, -2.0, -2.0], np.float32)  # power 4
    y = mix_at_snr(s, n, 10.0)  # noise power must be 0.1 -> gain sqrt(0.1 / 4)
    np.testing.assert_allclose(y, s + np.sqrt(0.025) * n, rtol=1e-6)
    np.testing.assert_array_equal(mix_at_snr(s, np.zeros(4, np.float32), 5.0), s)


def test_additive_measured_snr_equals_drawn_value(sources, speech):
    aug = Augmenter(**sources)
    clean = peak_normalise(speech)
    kinds, counts = Counter(), set()
    for seed in range(200):
        y, draw = aug.additive_with_draw(speech, np.random.default_rng(seed))
        assert y.shape == speech.shape and y.dtype == np.float32
        noise = y.astype(np.float64) - clean
        snr = 10 * np.log10(_power(clean) / _power(noise))
        assert 0.0 <= draw.snr_db <= 20.0
        assert snr == pytest.approx(draw.snr_db, abs=1e-3)
        kinds[draw.kind] += 1
        pool = {"noise": sources["noise"], "music": sources["music"], "babble": sources["babble"]}
        if draw.kind == "noise":
            assert len(draw.sources) == 1 and draw.sources[0] in pool["noise"]
        elif draw.kind == "music":
            assert len(draw.sources) == 1 and draw.sources[0] in pool["music"]
        elif draw.kind == "babble_music":
            assert draw.sources[0] in pool["babble"] and draw.sources[1] in pool["music"]
        else:
            assert all(p in pool["babble"] for p in draw.sources)
            assert len(set(draw.sources)) == len(draw.sources)  # 10 files: drawn without replacement
            counts.add(len(draw.sources))
    assert set(kinds) == set(ADDITIVE_KINDS) and min(kinds.values()) > 25  # ~50 each
    assert counts == set(range(3, 9))


def test_preloaded_sources_give_the_crops_read_from_disk(sources, speech):
    """Sources within preload_mb are decoded once; the crops cut from memory equal the disk reads."""
    on_disk = sum(Path(p).stat().st_size for name in ("noise", "music", "babble") for p in sources[name])
    preloaded = Augmenter(**sources)  # default budget: these ~1 MB fit
    assert set(preloaded._preloaded) == {p for name in ("noise", "music", "babble") for p in sources[name]}
    too_small = Augmenter(**sources, preload_mb=0.99 * on_disk / 2**20)
    never = Augmenter(**sources, preload_mb=0)
    assert too_small.preloaded == 0 and never.preloaded == 0
    for seed in range(30):
        y, draw = preloaded.additive_with_draw(speech, np.random.default_rng(seed))
        for other in (too_small, never):
            z, other_draw = other.additive_with_draw(speech, np.random.default_rng(seed))
            assert other_draw == draw
            np.testing.assert_array_equal(z, y)


def test_additive_sources_are_tiled_and_peak_normalised_before_summing(tmp_path, sources):
    """Short sources of different peaks: alternating +-0.4 (noise, babble) and constant 0.1 (music).

    Tiled and peak-normalised they are +-1 and 1, so babble+music adds 2, 0, 2, 0, ... times the
    SNR gain; without the per-source peak normalisation it would be 0.5, -0.3, ...
    """
    alternating, constant = tmp_path / "alt.wav", tmp_path / "const.wav"
    sf.write(alternating, np.tile([0.4, -0.4], 50).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    sf.write(constant, np.full(100, 0.1, np.float32), SAMPLE_RATE, subtype="FLOAT")
    aug = Augmenter([str(alternating)], [str(constant)], [str(alternating)], sources["rir"])
    x = np.sin(np.arange(1000) / 5.0).astype(np.float32)
    seen = set()
    for seed in range(40):
        y, draw = aug.additive_with_draw(x, np.random.default_rng(seed))
        if draw.kind == "babble":  # k copies of +-1 in random phases may cancel out
            continue
        added = y.astype(np.float64) - peak_normalise(x)
        shape = added / np.max(np.abs(added))
        if draw.kind == "noise":
            np.testing.assert_allclose(np.abs(shape), 1.0, atol=1e-5)
            np.testing.assert_allclose(shape[1:], -shape[:-1], atol=1e-5)
        elif draw.kind == "music":
            np.testing.assert_allclose(shape, 1.0, atol=1e-5)
        elif draw.kind == "babble_music":
            first = 1.0 if shape[0] > 0.5 else 0.0
            np.testing.assert_allclose(shape, np.tile([first, 1.0 - first], 500), atol=1e-5)
        seen.add(draw.kind)
    assert {"noise", "music", "babble_music"} <= seen


def test_augmenter_requires_every_source(sources):
    with pytest.raises(ValueError, match="babble"):
        Augmenter(sources["noise"], sources["music"], [], sources["rir"])
    with pytest.raises(ValueError, match="snr_db"):
        Augmenter(**sources, snr_db=(20, 0))


def test_augmenter_is_deterministic_given_rng(sources, speech):
    aug = Augmenter(**sources)
    policy = AugmentPolicy.dino()
    for seed in range(10):
        a = aug(speech, policy, np.random.default_rng(seed))
        b = aug(speech, policy, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)


# --- policies ---------------------------------------------------------------------------------


def _frequencies(policy: AugmentPolicy, n: int = 30000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    counts = Counter(policy.draw(rng) for _ in range(n))
    return {k: counts[k] / n for k in ("reverb", "noise", "none")}


def test_dino_policy_frequencies():
    f = _frequencies(AugmentPolicy.dino())
    assert f["reverb"] == pytest.approx(0.4, abs=0.015)
    assert f["noise"] == pytest.approx(0.4, abs=0.015)
    assert f["none"] == pytest.approx(0.2, abs=0.015)


def test_ssrl_student_q1_is_never_clean_and_switch_restores_clean():
    q1 = _frequencies(AugmentPolicy.ssrl_student())
    assert q1["none"] == 0.0
    assert q1["reverb"] == pytest.approx(1 / 3, abs=0.015)
    clean = _frequencies(AugmentPolicy.ssrl_student(none_is_noise=False))
    for kind in ("reverb", "noise", "none"):
        assert clean[kind] == pytest.approx(1 / 3, abs=0.015)


def test_apply_probability():
    f = _frequencies(AugmentPolicy.ssrl_student(apply_prob=0.66))
    assert f["none"] == pytest.approx(0.34, abs=0.015)
    assert f["reverb"] == pytest.approx(0.66 / 3, abs=0.015)
    assert not AugmentPolicy.clean().augments and not AugmentPolicy.dino().__class__(apply_prob=0.0).augments
    assert AugmentPolicy(("none",), none_is_noise=True).augments


def test_clean_policy_returns_input(sources, speech):
    y = Augmenter(**sources)(speech, AugmentPolicy.clean(), np.random.default_rng(0))
    np.testing.assert_array_equal(y, speech)


def test_policy_validation():
    with pytest.raises(ValueError, match="unknown"):
        AugmentPolicy(("reverb", "chorus"))
    with pytest.raises(ValueError, match="apply_prob"):
        AugmentPolicy(apply_prob=1.5)
