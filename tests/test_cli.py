"""The ``ssrl`` command line and ssrl.inference: embed, verify, ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm

from ssrl import __version__
from ssrl.audio import load_audio, write_audio
from ssrl.cli import main
from ssrl.data import normalise_waveform
from ssrl.extract import embed_files, min_samples, resolve_device
from ssrl.features import MelFrontend
from ssrl.fileio import read_embeddings, write_embeddings, write_json
from ssrl.inference import DEFAULT_OPSET, ConvMelFrontend, ExportError, export_onnx
from ssrl.models import build_speaker_model, save_model_file

REPO = Path(__file__).resolve().parents[1]
ARCH = {"frontend": {"type": "mel", "n_mels": 24}, "encoder": {"channels": 16, "emb_dim": 8}}
DURATIONS = (1.0, 2.3, 0.6)  # seconds: different lengths, so batches are padded
THRESHOLD = 0.25


# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """A tiny random ECAPA system: <root>/ssrl/model.pt + metrics/demo.json, audio files, the model."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_speaker_model(ARCH).eval()
    randomise_batchnorm(model)
    model_path = root / "ssrl" / "model.pt"
    save_model_file(model_path, "ssrl", model.arch, model.state_dict(), hparams={"seed": 0})
    write_json(
        root / "ssrl" / "metrics" / "demo.json",
        {"trials": "demo", "eer": 0.125, "eer_threshold": THRESHOLD, "score_norm": "none", "asnorm_top_n": None},
    )
    rng = np.random.default_rng(0)
    files = []
    for i, seconds in enumerate(DURATIONS):
        n = round(seconds * 16000)
        tone = np.sin(2 * np.pi * rng.uniform(100, 400) * np.arange(n) / 16000)
        path = root / "audio" / f"spk{i}-utt.wav"
        write_audio(path, (0.3 * tone + 0.05 * rng.standard_normal(n)).astype(np.float32))
        files.append(path)
    direct = {path: direct_embedding(model, path) for path in files}
    return {"root": root, "model_path": model_path, "model": model, "files": files, "direct": direct}


