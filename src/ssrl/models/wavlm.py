"""WavLM front-end (docs/method.md §9): torchaudio's WavLM modules, checkpoint import, layer weighting.

* :func:`load_wavlm` builds a :class:`WavLM` (the first ``num_layers`` transformer
  layers) randomly initialised, as a tiny configuration for tests and the demo,
  or from one of three checkpoint formats, all mapped onto torchaudio's module
  names:

  - Microsoft's official ``WavLM-Large.pt``: ``{"cfg": {...}, "model": state_dict}``;
  - torchaudio's own state dict (``torchaudio.models.wavlm_large().state_dict()``),
    bare or wrapped as ``{"state_dict" | "model": ..., "config": {...}}``;
  - a Hugging Face ``microsoft/wavlm-large`` directory: ``config.json`` and
    ``model.safetensors`` or ``pytorch_model.bin`` (read without ``transformers``).

  Every source key must map onto the model and every model key must be filled,
  otherwise :class:`WavLMCheckpointError` lists the offending keys.
* :class:`WavLM` maps waveforms ``(batch, samples)`` (+ sample lengths) to the
  hidden states of transformer layers 1..L, ``(L, batch, frames, dim)`` (not the
  pre-transformer output), plus frame lengths. Padded batches give each utterance
  the result it gets alone (key padding mask in attention; the layer-norm
  feature extractor of Large-style models is per frame).
* :class:`LayerWeighting` and :class:`WavLMFrontend` (WavLM + softmax layer
  weights) produce the ``(batch, dim, frames)`` features of the ECAPA back-end.
* Regularisation of a fine-tuned WavLM (docs/method.md §9, step 2-ft): the
  checkpoint's own dropouts, layer drop and ``feature_grad_mult``, read from its
  config in each format (:data:`REGULARISATION_KEYS`, torchaudio's names) and
  active only in train mode; a random WavLM has none.

Waveform layer normalisation (the checkpoint's ``cfg.normalize``) is applied only
when ``normalize_input`` is on (default off: quirk Q7); the checkpoint's own flag is
recorded as ``checkpoint_normalize``.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import operator
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

# torchaudio ``wavlm_model`` keyword arguments that define the architecture (the
# dropouts are set separately). ``extractor_conv_layer_config``: [out_channels,
# kernel, stride] per convolution of the waveform feature extractor.
CONFIG_KEYS = (
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers", "encoder_num_heads",
    "encoder_num_buckets", "encoder_max_distance", "encoder_ff_interm_features", "encoder_layer_norm_first",
)

STANDARD_CONV = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
# WavLM Large, as torchaudio.models.wavlm_large builds it.
LARGE_CONFIG = {
    "extractor_mode": "layer_norm", "extractor_conv_layer_config": STANDARD_CONV, "extractor_conv_bias": False,
    "encoder_embed_dim": 1024, "encoder_pos_conv_kernel": 128, "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 24, "encoder_num_heads": 16, "encoder_num_buckets": 320,
    "encoder_max_distance": 800, "encoder_ff_interm_features": 4096, "encoder_layer_norm_first": True,
}
# A tiny Large-style WavLM (same 20 ms frame rate, small widths) for tests and the demo.
TINY_CONFIG = {
    "extractor_mode": "layer_norm",
    "extractor_conv_layer_config": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
    "extractor_conv_bias": False, "encoder_embed_dim": 64, "encoder_pos_conv_kernel": 16,
    "encoder_pos_conv_groups": 4, "encoder_num_layers": 2, "encoder_num_heads": 4, "encoder_num_buckets": 320,
    "encoder_max_distance": 800, "encoder_ff_interm_features": 128, "encoder_layer_norm_first": True,
}
WAVEFORM_NORM_EPS = 1e-5   # as torch.nn.functional.layer_norm

# What a fine-tuned WavLM regularises with, in torchaudio's ``wavlm_model`` names (the dropout after
# the feature projection, in attention, between the two feed-forward layers, on every layer output;
# layer drop), plus ``feature_grad_mult``: the factor on the gradient that reaches the CNN feature
# extractor (0: none). Only train mode applies them.
REGULARISATION_KEYS = ("encoder_projection_dropout", "encoder_attention_dropout", "encoder_ff_interm_dropout",
                       "encoder_dropout", "encoder_layer_drop", "feature_grad_mult")
NO_REGULARISATION = {**{key: 0.0 for key in REGULARISATION_KEYS}, "feature_grad_mult": 1.0}
# Official cfg key -> our key (fairseq-style names, as Microsoft's WavLM.py configures its model).
OFFICIAL_REGULARISATION = {"dropout_input": "encoder_projection_dropout",
                           "attention_dropout": "encoder_attention_dropout",
                           "activation_dropout": "encoder_ff_interm_dropout", "dropout": "encoder_dropout",
                           "encoder_layerdrop": "encoder_layer_drop", "feature_grad_mult": "feature_grad_mult"}
# Hugging Face config.json key -> our key (transformers has no feature_grad_mult: 1).
HF_REGULARISATION = {"feat_proj_dropout": "encoder_projection_dropout",
                     "attention_dropout": "encoder_attention_dropout",
                     "activation_dropout": "encoder_ff_interm_dropout", "hidden_dropout": "encoder_dropout",
                     "layerdrop": "encoder_layer_drop"}


class WavLMCheckpointError(ValueError):
    """A WavLM checkpoint that cannot be imported; the message starts with its path."""


# --------------------------------------------------------------------------- model


def _check_config(config: dict) -> dict:
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if missing or unknown:
        raise ValueError(f"WavLM config: missing keys {missing}, unknown keys {unknown}")
    config = dict(config)
    config["extractor_conv_layer_config"] = [[int(c), int(k), int(s)]
                                             for c, k, s in config["extractor_conv_layer_config"]]
    if config["extractor_mode"] not in ("layer_norm", "group_norm"):
        raise ValueError(f"WavLM config: extractor_mode must be layer_norm or group_norm, "
                         f"got {config['extractor_mode']!r}")
    if config["encoder_num_layers"] < 1:
        raise ValueError(f"WavLM config: encoder_num_layers must be >= 1, got {config['encoder_num_layers']}")
    return config


def check_conv_layers(layers: object, where: str = "conv_layers") -> list[list[int]]:
    """A CNN feature extractor ``[[channels, kernel, stride], ...]`` (at least one layer, positive
    ints; ValueError naming ``where`` otherwise) -> a copy as lists."""
    if not isinstance(layers, (list, tuple)) or not layers or any(
            not isinstance(layer, (list, tuple)) or len(layer) != 3
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in layer) for layer in layers):
        raise ValueError(f"{where}: expected [[channels, kernel, stride], ...] of positive integers, got {layers}")
    return [list(layer) for layer in layers]


def check_regularisation(values: dict, where: str = "WavLM regularisation") -> dict:
    """A complete regularisation dict: keys of :data:`REGULARISATION_KEYS` (missing ones from
    :data:`NO_REGULARISATION`), dropouts and layer drop in [0, 1], ``feature_grad_mult`` >= 0."""
    unknown = sorted(set(values) - set(REGULARISATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {list(REGULARISATION_KEYS)}")
    out = {key: float(values.get(key, default)) for key, default in NO_REGULARISATION.items()}
    bad = [k for k in REGULARISATION_KEYS[:-1] if not 0.0 <= out[k] <= 1.0]
    if bad or out["feature_grad_mult"] < 0:
        raise ValueError(f"{where}: dropouts and layer drop must be in [0, 1] and feature_grad_mult >= 0, "
                         f"got {out}")
    return out


class _GradScale(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def _normalise_waveform(wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Per-utterance zero-mean unit-variance waveform (layer norm over valid samples). (B, S) -> (B, S)."""
    if lengths is None:
        return F.layer_norm(wave, wave.shape[-1:], eps=WAVEFORM_NORM_EPS)
    valid = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
    count = lengths.to(wave.dtype)[:, None]
    wave = wave.masked_fill(~valid, 0.0)
    mean = wave.sum(dim=1, keepdim=True) / count
    var = (wave - mean).masked_fill(~valid, 0.0).pow(2).sum(dim=1, keepdim=True) / count
    return ((wave - mean) / torch.sqrt(var + WAVEFORM_NORM_EPS)).masked_fill(~valid, 0.0)


