"""WavLM checkpoint files: the start-up probe of ``wavlm.checkpoint`` (read by rules/wavlm.smk before any
job is planned). Reading a checkpoint's weights and exporting one are in :mod:`ssrl.models.wavlm`.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from ..preflight import PLACEHOLDER_PREFIX

OFFICIAL_MARKER = "encoder.layers.0.self_attn.grep_a"
"""A key of the official WavLM dict's ``model`` (gated relative position): absent from HuBERT / wav2vec 2.0."""

TORCHAUDIO_MARKER = "encoder.transformer.layers.0.attention.gru_rel_pos_const"
"""A key of a torchaudio WavLM state dict."""

TORCHAUDIO_LAYERS = "encoder.transformer.layers."
"""Prefix of a torchaudio state dict's transformer layers (the layer index follows)."""

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def checkpoint_problem(path: str | os.PathLike, num_layers: int) -> str | None:
    """What is wrong with WavLM checkpoint ``path`` for ``num_layers`` layers, or None if it looks right.

    Cheap enough for every `snakemake` start (the weights are not read): a file is opened with
    torch.load(weights_only=True, mmap=True) (zip-format files, i.e. torch.save since PyTorch 1.6; an
    older file is read whole) and must be the official WavLM dict ({"cfg", "model"} with WavLM's gated
    relative-position parameters) or a torchaudio WavLM state dict; a directory must be a Hugging Face
    WavLM (config.json with model_type wavlm + model.safetensors or pytorch_model.bin). The checkpoint
    must have at least ``num_layers`` transformer layers. Every key and shape is checked when step 1
    loads it (:func:`ssrl.models.wavlm.load_wavlm`).
    """
    import torch

    p = Path(path)
    if str(path).startswith(PLACEHOLDER_PREFIX):
        return "is still a placeholder; point it at your copy of WavLM-Large.pt"
    if not p.exists():
        return "not found"
    if p.is_dir():
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError) as err:
            return f"is a directory but not a Hugging Face WavLM (config.json: {err})"
        if cfg.get("model_type") != "wavlm":
            return f"is a Hugging Face {cfg.get('model_type')!r} model, not WavLM (config.json model_type)"
        if not any((p / name).exists() for name in HF_WEIGHT_FILES):
            return f"has no {' or '.join(HF_WEIGHT_FILES)}"
        layers = cfg.get("num_hidden_layers", 0)
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            return f"cannot be read by torch.load(weights_only=True): {err}"
        if isinstance(obj, dict) and isinstance(obj.get("cfg"), dict) and isinstance(obj.get("model"), dict):
            if OFFICIAL_MARKER not in obj["model"]:
                return ("has the official {'cfg', 'model'} layout but no WavLM gated relative-position "
                        f"parameters ({OFFICIAL_MARKER}): a HuBERT / wav2vec 2.0 checkpoint?")
            layers = obj["cfg"].get("encoder_layers", 0)
        else:
            if isinstance(obj, dict) and isinstance(obj.get("state_dict", obj.get("model")), dict):
                obj = obj.get("state_dict", obj.get("model"))
            if not (isinstance(obj, dict) and TORCHAUDIO_MARKER in obj):
                return ("is not a WavLM checkpoint (expected the official WavLM-Large.pt {'cfg', 'model'} dict, "
                        "a torchaudio WavLM state dict, or a Hugging Face WavLM directory)")
            layers = len({k[len(TORCHAUDIO_LAYERS):].split(".")[0] for k in obj if k.startswith(TORCHAUDIO_LAYERS)})
    if layers < num_layers:
        return f"has {layers} transformer layers, fewer than wavlm.num_layers = {num_layers}"
    return None