def direct_embedding(model, path: Path) -> np.ndarray:
    """One file alone through the model: load, peak-normalise, pre-emphasise, forward."""
    wave = torch.from_numpy(normalise_waveform(load_audio(path)))[None]
    with torch.no_grad():
        return model(wave)[0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- embed


def test_embed_files_ids_shape_and_values(system, tmp_path):
    out = tmp_path / "emb.npz"
    rc = main(
        [
            "embed",
            "--model",
            str(system["model_path"]),
            "-o",
            str(out),
            "--device",
            "cpu",
            "-q",
            "--batch-size",
            "2",
            *map(str, system["files"]),
        ]
    )
    assert rc == 0
    utts, emb = read_embeddings(out)
    assert utts == ["spk0-utt", "spk1-utt", "spk2-utt"]
    assert emb.shape == (3, 8) and emb.dtype == np.float32
    for row, path in zip(emb, system["files"]):
        np.testing.assert_allclose(row, system["direct"][path], rtol=1e-4, atol=1e-5)


def test_embed_scp_uses_its_ids_and_order(system, tmp_path):
    files = system["files"]
    scp = tmp_path / "wav.scp"
    scp.write_text(f"b {files[2]}\na {files[0]}\n")
    out = tmp_path / "scp.npz"
    assert (
        main(["embed", "-m", str(system["model_path"]), "--scp", str(scp), "-o", str(out), "-q", "--device", "cpu"])
        == 0
    )
    utts, emb = read_embeddings(out)
    assert utts == ["b", "a"]
    np.testing.assert_allclose(emb[0], system["direct"][files[2]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb[1], system["direct"][files[0]], rtol=1e-4, atol=1e-5)


def test_embed_errors(system, tmp_path, capsys):
    model, files = str(system["model_path"]), [str(f) for f in system["files"]]
    with pytest.raises(SystemExit) as exc:  # FILEs and --scp together
        main(["embed", "-m", model, "--scp", "x.scp", files[0]])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):  # neither
        main(["embed", "-m", model])
    with pytest.raises(SystemExit):
        main(["embed", "-m", model, "-o", str(tmp_path / "x.emb"), files[0]])
    capsys.readouterr()

    other = tmp_path / "other" / "spk0-utt.wav"
    other.parent.mkdir()
    other.write_bytes(Path(files[0]).read_bytes())
    assert main(["embed", "-m", model, "-o", str(tmp_path / "d.npz"), files[0], str(other)]) == 1
    assert "utterance id 'spk0-utt'" in capsys.readouterr().err

    assert main(["embed", "-m", model, "-o", str(tmp_path / "m.npz"), str(tmp_path / "nope.wav")]) == 1
    assert "nope.wav" in capsys.readouterr().err

    assert main(["embed", "-m", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.npz"), files[0]]) == 1
    assert "missing.pt: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "d.npz").exists() and not (tmp_path / "m.npz").exists()


def test_min_samples_is_the_shortest_file_that_embeds(system, tmp_path):
    model = system["model"]
    assert min_samples(model) == 4 * 160  # (5 ECAPA frames - 1) * hop: n // hop + 1 frames
    rng = np.random.default_rng(1)
    ok, short = tmp_path / "ok.wav", tmp_path / "short.wav"
    write_audio(ok, rng.uniform(-0.5, 0.5, 640).astype(np.float32))
    write_audio(short, rng.uniform(-0.5, 0.5, 639).astype(np.float32))
    emb = embed_files(model, ["ok"], [ok], progress=False)
    np.testing.assert_allclose(emb[0], direct_embedding(model, ok), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"shorter than the 640 samples .*/short\.wav \(639 samples\)"):
        embed_files(model, ["ok", "short"], [ok, short], progress=False)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------- verify


def test_verify_same_file_accepts_at_the_stored_threshold(system, capsys):
    a = str(system["files"][1])
    assert main(["verify", "-m", str(system["model_path"]), a, a, "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == pytest.approx(1.0, abs=1e-5)
    assert out["threshold"] == THRESHOLD and out["trials"] == "demo" and out["eer"] == 0.125
    assert out["threshold_source"] == str(system["model_path"].parent / "metrics" / "demo.json")
    assert out["decision"] == "accept" and out["accept"] is True and out["score_norm"] == "none"


def test_verify_score_is_the_cosine_and_threshold_override_decides(system, capsys):
    (a, b, _), direct = system["files"], system["direct"]
    expected = cosine(direct[a], direct[b])
    for threshold, decision in ((expected - 1e-3, "accept"), (expected + 1e-3, "reject")):
        assert (
            main(["verify", "-m", str(system["model_path"]), str(a), str(b), "--threshold", str(threshold), "--json"])
            == 0
        )  # exit status 0 for accept and reject alike
        out = json.loads(capsys.readouterr().out)
        assert out["score"] == pytest.approx(expected, abs=1e-5)
        assert out["decision"] == decision and out["threshold_source"] == "--threshold"
    assert main(["verify", "-m", str(system["model_path"]), str(a), str(b), "--threshold", "2"]) == 0
    text = capsys.readouterr().out
    assert "reject (different speakers)" in text and "--threshold" in text
    assert float(text.split()[1]) == pytest.approx(expected, abs=1e-5)  # "score <value> (cosine)"


def test_verify_threshold_errors_and_trial_list_choice(system, tmp_path, capsys):
    a = str(system["files"][0])
    bare = tmp_path / "bare" / "model.pt"
    bare.parent.mkdir()
    bare.write_bytes(system["model_path"].read_bytes())
    assert main(["verify", "-m", str(bare), a, a]) == 1
    err = capsys.readouterr().err
    assert "no metrics file" in err and "--threshold" in err

    write_json(bare.parent / "metrics" / "vox1_o.json", {"eer": 0.1, "eer_threshold": 0.9, "score_norm": "none"})
    write_json(bare.parent / "metrics" / "vox1_h.json", {"eer": 0.2, "eer_threshold": 1.5, "score_norm": "none"})
    assert main(["verify", "-m", str(bare), a, a]) == 1
    assert "several trial lists (vox1_h, vox1_o)" in capsys.readouterr().err
    assert main(["verify", "-m", str(bare), a, a, "--trials", "vox1_o", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "accept"
    assert main(["verify", "-m", str(bare), a, a, "--trials", "vox1_h", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == 1.5 and out["decision"] == "reject"
    assert main(["verify", "-m", str(bare), a, a, "--trials", "vox1_e"]) == 1
    assert "available: vox1_h, vox1_o" in capsys.readouterr().err

    write_json(bare.parent / "metrics" / "vox1_o.json", {"eer": 0.1, "score_norm": "none"})
    assert main(["verify", "-m", str(bare), a, a, "--trials", "vox1_o"]) == 1
    assert "vox1_o.json: key 'eer_threshold' must be a finite number, got None" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --trials and --threshold are exclusive
        main(["verify", "-m", str(bare), a, a, "--trials", "vox1_o", "--threshold", "0.5"])


def test_verify_uses_asnorm_when_the_threshold_was_measured_on_it(system, tmp_path, capsys):
    (a, b, _), direct = system["files"], system["direct"]
    path = tmp_path / "asn" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(system["model_path"].read_bytes())
    write_json(
        path.parent / "metrics" / "demo.json",
        {"eer": 0.1, "eer_threshold": 0.0, "score_norm": "asnorm", "asnorm_top_n": 3},
    )
    assert main(["verify", "-m", str(path), str(a), str(b)]) == 1
    assert "emb/train.npz: missing" in capsys.readouterr().err

    cohort = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
    write_embeddings(path.parent / "emb" / "train.npz", [f"c{i}" for i in range(6)], cohort)
    assert main(["verify", "-m", str(path), str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)

    ea, eb = direct[a], direct[b]
    c = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)

    def top3(e):
        s = np.sort(c @ (e / np.linalg.norm(e)))[-3:]
        return s.mean(), s.std(ddof=1)

    (ma, sa), (mb, sb) = top3(ea), top3(eb)
    s = cosine(ea, eb)
    assert out["score_norm"] == "asnorm"
    assert out["score"] == pytest.approx(0.5 * ((s - ma) / sa + (s - mb) / sb), abs=1e-4)
    assert out["decision"] == ("accept" if out["score"] >= 0.0 else "reject")


def test_verify_refuses_silence_and_warns_beside_its_decision(system, tmp_path, capsys):
    """A silent file is refused with the cause; a near-silent one and a WAV truncated below what its
    header states are scored, each with a warning line (and in --json)."""
    model, a = str(system["model_path"]), str(system["files"][0])
    silent = tmp_path / "silent.wav"
    write_audio(silent, np.zeros(16000, dtype=np.float32))
    assert main(["verify", "-m", model, a, str(silent)]) == 1
    assert f"{silent}: silent: every sample is zero; there is no voice to compare" in capsys.readouterr().err

    quiet = tmp_path / "quiet.wav"  # noise at -80 dBFS RMS
    write_audio(quiet, (1e-4 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32))
    truncated = tmp_path / "truncated.wav"  # 3 s in the header, 5,000 bytes of file
    write_audio(truncated, (0.3 * np.sin(np.arange(48000) / 5.0)).astype(np.float32))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    assert main(["verify", "-m", model, str(quiet), str(truncated)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("decision ")
    level = 20 * np.log10(np.sqrt(np.mean(load_audio(quiet).astype(np.float64) ** 2)))  # about -80
    assert lines[3] == f"warning    {quiet}: near-silent: RMS level {level:.1f} dBFS (below -60 dBFS)"
    # 5,000 bytes: a 44-byte header and 2,478 16-bit samples
    assert lines[4] == (
        f"warning    {truncated}: shorter than its header says: 0.15 s of audio, the header states 3.00 s (truncated?)"
    )
    assert main(["verify", "-m", model, a, str(truncated), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == [lines[4].removeprefix("warning    ")]
    assert main(["verify", "-m", model, a, a, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_verify_as_a_subprocess(system):
    a, b = system["files"][0], system["files"][2]
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssrl.cli",
            "verify",
            "-m",
            str(system["model_path"]),
            str(a),
            str(b),
            "--json",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["score"] == pytest.approx(cosine(system["direct"][a], system["direct"][b]), abs=1e-5)
    assert out["threshold"] == THRESHOLD and out["decision"] == ("accept" if out["score"] >= THRESHOLD else "reject")


# ----------------------------------------------------------------------------- export


def test_conv_mel_frontend_equals_mel_frontend():
    frontend = MelFrontend()  # docs/method.md §2.2: n_fft 512, win 400, hop 160, 80 mels
    conv = ConvMelFrontend(frontend)
    wave = torch.from_numpy(
        normalise_waveform(np.random.default_rng(0).standard_normal(16000 + 77).astype(np.float32))
    )[None]
    want, got = frontend(wave), conv(wave)
    assert got.shape == want.shape == (1, 80, frontend.num_frames(16077))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_export_onnx_matches_pytorch(system, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    assert main(["export", "-m", str(system["model_path"]), "--onnx", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["system"] == "ssrl" and props["emb_dim"] == "8" and "pre-emphasised" in props["input"]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for batch, samples in ((3, 12345), (1, 40000)):  # not the lengths the command checked
        wave = np.stack([normalise_waveform(rng.standard_normal(samples).astype(np.float32)) for _ in range(batch)])
        got = session.run(None, {"wave": wave})[0]
        with torch.no_grad():
            want = system["model"](torch.from_numpy(wave)).numpy()
        assert got.shape == (batch, 8)
        assert np.abs(got - want).max() <= 1e-4


def test_export_refuses_wavlm_and_a_failed_check_writes_nothing(system, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    wavlm = build_speaker_model(
        {"frontend": {"type": "wavlm", "tiny": True, "num_layers": 1}, "encoder": {"channels": 8, "emb_dim": 4}}
    )
    path = tmp_path / "wavlm" / "model.pt"
    save_model_file(path, "wavlm_step1", wavlm.arch, wavlm.state_dict())
    assert main(["export", "-m", str(path), "--onnx", str(tmp_path / "w.onnx")]) == 1
    assert "log-mel front-end only" in capsys.readouterr().err
    assert not (tmp_path / "w.onnx").exists()
    assert main(["export", "-m", str(system["model_path"]), "--onnx", str(tmp_path / "o.onnx"), "--opset", "25"]) == 1
    assert "opset 25 is not supported; choose 11 to 20" in capsys.readouterr().err

    with pytest.raises(ExportError, match="the file was not written"):
        export_onnx(system["model"], tmp_path / "strict.onnx", tolerance=1e-12, check_shapes=((1, 8000),))
    assert list(tmp_path.glob("*.onnx")) == []


# ----------------------------------------------------------------------------- help and version


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ssrl {__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0 and all(cmd in text for cmd in ("embed", "verify", "export", "Exit status"))
    for cmd, phrase in (
        ("embed", "file stems"),
        ("verify", "exit status is 0 for both accept and reject"),
        ("export", "PRE-PROCESSED"),
        ("export", f"11 to 20 (default: {DEFAULT_OPSET})"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0 and phrase in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