class WavLM(nn.Module):
    """WavLM truncated to its first L transformer layers (torchaudio modules and key names).

    ``forward(wave (B, S), lengths (B,) samples or None)`` -> ``(hidden (L, B, T, D),
    frame lengths (B,) or None)``. ``config`` holds torchaudio ``wavlm_model``
    arguments (:data:`CONFIG_KEYS`); ``encoder_num_layers`` is L.
    ``regularisation`` (:data:`REGULARISATION_KEYS`; None: none) acts in train
    mode only: the dropouts are torchaudio's modules; layer drop skips each
    transformer layer with that probability (a skipped layer passes its input on
    unchanged, and that input is its hidden state, so L hidden states remain);
    ``feature_grad_mult`` scales the gradient into the CNN feature extractor (0: the
    extractor runs without gradient). With ``gradient_checkpointing`` set,
    transformer layers recompute their activations in the backward pass
    (fine-tuning with less memory).
    """

    def __init__(self, config: dict, normalize_input: bool = False, checkpoint_normalize: bool | None = None,
                 regularisation: dict | None = None):
        super().__init__()
        self.config = _check_config(config)
        self.normalize_input = bool(normalize_input)
        self.checkpoint_normalize = checkpoint_normalize
        self.regularisation = check_regularisation(regularisation or {})
        self.gradient_checkpointing = False
        dropouts = {k: v for k, v in self.regularisation.items() if k.endswith("_dropout")}
        base = torchaudio.models.wavlm_model(**self.config, **dropouts, encoder_layer_drop=0.0, aux_num_out=None)
        self.feature_extractor = base.feature_extractor
        self.encoder = base.encoder
        if self.config["encoder_layer_norm_first"]:
            # Pre-LN models (Large) apply transformer.layer_norm only after the last
            # layer, which the hidden states of layers 1..L never use: keep it out of
            # training so that DDP sees no unused trainable parameter.
            self.encoder.transformer.layer_norm.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.config["encoder_embed_dim"]

    @property
    def num_layers(self) -> int:
        return self.config["encoder_num_layers"]

    def used_parameters(self) -> list[nn.Parameter]:
        """Parameters that the hidden states depend on (all but an unused final layer norm)."""
        unused = set()
        if self.config["encoder_layer_norm_first"]:
            unused = {id(p) for p in self.encoder.transformer.layer_norm.parameters()}
        return [p for p in self.parameters() if id(p) not in unused]

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced from ``num_samples`` samples (elementwise for a tensor)."""
        for _, kernel, stride in self.config["extractor_conv_layer_config"]:
            if isinstance(num_samples, torch.Tensor):
                num_samples = torch.div(num_samples - kernel, stride, rounding_mode="floor") + 1
            else:
                num_samples = (num_samples - kernel) // stride + 1
        return num_samples

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                mask_embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mask`` (B, T) bool with ``mask_embedding`` (D,): the projected CNN features of the
        frames where ``mask`` is True are replaced by ``mask_embedding`` before the transformer
        (masked-prediction pre-training, :mod:`ssrl.train.wavlm_pretrain`)."""
        if wave.dim() != 2:
            raise ValueError(f"WavLM expects (batch, samples), got shape {tuple(wave.shape)}")
        if lengths is not None:
            lengths = lengths.to(device=wave.device, dtype=torch.long)
        if self.normalize_input:
            wave = _normalise_waveform(wave, lengths)
        shortest = int(lengths.min()) if lengths is not None else wave.shape[1]
        if self.num_frames(shortest) < 1:
            raise ValueError(f"waveform of {shortest} samples is shorter than one WavLM frame")

        grad_mult = self.regularisation["feature_grad_mult"]
        with torch.no_grad() if grad_mult == 0.0 else contextlib.nullcontext():
            x, frame_lengths = self.feature_extractor(wave, lengths)   # (B, T, C_conv)
        if grad_mult not in (0.0, 1.0) and x.requires_grad:
            x = _GradScale.apply(x, grad_mult)
        x = self.encoder.feature_projection(x)                     # (B, T, D)
        if mask is not None:
            if mask.shape != x.shape[:2] or mask_embedding is None:
                raise ValueError(f"WavLM: mask must be (batch, frames) = {tuple(x.shape[:2])} with a "
                                 f"mask_embedding, got {tuple(mask.shape)}")
            x = torch.where(mask.unsqueeze(2), mask_embedding.to(x.dtype), x)
        key_mask = None                                            # (B, T) additive: -inf on padded frames
        if frame_lengths is not None:
            padding = torch.arange(x.shape[1], device=x.device)[None, :] >= frame_lengths[:, None]
            if padding.any():
                x = x.masked_fill(padding.unsqueeze(2), 0.0)
                key_mask = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(
                    padding, float("-inf"))

        transformer = self.encoder.transformer
        x = x + transformer.pos_conv_embed(x)
        if transformer.layer_norm_first:      # torchaudio's flag: "normalise before the layers" (post-LN models)
            x = transformer.layer_norm(x)
        x = transformer.dropout(x)
        hidden = []
        position_bias = None
        layer_drop = self.regularisation["encoder_layer_drop"] if self.training else 0.0
        for layer in transformer.layers:
            if layer_drop > 0.0 and torch.rand(()).item() < layer_drop:
                hidden.append(x)                   # dropped: the input passes through unchanged
                continue
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, position_bias = activation_checkpoint(layer, x, None, position_bias, key_mask,
                                                         use_reentrant=False)
            else:
                x, position_bias = layer(x, None, position_bias=position_bias, key_padding_mask=key_mask)
            hidden.append(x)
        return torch.stack(hidden), frame_lengths


