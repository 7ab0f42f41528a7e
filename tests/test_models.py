"""ECAPA-TDNN, heads, SpeakerModel and the model file (docs/method.md §3, docs/internals.md)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm

from ssrl.extract import extract_embeddings
from ssrl.models import (
    ECAPATDNN,
    AAMSoftmax,
    DINOHead,
    ModelFileError,
    SoftmaxHead,
    SpeakerModel,
    build_head,
    build_speaker_model,
    load_speaker_model,
    read_model_file,
    save_model_file,
)
from ssrl.models.wavlm_checkpoint import load_wavlm

# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


MEL_ARCH = {"frontend": {"type": "mel", "n_mels": 24}, "encoder": {"channels": 32, "emb_dim": 16}}


def pad_batch(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tensors (..., T_i) along the last axis -> (B, ..., T_max), lengths (B,)."""
    lengths = torch.tensor([x.shape[-1] for x in items])
    out = torch.zeros(len(items), *items[0].shape[:-1], int(lengths.max()))
    for i, x in enumerate(items):
        out[i, ..., : x.shape[-1]] = x
    return out, lengths


# ----------------------------------------------------------------------------- ECAPA


def test_ecapa_paper_size_parameter_count():
    model = ECAPATDNN(in_dim=80, channels=1024, emb_dim=512)
    assert sum(p.numel() for p in model.parameters()) == 22_733_952
    assert model.mfa.conv.out_channels == 3072 and model.fc.in_channels == 6144


@pytest.mark.parametrize("channels", [60, 0, -8])
def test_ecapa_rejects_channels_not_divisible_by_8(channels):
    with pytest.raises(ValueError, match="multiple of 8"):
        ECAPATDNN(in_dim=20, channels=channels)


def test_ecapa_batched_with_padding_equals_one_at_a_time():
    torch.manual_seed(0)
    model = ECAPATDNN(in_dim=20, channels=64, emb_dim=32).eval()
    randomise_batchnorm(model)
    feats = [torch.rand(20, n) * 10 for n in (300, 17, 120, 5, 299)]
    padded, lengths = pad_batch(feats)
    with torch.no_grad():
        batched = model(padded, lengths)
        single = torch.cat([model(f[None]) for f in feats])
    cos = torch.nn.functional.cosine_similarity(batched, single)
    assert cos.min() >= 0.9999
    assert (batched - single).abs().max() < 1e-4
    # the fast path (lengths=None) on equal lengths equals lengths given
    with torch.no_grad():
        full = model(padded)
        same = model(padded, torch.full((5,), padded.shape[2]))
    torch.testing.assert_close(full, same)


