"""WavLM front-end (docs/method.md §9): torchaudio's WavLM modules and layer weighting; the checkpoint
formats (reading, the start-up probe, writing the official layout) are :mod:`ssrl.models.wavlm_checkpoint`.

* :func:`~ssrl.models.wavlm_checkpoint.load_wavlm` builds a :class:`WavLM` (the first ``num_layers`` transformer
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

import contextlib

import torch
import torchaudio
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

# torchaudio ``wavlm_model`` keyword arguments that define the architecture (the
# dropouts are set separately). ``extractor_conv_layer_config``: [out_channels,
# kernel, stride] per convolution of the waveform feature extractor.
CONFIG_KEYS = (
    "extractor_mode",
    "extractor_conv_layer_config",
    "extractor_conv_bias",
    "encoder_embed_dim",
    "encoder_pos_conv_kernel",
    "encoder_pos_conv_groups",
    "encoder_num_layers",
    "encoder_num_heads",
    "encoder_num_buckets",
    "encoder_max_distance",
    "encoder_ff_interm_features",
    "encoder_layer_norm_first",
)

STANDARD_CONV = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
# WavLM Large, as torchaudio.models.wavlm_large builds it.
LARGE_CONFIG = {
    "extractor_mode": "layer_norm",
    "extractor_conv_layer_config": STANDARD_CONV,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 1024,
    "encoder_pos_conv_kernel": 128,
    "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 24,
    "encoder_num_heads": 16,
    "encoder_num_buckets": 320,
    "encoder_max_distance": 800,
    "encoder_ff_interm_features": 4096,
    "encoder_layer_norm_first": True,
}
# A tiny Large-style WavLM (same 20 ms frame rate, small widths) for tests and the demo.
TINY_CONFIG = {
    "extractor_mode": "layer_norm",
    "extractor_conv_layer_config": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 64,
    "encoder_pos_conv_kernel": 16,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 2,
    "encoder_num_heads": 4,
    "encoder_num_buckets": 320,
    "encoder_max_distance": 800,
    "encoder_ff_interm_features": 128,
    "encoder_layer_norm_first": True,
}
WAVEFORM_NORM_EPS = 1e-5  # as torch.nn.functional.layer_norm

# What a fine-tuned WavLM regularises with, in torchaudio's ``wavlm_model`` names (the dropout after
# the feature projection, in attention, between the two feed-forward layers, on every layer output;
# layer drop), plus ``feature_grad_mult``: the factor on the gradient that reaches the CNN feature
# extractor (0: none). Only train mode applies them.
REGULARISATION_KEYS = (
    "encoder_projection_dropout",
    "encoder_attention_dropout",
    "encoder_ff_interm_dropout",
    "encoder_dropout",
    "encoder_layer_drop",
    "feature_grad_mult",
)
NO_REGULARISATION = {**{key: 0.0 for key in REGULARISATION_KEYS}, "feature_grad_mult": 1.0}
# Official cfg key -> our key (fairseq-style names, as Microsoft's WavLM.py configures its model).
OFFICIAL_REGULARISATION = {
    "dropout_input": "encoder_projection_dropout",
    "attention_dropout": "encoder_attention_dropout",
    "activation_dropout": "encoder_ff_interm_dropout",
    "dropout": "encoder_dropout",
    "encoder_layerdrop": "encoder_layer_drop",
    "feature_grad_mult": "feature_grad_mult",
}
# Hugging Face config.json key -> our key (transformers has no feature_grad_mult: 1).
HF_REGULARISATION = {
    "feat_proj_dropout": "encoder_projection_dropout",
    "attention_dropout": "encoder_attention_dropout",
    "activation_dropout": "encoder_ff_interm_dropout",
    "hidden_dropout": "encoder_dropout",
    "layerdrop": "encoder_layer_drop",
}


class WavLMCheckpointError(ValueError):
    """A WavLM checkpoint that cannot be imported; the message starts with its path."""


# --------------------------------------------------------------------------- model


def check_config(config: dict) -> dict:
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if missing or unknown:
        raise ValueError(f"WavLM config: missing keys {missing}, unknown keys {unknown}")
    config = dict(config)
    config["extractor_conv_layer_config"] = [
        [int(c), int(k), int(s)] for c, k, s in config["extractor_conv_layer_config"]
    ]
    if config["extractor_mode"] not in ("layer_norm", "group_norm"):
        raise ValueError(
            f"WavLM config: extractor_mode must be layer_norm or group_norm, got {config['extractor_mode']!r}"
        )
    if config["encoder_num_layers"] < 1:
        raise ValueError(f"WavLM config: encoder_num_layers must be >= 1, got {config['encoder_num_layers']}")
    return config


def check_conv_layers(layers: object, where: str = "conv_layers") -> list[list[int]]:
    """A CNN feature extractor ``[[channels, kernel, stride], ...]`` (at least one layer, positive
    ints; ValueError naming ``where`` otherwise) -> a copy as lists."""
    if (
        not isinstance(layers, (list, tuple))
        or not layers
        or any(
            not isinstance(layer, (list, tuple))
            or len(layer) != 3
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in layer)
            for layer in layers
        )
    ):
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
        raise ValueError(f"{where}: dropouts and layer drop must be in [0, 1] and feature_grad_mult >= 0, got {out}")
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

    def __init__(
        self,
        config: dict,
        normalize_input: bool = False,
        checkpoint_normalize: bool | None = None,
        regularisation: dict | None = None,
    ):
        super().__init__()
        self.config = check_config(config)
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

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            x, frame_lengths = self.feature_extractor(wave, lengths)  # (B, T, C_conv)
        if grad_mult not in (0.0, 1.0) and x.requires_grad:
            x = _GradScale.apply(x, grad_mult)
        x = self.encoder.feature_projection(x)  # (B, T, D)
        if mask is not None:
            if mask.shape != x.shape[:2] or mask_embedding is None:
                raise ValueError(
                    f"WavLM: mask must be (batch, frames) = {tuple(x.shape[:2])} with a "
                    f"mask_embedding, got {tuple(mask.shape)}"
                )
            x = torch.where(mask.unsqueeze(2), mask_embedding.to(x.dtype), x)
        key_mask = None  # (B, T) additive: -inf on padded frames
        if frame_lengths is not None:
            padding = torch.arange(x.shape[1], device=x.device)[None, :] >= frame_lengths[:, None]
            if padding.any():
                x = x.masked_fill(padding.unsqueeze(2), 0.0)
                key_mask = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(
                    padding, float("-inf")
                )

        transformer = self.encoder.transformer
        x = x + transformer.pos_conv_embed(x)
        if transformer.layer_norm_first:  # torchaudio's flag: "normalise before the layers" (post-LN models)
            x = transformer.layer_norm(x)
        x = transformer.dropout(x)
        hidden = []
        position_bias = None
        layer_drop = self.regularisation["encoder_layer_drop"] if self.training else 0.0
        for layer in transformer.layers:
            if layer_drop > 0.0 and torch.rand(()).item() < layer_drop:
                hidden.append(x)  # dropped: the input passes through unchanged
                continue
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, position_bias = activation_checkpoint(layer, x, None, position_bias, key_mask, use_reentrant=False)
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
            raise ValueError(f"LayerWeighting({self.weights.shape[0]}) expects (L, B, T, D), got {tuple(hidden.shape)}")
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

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad() if self.wavlm_frozen else contextlib.nullcontext():
            hidden, frame_lengths = self.wavlm(wave, lengths)
        return self.layer_weights(hidden), frame_lengths


# ----------------------------------------------------------------- checkpoint import