class LayerWeighting(nn.Module):
    """Softmax-weighted sum of layer outputs: (L, B, T, D) -> (B, D, T); weights start at 0 (uniform)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 4 or hidden.shape[0] != self.weights.shape[0]:
            raise ValueError(f"LayerWeighting({self.weights.shape[0]}) expects (L, B, T, D), "
                             f"got {tuple(hidden.shape)}")
        w = torch.softmax(self.weights, dim=0).to(hidden.dtype)
        return torch.einsum("l,lbtd->bdt", w, hidden)


class WavLMFrontend(nn.Module):
    """WavLM + layer weighting: wave (B, S) [+ lengths (B,) samples] -> ((B, D, T), frame lengths or None).

    ``freeze_wavlm(True)`` stops gradients into WavLM and runs it under
    ``torch.no_grad()`` in eval mode (steps 1 and 2); ``freeze_wavlm(False)``
    fine-tunes it (step 2-ft). The layer weights always train.
    """

    def __init__(self, wavlm: WavLM):
        super().__init__()
        self.wavlm = wavlm
        self.layer_weights = LayerWeighting(wavlm.num_layers)
        self.wavlm_frozen = False

    @property
    def out_dim(self) -> int:
        return self.wavlm.dim

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        return self.wavlm.num_frames(num_samples)

    def freeze_wavlm(self, frozen: bool = True) -> WavLMFrontend:
        self.wavlm_frozen = bool(frozen)
        for p in self.wavlm.used_parameters():
            p.requires_grad_(not frozen)
        self.wavlm.train(self.training and not frozen)
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> WavLMFrontend:
        self.wavlm.gradient_checkpointing = bool(enabled)
        return self

    def train(self, mode: bool = True) -> WavLMFrontend:
        super().train(mode)
        if self.wavlm_frozen:
            self.wavlm.eval()
        return self

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad() if self.wavlm_frozen else contextlib.nullcontext():
            hidden, frame_lengths = self.wavlm(wave, lengths)
        return self.layer_weights(hidden), frame_lengths


# ----------------------------------------------------------------- checkpoint import


@dataclass
class WavLMCheckpoint:
    """A checkpoint read into torchaudio terms: full-depth config, state dict, its normalize flag,
    its fine-tuning regularisation (:data:`REGULARISATION_KEYS`)."""

    config: dict
    state: dict[str, torch.Tensor]
    normalize: bool | None
    format: str
    regularisation: dict


# (source key regex, torchaudio key template). A template ending in ":q", ":k" or
# ":v" marks a piece of the fused attention input projection (concatenated q, k, v).
_LAYER = r"encoder.transformer.layers.\1"
OFFICIAL_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
     r"feature_extractor.conv_layers.\1.layer_norm.\2"),                    # layer_norm extractor
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.bias", "encoder.transformer.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", _LAYER + r".attention.attention.in_proj_\3:\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", _LAYER + r".attention.attention.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_linear\.(weight|bias)", _LAYER + r".attention.gru_rel_pos_linear.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_a", _LAYER + r".attention.gru_rel_pos_const"),
    (r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight",
     _LAYER + r".attention.rel_attn_embed.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", _LAYER + r".layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", _LAYER + r".feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", _LAYER + r".feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", _LAYER + r".final_layer_norm.\2"),
]
OFFICIAL_IGNORED = {"mask_emb"}          # masking embedding of pre-training

HF_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)",
     r"feature_extractor.conv_layers.\1.\2.\3"),
    (r"feature_projection\.(layer_norm|projection)\.(weight|bias)", r"encoder.feature_projection.\1.\2"),
    (r"encoder\.pos_conv_embed\.conv\.bias", "encoder.transformer.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv_embed\.conv\.(?:weight_g|parametrizations\.weight\.original0)",
     "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv_embed\.conv\.(?:weight_v|parametrizations\.weight\.original1)",
     "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", _LAYER + r".attention.attention.in_proj_\3:\2"),
    (r"encoder\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)", _LAYER + r".attention.attention.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.attention\.(gru_rel_pos_linear\.weight|gru_rel_pos_linear\.bias|gru_rel_pos_const"
     r"|rel_attn_embed\.weight)", _LAYER + r".attention.\2"),
    (r"encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm|feed_forward\.intermediate_dense"
     r"|feed_forward\.output_dense)\.(weight|bias)", _LAYER + r".\2.\3"),
]
HF_IGNORED = {"masked_spec_embed"}       # masking embedding of pre-training

TORCHAUDIO_RULES = [   # torchaudio < 2.1 stored the positional convolution's weight norm as weight_g / weight_v
    (r"encoder\.transformer\.pos_conv_embed\.conv\.weight_g",
     "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.weight_v",
     "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"(.*)", r"\1"),
]


def _key_list(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _rename(state: dict, rules, ignored: set, source: str) -> dict[str, torch.Tensor]:
    """Map ``state`` keys with ``rules``; fuse q/k/v pieces; fail listing unmapped keys."""
    compiled = [(re.compile(pattern), template) for pattern, template in rules]
    out: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, value in state.items():
        if key in ignored:
            continue
        for pattern, template in compiled:
            match = pattern.fullmatch(key)
            if match:
                target = match.expand(template)
                if target[-2:] in (":q", ":k", ":v"):
                    pieces.setdefault(target[:-2], {})[target[-1]] = value
                else:
                    out[target] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise WavLMCheckpointError(f"{source}: keys that map onto no WavLM parameter: {_key_list(unmapped)}")
    for target, parts in pieces.items():
        absent = [p for p in "qkv" if p not in parts]
        if absent:
            raise WavLMCheckpointError(f"{source}: attention projection {target} lacks its "
                                       f"{', '.join(absent)} part(s)")
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _eval_conv_layers(text: str, source: str) -> list[list[int]]:
    """Safely evaluate a fairseq ``conv_feature_layers`` string such as
    ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"`` (literals, + and * only)."""
    ops = {ast.Add: operator.add, ast.Mult: operator.mul}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(text, mode="eval").body)
        layers = [[int(c), int(k), int(s)] for c, k, s in layers]
    except (SyntaxError, ValueError, TypeError) as err:
        raise WavLMCheckpointError(f"{source}: cannot parse cfg.conv_feature_layers {text!r} ({err})") from None
    return layers


