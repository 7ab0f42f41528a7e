"""ssrl.demo: corpus structure, determinism, known-answer checks of the synthesis parts, the
script's argument checks, and the demo_corpus rule run by Snakemake."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import REPO, TINY_CONFIG, deep_update, run_snakemake, write_config

from ssrl import demo
from ssrl.demo import voice
from ssrl.manifest import (
    Trials,
    check_audio_exists,
    check_trials_cover,
    read_list,
    read_trials,
    read_utt2spk,
    read_wav_scp,
)

TINY = yaml.safe_load(TINY_CONFIG.read_text())["corpus"]["demo"]
MANIFESTS = [
    "train/wav.scp",
    "train/utt2spk",
    "test/wav.scp",
    "test/utt2spk",
    "trials/demo.txt",
    "augment/noise.lst",
    "augment/music.lst",
    "augment/babble.lst",
    "augment/rir.lst",
]
# smaller than tiny: for the tests that generate several corpora
MINI = dict(
    n_train_speakers=2,
    n_test_speakers=2,
    utts_per_speaker=2,
    min_dur=0.5,
    max_dur=1.0,
    n_noise=1,
    n_music=1,
    n_speech=1,
    n_rir=2,
)


# ----------------------------------------------------------------------------- the tiny corpus


def test_tiny_corpus_structure(tiny_corpus):
    data = tiny_corpus / "data"
    n_tr, n_te, n_utt = TINY["n_train_speakers"], TINY["n_test_speakers"], TINY["utts_per_speaker"]
    sets = {}
    for split, n_spk in (("train", n_tr), ("test", n_te)):
        wav = read_wav_scp(data / split / "wav.scp")
        utt2spk = read_utt2spk(data / split / "utt2spk")
        assert list(wav) == list(utt2spk) and len(wav) == n_spk * n_utt
        assert len(set(utt2spk.values())) == n_spk
        assert all(n == n_utt for n in np.unique(list(utt2spk.values()), return_counts=True)[1])
        check_audio_exists(wav, data / split / "wav.scp")
        for utt, path in wav.items():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert TINY["min_dur"] - 1e-4 <= info.frames / 16000 <= TINY["max_dur"] + 1e-4, (utt, info.duration)
            assert Path(path).is_absolute() and Path(path).parent.name == utt2spk[utt]
        sets[split] = utt2spk
    assert not set(sets["train"].values()) & set(sets["test"].values())  # disjoint speakers

    trials = read_trials(data / "trials" / "demo.txt")
    check_trials_cover(trials, sets["test"], data / "trials" / "demo.txt")
    n_target = n_te * math.comb(n_utt, 2)
    assert len(trials) == 2 * n_target and int(trials.labels.sum()) == n_target
    same = np.array([sets["test"][e] == sets["test"][t] for e, t in zip(trials.enroll, trials.test)])
    assert np.array_equal(same, trials.labels == 1)
    pairs = {frozenset(p) for p in zip(trials.enroll.tolist(), trials.test.tolist())}
    assert len(pairs) == len(trials) and all(len(p) == 2 for p in pairs)  # distinct, no self-trials
    by_spk = {}
    for utt, spk in sets["test"].items():
        by_spk.setdefault(spk, []).append(utt)
    all_targets = {frozenset(p) for utts in by_spk.values() for p in itertools.combinations(utts, 2)}
    assert {frozenset(p) for p, lab in zip(zip(trials.enroll, trials.test), trials.labels) if lab} == all_targets


def test_tiny_corpus_augmentation_sources(tiny_corpus):
    data = tiny_corpus / "data"
    layout = {
        "noise": ("musan/noise", (5, 15)),
        "music": ("musan/music", (10, 30)),
        "babble": ("musan/speech", (10, 30)),
        "rir": ("RIRS_NOISES/simulated_rirs", (0.25, 1.25)),
    }
    counts = {"noise": TINY["n_noise"], "music": TINY["n_music"], "babble": TINY["n_speech"], "rir": TINY["n_rir"]}
    for name, (folder, (lo, hi)) in layout.items():
        paths = read_list(data / "augment" / f"{name}.lst")
        assert len(paths) == counts[name]
        for p in paths:
            assert f"/corpus/{folder}/" in p
            x, sr = sf.read(p, dtype="float32")
            assert sr == 16000 and x.ndim == 1 and lo <= len(x) / sr <= hi
            assert np.isfinite(x).all() and 0.05 < np.abs(x).max() <= 1.0
    rirs = read_list(data / "augment" / "rir.lst")
    assert all(Path(p).suffix == ".wav" and "room/Room" in p for p in rirs)


def test_tiny_corpus_baseline_json(tiny_corpus):
    info = json.loads((tiny_corpus / "corpus" / "baseline.json").read_text())
    assert 0.0 <= info["eer"] <= 1.0 and math.isfinite(info["eer"])
    n_target = TINY["n_test_speakers"] * math.comb(TINY["utts_per_speaker"], 2)
    assert (info["n_trials"], info["n_target"]) == (2 * n_target, n_target)
    assert info["baseline"] == demo.MFCC_BASELINE and "MFCC" in info["baseline"]
    corpus = info["corpus"]
    assert corpus["n_train_utts"] == TINY["n_train_speakers"] * TINY["utts_per_speaker"]
    assert corpus["high_voice_speakers"] == {
        "train": TINY["n_train_speakers"] // 2,
        "test": TINY["n_test_speakers"] // 2,
    }


# ----------------------------------------------------------------------------- determinism


def _generate(root: Path, monkeypatch, seed: int, workers: int = 1) -> Path:
    root.mkdir()
    monkeypatch.chdir(root)  # relative paths: manifests of two runs are comparable byte for byte
    demo.generate_corpus("corpus", "data", seed=seed, workers=workers, **MINI)
    return root


def _audio(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "test"):
        for utt, path in read_wav_scp(root / "data" / split / "wav.scp").items():
            out[utt] = sf.read(root / path, dtype="int16")[0]
    for name in ("noise", "music", "babble", "rir"):
        for path in read_list(root / "data" / "augment" / f"{name}.lst"):
            out[path] = sf.read(root / path, dtype="float32")[0]
    return out


def test_same_seed_same_corpus_for_any_worker_count(tmp_path, monkeypatch):
    a = _generate(tmp_path / "a", monkeypatch, seed=3, workers=1)
    b = _generate(tmp_path / "b", monkeypatch, seed=3, workers=2)
    for name in MANIFESTS + ["../corpus/baseline.json"]:
        assert (a / "data" / name).read_bytes() == (b / "data" / name).read_bytes(), name
    audio_a, audio_b = _audio(a), _audio(b)
    assert audio_a.keys() == audio_b.keys()
    for key in audio_a:
        assert np.array_equal(audio_a[key], audio_b[key]), key


def test_different_seed_different_corpus(tmp_path, monkeypatch):
    a = _generate(tmp_path / "a", monkeypatch, seed=3)
    c = _generate(tmp_path / "c", monkeypatch, seed=4)
    assert (a / "data/train/wav.scp").read_bytes() == (c / "data/train/wav.scp").read_bytes()  # same names
    assert (a / "data/trials/demo.txt").read_bytes() != (c / "data/trials/demo.txt").read_bytes()
    audio_a, audio_c = _audio(a), _audio(c)
    for key in audio_a:
        assert len(audio_a[key]) != len(audio_c[key]) or not np.array_equal(audio_a[key], audio_c[key]), key


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"min_dur": 2.0, "max_dur": 1.0}, "min_dur <= max_dur"),
        ({"min_dur": 0.01, "max_dur": 1.0}, "shorter than one analysis window"),
        ({"n_test_speakers": 1}, "n_test_speakers must be an integer >= 2, got 1"),
        ({"utts_per_speaker": 2.5}, "utts_per_speaker must be an integer >= 2"),
        ({"n_rir": 0}, "n_rir must be an integer >= 1, got 0"),
    ],
)
def test_generate_corpus_rejects_bad_sizes(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        demo.generate_corpus(tmp_path / "corpus", tmp_path / "data", **{**MINI, **bad})
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- parts, known answers


def test_stft_round_trip_is_exact():
    x = np.random.default_rng(0).standard_normal(16000 + 123).astype(np.float32)
    spec = voice.stft(x)
    assert spec.shape == (math.ceil(len(x) / voice.HOP) + 1, voice.N_FFT // 2 + 1)
    np.testing.assert_allclose(voice.istft(spec, len(x)), x, atol=1e-5)


def test_resonance_cascade_peaks_at_its_formants():
    env = voice.resonance_gain(np.array([[700.0, 2100.0]], np.float32), np.array([80.0, 120.0], np.float32))[0]
    f = voice.FREQS
    assert env[0] == pytest.approx(1.0, abs=1e-3)  # unit gain at 0 Hz
    peaks = [i for i in range(1, len(env) - 1) if env[i] > env[i - 1] and env[i] > env[i + 1]]
    assert [round(f[i] / 31.25) * 31.25 for i in peaks] == [round(700 / 31.25) * 31.25, round(2100 / 31.25) * 31.25]


def _autocorr_f0(x: np.ndarray, lo: float = 60.0, hi: float = 400.0) -> float:
    """Median autocorrelation pitch (Hz) over the loudest 40 ms frames of ``x``."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 640)[::320]
    energy = (frames**2).sum(axis=1)
    f0s = []
    for fr in frames[energy >= np.quantile(energy, 0.7)]:
        fr = fr - fr.mean()
        ac = np.correlate(fr, fr, "full")[len(fr) - 1 :]
        lags = np.arange(int(16000 / hi), int(16000 / lo))
        f0s.append(16000 / lags[np.argmax(ac[lags])])
    return float(np.median(f0s))


