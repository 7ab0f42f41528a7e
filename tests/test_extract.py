"""Embedding extraction (docs/method.md §5): workflow/scripts/extract.py and the `extract` rule."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, run_snakemake, write_config

from ssrl.audio import load_audio, write_audio
from ssrl.data import normalise_waveform
from ssrl.fileio import read_embeddings
from ssrl.models import build_speaker_model, save_model_file

SCRIPT = REPO / "workflow" / "scripts" / "extract.py"
HPARAMS = {"device": "cpu", "max_batch_seconds": 4.0, "max_batch_size": 3, "workers": 0, "max_seconds_wavlm": 100}
DURATIONS = (0.4, 2.5, 1.1, 3.7, 0.9, 1.6)  # seconds: several batches of mixed lengths


# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def make_wavs(folder, durations=DURATIONS) -> dict[str, str]:
    """Tones + noise of the given durations as FLAC files -> {utt: path}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    wavs = {}
    for i, seconds in enumerate(durations):
        t = np.arange(round(seconds * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"utt{i}.flac"
        write_audio(path, x.astype(np.float32))
        wavs[f"spk{i % 2}-utt{i}"] = str(path)
    return wavs


def write_scp(path, wavs: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u} {p}\n" for u, p in wavs.items()))


def make_model_file(path, arch: dict, seed: int = 0):
    """A model file with random weights and non-trivial BatchNorm statistics -> (model, path)."""
    torch.manual_seed(seed)
    model = build_speaker_model(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    save_model_file(path, "sys1", model.arch, model.state_dict(), hparams={"note": "test"})
    return model.eval(), path


def run_script(*args: str) -> None:
    argv = sys.argv
    sys.argv = [str(SCRIPT), *args]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = argv


def one_at_a_time(model, wavs: dict[str, str], max_seconds=None) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(normalise_waveform(load_audio(p, max_seconds=max_seconds)))[None]).numpy()
                for p in wavs.values()
            ]
        )


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("workers", [0, 1])
def test_batched_extraction_equals_one_at_a_time(tmp_path, workers):
    wavs = make_wavs(tmp_path / "wav")
    write_scp(tmp_path / "wav.scp", wavs)
    model, path = make_model_file(
        tmp_path / "model.pt", {"frontend": {"type": "mel", "n_mels": 40}, "encoder": {"channels": 32, "emb_dim": 24}}
    )
    out = tmp_path / "emb" / "test.npz"
    run_script(
        "--model",
        str(path),
        "--wav-scp",
        str(tmp_path / "wav.scp"),
        "--output",
        str(out),
        "--hparams",
        json.dumps(dict(HPARAMS, workers=workers)),
    )
    utts, emb = read_embeddings(out)
    assert utts == list(wavs) and emb.shape == (len(wavs), 24) and emb.dtype == np.float32
    reference = one_at_a_time(model, wavs)
    assert cosine(emb, reference).min() >= 0.9999
    assert np.abs(emb - reference).max() < 1e-4


def test_wavlm_system_truncates_audio(tmp_path):
    wavs = make_wavs(tmp_path / "wav", durations=(2.0, 0.7, 3.0))
    write_scp(tmp_path / "wav.scp", wavs)
    model, path = make_model_file(
        tmp_path / "model.pt",
        {
            "frontend": {"type": "wavlm", "checkpoint": None, "num_layers": 2, "tiny": True},
            "encoder": {"channels": 16, "emb_dim": 8},
        },
    )
    out = tmp_path / "emb.npz"
    run_script(
        "--model",
        str(path),
        "--wav-scp",
        str(tmp_path / "wav.scp"),
        "--output",
        str(out),
        "--hparams",
        json.dumps(dict(HPARAMS, max_seconds_wavlm=1.0)),
    )
    _, emb = read_embeddings(out)
    truncated = one_at_a_time(model, wavs, max_seconds=1.0)
    assert cosine(emb, truncated).min() >= 0.9999
    assert cosine(emb[[0]], one_at_a_time(model, {"a": wavs["spk0-utt0"]}))[0] < 0.9999  # the whole file differs


def test_extraction_failures_write_nothing(tmp_path):
    wavs = make_wavs(tmp_path / "wav", durations=(1.0, 1.5))
    write_scp(tmp_path / "wav.scp", wavs)
    arch = {"frontend": {"type": "mel", "n_mels": 40}, "encoder": {"channels": 16, "emb_dim": 8}}
    model, path = make_model_file(tmp_path / "model.pt", arch)
    state = {
        k: torch.full_like(v, float("nan")) if k.endswith("fc.weight") else v for k, v in model.state_dict().items()
    }
    save_model_file(tmp_path / "nan.pt", "sys1", model.arch, state)
    out = tmp_path / "emb.npz"
    args = ["--wav-scp", str(tmp_path / "wav.scp"), "--output", str(out), "--hparams", json.dumps(HPARAMS)]
    with pytest.raises(SystemExit, match="non-finite embedding for 2 utterance.*spk0-utt0"):
        run_script("--model", str(tmp_path / "nan.pt"), *args)
    write_scp(tmp_path / "short.scp", dict(wavs, tiny=str(make_wavs(tmp_path / "s", durations=(0.01,))["spk0-utt0"])))
    with pytest.raises(SystemExit, match="shorter than"):
        run_script(
            "--model",
            str(path),
            "--wav-scp",
            str(tmp_path / "short.scp"),
            "--output",
            str(out),
            "--hparams",
            json.dumps(HPARAMS),
        )
    with pytest.raises(SystemExit):  # usage error: one output per set
        run_script("--model", str(path), *args, "--wav-scp", str(tmp_path / "short.scp"))
    with pytest.raises(SystemExit, match="missing keys \\['workers'\\]"):
        run_script("--model", str(path), *args[:-1], json.dumps({k: v for k, v in HPARAMS.items() if k != "workers"}))
    with pytest.raises(SystemExit, match="nothing.pt: model file not found"):
        run_script("--model", str(tmp_path / "nothing.pt"), *args)
    assert not out.exists()