def test_ecapa_input_normalisation():
    """log + per-band instance norm: the embedding ignores a per-band gain of the mel power;
    without log (WavLM back-end) it ignores a per-band affine map."""
    torch.manual_seed(1)
    x = torch.rand(2, 20, 80) + 0.5
    gain = torch.rand(1, 20, 1) * 5 + 0.1
    model = ECAPATDNN(in_dim=20, channels=32, emb_dim=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x * gain), model(x), atol=1e-4, rtol=1e-4)
    raw = ECAPATDNN(in_dim=20, channels=32, emb_dim=8, log_input=False, detach_norm=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(raw(x * gain - 3.0), raw(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(raw(x**2), raw(x), atol=1e-3)


def test_ecapa_detach_norm_controls_gradient_to_input():
    x = (torch.rand(2, 20, 40) + 0.5).requires_grad_()
    ECAPATDNN(in_dim=20, channels=32, emb_dim=8, detach_norm=True)(x).sum().backward()
    assert x.grad is None
    ECAPATDNN(in_dim=20, channels=32, emb_dim=8, detach_norm=False)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ecapa_bad_input_shapes():
    model = ECAPATDNN(in_dim=20, channels=32, emb_dim=8)
    with pytest.raises(ValueError, match=r"\(batch, 20, frames\)"):
        model(torch.rand(2, 21, 50))
    with pytest.raises(ValueError, match="shorter than the ECAPA minimum"):
        model(torch.rand(2, 20, 4))
    with pytest.raises(ValueError, match="shorter than the ECAPA minimum"):
        model(torch.rand(2, 20, 50), torch.tensor([50, 3]))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.rand(2, 20, 50), torch.tensor([50, 51]))


# ----------------------------------------------------------------------------- heads


def test_dino_head_paper_size_parameters():
    head = DINOHead()
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    frozen = [p for p in head.parameters() if not p.requires_grad]
    assert trainable == 40_915_200
    assert len(frozen) == 1 and frozen[0].shape == (65536, 1) and bool((frozen[0] == 1).all())
    weight = head.mlp[0].weight
    assert abs(weight.std().item() - 0.02) < 0.002 and weight.abs().max() <= 2.0
    assert all(not m.bias.any() for m in head.mlp if isinstance(m, torch.nn.Linear))


def test_dino_head_logits_are_prototype_cosines_and_survive_copies():
    torch.manual_seed(0)
    head = DINOHead(in_dim=8, n_prototypes=12, hidden=16, mid=24, bottleneck=6).eval()
    x = torch.randn(5, 8)
    logits = head(x)
    z = torch.nn.functional.normalize(head.mlp(x), dim=1)
    v = head.last_layer.parametrizations.weight.original1
    torch.testing.assert_close(logits, z @ torch.nn.functional.normalize(v, dim=1).T)
    assert logits.abs().max() <= 1 + 1e-6

    teacher = copy.deepcopy(head)  # EMA teacher
    torch.testing.assert_close(teacher(x), logits)
    assert not teacher.last_layer.parametrizations.weight.original0.requires_grad
    with torch.no_grad():
        v.mul_(3.0)  # the copy is independent
    torch.testing.assert_close(head(x), logits)  # and scale-free (g fixed to 1)

    other = DINOHead(in_dim=8, n_prototypes=12, hidden=16, mid=24, bottleneck=6).eval()
    other.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(other(x), logits)
    assert set(head.last_layer.state_dict()) == {
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    }


def aam_head(angles_deg: list[float], scale=32.0, margin=0.2) -> AAMSoftmax:
    head = AAMSoftmax(emb_dim=2, n_classes=len(angles_deg), scale=scale, margin=margin)
    rows = [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg]
    head.init_from_centers(np.array(rows, dtype=np.float32) * 3.0)  # rows are normalised in forward
    return head


def test_aam_softmax_known_answers():
    head = aam_head([0.0, 90.0, 180.0])
    emb = torch.tensor([[math.cos(math.radians(30)), math.sin(math.radians(30))]]) * 7.0
    s, m = 32.0, 0.2
    plain = head(emb)
    torch.testing.assert_close(
        plain, s * torch.tensor([[math.cos(math.radians(30)), math.cos(math.radians(60)), math.cos(math.radians(150))]])
    )
    # target 0 (theta 30 deg): cos(theta + m); the others stay s*cos(theta)
    out = head(emb, torch.tensor([0]))
    expected = [s * math.cos(math.radians(30) + m), s * math.cos(math.radians(60)), s * math.cos(math.radians(150))]
    torch.testing.assert_close(out, torch.tensor([expected]))
    # target 2 (theta 150 deg): cos(theta) = -0.866 > cos(pi - m) = -0.980 -> still cos(theta + m)
    out = head(emb, torch.tensor([2]))
    assert out[0, 2].item() == pytest.approx(s * math.cos(math.radians(150) + m), abs=1e-4)


def test_aam_softmax_fallback_branch():
    """theta = 175 deg: cos(theta) = -0.9962 <= cos(pi - 0.2) = -0.9801 -> s (cos(theta) - sin(pi - m) m)."""
    s, m = 32.0, 0.2
    head = aam_head([0.0, 90.0])
    emb = torch.tensor([[math.cos(math.radians(175)), math.sin(math.radians(175))]])
    out = head(emb, torch.tensor([0]))
    theta = math.radians(175)
    assert math.cos(theta) <= math.cos(math.pi - m)
    assert out[0, 0].item() == pytest.approx(s * (math.cos(theta) - math.sin(math.pi - m) * m), abs=1e-4)
    assert out[0, 1].item() == pytest.approx(s * math.cos(math.radians(85)), abs=1e-4)


def test_aam_init_from_centers_checks_shape_and_values():
    head = AAMSoftmax(4, 3)
    centers = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    head.init_from_centers(centers)
    np.testing.assert_array_equal(head.weight.detach().numpy(), centers)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        head.init_from_centers(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        head.init_from_centers(np.full((3, 4), np.nan))


def test_softmax_head():
    torch.manual_seed(0)
    head = SoftmaxHead(6, 4, dropout=0.5)
    assert not head.fc.bias.any()
    x = torch.randn(3, 6)
    head.eval()
    torch.testing.assert_close(head(x, torch.tensor([0, 1, 2])), x @ head.fc.weight.T)
    head.train()
    torch.manual_seed(1)
    dropped = head(torch.ones(1000, 6))
    kept = (dropped != 0).float().mean()  # rows with every input dropped give bias (0) only
    assert 0.9 < kept <= 1.0
    assert not torch.allclose(dropped[0], dropped[1])


def test_build_head():
    assert isinstance(build_head({"type": "aam", "emb_dim": 4, "n_classes": 3}), AAMSoftmax)
    assert isinstance(build_head({"type": "softmax", "emb_dim": 4, "n_classes": 3}), SoftmaxHead)
    dino = build_head({"type": "dino", "in_dim": 4, "n_prototypes": 5, "hidden": 8, "mid": 8, "bottleneck": 4})
    assert isinstance(dino, DINOHead)
    with pytest.raises(ValueError, match="unknown head type"):
        build_head({"type": "arcface"})
    with pytest.raises(ValueError, match="bad arguments for head 'aam'"):
        build_head({"type": "aam", "emb_dim": 4, "n_class": 3})


# ----------------------------------------------------------------------------- speaker model


def test_speaker_model_padded_batch_equals_one_at_a_time():
    torch.manual_seed(0)
    model = build_speaker_model(
        {"frontend": {"type": "mel", "n_mels": 40}, "encoder": {"channels": 64, "emb_dim": 32}}
    ).eval()
    randomise_batchnorm(model)
    waves = [torch.randn(n) for n in (8000, 40000, 16000 + 123, 3000, 64000)]
    padded, lengths = pad_batch(waves)
    with torch.no_grad():
        batched = model(padded, lengths)
        single = torch.cat([model(w[None]) for w in waves])
    cos = torch.nn.functional.cosine_similarity(batched, single)
    assert cos.min() >= 0.9999
    assert (batched - single).abs().max() < 1e-5


def test_build_speaker_model_resolves_arch():
    model = build_speaker_model(MEL_ARCH)
    assert isinstance(model, SpeakerModel) and model.emb_dim == 16
    fe, enc = model.arch["frontend"], model.arch["encoder"]
    assert fe == {
        "type": "mel",
        "n_fft": 512,
        "win_length": 400,
        "hop_length": 160,
        "n_mels": 24,
        "f_min": 0.0,
        "f_max": 8000.0,
        "sample_rate": 16000,
    }
    assert enc == {"in_dim": 24, "channels": 32, "emb_dim": 16, "log_input": True, "detach_norm": True}
    assert build_speaker_model(model.arch).arch == model.arch  # idempotent
    with pytest.raises(ValueError, match="n_mel"):
        build_speaker_model({"frontend": {"type": "mel", "n_mel": 24}, "encoder": {}})
    with pytest.raises(ValueError, match="in_dim 80"):
        build_speaker_model({"frontend": {"type": "mel", "n_mels": 24}, "encoder": {"in_dim": 80}})
    with pytest.raises(ValueError, match="unknown type 'fbank'"):
        build_speaker_model({"frontend": {"type": "fbank"}, "encoder": {}})


def test_model_file_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_speaker_model(MEL_ARCH)
    randomise_batchnorm(model)
    head = build_head({"type": "aam", "emb_dim": 16, "n_classes": 5})
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01)
    path = tmp_path / "model.pt"
    save_model_file(
        path,
        "ssrl",
        model.arch,
        teacher.state_dict(),
        student={"model": model.state_dict(), "head": head.state_dict()},
        teacher={"model": teacher.state_dict(), "head": head.state_dict()},
        head={"type": "aam", "emb_dim": 16, "n_classes": 5},
        hparams={"lr": 1e-3},
        extra={"labels": np.arange(4), "utts": np.array(["a", "b"]), "n": np.int64(3)},
    )
    obj = read_model_file(path)
    assert obj["format"] == "ssrl-model/1" and obj["system"] == "ssrl"
    assert torch.equal(obj["extra"]["labels"], torch.arange(4)) and obj["extra"]["utts"] == ["a", "b"]
    assert obj["extra"]["n"] == 3 and obj["hparams"] == {"lr": 1e-3}

    wave = torch.randn(2, 16000)
    loaded = load_speaker_model(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), teacher.eval()(wave))
        torch.testing.assert_close(load_speaker_model(path, which="student")(wave), model.eval()(wave))
    restored = build_head(obj["head"])
    restored.load_state_dict(obj["student"]["head"])


def test_model_file_errors(tmp_path):
    model = build_speaker_model(MEL_ARCH)
    with pytest.raises(TypeError, match=r"model.extra.when is a set"):
        save_model_file(tmp_path / "m.pt", "dino", model.arch, model.state_dict(), extra={"when": {1}})
    with pytest.raises(ValueError, match="student must be a dict"):
        save_model_file(tmp_path / "m.pt", "dino", model.arch, model.state_dict(), student=model.state_dict())
    assert not (tmp_path / "m.pt").exists()

    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match=r"bad.pt: expected format 'ssrl-model/1'"):
        read_model_file(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ModelFileError, match="junk.pt: not a readable model file"):
        read_model_file(tmp_path / "junk.pt")
    with pytest.raises(ModelFileError, match="not found"):
        read_model_file(tmp_path / "missing.pt")

    other = build_speaker_model({"frontend": {"type": "mel", "n_mels": 24}, "encoder": {"channels": 40}})
    save_model_file(tmp_path / "mismatch.pt", "dino", model.arch, other.state_dict())
    with pytest.raises(ModelFileError, match="mismatch.pt: eval_state does not fit its arch"):
        load_speaker_model(tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="holds no teacher state"):
        load_speaker_model(tmp_path / "mismatch.pt", which="teacher")