def _require(cfg: dict, keys, source: str, what: str) -> None:
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise WavLMCheckpointError(f"{source}: {what} lacks {', '.join(missing)}")


def _config_from_official(cfg: dict, source: str) -> dict:
    _require(cfg, ["extractor_mode", "conv_feature_layers", "conv_bias", "encoder_embed_dim", "encoder_layers",
                   "encoder_attention_heads", "encoder_ffn_embed_dim", "layer_norm_first", "conv_pos",
                   "conv_pos_groups", "relative_position_embedding", "num_buckets", "max_distance", "gru_rel_pos"],
             source, "cfg")
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise WavLMCheckpointError(f"{source}: only WavLM with gated relative position embedding is supported "
                                   f"(cfg.relative_position_embedding and cfg.gru_rel_pos must be true)")
    if cfg.get("activation_fn", "gelu") != "gelu":
        raise WavLMCheckpointError(f"{source}: cfg.activation_fn {cfg['activation_fn']!r} is not supported (gelu)")
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    if cfg["extractor_mode"] not in modes:
        raise WavLMCheckpointError(f"{source}: unknown cfg.extractor_mode {cfg['extractor_mode']!r}")
    return {
        "extractor_mode": modes[cfg["extractor_mode"]],
        "extractor_conv_layer_config": _eval_conv_layers(cfg["conv_feature_layers"], source),
        "extractor_conv_bias": bool(cfg["conv_bias"]),
        "encoder_embed_dim": int(cfg["encoder_embed_dim"]),
        "encoder_pos_conv_kernel": int(cfg["conv_pos"]),
        "encoder_pos_conv_groups": int(cfg["conv_pos_groups"]),
        "encoder_num_layers": int(cfg["encoder_layers"]),
        "encoder_num_heads": int(cfg["encoder_attention_heads"]),
        "encoder_num_buckets": int(cfg["num_buckets"]),
        "encoder_max_distance": int(cfg["max_distance"]),
        "encoder_ff_interm_features": int(cfg["encoder_ffn_embed_dim"]),
        "encoder_layer_norm_first": bool(cfg["layer_norm_first"]),
    }


