"""WavLM checkpoint files (docs/method.md §9): reading the official ``WavLM-Large.pt``, torchaudio state
dicts and Hugging Face directories (:func:`read_wavlm_checkpoint`, :func:`load_wavlm`; every key renamed
to torchaudio's layout by rule tables), the start-up probe of ``wavlm.checkpoint``
(:func:`checkpoint_problem`, read by rules/wavlm.smk before any job is planned), and writing the
official layout (:func:`official_checkpoint`; its key rules are the inverse of the reading rules).
The network itself is :mod:`ssrl.models.wavlm`.

Over 450 lines for a reason: three formats' key tables and config parsers, their reader and the writer
of the official format are one contract (what is written must read back) and are tested as one.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio

from ..preflight import PLACEHOLDER_PREFIX
from .wavlm import (
    HF_REGULARISATION,
    LARGE_CONFIG,
    NO_REGULARISATION,
    OFFICIAL_REGULARISATION,
    REGULARISATION_KEYS,
    STANDARD_CONV,
    TINY_CONFIG,
    WavLM,
    WavLMCheckpointError,
    check_config,
    check_conv_layers,
    check_regularisation,
)

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
                return (
                    "has the official {'cfg', 'model'} layout but no WavLM gated relative-position "
                    f"parameters ({OFFICIAL_MARKER}): a HuBERT / wav2vec 2.0 checkpoint?"
                )
            layers = obj["cfg"].get("encoder_layers", 0)
        else:
            if isinstance(obj, dict) and isinstance(obj.get("state_dict", obj.get("model")), dict):
                obj = obj.get("state_dict", obj.get("model"))
            if not (isinstance(obj, dict) and TORCHAUDIO_MARKER in obj):
                return (
                    "is not a WavLM checkpoint (expected the official WavLM-Large.pt {'cfg', 'model'} dict, "
                    "a torchaudio WavLM state dict, or a Hugging Face WavLM directory)"
                )
            layers = len({k[len(TORCHAUDIO_LAYERS) :].split(".")[0] for k in obj if k.startswith(TORCHAUDIO_LAYERS)})
    if layers < num_layers:
        return f"has {layers} transformer layers, fewer than wavlm.num_layers = {num_layers}"
    return None


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
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),  # layer_norm extractor
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
    (
        r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight",
        _LAYER + r".attention.rel_attn_embed.weight",
    ),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", _LAYER + r".layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", _LAYER + r".feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", _LAYER + r".feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", _LAYER + r".final_layer_norm.\2"),
]
OFFICIAL_IGNORED = {"mask_emb"}  # masking embedding of pre-training

HF_RULES = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.\2.\3",
    ),
    (r"feature_projection\.(layer_norm|projection)\.(weight|bias)", r"encoder.feature_projection.\1.\2"),
    (r"encoder\.pos_conv_embed\.conv\.bias", "encoder.transformer.pos_conv_embed.conv.bias"),
    (
        r"encoder\.pos_conv_embed\.conv\.(?:weight_g|parametrizations\.weight\.original0)",
        "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0",
    ),
    (
        r"encoder\.pos_conv_embed\.conv\.(?:weight_v|parametrizations\.weight\.original1)",
        "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", _LAYER + r".attention.attention.in_proj_\3:\2"),
    (r"encoder\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)", _LAYER + r".attention.attention.out_proj.\2"),
    (
        r"encoder\.layers\.(\d+)\.attention\.(gru_rel_pos_linear\.weight|gru_rel_pos_linear\.bias|gru_rel_pos_const"
        r"|rel_attn_embed\.weight)",
        _LAYER + r".attention.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm|feed_forward\.intermediate_dense"
        r"|feed_forward\.output_dense)\.(weight|bias)",
        _LAYER + r".\2.\3",
    ),
]
HF_IGNORED = {"masked_spec_embed"}  # masking embedding of pre-training

TORCHAUDIO_RULES = [  # torchaudio < 2.1 stored the positional convolution's weight norm as weight_g / weight_v
    (
        r"encoder\.transformer\.pos_conv_embed\.conv\.weight_g",
        "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0",
    ),
    (
        r"encoder\.transformer\.pos_conv_embed\.conv\.weight_v",
        "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
    ),
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
            raise WavLMCheckpointError(f"{source}: attention projection {target} lacks its {', '.join(absent)} part(s)")
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
    _require(
        cfg,
        [
            "extractor_mode",
            "conv_feature_layers",
            "conv_bias",
            "encoder_embed_dim",
            "encoder_layers",
            "encoder_attention_heads",
            "encoder_ffn_embed_dim",
            "layer_norm_first",
            "conv_pos",
            "conv_pos_groups",
            "relative_position_embedding",
            "num_buckets",
            "max_distance",
            "gru_rel_pos",
        ],
        source,
        "cfg",
    )
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise WavLMCheckpointError(
            f"{source}: only WavLM with gated relative position embedding is supported "
            f"(cfg.relative_position_embedding and cfg.gru_rel_pos must be true)"
        )
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
    _require(
        cfg,
        [
            "conv_dim",
            "conv_kernel",
            "conv_stride",
            "conv_bias",
            "feat_extract_norm",
            "hidden_size",
            "num_conv_pos_embeddings",
            "num_conv_pos_embedding_groups",
            "num_hidden_layers",
            "num_attention_heads",
            "num_buckets",
            "max_bucket_distance",
            "intermediate_size",
            "do_stable_layer_norm",
        ],
        source,
        "config.json",
    )
    for key in ("hidden_act", "feat_extract_activation"):
        if cfg.get(key, "gelu") != "gelu":
            raise WavLMCheckpointError(f"{source}: {key} {cfg[key]!r} is not supported (gelu)")
    if cfg["feat_extract_norm"] not in ("layer", "group"):
        raise WavLMCheckpointError(f"{source}: unknown feat_extract_norm {cfg['feat_extract_norm']!r}")
    return {
        "extractor_mode": f"{cfg['feat_extract_norm']}_norm",
        "extractor_conv_layer_config": [
            [int(c), int(k), int(s)] for c, k, s in zip(cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"])
        ],
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


def _regularisation_from(
    cfg: dict, names: dict[str, str], source: str, what: str, defaults: dict | None = None
) -> dict:
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
    factory = (
        torchaudio.models.wavlm_large if config["extractor_mode"] == "layer_norm" else torchaudio.models.wavlm_base
    )
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
            raise WavLMCheckpointError(
                f"{source}: not a torchaudio WavLM state dict (no {key}); keys: {_key_list(state)}"
            )
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
            f"{{'config': <torchaudio wavlm_model arguments>, 'state_dict': ...}}"
        )
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
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
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
        header = json.loads(buffer[8 : 8 + header_size])
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
        flat = (
            torch.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin)
            if count
            else torch.empty(0, dtype=dtype)
        )
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
            f"tensors and plain Python values (official WavLM .pt, torchaudio state dict)"
        ) from None


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
        raise WavLMCheckpointError(
            f"{path}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)"
        )
    if any(k.startswith("wavlm.") for k in state):  # a task model (e.g. WavLMForXVector): keep the backbone
        state = {k[len("wavlm.") :]: v for k, v in state.items() if k.startswith("wavlm.")}
    normalize = None
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.exists():
        normalize = _read_json(preprocessor).get("do_normalize")
    return WavLMCheckpoint(
        _config_from_hf(cfg, str(config_file)),
        _rename(state, HF_RULES, HF_IGNORED, str(path)),
        normalize,
        "huggingface",
        _regularisation_from(cfg, HF_REGULARISATION, str(config_file), "config.json"),
    )


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
        return WavLMCheckpoint(
            _config_from_official(cfg, str(path)),
            _rename(obj["model"], OFFICIAL_RULES, OFFICIAL_IGNORED, str(path)),
            cfg.get("normalize"),
            "official",
            _regularisation_from(cfg, OFFICIAL_REGULARISATION, str(path), "cfg"),
        )
    config = None
    if isinstance(obj, dict) and not _tensor_dict(obj):  # a wrapper around the state dict
        config = obj.get("config")
        obj = next((obj[k] for k in ("state_dict", "model") if _tensor_dict(obj.get(k))), None)
    if not _tensor_dict(obj):
        raise WavLMCheckpointError(
            f"{path}: not a WavLM checkpoint (expected the official {{'cfg', 'model'}} "
            f"dict, a torchaudio state dict, or a Hugging Face directory)"
        )
    state = _rename(obj, TORCHAUDIO_RULES, set(), str(path))
    given = {}  # regularisation keys in a wrapper's config (torchaudio names)
    if config is None:
        config = _config_from_torchaudio_state(state, str(path))
    else:
        if not isinstance(config, dict):
            raise WavLMCheckpointError(f"{path}: 'config' must be a dict of torchaudio wavlm_model arguments")
        given = {k: v for k, v in config.items() if k in REGULARISATION_KEYS}
        try:
            config = check_config({k: v for k, v in config.items() if k not in REGULARISATION_KEYS})
        except ValueError as err:
            raise WavLMCheckpointError(f"{path}: {err}") from None
    names = {key: key for key in REGULARISATION_KEYS}
    regularisation = _regularisation_from(
        given, names, str(path), "config", defaults=torchaudio_default_regularisation(config)
    )
    return WavLMCheckpoint(config, state, None, "torchaudio", regularisation)


def load_wavlm(
    path_or_none: str | Path | None,
    num_layers: int,
    tiny: bool = False,
    normalize_input: bool = False,
    regularisation: dict | None = None,
    conv_layers: list[list[int]] | None = None,
) -> WavLM:
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
    model = WavLM(
        config,
        normalize_input=normalize_input,
        checkpoint_normalize=ckpt.normalize,
        regularisation={**ckpt.regularisation, **(regularisation or {})},
    )
    state = {
        k: v
        for k, v in ckpt.state.items()
        if not ((m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k)) and int(m.group(1)) >= num_layers)
    }
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
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


_GROUP = re.compile(r"\((?!\?)(?:[^()\\]|\\.)*\)")


def inverse_rules(rules):
    """(target regex, source template) from (source regex, target template) rules: each capture group of the
    source regex becomes its back-reference in the new template, each back-reference of the target template
    the group it copies; a template ending in ``:\\N`` (one piece of the fused q/k/v projection, the piece's
    name in group N) becomes a ``{}`` slot in the new template, marked ``:qkv``."""
    out = []
    for pattern, template in rules:
        groups = _GROUP.findall(pattern)
        split = re.search(r":\\(\d)$", template)
        skip = int(split.group(1)) if split else None
        body = template[: split.start()] if split else template
        used = [int(n) for n in re.findall(r"\\(\d)", body)]  # groups in the target's order
        number = {g: i + 1 for i, g in enumerate(used)}  # source group -> new group number
        regex = re.sub(
            r"\\(\d)", lambda m, groups=groups: groups[int(m.group(1)) - 1], re.escape(body).replace(r"\\", "\\")
        )
        counter = iter(range(1, len(groups) + 1))

        def back(m, counter=counter, skip=skip, number=number):
            g = next(counter)
            return "{}" if g == skip else f"\\{number[g]}"

        target = _GROUP.sub(back, pattern).replace("\\.", ".")
        out.append((regex, target + (":qkv" if split else "")))
    return out


OFFICIAL_EXPORT_RULES = inverse_rules(OFFICIAL_RULES)
"""(torchaudio key regex, official key template), derived from :data:`OFFICIAL_RULES`; a template ending in
``:qkv`` splits the fused attention input projection into q, k and v. The conv layers' norms are named
by :func:`official_state_dict` (their official names depend on the extractor mode)."""


def official_state_dict(model: WavLM, mask_embedding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights under the key names of Microsoft's WavLM.py (the ``model`` entry of
    ``WavLM-Large.pt``); ``mask_embedding`` (D,) becomes ``mask_emb`` (zeros when None).
    Tensors are detached CPU copies."""
    conv_norm = (
        r"feature_extractor.conv_layers.\1.2.1.\2"
        if model.config["extractor_mode"] == "layer_norm"
        else r"feature_extractor.conv_layers.\1.2.\2"
    )  # group_norm: only conv layer 0 has one
    rules = [
        (re.compile(p), t)
        for p, t in [
            (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", conv_norm),
            *OFFICIAL_EXPORT_RULES,
        ]
    ]
    out = {
        "mask_emb": (
            torch.zeros(model.dim)
            if mask_embedding is None
            else mask_embedding.detach().to("cpu", torch.float32).clone()
        )
    }
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
        "conv_bias": c["extractor_conv_bias"],
        "encoder_embed_dim": c["encoder_embed_dim"],
        "encoder_layers": c["encoder_num_layers"],
        "encoder_attention_heads": c["encoder_num_heads"],
        "encoder_ffn_embed_dim": c["encoder_ff_interm_features"],
        "layer_norm_first": c["encoder_layer_norm_first"],
        "conv_pos": c["encoder_pos_conv_kernel"],
        "conv_pos_groups": c["encoder_pos_conv_groups"],
        "relative_position_embedding": True,
        "num_buckets": c["encoder_num_buckets"],
        "max_distance": c["encoder_max_distance"],
        "gru_rel_pos": True,
        "activation_fn": "gelu",
    }
    clash = sorted(set(cfg) & set(arch))
    if clash:
        raise ValueError(f"WavLM export: {clash} are architecture keys, taken from the model")
    training = {
        "normalize": model.normalize_input,
        "dropout_features": 0.0,
        **{official: model.regularisation[ours] for official, ours in OFFICIAL_REGULARISATION.items()},
    }
    return {"cfg": {**arch, **training, **cfg}, "model": official_state_dict(model, mask_embedding)}