def test_wavlm_model_file_does_not_reread_the_checkpoint(tmp_path):
    """The recorded WavLM config rebuilds the network; weights come from eval_state."""
    torch.manual_seed(0)
    source = load_wavlm(None, 2, tiny=True)
    ckpt = tmp_path / "wavlm.pt"
    torch.save(source.state_dict(), ckpt)  # a torchaudio-format state dict
    arch = {
        "frontend": {"type": "wavlm", "checkpoint": str(ckpt), "num_layers": 2},
        "encoder": {"channels": 16, "emb_dim": 8},
    }
    model = build_speaker_model(arch).eval()
    assert model.arch["frontend"]["config"]["encoder_embed_dim"] == 64
    assert model.arch["encoder"]["log_input"] is False and model.arch["encoder"]["detach_norm"] is False
    torch.testing.assert_close(model.frontend.wavlm.state_dict(), source.state_dict())
    with pytest.raises(ValueError, match="must record its config"):
        save_model_file(tmp_path / "m.pt", "wavlm_step1", arch, model.state_dict())
    save_model_file(tmp_path / "m.pt", "wavlm_step1", model.arch, model.state_dict())
    ckpt.unlink()
    loaded = load_speaker_model(tmp_path / "m.pt")
    waves = [torch.randn(16000), torch.randn(9000)]
    padded, lengths = pad_batch(waves)
    with torch.no_grad():
        batched = loaded(padded, lengths)
        torch.testing.assert_close(batched, model(padded, lengths))
        single = torch.cat([loaded(w[None]) for w in waves])
    assert torch.nn.functional.cosine_similarity(batched, single).min() >= 0.9999


def test_extract_embeddings_orders_and_checks():
    torch.manual_seed(0)
    model = build_speaker_model(MEL_ARCH)
    waves = [torch.randn(n) for n in (4000, 9000, 6000)]
    utts = ["u0", "u1", "u2"]
    batches = []
    for idx in ([1, 2], [0]):
        padded, lengths = pad_batch([waves[i] for i in idx])
        batches.append((torch.tensor(idx), padded, lengths))
    emb = extract_embeddings(model, batches, utts)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(emb[0], model.eval()(waves[0][None])[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="never extracted, e.g. u0"):
        extract_embeddings(model, batches[:1], utts)
    nan_wave = torch.full((1, 4000), float("nan"))
    with pytest.raises(ValueError, match="non-finite embedding for 1 utterance.*u2"):
        extract_embeddings(model, [(torch.tensor([2]), nan_wave, torch.tensor([4000]))], utts)