def test_utterance_pitch_follows_the_speaker():
    for index in (0, 1, 2, 3):
        sp = demo.make_speaker(0, index, "x")
        rng = np.random.default_rng([9, index])
        x = demo.synthesise_utterance(sp, rng, 3 * 16000, demo.clean_session(rng))
        assert x.dtype == np.float32 and x.shape == (3 * 16000,) and np.abs(x).max() <= 0.95 + 1e-6
        est = _autocorr_f0(x)
        # intonation and declination move f0 around the speaker's median by a few semitones
        assert abs(12 * math.log2(est / sp.f0)) < 4.0, (index, sp.f0, est)
        assert (sp.f0 > 160) == sp.high_voice == (index % 2 == 1)


def test_speakers_are_stable_and_distinct():
    a, b = demo.make_speaker(5, 7, "s"), demo.make_speaker(5, 7, "s")
    assert a.f0 == b.f0 and np.array_equal(a.vowel_offsets, b.vowel_offsets)
    assert demo.make_speaker(5, 8, "s").f0 != a.f0 and demo.make_speaker(6, 7, "s").f0 != a.f0


def _decay_time(h: np.ndarray) -> float:
    """RT60 (s) from the Schroeder curve: 3 x the time from -5 dB to -25 dB."""
    edc = np.cumsum((h.astype(np.float64) ** 2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    t5, t25 = np.argmax(edc_db <= -5) / 16000, np.argmax(edc_db <= -25) / 16000
    return 3 * (t25 - t5)


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_room_impulse_response_decays_at_its_rt60(rt60):
    h = demo.room_impulse_response(np.random.default_rng(1), rt60, direct_gain=0.3, distance_m=2.0)
    assert h.dtype == np.float32 and len(h) == int((rt60 + 0.05) * 16000)
    assert np.abs(h).max() == pytest.approx(1.0)
    assert np.all(h[: int(2.0 / 343 * 16000)] == 0)  # nothing before the direct path
    assert _decay_time(h) == pytest.approx(rt60, rel=0.25)


@pytest.mark.parametrize("tilt", [-6.0, 0.0])
def test_coloured_noise_has_its_slope(tilt):
    x = demo.coloured_noise(np.random.default_rng(2), 5 * 16000, tilt)
    assert float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(1.0, rel=1e-3)
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    band = lambda c: 10 * np.log10(spec[(f > c / 1.2) & (f < c * 1.2)].mean())  # noqa: E731
    assert (band(4000) - band(500)) / 3 == pytest.approx(tilt, abs=0.5)


def test_make_trials_counts_and_pairs():
    utt2spk = {f"s{s}-{k}": f"s{s}" for s in range(3) for k in range(4)}
    trials = demo.make_trials(utt2spk, np.random.default_rng(0))
    assert len(trials) == 2 * 3 * 6 and int(trials.labels.sum()) == 18
    again = demo.make_trials(utt2spk, np.random.default_rng(0))
    assert np.array_equal(trials.enroll, again.enroll) and np.array_equal(trials.test, again.test)
    with pytest.raises(ValueError, match="at least 2 speakers"):
        demo.make_trials({"a-1": "a", "a-2": "a"}, np.random.default_rng(0))


def test_cosine_trial_scores_known_answer():
    vectors = np.array([[3.0, 1.0], [1.0, 3.0], [-1.0, -1.0], [1.0, 1.0]])  # mean (1, 1)
    trials = Trials.from_lists([1, 0, 0], ["a", "a", "b"], ["d", "c", "a"])
    scores = demo.cosine_trial_scores(vectors, ["a", "b", "c", "d"], trials)
    # centred: a (2, 0), b (0, 2), c (-2, -2), d (0, 0)
    np.testing.assert_allclose(scores, [0.0, -math.sqrt(0.5), 0.0], atol=1e-6)


def test_mfcc_baseline_separates_identical_recordings(tmp_path):
    """Target trials of identical files score 1: the EER is 0 whatever the non-targets score."""
    rng = np.random.default_rng(0)
    wav = {}
    for s in range(3):
        sp = demo.make_speaker(0, s, "x")
        x = demo.synthesise_utterance(sp, rng, 16000, demo.clean_session(rng))
        for k in range(2):
            path = tmp_path / f"s{s}-{k}.flac"
            sf.write(path, x, 16000, subtype="PCM_16")
            wav[f"s{s}-{k}"] = str(path)
    trials = demo.make_trials({u: u.split("-")[0] for u in wav}, rng)
    result = demo.mfcc_baseline(wav, trials)
    assert result["eer"] == 0.0 and result["n_trials"] == 6 and result["n_target"] == 3


# ----------------------------------------------------------------------------- script and rule


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo", REPO / "workflow" / "scripts" / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"seed": 0}, "expected keys"),
        ({**MINI, "seed": 0, "n_rir": "two"}, "n_rir must be an integer"),
        ({**MINI, "seed": 0, "min_dur": True}, "min_dur must be a number"),
        ({**MINI, "seed": 0, "min_dur": 3.0}, "make_demo: need 0 < min_dur <= max_dur"),
    ],
)
def test_script_rejects_bad_hparams(tmp_path, hparams, message):
    script = _load_script()
    with pytest.raises(SystemExit) as exc:
        script.main(
            [
                "--hparams",
                json.dumps(hparams),
                "--corpus-dir",
                str(tmp_path / "corpus"),
                "--data-dir",
                str(tmp_path / "data"),
            ]
        )
    assert message in str(exc.value.code)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_snakemake_builds_the_demo_data(workdir):
    cfg = write_config(workdir / "tiny.yaml", {"corpus": {"demo": MINI}})
    data = workdir / "results" / "tiny" / "data"
    targets = [f"results/tiny/data/{name}" for name in MANIFESTS] + ["results/tiny/corpus/baseline.json"]
    run_snakemake(workdir, "--cores", "2", *targets, configfile=cfg)
    wav = read_wav_scp(data / "train" / "wav.scp")
    assert len(wav) == MINI["n_train_speakers"] * MINI["utts_per_speaker"]
    assert all(p.startswith("results/tiny/corpus/train/") for p in wav.values())  # relative to workdir
    assert (workdir / "results/tiny/logs/demo_corpus.log").read_text().count("MFCC-mean baseline EER") == 1
    assert json.loads((workdir / "results/tiny/corpus/baseline.json").read_text())["corpus"]["seed"] == 1
    # up to date; a changed corpus.demo value reruns the rule
    assert "Nothing to be done" in run_snakemake(workdir, "-n", *targets, configfile=cfg).stdout
    cfg2 = write_config(workdir / "tiny2.yaml", {"corpus": {"demo": {**MINI, "seed": 2}}})
    assert "demo_corpus" in run_snakemake(workdir, "-n", *targets, configfile=cfg2).stdout