def _config_from_hf(cfg: dict, source: str) -> dict:
    if cfg.get("model_type", "wavlm") != "wavlm":
        raise WavLMCheckpointError(f"{source}: model_type {cfg['model_type']!r} is not wavlm")
    _require(cfg, ["conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "hidden_size",
                   "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "num_hidden_layers",
                   "num_attention_heads", "num_buckets", "max_bucket_distance", "intermediate_size",
                   "do_stable_layer_norm"], source, "config.json")
    for key in ("hidden_act", "feat_extract_activation"):
        if cfg.get(key, "gelu") != "gelu":
            raise WavLMCheckpointError(f"{source}: {key} {cfg[key]!r} is not supported (gelu)")
    if cfg["feat_extract_norm"] not in ("layer", "group"):
        raise WavLMCheckpointError(f"{source}: unknown feat_extract_norm {cfg['feat_extract_norm']!r}")
    return {
        "extractor_mode": f"{cfg['feat_extract_norm']}_norm",
        "extractor_conv_layer_config": [[int(c), int(k), int(s)] for c, k, s in
                                        zip(cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"])],
        "extractor_conv_bias": bool(cfg["conv_bias"]),
        "encoder_embed_dim": int(cfg["hidden_size"]),
        "encoder_pos_conv_kernel": int(cfg["num_conv_pos_embeddings"]),
        "encoder_pos_conv_groups": int(cfg["num_conv_pos_embedding_groups"]),
        "encoder_num_layers": int(cfg["num_hidden_layers"]),
        "encoder_num_heads": int(cfg["num_attention_heads"]),
        "encoder_num_buckets": int(cfg["num_buckets"]),
        "encoder_max_distance": int(cfg["max_bucket_distance"]),
        "encoder_ff_interm_features": int(cfg["intermediate_size"]),
        "encoder_layer_norm_first": bool(cfg["do_stable_layer_norm"]),
    }


def _regularisation_from(cfg: dict, names: dict[str, str], source: str, what: str,
                          defaults: dict | None = None) -> dict:
    """Our regularisation dict from a checkpoint config whose keys ``names`` maps onto ours; keys
    absent from ``names`` take ``defaults`` (else :data:`NO_REGULARISATION`)."""
    if defaults is None:
        _require(cfg, list(names), source, what)
    values = dict(NO_REGULARISATION if defaults is None else defaults)
    values.update({ours: cfg[theirs] for theirs, ours in names.items() if theirs in cfg})
    try:
        return check_regularisation(values, f"{source}: {what}")
    except (TypeError, ValueError) as err:
        raise WavLMCheckpointError(str(err)) from None


def torchaudio_default_regularisation(config: dict) -> dict:
    """The dropouts and layer drop of torchaudio's own factory for this architecture
    (``wavlm_large`` for a layer-norm extractor, else ``wavlm_base``), read from its signature;
    ``feature_grad_mult`` 1 (torchaudio has none)."""
    factory = torchaudio.models.wavlm_large if config["extractor_mode"] == "layer_norm" \
        else torchaudio.models.wavlm_base
    params = inspect.signature(factory).parameters
    return {**NO_REGULARISATION, **{k: float(params[k].default) for k in REGULARISATION_KEYS if k in params}}


def _config_from_torchaudio_state(state: dict, source: str) -> dict:
    """Infer the architecture of a bare torchaudio WavLM state dict from tensor shapes.

    Conv strides and ``encoder_max_distance`` are not stored in a state dict: the
    standard wav2vec2 extractor strides and 800 (both torchaudio factories) are
    assumed, and pre-LN transformer layers iff the extractor uses layer norm
    (wavlm_large vs wavlm_base). Other architectures need an explicit ``config``.
    """
    def shape(key):
        if key not in state:
            raise WavLMCheckpointError(f"{source}: not a torchaudio WavLM state dict (no {key}); "
                                       f"keys: {_key_list(state)}")
        return tuple(state[key].shape)

    conv = []
    while f"feature_extractor.conv_layers.{len(conv)}.conv.weight" in state:
        out_channels, _, kernel = shape(f"feature_extractor.conv_layers.{len(conv)}.conv.weight")
        conv.append([out_channels, kernel])
    standard_kernels = [k for _, k, _ in STANDARD_CONV]
    if [k for _, k in conv] != standard_kernels:
        raise WavLMCheckpointError(
            f"{source}: feature extractor kernels {[k for _, k in conv]} are not the standard "
            f"{standard_kernels}, so the strides are unknown; save the state dict as "
            f"{{'config': <torchaudio wavlm_model arguments>, 'state_dict': ...}}")
    conv = [[c, k, s] for (c, k), (_, _, s) in zip(conv, STANDARD_CONV)]
    layer_norm = f"feature_extractor.conv_layers.{len(conv) - 1}.layer_norm.weight" in state
    embed_dim = shape("encoder.feature_projection.projection.weight")[0]
    pos = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"
    _, group_width, pos_kernel = shape(pos)
    layers = {int(m.group(1)) for k in state for m in [re.match(r"encoder\.transformer\.layers\.(\d+)\.", k)] if m}
    prefix = "encoder.transformer.layers.0."
    return {
        "extractor_mode": "layer_norm" if layer_norm else "group_norm",
        "extractor_conv_layer_config": conv,
        "extractor_conv_bias": "feature_extractor.conv_layers.0.conv.bias" in state,
        "encoder_embed_dim": embed_dim,
        "encoder_pos_conv_kernel": pos_kernel,
        "encoder_pos_conv_groups": embed_dim // group_width,
        "encoder_num_layers": len(layers),
        "encoder_num_heads": shape(prefix + "attention.gru_rel_pos_const")[1],
        "encoder_num_buckets": shape(prefix + "attention.rel_attn_embed.weight")[0],
        "encoder_max_distance": 800,
        "encoder_ff_interm_features": shape(prefix + "feed_forward.intermediate_dense.weight")[0],
        "encoder_layer_norm_first": layer_norm,
    }


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file (8-byte little-endian header size, JSON header,
    raw little-endian tensor bytes) without the ``safetensors`` package.

    The file is read once into one buffer; the tensors are views of it.
    """
    path = Path(path)
    buffer = bytearray(path.stat().st_size)
    with open(path, "rb") as fh:
        fh.readinto(buffer)
    try:
        (header_size,) = struct.unpack("<Q", buffer[:8])
        header = json.loads(buffer[8:8 + header_size])
    except (struct.error, ValueError) as err:
        raise WavLMCheckpointError(f"{path}: not a safetensors file ({err})") from None
    base = 8 + header_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise WavLMCheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if base + end > len(buffer):
            raise WavLMCheckpointError(f"{path}: tensor {name} extends past the end of the file (truncated?)")
        count = (end - begin) // dtype.itemsize
        flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin) if count \
            else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise WavLMCheckpointError(f"{path}: invalid JSON ({err})") from None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise WavLMCheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True): {err}. Supported: a dict of "
            f"tensors and plain Python values (official WavLM .pt, torchaudio state dict)") from None


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_hf_directory(path: Path) -> WavLMCheckpoint:
    config_file = path / "config.json"
    if not config_file.exists():
        raise WavLMCheckpointError(f"{path}: a Hugging Face WavLM directory needs config.json")
    cfg = _read_json(config_file)
    if (path / "model.safetensors").exists():
        state = read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").exists():
        state = _torch_load(path / "pytorch_model.bin")
    else:
        raise WavLMCheckpointError(f"{path}: no model.safetensors or pytorch_model.bin "
                                   f"(sharded checkpoints are not supported)")
    if any(k.startswith("wavlm.") for k in state):     # a task model (e.g. WavLMForXVector): keep the backbone
        state = {k[len("wavlm."):]: v for k, v in state.items() if k.startswith("wavlm.")}
    normalize = None
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.exists():
        normalize = _read_json(preprocessor).get("do_normalize")
    return WavLMCheckpoint(_config_from_hf(cfg, str(config_file)), _rename(state, HF_RULES, HF_IGNORED, str(path)),
                           normalize, "huggingface",
                           _regularisation_from(cfg, HF_REGULARISATION, str(config_file), "config.json"))


def read_wavlm_checkpoint(path: str | Path) -> WavLMCheckpoint:
    """Read any supported WavLM checkpoint into torchaudio key names and config (full depth)."""
    path = Path(path)
    if not path.exists():
        raise WavLMCheckpointError(f"{path}: WavLM checkpoint not found")
    if path.is_dir():
        return _read_hf_directory(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and "cfg" in obj and "model" in obj:
        cfg = obj["cfg"]
        if not isinstance(cfg, dict) or not _tensor_dict(obj["model"]):
            raise WavLMCheckpointError(f"{path}: 'cfg' must be a dict and 'model' a state dict")
        return WavLMCheckpoint(_config_from_official(cfg, str(path)),
                               _rename(obj["model"], OFFICIAL_RULES, OFFICIAL_IGNORED, str(path)),
                               cfg.get("normalize"), "official",
                               _regularisation_from(cfg, OFFICIAL_REGULARISATION, str(path), "cfg"))
    config = None
    if isinstance(obj, dict) and not _tensor_dict(obj):            # a wrapper around the state dict
        config = obj.get("config")
        obj = next((obj[k] for k in ("state_dict", "model") if _tensor_dict(obj.get(k))), None)
    if not _tensor_dict(obj):
        raise WavLMCheckpointError(f"{path}: not a WavLM checkpoint (expected the official {{'cfg', 'model'}} "
                                   f"dict, a torchaudio state dict, or a Hugging Face directory)")
    state = _rename(obj, TORCHAUDIO_RULES, set(), str(path))
    given = {}           # regularisation keys in a wrapper's config (torchaudio names)
    if config is None:
        config = _config_from_torchaudio_state(state, str(path))
    else:
        if not isinstance(config, dict):
            raise WavLMCheckpointError(f"{path}: 'config' must be a dict of torchaudio wavlm_model arguments")
        given = {k: v for k, v in config.items() if k in REGULARISATION_KEYS}
        try:
            config = _check_config({k: v for k, v in config.items() if k not in REGULARISATION_KEYS})
        except ValueError as err:
            raise WavLMCheckpointError(f"{path}: {err}") from None
    names = {key: key for key in REGULARISATION_KEYS}
    regularisation = _regularisation_from(given, names, str(path), "config",
                                          defaults=torchaudio_default_regularisation(config))
    return WavLMCheckpoint(config, state, None, "torchaudio", regularisation)


def load_wavlm(path_or_none: str | Path | None, num_layers: int, tiny: bool = False,
               normalize_input: bool = False, regularisation: dict | None = None,
               conv_layers: list[list[int]] | None = None) -> WavLM:
    """Build a :class:`WavLM` with the first ``num_layers`` transformer layers.

    ``path_or_none``: a checkpoint in any supported format, or None for random
    weights with WavLM Large's shape (``tiny=False``, at most 24 layers) or the
    tiny configuration (``tiny=True``, any depth). ``normalize_input``: apply the
    waveform layer norm (off by default, quirk Q7). ``regularisation``: None takes
    the checkpoint's own (none for random weights); a dict overrides the keys it names.
    ``conv_layers`` (random weights only): the CNN feature extractor as ``[[channels, kernel,
    stride], ...]`` instead of the configuration's; None keeps it.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if path_or_none is None:
        config = dict(TINY_CONFIG if tiny else LARGE_CONFIG)
        if not tiny and num_layers > config["encoder_num_layers"]:
            raise ValueError(f"WavLM Large has {config['encoder_num_layers']} layers, asked for {num_layers}")
        config["encoder_num_layers"] = num_layers
        if conv_layers is not None:
            config["extractor_conv_layer_config"] = check_conv_layers(conv_layers)
        return WavLM(config, normalize_input=normalize_input, regularisation=regularisation)
    if conv_layers is not None:
        raise ValueError("conv_layers shapes a random WavLM; a checkpoint brings its own (cfg.conv_feature_layers)")
    if tiny:
        raise ValueError("tiny=True builds a random tiny WavLM; it cannot be combined with a checkpoint")
    ckpt = read_wavlm_checkpoint(path_or_none)
    available = ckpt.config["encoder_num_layers"]
    if num_layers > available:
        raise WavLMCheckpointError(f"{path_or_none}: has {available} transformer layers, asked for {num_layers}")
    config = dict(ckpt.config, encoder_num_layers=num_layers)
    model = WavLM(config, normalize_input=normalize_input, checkpoint_normalize=ckpt.normalize,
                  regularisation={**ckpt.regularisation, **(regularisation or {})})
    state = {k: v for k, v in ckpt.state.items()
             if not ((m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k)) and int(m.group(1)) >= num_layers)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing keys: {_key_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_key_list(unexpected)}")
        if wrong:
            problems.append(f"shape mismatches: {_key_list(wrong)}")
        raise WavLMCheckpointError(f"{path_or_none} ({ckpt.format} format): " + "; ".join(problems))
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------- checkpoint export


# (torchaudio key regex, official key template): the inverse of OFFICIAL_RULES. A template
# ending in ":qkv" splits the fused attention input projection into q, k and v.
_OFFICIAL_LAYER = r"encoder.layers.\1"
OFFICIAL_EXPORT_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"encoder\.feature_projection\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"encoder\.feature_projection\.projection\.(weight|bias)", r"post_extract_proj.\1"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.transformer\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.attention\.in_proj_(weight|bias)",
     _OFFICIAL_LAYER + r".self_attn.{}_proj.\2:qkv"),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.attention\.out_proj\.(weight|bias)",
     _OFFICIAL_LAYER + r".self_attn.out_proj.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(weight|bias)",
     _OFFICIAL_LAYER + r".self_attn.grep_linear.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.gru_rel_pos_const", _OFFICIAL_LAYER + r".self_attn.grep_a"),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.rel_attn_embed\.weight",
     _OFFICIAL_LAYER + r".self_attn.relative_attention_bias.weight"),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.(weight|bias)", _OFFICIAL_LAYER + r".self_attn_layer_norm.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)",
     _OFFICIAL_LAYER + r".fc1.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)", _OFFICIAL_LAYER + r".fc2.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
     _OFFICIAL_LAYER + r".final_layer_norm.\2"),
]


