"""Masked-prediction pre-training of the demo's tiny WavLM (ssrl.train.wavlm_pretrain, rule wavlm_pretrain).

Unit tests of the pieces (frame grid, span masks, MFCC unit targets, masked frames in WavLM, the
loss), a few optimiser steps on a fixed batch, the stage through the shared trainer with its
official-format output, and the tiny workflow run: the rule ran and WavLM step 1 imported its
checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssrl.models import read_model_file
from ssrl.models.wavlm import TINY_CONFIG, WavLM
from ssrl.models.wavlm_checkpoint import load_wavlm, official_checkpoint, read_wavlm_checkpoint
from ssrl.train import RuntimeConfig, run
from ssrl.train.wavlm_pretrain import (
    MaskedPredictionModel,
    PretrainConfig,
    UnitTargets,
    WavLMPretrainStage,
    frame_geometry,
    masked_prediction_loss,
    span_mask,
)

SR = 16000


# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_wavlm(layers: int = 1, seed: int = 0) -> WavLM:
    torch.manual_seed(seed)
    return load_wavlm(None, layers, tiny=True)


# --------------------------------------------------------------------------- frame grid and masks


def test_frame_geometry_is_the_wavlm_frame_grid():
    assert frame_geometry(TINY_CONFIG["extractor_conv_layer_config"]) == (400, 320)
    assert frame_geometry([[8, 5, 1]]) == (5, 1) and frame_geometry([[8, 4, 2], [8, 3, 3]]) == (8, 6)
    wavlm = tiny_wavlm()
    targets = UnitTargets(400, 320)
    for samples in range(400, 5000, 37):  # MFCC frames = WavLM frames for every length
        assert targets.num_frames(samples) == wavlm.num_frames(samples) == (samples - 400) // 320 + 1


def test_span_mask_counts():
    rng = np.random.default_rng(0)
    # mask_prob 0: the one span of at least one start, mask_length contiguous frames.
    for _ in range(20):
        mask = span_mask(50, 0.0, 10, rng)
        where = np.flatnonzero(mask)
        assert len(where) == 10 and where[-1] - where[0] == 9
    # Shorter than a span: everything masked.
    assert span_mask(4, 0.8, 10, rng).all()
    # 100 frames, span 10, mask_prob 0.8: exactly int(8 + u) = 8 distinct starts in [0, 90]. Each masked
    # run is at least 10 long, at most 80 frames are masked, and frame t is masked with probability
    # 1 - C(91 - c_t, 8) / C(91, 8), c_t = number of starts covering t.
    masks = np.stack([span_mask(100, 0.8, 10, rng) for _ in range(4000)])
    counts = masks.sum(1)
    assert counts.min() >= 10 and counts.max() <= 80
    for row in masks[:200]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        assert (edges[1::2] - edges[::2]).min() >= 10
    cover = np.array([min(t, 90) - max(t - 9, 0) + 1 for t in range(100)])
    expected = 1 - np.array([math.comb(91 - c, 8) for c in cover]) / math.comb(91, 8)
    assert np.abs(masks.mean(0) - expected).max() < 0.03
    assert abs(masks.mean() - expected.mean()) < 0.005


# --------------------------------------------------------------------------- unit targets


def tone(freq: float, seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return torch.from_numpy(
        (np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    )


def test_units_separate_two_sounds():
    targets = UnitTargets(400, 320, n_mfcc=13, n_mels=40)
    low, high = [tone(300, 1.0, s) for s in range(3)], [tone(3000, 1.0, s) for s in range(3, 6)]
    feats = [targets.features(w) for w in low + high]
    assert all(f.shape == (targets.num_frames(SR), 39) for f in feats)
    stats = targets.fit(feats, n_units=2, seed=0, max_iter=20)
    assert stats["frames"] == 6 * targets.num_frames(SR) and stats["empty_units"] == 0
    # numba's parallel k-means (OpenMP, the libgomp torch uses) must not leave torch on numba's pool size
    assert torch.get_num_threads() == 1
    unit_low, unit_high = (torch.cat([targets.units(w) for w in ws]) for ws in (low, high))
    assert len(set(unit_low.tolist())) == 1 and len(set(unit_high.tolist())) == 1
    assert unit_low[0] != unit_high[0]
    # Unseen recordings of each sound get that sound's unit.
    assert (targets.units(tone(300, 0.5, 9)) == unit_low[0]).all()
    assert (targets.units(tone(3000, 0.5, 9)) == unit_high[0]).all()


# --------------------------------------------------------------------------- masking in WavLM, loss


def test_masked_frames_are_replaced_by_the_mask_embedding():
    wavlm = tiny_wavlm(2).eval()
    waves = torch.randn(2, 8000)
    frames = wavlm.num_frames(8000)
    embedding = torch.randn(wavlm.dim)
    none, _ = wavlm(waves)
    no_mask, _ = wavlm(waves, mask=torch.zeros(2, frames, dtype=torch.bool), mask_embedding=embedding)
    assert torch.equal(none, no_mask)
    # Everything masked: the transformer sees only the embedding, whatever the audio.
    everything = torch.ones(2, frames, dtype=torch.bool)
    a, _ = wavlm(waves, mask=everything, mask_embedding=embedding)
    b, _ = wavlm(torch.randn(2, 8000), mask=everything, mask_embedding=embedding)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[:, 0], a[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="mask must be"):
        wavlm(waves, mask=everything[:, 1:], mask_embedding=embedding)


def test_loss_counts_only_masked_frames():
    k = 5
    units = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    logits = torch.zeros(2, 4, k)
    loss, acc = masked_prediction_loss(logits, units, mask)
    assert loss.item() == pytest.approx(math.log(k))
    # Unmasked frames do not count: confidently wrong there, confidently right on the masked ones.
    logits = torch.zeros(2, 4, k)
    logits[~mask] = torch.nn.functional.one_hot((units[~mask] + 1) % k, k).float() * 50
    logits[mask] = torch.nn.functional.one_hot(units[mask], k).float() * 50
    loss, acc = masked_prediction_loss(logits, units, mask)
    assert loss.item() < 1e-6 and acc.item() == 1.0
    # One of the four masked frames wrong: accuracy 3/4, loss = 50 / 4 (up to exp(-50) terms).
    logits[0, 0] = torch.nn.functional.one_hot(torch.tensor(1), k).float() * 50
    loss, acc = masked_prediction_loss(logits, units, mask)
    assert acc.item() == 0.75 and loss.item() == pytest.approx(50 / 4, rel=1e-5)
    with pytest.raises(ValueError, match="no frame is masked"):
        masked_prediction_loss(logits, units, torch.zeros_like(mask))


def test_unmasked_weight_adds_the_unmasked_frames_cross_entropy():
    k = 5
    units = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    # Right on the masked frames; on the unmasked ones the wrong unit leads by 50: cross-entropy 50 each.
    logits = torch.zeros(2, 4, k)
    logits[mask] = torch.nn.functional.one_hot(units[mask], k).float() * 50
    logits[~mask] = torch.nn.functional.one_hot((units[~mask] + 1) % k, k).float() * 50
    assert masked_prediction_loss(logits, units, mask)[0].item() < 1e-6
    loss, acc = masked_prediction_loss(logits, units, mask, unmasked_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * 50, rel=1e-5) and acc.item() == 1.0
    # Uniform logits: log K on both terms, so (1 + w) log K.
    loss, _ = masked_prediction_loss(torch.zeros(2, 4, k), units, mask, unmasked_weight=0.25)
    assert loss.item() == pytest.approx(1.25 * math.log(k))
    # Every frame masked: the second term has no frame and is left out.
    loss, _ = masked_prediction_loss(torch.zeros(2, 4, k), units, torch.ones_like(mask), unmasked_weight=1.0)
    assert loss.item() == pytest.approx(math.log(k))


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = MaskedPredictionModel(tiny_wavlm(1), n_units=6)
    waves = torch.randn(4, 8000)
    frames = model.wavlm.num_frames(8000)
    units = torch.randint(0, 6, (4, frames))
    mask = torch.from_numpy(np.stack([span_mask(frames, 0.8, 5, np.random.default_rng(i)) for i in range(4)]))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = masked_prediction_loss(model(waves, mask), units, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(6), abs=0.5)
    assert losses[-1] < 0.8 * losses[0], losses
    # The mask embedding and the encoder's final layer norm (used by the projection) are trained.
    assert model.mask_embedding.grad is not None
    assert model.wavlm.encoder.transformer.layer_norm.weight.grad is not None


def test_config_is_validated():
    assert PretrainConfig.from_dict({"epochs": 2}).epochs == 2
    with pytest.raises(ValueError, match="wavlm.pretrain.n_units: must be >= 1"):
        PretrainConfig.from_dict({"n_units": 0})
    with pytest.raises(ValueError, match=r"wavlm.pretrain: unknown key\(s\) \['units'\]"):
        PretrainConfig.from_dict({"units": 3})
    with pytest.raises(ValueError, match="n_mfcc .* exceeds n_mels"):
        PretrainConfig.from_dict({"n_mfcc": 20, "n_mels": 10})
    assert PretrainConfig().conv_layers == TINY_CONFIG["extractor_conv_layer_config"]
    assert PretrainConfig.from_dict({"conv_layers": [[8, 80, 16], [8, 21, 20]]}).conv_layers == [
        [8, 80, 16],
        [8, 21, 20],
    ]
    for bad in ([], [[8, 80]], [[8, 0, 16]], [[8, 80, 16.0]], [[True, 80, 16]]):
        with pytest.raises(ValueError, match="wavlm.pretrain.conv_layers"):
            PretrainConfig.from_dict({"conv_layers": bad})


# --------------------------------------------------------------------------- CNN shape, checkpoint round trip


def test_conv_layers_shape_the_cnn_and_round_trip_through_the_official_checkpoint(tmp_path):
    conv = [[16, 64, 16], [8, 22, 20]]  # 400-sample field, 320-sample hop: WavLM's frame grid
    assert frame_geometry(conv) == (400, 320)
    torch.manual_seed(0)
    model = load_wavlm(None, 2, tiny=True, conv_layers=conv).eval()
    assert model.config["extractor_conv_layer_config"] == conv
    weights = [layer.conv.weight.shape for layer in model.feature_extractor.conv_layers]
    assert weights == [torch.Size([16, 1, 64]), torch.Size([8, 16, 22])]
    assert model.encoder.feature_projection.projection.weight.shape == (TINY_CONFIG["encoder_embed_dim"], 8)
    for samples in (400, 719, 720, 8000):
        assert model.num_frames(samples) == (samples - 400) // 320 + 1
    path = tmp_path / "wavlm_tiny.pt"
    torch.save(official_checkpoint(model, torch.randn(model.dim)), path)
    assert torch.load(path, weights_only=True)["cfg"]["conv_feature_layers"] == "[(16, 64, 16), (8, 22, 20)]"
    ckpt = read_wavlm_checkpoint(path)
    assert ckpt.format == "official" and ckpt.config["extractor_conv_layer_config"] == conv
    back = load_wavlm(path, 2).eval()
    assert back.config == model.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    wave = torch.randn(1, 8000)
    assert torch.equal(model(wave)[0], back(wave)[0])
    # The shape belongs to random weights; a checkpoint brings its own.
    with pytest.raises(ValueError, match="conv_layers shapes a random WavLM"):
        load_wavlm(path, 2, conv_layers=conv)
    with pytest.raises(ValueError, match="conv_layers: expected"):
        load_wavlm(None, 2, tiny=True, conv_layers=[[16, 64]])


# --------------------------------------------------------------------------- the stage


def test_stage_writes_an_official_checkpoint_and_resumes(tiny_corpus, tmp_path):
    conv = [[8, 64, 16], [8, 22, 20]]
    hp = {
        "pretrain": {
            "epochs": 2,
            "batch_size": 8,
            "crop_s": 0.5,
            "n_units": 4,
            "kmeans_frames": 0,
            "kmeans_iter": 5,
            "warmup_epochs": 1,
            "conv_layers": conv,
            "unmasked_weight": 0.5,
        },
        "num_layers": 1,
        "train": {"device": "cpu", "workers": 0, "log_every": 1, "deterministic": True},
    }
    scp = tiny_corpus / "data" / "train" / "wav.scp"
    out = tmp_path / "wavlm_tiny.pt"

    def train(where):
        return run(
            WavLMPretrainStage(hp, scp),
            RuntimeConfig.from_dict(hp["train"]),
            where / "ckpt",
            where / "wavlm_tiny.pt",
            where / "log.tsv",
        )

    assert train(tmp_path) == 0
    ckpt = read_wavlm_checkpoint(out)
    assert ckpt.format == "official" and ckpt.config["encoder_num_layers"] == 1 and ckpt.normalize is False
    assert ckpt.config["extractor_conv_layer_config"] == conv
    raw = torch.load(out, weights_only=True)
    assert raw["cfg"]["mask_prob"] == 0.8 and raw["cfg"]["mask_length"] == 10 and "mask_emb" in raw["model"]
    log = (tmp_path / "log.tsv").read_text().splitlines()
    assert log[0].split("\t")[:6] == ["kind", "epoch", "step", "lr", "loss", "masked_accuracy"]
    assert sum(line.startswith("epoch") for line in log) == 2
    # The weights were trained: they differ from the random initialisation of the same seed.
    first = load_wavlm(out, 1).state_dict()
    torch.manual_seed(0)
    init = load_wavlm(None, 1, tiny=True, conv_layers=conv).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in first.items())
    # A rerun with the kept checkpoints resumes at the end and writes the same weights.
    out.unlink()
    assert train(tmp_path) == 0
    again = load_wavlm(out, 1).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


# --------------------------------------------------------------------------- the tiny workflow run


def test_workflow_pretrains_and_step1_imports_the_checkpoint(tiny_run):
    run_dir = tiny_run / "results" / "tiny"
    checkpoint = run_dir / "wavlm_pretrain" / "wavlm_tiny.pt"
    assert read_wavlm_checkpoint(checkpoint).format == "official"
    assert (run_dir / "wavlm_pretrain" / "train_log.tsv").exists()
    assert "wavlm_pretrain: 2 epochs x 3 steps" in (run_dir / "logs" / "wavlm_train" / "wavlm_pretrain.log").read_text()
    step1 = read_model_file(run_dir / "wavlm_step1" / "model.pt")
    frontend = step1["arch"]["frontend"]
    assert frontend["checkpoint"] == "results/tiny/wavlm_pretrain/wavlm_tiny.pt" and frontend["tiny"] is False
    # Step 1 keeps its WavLM frozen: its weights are the pre-trained checkpoint's, read through the import.
    pretrained = load_wavlm(checkpoint, 2).state_dict()
    prefix = "frontend.wavlm."
    student = {k[len(prefix) :]: v for k, v in step1["eval_state"].items() if k.startswith(prefix)}
    assert student.keys() == pretrained.keys() and all(torch.equal(student[k], pretrained[k]) for k in student)


# --------------------------------------------------------------------------- the speaker-ID probe (bench)


def test_speaker_probe_pieces():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("wavlm_probe", REPO / "bench" / "wavlm_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    # The first ceil(n / 2) utterances of each speaker, in list order, train.
    speakers = ["a", "b", "a", "a", "b", "c"]
    assert probe.split_halves(speakers).tolist() == [True, True, True, False, False, True]
    frames = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert probe.mean_std(frames).tolist() == [2.0, 0.0, 1.0, 0.0]
    # Speaker = the sign pattern of two feature dimensions: perfectly separable; noise alone: near chance.
    rng = np.random.default_rng(0)
    names = [f"s{i % 4}" for i in range(160)]
    centres = np.array([[3, 3], [3, -3], [-3, 3], [-3, -3]])
    x = np.concatenate([centres[[int(n[1]) for n in names]], np.zeros((160, 6))], axis=1)
    x = x + 0.3 * rng.standard_normal(x.shape)
    train = probe.split_halves(names)
    assert probe.probe_accuracy(x, names, train) == 1.0
    assert probe.probe_accuracy(rng.standard_normal((160, 8)), names, train) < 0.5
    # Every layer and their mean, one row of 2 D per utterance.
    feats = probe.wavlm_features(tiny_wavlm(2), [torch.randn(4000), torch.randn(6000)])
    assert sorted(feats) == ["layer 1", "layer 2", "layer mean"]
    assert all(v.shape == (2, 2 * TINY_CONFIG["encoder_embed_dim"]) for v in feats.values())
