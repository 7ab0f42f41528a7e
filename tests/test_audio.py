"""ssrl.audio: reading (soundfile, PyAV), resampling, crops, peak normalisation, pre-emphasis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssrl import SAMPLE_RATE
from ssrl.audio import (
    AudioError,
    audio_duration,
    load_audio,
    peak_normalise,
    pre_emphasis,
    preload_audio,
    random_crop,
    read_random_crop,
    resample,
    write_audio,
)


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def write_aac(path, x: np.ndarray, sr: int, channels: int = 1) -> None:
    """Encode ``x`` (samples,) as AAC in an MP4 container with PyAV (``channels`` identical copies)."""
    import av

    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.tile(x, (channels, 1)), format="fltp", layout=layout)
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# --- reading, writing, resampling ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_write_then_load_round_trip(tmp_path, suffix):
    x = tone(300, 0.5, SAMPLE_RATE)
    path = tmp_path / f"a{suffix}"
    write_audio(path, x)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32768)  # PCM_16 quantisation
    assert audio_duration(path) == pytest.approx(0.5)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_write_float_wav_is_exact(tmp_path):
    x = np.array([0.1, -2.5, 3.0], dtype=np.float32)
    write_audio(tmp_path / "f.wav", x, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "f.wav"), x)


def test_write_refuses_clipping_and_bad_suffix(tmp_path):
    with pytest.raises(AudioError, match="exceed"):
        write_audio(tmp_path / "loud.flac", np.array([0.0, 1.5], dtype=np.float32))
    with pytest.raises(AudioError, match="suffix"):
        write_audio(tmp_path / "x.mp3", np.zeros(10, dtype=np.float32))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampled_on_load_keeps_length_and_frequency(tmp_path, sr):
    path = tmp_path / f"t{sr}.wav"
    sf.write(path, tone(1000, 1.0, sr), sr, subtype="FLOAT")
    y = load_audio(path)
    assert y.shape == (SAMPLE_RATE,)
    assert dominant_frequency(y) == pytest.approx(1000, abs=1.0)
    # Away from the edges the resampled tone is the 16 kHz tone itself.
    np.testing.assert_allclose(y[400:-400], tone(1000, 1.0, SAMPLE_RATE)[400:-400], atol=2e-3)
    assert audio_duration(path) == pytest.approx(1.0)


def test_resample_length_is_ceil_of_ratio():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    assert resample(x, 44100).shape == (int(np.ceil(1001 * 16000 / 44100)),)
    assert resample(x, SAMPLE_RATE) is x


def test_stereo_is_mixed_to_mono_by_mean(tmp_path):
    left = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    right = np.full(800, 0.25, dtype=np.float32)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_max_seconds_reads_only_the_start(tmp_path):
    x = np.arange(32000, dtype=np.float32) / 32000
    path = tmp_path / "long.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, max_seconds=0.5), x[:8000])
    np.testing.assert_array_equal(load_audio(path, max_seconds=5.0), x)


@pytest.mark.parametrize("channels", [1, 2])
def test_m4a_aac_round_trip(tmp_path, channels):
    x = tone(440, 1.0, 44100)
    path = tmp_path / "a.m4a"
    write_aac(path, x, 44100, channels)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    # AAC adds encoder priming (1024 samples) and pads the last frame.
    assert SAMPLE_RATE <= y.shape[0] <= SAMPLE_RATE + 3 * 1024 * SAMPLE_RATE // 44100 + 1
    assert dominant_frequency(y) == pytest.approx(440, abs=2.0)
    # Amplitude away from the edges (the abrupt end makes the encoder overshoot there).
    assert np.max(np.abs(y[4000:-4000])) == pytest.approx(0.5, abs=0.05)
    assert audio_duration(path) == pytest.approx(1.0, abs=0.1)


def test_missing_empty_and_corrupt_files_raise_audio_error(tmp_path):
    missing = tmp_path / "missing.flac"
    with pytest.raises(AudioError, match=f"^{missing}: no such"):
        load_audio(missing)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match=f"^{empty}: empty"):
        load_audio(empty)
    assert audio_duration(empty) == 0.0
    for name in ["junk.flac", "junk.wav", "junk.m4a"]:
        bad = tmp_path / name
        bad.write_bytes(b"this is not audio" * 50)
        with pytest.raises(AudioError, match=f"^{bad}: "):
            load_audio(bad)
        with pytest.raises(AudioError, match=f"^{bad}: "):
            audio_duration(bad)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(nan)
    assert issubclass(AudioError, ValueError)


# --- crops ---------------------------------------------------------------------------------


def test_random_crop_of_long_signal_is_a_contiguous_slice():
    x = np.arange(100, dtype=np.float32)
    offsets = set()
    for seed in range(1000):
        y = random_crop(x, 30, np.random.default_rng(seed))
        assert y.shape == (30,) and y.dtype == np.float32
        np.testing.assert_array_equal(y, np.arange(y[0], y[0] + 30))
        offsets.add(int(y[0]))
    assert offsets == set(range(71))  # every offset 0..len-num reachable


def test_random_crop_tiles_short_signal():
    x = np.arange(10, dtype=np.float32)
    starts = set()
    for seed in range(100):
        y = random_crop(x, 25, np.random.default_rng(seed))
        assert y.shape == (25,)
        np.testing.assert_array_equal(y, (y[0] + np.arange(25)) % 10)
        starts.add(int(y[0]))
    assert starts == set(range(10))
    np.testing.assert_array_equal(random_crop(x, 10, np.random.default_rng(0)), x)


def test_random_crop_rejects_bad_input():
    with pytest.raises(ValueError):
        random_crop(np.zeros(0, np.float32), 5, np.random.default_rng(0))
    with pytest.raises(ValueError):
        random_crop(np.zeros(5, np.float32), 0, np.random.default_rng(0))


@pytest.mark.parametrize("length", [3000, 1000, 700])
def test_read_random_crop_matches_random_crop_of_loaded_file(tmp_path, length):
    x = np.random.default_rng(1).uniform(-1, 1, length).astype(np.float32)
    path = tmp_path / "n.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    for seed in range(5):
        got = read_random_crop(path, 1000, np.random.default_rng(seed))
        want = random_crop(x, 1000, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, want)


def test_preload_audio_within_budget_only(tmp_path):
    xs = [np.random.default_rng(i).uniform(-0.5, 0.5, 800 * (i + 1)).astype(np.float32) for i in range(3)]
    paths = []
    for i, x in enumerate(xs):
        paths.append(str(tmp_path / f"u{i}.wav"))
        sf.write(paths[-1], x, SAMPLE_RATE, subtype="FLOAT")
    on_disk_mb = sum(Path(p).stat().st_size for p in paths) / 2**20
    loaded = preload_audio(paths + paths[:1], on_disk_mb)  # duplicates count once
    assert sorted(loaded) == sorted(paths)
    for p, x in zip(paths, xs):
        np.testing.assert_array_equal(loaded[p], x)
    assert preload_audio(paths, 0.99 * on_disk_mb) == {} and preload_audio(paths, 0) == {}
    assert preload_audio([*paths, str(tmp_path / "missing.wav")], 256) == {}
    with pytest.raises(ValueError, match=">= 0"):
        preload_audio(paths, -1)


def test_read_random_crop_resamples_other_rates(tmp_path):
    path = tmp_path / "n8k.wav"
    sf.write(path, tone(500, 1.0, 8000), 8000, subtype="FLOAT")
    got = read_random_crop(path, 4000, np.random.default_rng(3))
    want = random_crop(load_audio(path), 4000, np.random.default_rng(3))
    np.testing.assert_array_equal(got, want)


# --- normalisation -------------------------------------------------------------------------


def test_peak_normalise_known_values():
    np.testing.assert_allclose(peak_normalise(np.array([0.5, -2.0, 1.0], np.float32)), [0.25, -1.0, 0.5])
    zeros = np.zeros(4, np.float32)
    out = peak_normalise(zeros)
    np.testing.assert_array_equal(out, zeros)
    assert out is not zeros and out.dtype == np.float32


def test_pre_emphasis_known_values():
    y = pre_emphasis(np.array([1.0, 2.0, 0.0, -1.0], np.float32))
    np.testing.assert_allclose(y, [1.0, 2.0 - 0.97, -1.94, -1.0], rtol=1e-6)
    np.testing.assert_allclose(pre_emphasis(np.array([1.0, 1.0], np.float32), coef=0.5), [1.0, 0.5])
    assert y.dtype == np.float32