def test_several_sets_in_one_call_equal_separate_calls(tmp_path):
    """--wav-scp/--output pairs: one model load, each set written as a call of its own writes it."""
    sets = {
        name: make_wavs(tmp_path / name, durations=durations)
        for name, durations in (("train", (1.0, 1.7)), ("test", (0.8, 1.3, 2.0)))
    }
    for name, wavs in sets.items():
        write_scp(tmp_path / f"{name}.scp", wavs)
    _, path = make_model_file(
        tmp_path / "model.pt", {"frontend": {"type": "mel", "n_mels": 40}, "encoder": {"channels": 16, "emb_dim": 8}}
    )
    hp = ["--hparams", json.dumps(HPARAMS)]
    run_script(
        "--model",
        str(path),
        *[
            a
            for name in sets
            for a in ("--wav-scp", str(tmp_path / f"{name}.scp"), "--output", str(tmp_path / f"{name}.npz"))
        ],
        *hp,
    )
    for name, wavs in sets.items():
        run_script(
            "--model",
            str(path),
            "--wav-scp",
            str(tmp_path / f"{name}.scp"),
            "--output",
            str(tmp_path / f"{name}_alone.npz"),
            *hp,
        )
        utts, emb = read_embeddings(tmp_path / f"{name}.npz")
        alone_utts, alone = read_embeddings(tmp_path / f"{name}_alone.npz")
        assert utts == alone_utts == list(wavs)
        np.testing.assert_array_equal(emb, alone)


@pytest.mark.slow
def test_extract_rule_end_to_end(workdir, tmp_path):
    """`snakemake <run>/<system>/emb/test.npz` runs the script on a model file and a wav.scp."""
    wavs = make_wavs(tmp_path / "wav", durations=(1.0, 2.2, 0.6))
    write_scp(workdir / "results" / "tiny" / "data" / "test" / "wav.scp", wavs)
    model, _ = make_model_file(
        workdir / "results" / "tiny" / "sys1" / "model.pt",
        {"frontend": {"type": "mel", "n_mels": 40}, "encoder": {"channels": 16, "emb_dim": 8}},
    )
    config = write_config(workdir / "config.yaml")
    target = "results/tiny/sys1/emb/test.npz"
    run_snakemake(workdir, "--allowed-rules", "extract", "--cores", "2", target, configfile=config)
    utts, emb = read_embeddings(workdir / target)
    assert utts == list(wavs)
    assert cosine(emb, one_at_a_time(model, wavs)).min() >= 0.9999
    log = (workdir / "results" / "tiny" / "logs" / "extract" / "sys1" / "test.log").read_text()
    assert "extract: wrote" in log


def test_validation_keeps_the_first_seconds_of_wavlm_audio(tmp_path, monkeypatch):
    """Validation during training embeds like extraction: a WavLM system sees only the first
    WAVLM_MAX_SECONDS of each file (here patched to 1 s)."""
    import ssrl.models.speaker
    from ssrl.manifest import Trials, write_trials
    from ssrl.train import ValidationSet
    from ssrl.train import extract_embeddings as validation_embeddings
    from ssrl.train.distributed import DistEnv

    wavs = make_wavs(tmp_path / "wav", durations=(2.0, 0.7, 3.0))
    write_scp(tmp_path / "wav.scp", wavs)
    utts = list(wavs)
    write_trials(tmp_path / "trials.txt", Trials.from_lists([1, 0], [utts[0], utts[1]], [utts[2], utts[2]]))
    model, _ = make_model_file(
        tmp_path / "model.pt",
        {
            "frontend": {"type": "wavlm", "checkpoint": None, "num_layers": 2, "tiny": True},
            "encoder": {"channels": 16, "emb_dim": 8},
        },
    )
    monkeypatch.setattr(ssrl.models.speaker, "WAVLM_MAX_SECONDS", 1.0)
    val = ValidationSet.from_files(tmp_path / "wav.scp", tmp_path / "trials.txt")
    emb = validation_embeddings(model, val, DistEnv())
    truncated = one_at_a_time(model, {u: wavs[u] for u in val.utts}, max_seconds=1.0)
    assert cosine(emb, truncated).min() >= 0.9999