def official_state_dict(model: WavLM, mask_embedding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights under the key names of Microsoft's WavLM.py (the ``model`` entry of
    ``WavLM-Large.pt``); ``mask_embedding`` (D,) becomes ``mask_emb`` (zeros when None).
    Tensors are detached CPU copies."""
    conv_norm = (r"feature_extractor.conv_layers.\1.2.1.\2" if model.config["extractor_mode"] == "layer_norm"
                 else r"feature_extractor.conv_layers.\1.2.\2")   # group_norm: only conv layer 0 has one
    rules = [(re.compile(p), t) for p, t in
             [(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", conv_norm),
              *OFFICIAL_EXPORT_RULES]]
    out = {"mask_emb": (torch.zeros(model.dim) if mask_embedding is None
                        else mask_embedding.detach().to("cpu", torch.float32).clone())}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().clone()
        match, template = next(((m, t) for p, t in rules if (m := p.fullmatch(key))), (None, None))
        if match is None:
            raise ValueError(f"WavLM export: no official name for parameter {key}")
        target = match.expand(template)
        if target.endswith(":qkv"):
            for name, piece in zip("qkv", value.chunk(3, dim=0)):
                out[target[:-4].format(name)] = piece.clone()
        else:
            out[target] = value
    return out


def official_checkpoint(model: WavLM, mask_embedding: torch.Tensor | None = None, **cfg) -> dict:
    """``{"cfg": ..., "model": ...}`` in the layout of Microsoft's official ``WavLM-Large.pt``,
    readable by :func:`read_wavlm_checkpoint` / :func:`load_wavlm`.

    ``cfg`` holds the architecture of ``model`` (fairseq/WavLMConfig names), its
    ``normalize`` flag (``model.normalize_input``) and regularisation (``model.regularisation``), updated
    with the keyword arguments, which may set training-time keys (``mask_prob``,
    ``mask_length``, ``dropout``, ``encoder_layerdrop``, ``feature_grad_mult``, ...) but not
    architecture keys.
    """
    c = model.config
    arch = {
        "extractor_mode": "layer_norm" if c["extractor_mode"] == "layer_norm" else "default",
        "conv_feature_layers": repr([tuple(layer) for layer in c["extractor_conv_layer_config"]]),
        "conv_bias": c["extractor_conv_bias"], "encoder_embed_dim": c["encoder_embed_dim"],
        "encoder_layers": c["encoder_num_layers"], "encoder_attention_heads": c["encoder_num_heads"],
        "encoder_ffn_embed_dim": c["encoder_ff_interm_features"], "layer_norm_first": c["encoder_layer_norm_first"],
        "conv_pos": c["encoder_pos_conv_kernel"], "conv_pos_groups": c["encoder_pos_conv_groups"],
        "relative_position_embedding": True, "num_buckets": c["encoder_num_buckets"],
        "max_distance": c["encoder_max_distance"], "gru_rel_pos": True, "activation_fn": "gelu",
    }
    clash = sorted(set(cfg) & set(arch))
    if clash:
        raise ValueError(f"WavLM export: {clash} are architecture keys, taken from the model")
    training = {"normalize": model.normalize_input, "dropout_features": 0.0,
                **{official: model.regularisation[ours] for official, ours in OFFICIAL_REGULARISATION.items()}}
    return {"cfg": {**arch, **training, **cfg}, "model": official_state_dict(model, mask_embedding)}
