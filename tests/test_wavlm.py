"""WavLM front-end: checkpoint import in three formats, hidden states, padding, layer weighting (docs/method.md §9).

The import tests use a random model with WavLM Large's widths (1024-d, 16 heads,
4096 FF, 512-channel extractor, 128-tap positional conv) truncated to 2
transformer layers to stay fast.
"""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch
import torchaudio

from ssrl.models import build_speaker_model
from ssrl.models.wavlm import (
    LARGE_CONFIG,
    NO_REGULARISATION,
    LayerWeighting,
    WavLM,
    WavLMCheckpointError,
    WavLMFrontend,
)
from ssrl.models.wavlm import OFFICIAL_REGULARISATION as OFFICIAL_NAMES
from ssrl.models.wavlm_checkpoint import load_wavlm, official_checkpoint, read_safetensors

# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def torchaudio_reference(model: WavLM) -> torch.nn.Module:
    """torchaudio's own Wav2Vec2Model with ``model``'s weights."""
    ref = torchaudio.models.wavlm_model(
        **model.config,
        encoder_projection_dropout=0.0,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    ref.load_state_dict(model.state_dict())
    return ref.eval()


# ------------------------------------------------------------- writing the three formats


def to_official(state: dict, dim: int = 1024) -> dict:
    """torchaudio WavLM keys -> Microsoft's WavLM.py keys (the layout of WavLM-Large.pt)."""
    out = {"mask_emb": torch.rand(dim)}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("feature_extractor.conv_layers."):
            i, module, name = parts[2], parts[3], parts[4]
            out[f"feature_extractor.conv_layers.{i}." + ("0." if module == "conv" else "2.1.") + name] = value
        elif key.startswith("encoder.feature_projection.layer_norm."):
            out["layer_norm." + parts[-1]] = value
        elif key.startswith("encoder.feature_projection.projection."):
            out["post_extract_proj." + parts[-1]] = value
        elif key.startswith("encoder.transformer.pos_conv_embed.conv."):
            name = {
                "bias": "bias",
                "parametrizations.weight.original0": "weight_g",
                "parametrizations.weight.original1": "weight_v",
            }[".".join(parts[4:])]
            out["encoder.pos_conv.0." + name] = value
        elif key.startswith("encoder.transformer.layer_norm."):
            out["encoder.layer_norm." + parts[-1]] = value
        else:
            i, rest = parts[3], ".".join(parts[4:])
            prefix = f"encoder.layers.{i}."
            if rest.startswith("attention.attention.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for name, piece in zip("qkv", value.chunk(3, dim=0)):
                    out[prefix + f"self_attn.{name}_proj.{kind}"] = piece.clone()
            else:
                out[
                    prefix
                    + {
                        "attention.attention.out_proj.weight": "self_attn.out_proj.weight",
                        "attention.attention.out_proj.bias": "self_attn.out_proj.bias",
                        "attention.gru_rel_pos_linear.weight": "self_attn.grep_linear.weight",
                        "attention.gru_rel_pos_linear.bias": "self_attn.grep_linear.bias",
                        "attention.gru_rel_pos_const": "self_attn.grep_a",
                        "attention.rel_attn_embed.weight": "self_attn.relative_attention_bias.weight",
                        "layer_norm.weight": "self_attn_layer_norm.weight",
                        "layer_norm.bias": "self_attn_layer_norm.bias",
                        "feed_forward.intermediate_dense.weight": "fc1.weight",
                        "feed_forward.intermediate_dense.bias": "fc1.bias",
                        "feed_forward.output_dense.weight": "fc2.weight",
                        "feed_forward.output_dense.bias": "fc2.bias",
                        "final_layer_norm.weight": "final_layer_norm.weight",
                        "final_layer_norm.bias": "final_layer_norm.bias",
                    }[rest]
                ] = value
    return out


OFFICIAL_CFG = {
    "extractor_mode": "layer_norm",
    "encoder_layers": 2,
    "encoder_embed_dim": 1024,
    "encoder_ffn_embed_dim": 4096,
    "encoder_attention_heads": 16,
    "activation_fn": "gelu",
    "layer_norm_first": True,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "normalize": True,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    # fine-tuning regularisation (distinct known values, to see each reach its own module)
    "dropout_input": 0.05,
    "attention_dropout": 0.15,
    "activation_dropout": 0.25,
    "dropout": 0.35,
    "encoder_layerdrop": 0.45,
    "feature_grad_mult": 0.55,
}
OFFICIAL_REGULARISATION = {
    "encoder_projection_dropout": 0.05,
    "encoder_attention_dropout": 0.15,
    "encoder_ff_interm_dropout": 0.25,
    "encoder_dropout": 0.35,
    "encoder_layer_drop": 0.45,
    "feature_grad_mult": 0.55,
}


def to_huggingface(state: dict) -> dict:
    """torchaudio WavLM keys -> Hugging Face WavLMModel keys (older weight_g/weight_v naming)."""
    out = {"masked_spec_embed": torch.rand(1024)}
    for key, value in state.items():
        if key.startswith("feature_extractor."):
            out[key] = value
        elif key.startswith("encoder.feature_projection."):
            out[key[len("encoder.") :]] = value
        elif key.startswith("encoder.transformer.pos_conv_embed.conv."):
            name = key.split("conv.", 2)[-1]
            name = {
                "parametrizations.weight.original0": "weight_g",
                "parametrizations.weight.original1": "weight_v",
            }.get(name, name)
            out["encoder.pos_conv_embed.conv." + name] = value
        elif ".attention.attention.in_proj_" in key:
            prefix, kind = key.replace("encoder.transformer.", "encoder.").split(".attention.attention.in_proj_")
            for name, piece in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.attention.{name}_proj.{kind}"] = piece.clone()
        else:
            out[
                key.replace("encoder.transformer.", "encoder.").replace(
                    "attention.attention.out_proj", "attention.out_proj"
                )
            ] = value
    return out


HF_CONFIG = {
    "model_type": "wavlm",
    "architectures": ["WavLMModel"],
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 16,
    "num_buckets": 320,
    "max_bucket_distance": 800,
    "intermediate_size": 4096,
    "do_stable_layer_norm": True,
    "feat_proj_dropout": 0.01,
    "attention_dropout": 0.02,
    "activation_dropout": 0.03,
    "hidden_dropout": 0.04,
    "layerdrop": 0.06,
}
HF_REGULARISATION = {
    "encoder_projection_dropout": 0.01,
    "encoder_attention_dropout": 0.02,
    "encoder_ff_interm_dropout": 0.03,
    "encoder_dropout": 0.04,
    "encoder_layer_drop": 0.06,
    "feature_grad_mult": 1.0,
}


def write_safetensors(path, tensors: dict) -> None:
    """Minimal safetensors writer (format: u64 header size, JSON header, raw little-endian data)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.fixture(scope="module")
def large2(tmp_path_factory):
    """A random 2-layer model with WavLM Large's widths, saved in every supported format."""
    torch.manual_seed(0)
    model = WavLM(dict(LARGE_CONFIG, encoder_num_layers=2)).eval()
    with torch.no_grad():  # move every tensor off its default init
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("wavlm")
    torch.save({"cfg": OFFICIAL_CFG, "model": to_official(state)}, d / "WavLM-Large.pt")
    torch.save(state, d / "torchaudio.pt")
    torch.save({"state_dict": state}, d / "torchaudio_wrapped.pt")
    torch.save(
        {
            "config": dict(LARGE_CONFIG, encoder_num_layers=2, encoder_dropout=0.2, encoder_layer_drop=0.3),
            "state_dict": state,
        },
        d / "torchaudio_config.pt",
    )
    for name in ("hf_bin", "hf_safetensors"):
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps(HF_CONFIG))
        (d / name / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    torch.save(to_huggingface(state), d / "hf_bin" / "pytorch_model.bin")
    write_safetensors(d / "hf_safetensors" / "model.safetensors", to_huggingface(state))
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        hidden, _ = model(wave)
    return {"dir": d, "model": model, "wave": wave, "hidden": hidden}


# ------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    "name,normalize,layers",
    [
        ("WavLM-Large.pt", True, 2),
        ("torchaudio.pt", None, 1),
        ("torchaudio_wrapped.pt", None, 1),
        ("hf_bin", True, 1),
        ("hf_safetensors", True, 2),
    ],
)
def test_checkpoint_formats_reproduce_hidden_states(large2, name, normalize, layers):
    """Each format imports onto the same weights: full depth, or truncated to the first layer."""
    model = load_wavlm(large2["dir"] / name, num_layers=layers).eval()
    assert model.config == dict(LARGE_CONFIG, encoder_num_layers=layers)
    assert model.checkpoint_normalize is normalize and model.normalize_input is False
    with torch.no_grad():
        hidden, lengths = model(large2["wave"])
    assert hidden.shape == (layers, 2, 49, 1024) and lengths is None
    assert (hidden - large2["hidden"][:layers]).abs().max() < 1e-4


def test_hidden_states_match_torchaudio_extract_features():
    """Our layer loop equals torchaudio's extract_features (transformer layers 1..L, no final norm)."""
    torch.manual_seed(0)
    model = load_wavlm(None, 3, tiny=True).eval()
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        hidden, _ = model(wave)
        reference, _ = torchaudio_reference(model).extract_features(wave)
    torch.testing.assert_close(hidden, torch.stack(reference), atol=1e-5, rtol=1e-5)


def test_official_export_round_trip(large2, tmp_path):
    """official_checkpoint writes the key layout of WavLM-Large.pt (to_official above, written by hand)
    and the official cfg; importing it gives the same model: config, weights and hidden states."""
    model = large2["model"]
    mask = torch.randn(1024)
    exported = official_checkpoint(model, mask, mask_prob=0.65)
    reference = to_official(model.state_dict())
    assert exported["model"].keys() == reference.keys()
    assert all(torch.equal(exported["model"][k], reference[k]) for k in reference if k != "mask_emb")
    assert torch.equal(exported["model"]["mask_emb"], mask)
    # the regularisation is the model's own (here none), under the official names
    own = {"normalize", "conv_feature_layers", *OFFICIAL_NAMES}
    assert {k: exported["cfg"][k] for k in OFFICIAL_CFG if k not in own} == {
        k: v for k, v in OFFICIAL_CFG.items() if k not in own
    }
    assert {k: exported["cfg"][k] for k in OFFICIAL_NAMES} == {
        official: model.regularisation[ours] for official, ours in OFFICIAL_NAMES.items()
    }
    assert exported["cfg"]["normalize"] is False and exported["cfg"]["mask_prob"] == 0.65
    torch.save(exported, tmp_path / "exported.pt")
    again = load_wavlm(tmp_path / "exported.pt", 2).eval()
    assert again.config == model.config and again.checkpoint_normalize is False
    with torch.no_grad():
        assert torch.equal(again(large2["wave"])[0], large2["hidden"])
    with pytest.raises(ValueError, match="architecture keys"):
        official_checkpoint(model, encoder_layers=3)


TINY_OFFICIAL_CFG = dict(
    OFFICIAL_CFG,
    encoder_embed_dim=64,
    encoder_ffn_embed_dim=128,
    encoder_attention_heads=4,
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    conv_pos=16,
    conv_pos_groups=4,
)


def test_corrupt_checkpoints_fail_clearly(tmp_path):
    torch.manual_seed(0)
    state = load_wavlm(None, 2, tiny=True).state_dict()

    def save_official(name, model=None, **cfg):
        path = tmp_path / name
        torch.save({"cfg": dict(TINY_OFFICIAL_CFG, **cfg), "model": model or to_official(state, 64)}, path)
        return path

    assert load_wavlm(save_official("good.pt"), 2).checkpoint_normalize is True
    broken = dict(state)
    del broken["encoder.transformer.layers.0.final_layer_norm.bias"]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(
        WavLMCheckpointError,
        match=r"missing.pt \(torchaudio format\): missing keys: "
        r"encoder.transformer.layers.0.final_layer_norm.bias",
    ):
        load_wavlm(tmp_path / "missing.pt", 2)
    torch.save(dict(state, **{"encoder.transformer.extra.weight": torch.zeros(2)}), tmp_path / "extra.pt")
    with pytest.raises(WavLMCheckpointError, match=r"unexpected keys: encoder.transformer.extra.weight"):
        load_wavlm(tmp_path / "extra.pt", 2)

    official = to_official(state, 64)
    extra = save_official("unmapped.pt", dict(official, **{"encoder.layers.0.self_attn.gate": torch.ones(1)}))
    with pytest.raises(WavLMCheckpointError, match="map onto no WavLM parameter: encoder.layers.0.self_attn.gate"):
        load_wavlm(extra, 2)
    no_k = {k: v for k, v in official.items() if k != "encoder.layers.1.self_attn.k_proj.bias"}
    with pytest.raises(WavLMCheckpointError, match="in_proj_bias lacks its k part"):
        load_wavlm(save_official("no_k.pt", no_k), 2)
    with pytest.raises(
        WavLMCheckpointError,
        match=r"shape mismatches: .*intermediate_dense.weight \(128, 64\) "
        r"!= \(256, 64\)",
    ):
        load_wavlm(save_official("shape.pt", encoder_ffn_embed_dim=256), 2)
    cfg = {k: v for k, v in TINY_OFFICIAL_CFG.items() if k != "conv_pos"}
    torch.save({"cfg": cfg, "model": official}, tmp_path / "cfg.pt")
    with pytest.raises(WavLMCheckpointError, match="cfg lacks conv_pos"):
        load_wavlm(tmp_path / "cfg.pt", 2)
    with pytest.raises(WavLMCheckpointError, match="cannot parse cfg.conv_feature_layers"):
        load_wavlm(save_official("eval.pt", conv_feature_layers="__import__('os')"), 2)

    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:20_000])
    with pytest.raises(WavLMCheckpointError, match="truncated.pt: cannot be read"):
        load_wavlm(tmp_path / "truncated.pt", 2)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(WavLMCheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_wavlm(tmp_path / "hf", 2)
    with pytest.raises(WavLMCheckpointError, match="has 2 transformer layers, asked for 3"):
        load_wavlm(tmp_path / "good.pt", 3)
    with pytest.raises(WavLMCheckpointError, match="not found"):
        load_wavlm(tmp_path / "nothing.pt", 2)
    with pytest.raises(ValueError, match="cannot be combined"):
        load_wavlm(tmp_path / "good.pt", 2, tiny=True)


def test_safetensors_reader_dtypes(tmp_path):
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    write_safetensors(tmp_path / "x.safetensors", {"a": t, "b": torch.tensor([1.5])})
    out = read_safetensors(tmp_path / "x.safetensors")
    assert torch.equal(out["a"], t) and torch.equal(out["b"], torch.tensor([1.5]))
    (tmp_path / "bad.safetensors").write_bytes(b"\x05")
    with pytest.raises(WavLMCheckpointError, match="not a safetensors file"):
        read_safetensors(tmp_path / "bad.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "x.safetensors").read_bytes()[:-4])
    with pytest.raises(WavLMCheckpointError, match="tensor b extends past the end"):
        read_safetensors(tmp_path / "cut.safetensors")


def test_huggingface_task_model_with_prefix(tmp_path):
    """A WavLMFor... checkpoint: backbone keys under 'wavlm.', task-head keys ignored, new weight-norm names."""
    torch.manual_seed(0)
    source = load_wavlm(None, 2, tiny=True).eval()
    state = to_huggingface(source.state_dict())
    state = {
        k.replace("conv.weight_g", "conv.parametrizations.weight.original0").replace(
            "conv.weight_v", "conv.parametrizations.weight.original1"
        ): v
        for k, v in state.items()
    }
    state = {**{f"wavlm.{k}": v for k, v in state.items()}, "projector.weight": torch.zeros(3, 64)}
    (tmp_path / "config.json").write_text(
        json.dumps(
            dict(
                HF_CONFIG,
                conv_dim=[32] * 7,
                hidden_size=64,
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4,
                num_attention_heads=4,
                intermediate_size=128,
                architectures=["WavLMForXVector"],
            )
        )
    )
    write_safetensors(tmp_path / "model.safetensors", state)
    model = load_wavlm(tmp_path, 2).eval()
    assert model.config == source.config and model.checkpoint_normalize is None
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(model(wave)[0], source(wave)[0])


def test_tiny_wavlm_is_fast_and_shaped():
    torch.manual_seed(0)
    model = load_wavlm(None, 3, tiny=True).eval()
    wave = torch.randn(4, 48000)
    start = time.perf_counter()
    with torch.no_grad():
        hidden, lengths = model(wave, torch.tensor([48000, 30000, 16000, 400]))
    assert time.perf_counter() - start < 5.0
    assert hidden.shape == (3, 4, model.num_frames(48000), 64)
    assert lengths.tolist() == [model.num_frames(n) for n in (48000, 30000, 16000, 400)] == [149, 93, 49, 1]
    with pytest.raises(ValueError, match="shorter than one WavLM frame"):
        model(torch.randn(1, 399))


@pytest.mark.parametrize("normalize_input", [False, True])
def test_padded_batch_equals_one_at_a_time(normalize_input):
    torch.manual_seed(0)
    model = load_wavlm(None, 2, tiny=True, normalize_input=normalize_input).eval()
    waves = [torch.randn(n) * s for n, s in ((16000, 1.0), (7000, 0.1), (400, 2.0), (12345, 0.5))]
    padded = torch.zeros(4, 16000)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
    with torch.no_grad():
        batched, lengths = model(padded, torch.tensor([len(w) for w in waves]))
        for i, w in enumerate(waves):
            single, _ = model(w[None])
            assert lengths[i] == single.shape[2]
            assert (batched[:, i, : single.shape[2]] - single[:, 0]).abs().max() < 1e-4


def test_normalize_input_switch():
    """On: waveform layer norm makes the features invariant to gain and offset; off (Q7): not."""
    torch.manual_seed(0)
    off = load_wavlm(None, 2, tiny=True).eval()
    on = load_wavlm(None, 2, tiny=True, normalize_input=True).eval()
    on.load_state_dict(off.state_dict())
    wave = torch.randn(1, 16000)
    with torch.no_grad():
        torch.testing.assert_close(on(3.0 * wave + 0.2)[0], on(wave)[0], atol=1e-4, rtol=1e-4)
        normalised = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-5)
        torch.testing.assert_close(on(wave)[0], off(normalised)[0], atol=1e-5, rtol=1e-5)
        assert (off(3.0 * wave + 0.2)[0] - off(wave)[0]).abs().max() > 1e-2


def test_layer_weighting():
    hidden = torch.randn(3, 2, 5, 4)  # (L, B, T, D)
    weighting = LayerWeighting(3)
    torch.testing.assert_close(weighting(hidden), hidden.mean(0).transpose(1, 2))  # zeros -> uniform
    with torch.no_grad():
        weighting.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    expected = (w[0] * hidden[0] + w[1] * hidden[1] + w[2] * hidden[2]).transpose(1, 2)
    torch.testing.assert_close(weighting(hidden), expected)
    with pytest.raises(ValueError, match=r"expects \(L, B, T, D\)"):
        weighting(hidden[:2])


def test_frontend_freeze_and_gradient_checkpointing():
    torch.manual_seed(0)
    frontend = WavLMFrontend(load_wavlm(None, 2, tiny=True))
    wave = torch.randn(2, 8000)
    final_norm = list(frontend.wavlm.encoder.transformer.layer_norm.parameters())

    frontend.freeze_wavlm(True).train()
    assert not frontend.wavlm.training  # frozen WavLM stays in eval mode
    frontend(wave)[0].pow(2).sum().backward()
    assert all(p.grad is None for p in frontend.wavlm.parameters())
    assert frontend.layer_weights.weights.grad is not None

    frontend.freeze_wavlm(False)
    assert frontend.wavlm.training
    assert all(not p.requires_grad for p in final_norm)  # unused by layers 1..L: never trained
    frontend.zero_grad()
    frontend(wave)[0].pow(2).sum().backward()
    used = frontend.wavlm.used_parameters()
    assert all(p.grad is not None for p in used)
    plain = [p.grad.clone() for p in used]

    frontend.zero_grad()
    frontend.set_gradient_checkpointing(True)
    frontend(wave)[0].pow(2).sum().backward()
    for p, g in zip(used, plain):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------- fine-tuning regularisation

# torchaudio.models.wavlm_large's own defaults (a bare torchaudio state dict has no config).
TORCHAUDIO_LARGE = {
    "encoder_projection_dropout": 0.1,
    "encoder_attention_dropout": 0.1,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.1,
    "encoder_layer_drop": 0.1,
    "feature_grad_mult": 1.0,
}


@pytest.mark.parametrize(
    "name,expected",
    [
        ("WavLM-Large.pt", OFFICIAL_REGULARISATION),
        ("hf_bin", HF_REGULARISATION),
        ("hf_safetensors", HF_REGULARISATION),
        ("torchaudio.pt", TORCHAUDIO_LARGE),
        ("torchaudio_wrapped.pt", TORCHAUDIO_LARGE),
        ("torchaudio_config.pt", dict(TORCHAUDIO_LARGE, encoder_dropout=0.2, encoder_layer_drop=0.3)),
    ],
)
def test_regularisation_is_read_from_each_checkpoint_format(large2, name, expected):
    """Dropouts, layer drop and feature_grad_mult come from the checkpoint's config, reach torchaudio's
    dropout modules, and are recorded in the arch, so that a model file rebuilds with the same values."""
    model = load_wavlm(large2["dir"] / name, num_layers=1)
    assert model.regularisation == pytest.approx(expected)
    drop = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    layer = "encoder.transformer.layers.0."
    assert drop["encoder.feature_projection.dropout"] == pytest.approx(expected["encoder_projection_dropout"])
    assert drop[layer + "feed_forward.intermediate_dropout"] == pytest.approx(expected["encoder_ff_interm_dropout"])
    for key in ("encoder.transformer.dropout", layer + "dropout", layer + "feed_forward.output_dropout"):
        assert drop[key] == pytest.approx(expected["encoder_dropout"])
    assert model.encoder.transformer.layers[0].attention.dropout == pytest.approx(expected["encoder_attention_dropout"])
    assert model.encoder.transformer.layer_drop == 0.0  # layer drop is our own loop's
    arch = {
        "frontend": {"type": "wavlm", "checkpoint": str(large2["dir"] / name), "num_layers": 1},
        "encoder": {"channels": 8, "emb_dim": 4},
    }
    recorded = build_speaker_model(arch).arch
    assert recorded["frontend"]["regularisation"] == pytest.approx(expected)
    rebuilt = build_speaker_model(recorded).frontend.wavlm  # from the recorded config, no checkpoint read
    assert rebuilt.regularisation == pytest.approx(expected)


def test_missing_regularisation_keys_fail_clearly(tmp_path):
    torch.manual_seed(0)
    state = load_wavlm(None, 2, tiny=True).state_dict()
    cfg = {k: v for k, v in TINY_OFFICIAL_CFG.items() if k != "encoder_layerdrop"}
    torch.save({"cfg": cfg, "model": to_official(state, 64)}, tmp_path / "cfg.pt")
    with pytest.raises(WavLMCheckpointError, match="cfg lacks encoder_layerdrop"):
        load_wavlm(tmp_path / "cfg.pt", 2)


def test_random_wavlm_has_no_regularisation_and_old_dropout_arch_reads():
    assert load_wavlm(None, 2, tiny=True).regularisation == NO_REGULARISATION
    arch = build_speaker_model(
        {"frontend": {"type": "wavlm", "num_layers": 2, "tiny": True}, "encoder": {"channels": 8, "emb_dim": 4}}
    ).arch
    old = dict(arch["frontend"], dropout=0.2)
    del old["regularisation"]  # a model file written before the regularisation dict
    wavlm = build_speaker_model({**arch, "frontend": old}).frontend.wavlm
    assert wavlm.regularisation == dict(
        NO_REGULARISATION,
        encoder_projection_dropout=0.2,
        encoder_attention_dropout=0.2,
        encoder_ff_interm_dropout=0.2,
        encoder_dropout=0.2,
    )


def test_layer_drop_passes_the_input_through_in_training_only():
    torch.manual_seed(0)
    full = load_wavlm(None, 4, tiny=True)
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        reference, _ = full.eval()(wave)
        always = WavLM(full.config, regularisation={"encoder_layer_drop": 1.0})
        always.load_state_dict(full.state_dict())
        evaluated, _ = always.eval()(wave)  # eval mode never drops
        torch.testing.assert_close(evaluated, reference)
        dropped, _ = always.train()(wave)  # every layer dropped: L copies of the layers' input
        assert dropped.shape == reference.shape
        for layer in range(1, 4):
            assert torch.equal(dropped[layer], dropped[0])
        assert not torch.allclose(dropped[0], reference[0])
        half = WavLM(full.config, regularisation={"encoder_layer_drop": 0.5})
        half.load_state_dict(full.state_dict())
        torch.manual_seed(4)
        draws = (torch.rand(4) < 0.5).tolist()  # the loop draws one number per layer, in order
        torch.manual_seed(4)
        partial, _ = half.train()(wave)
    assert any(draws) and not all(draws)
    for layer, skip in enumerate(draws):
        if skip:
            assert torch.equal(partial[layer], partial[layer - 1] if layer else dropped[0])
        else:
            assert not torch.equal(partial[layer], partial[layer - 1] if layer else dropped[0])


@pytest.mark.parametrize("mult", [0.0, 0.25])
def test_feature_grad_mult_scales_the_cnn_gradient(mult):
    torch.manual_seed(0)
    plain = load_wavlm(None, 2, tiny=True).train()
    scaled = WavLM(plain.config, regularisation={"feature_grad_mult": mult}).train()
    scaled.load_state_dict(plain.state_dict())
    wave = torch.randn(2, 8000)
    grads = []
    for model in (plain, scaled):
        out, _ = model(wave)
        torch.testing.assert_close(out, plain(wave)[0])  # the forward is unchanged
        out.pow(2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    cnn = [n for n in grads[0] if n.startswith("feature_extractor.")]
    assert cnn
    for n in cnn:
        if mult == 0.0:
            assert n not in grads[1]  # no gradient into the CNN
        else:
            torch.testing.assert_close(grads[1][n], mult * grads[0][n], rtol=1e-4, atol=1e-7)
    for n in grads[0]:
        if not n.startswith("feature_extractor."):
            torch.testing.assert_close(grads[1][n], grads[0][n])