def test_kmeans_ablation_quality_switch(workdir):
    """kmeans.ablation_quality decides whether the default target k-means the ablations' train-set
    embeddings (one more train-set extraction, in the same job as its test set, + k-means each); dino,
    the iterative rounds (their labels) and ssrl are clustered either way."""
    counts = {}
    for on in (False, True):
        # (AS-norm off: its cohort would need every system's train-set embeddings anyway)
        cfg = write_config(
            workdir / f"config_{on}.yaml", {"kmeans": {"ablation_quality": on}, "score": {"asnorm": False}}
        )
        out = run_snakemake(workdir, "-n", "--quiet", "rules", configfile=cfg).stdout
        counts[on] = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    effective = deep_update(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()), yaml.safe_load(TINY_CONFIG.read_text())
    )
    ablations = [name for name, overrides in effective["ablations"].items() if overrides is not None]
    assert ablations  # the tiny config keeps one
    assert counts[False]["kmeans"] == 2 + effective["iterative"]["rounds"], counts  # dino, rounds, ssrl
    assert counts[True]["kmeans"] - counts[False]["kmeans"] == len(ablations), counts
    # an ablation clustered gets its train and test sets from one job instead of its test set alone
    assert counts[True]["extract_train_test"] - counts[False]["extract_train_test"] == len(ablations), counts
    assert counts[False]["extract"] - counts[True]["extract"] == len(ablations), counts
    assert counts[True]["ssrl_train"] == counts[False]["ssrl_train"] == 1 + len(ablations), counts
