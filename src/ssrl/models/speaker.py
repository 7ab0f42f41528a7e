"""The speaker model (docs/method.md §3, §9): :class:`SpeakerModel` = front-end (log-mel
:class:`~ssrl.features.MelFrontend` or :class:`~ssrl.models.wavlm.WavLMFrontend`) +
:class:`~ssrl.models.ecapa.ECAPATDNN`, waveforms ``(batch, samples)`` [+ sample lengths] ->
embeddings ``(batch, emb_dim)``, and :func:`build_speaker_model`, which builds one from a plain-dict
architecture, e.g. ``{"frontend": {"type": "mel", "n_mels": 80}, "encoder": {"channels": 64,
"emb_dim": 128}}`` or ``{"frontend": {"type": "wavlm", "checkpoint": "WavLM-Large.pt", "num_layers":
24}, "encoder": {...}}``; ``model.arch`` is the resolved architecture to store in the model file (for
WavLM it records the network config, so that loading a trained model never re-reads the original
WavLM checkpoint).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..features import MelFrontend
from .ecapa import ECAPATDNN
from .wavlm import REGULARISATION_KEYS, WavLM, WavLMFrontend
from .wavlm_checkpoint import load_wavlm

WAVLM_MAX_SECONDS = 100.0
"""WavLM systems embed only the first 100 s of each file (docs/method.md §5)."""


def default_max_seconds(model: SpeakerModel) -> float | None:
    """Audio kept per file for extraction: :data:`WAVLM_MAX_SECONDS` for WavLM systems,
    everything (None) for log-mel ECAPA systems (docs/method.md §5)."""
    return None if isinstance(model.frontend, MelFrontend) else WAVLM_MAX_SECONDS


class SpeakerModel(nn.Module):
    """Front-end + encoder: wave (batch, samples) [+ lengths (batch,) samples] -> (batch, emb_dim).

    ``lengths`` (int64 sample counts of a zero-padded batch, None = all full)
    are converted to frame counts by the front-end, so a padded batch gives each
    utterance its one-at-a-time embedding (eval mode). ``arch`` is the resolved
    architecture dict (see :func:`build_speaker_model`).
    """

    def __init__(self, frontend: MelFrontend | WavLMFrontend, encoder: ECAPATDNN, arch: dict | None = None):
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self.arch = arch

    @property
    def emb_dim(self) -> int:
        return self.encoder.emb_dim

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is not None:
            lengths = lengths.to(device=wave.device, dtype=torch.long)
        if isinstance(self.frontend, MelFrontend):
            features = self.frontend(wave, lengths)  # (B, n_mels, T)
            frame_lengths = None if lengths is None else self.frontend.num_frames(lengths)
        else:
            features, frame_lengths = self.frontend(wave, lengths)  # (B, D, T)
        return self.encoder(features, frame_lengths)


def _resolve(cls: type, kwargs: dict, what: str) -> dict:
    """Bind ``kwargs`` to ``cls``'s constructor and return all arguments with defaults filled in."""
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"arch {what}: {err}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _build_wavlm_frontend(spec: dict) -> tuple[WavLMFrontend, dict]:
    spec = dict(spec)
    allowed = {
        "checkpoint",
        "num_layers",
        "tiny",
        "normalize_input",
        "regularisation",
        "dropout",
        "config",
        "checkpoint_normalize",
    }
    unknown = sorted(set(spec) - allowed)
    if unknown or "num_layers" not in spec:
        raise ValueError(
            f"arch frontend (wavlm): unknown keys {unknown}"
            if unknown
            else "arch frontend (wavlm): num_layers is required"
        )
    num_layers = int(spec["num_layers"])
    normalize_input = bool(spec.get("normalize_input", False))
    regularisation = spec.get("regularisation")
    if "dropout" in spec:  # model files written before the regularisation dict
        if regularisation is not None:
            raise ValueError("arch frontend (wavlm): give regularisation or the older dropout, not both")
        regularisation = {key: float(spec["dropout"]) for key in REGULARISATION_KEYS if key.endswith("_dropout")}
    if spec.get("config") is not None:  # a recorded architecture: weights come from a state dict
        wavlm = WavLM(
            spec["config"],
            normalize_input=normalize_input,
            checkpoint_normalize=spec.get("checkpoint_normalize"),
            regularisation=regularisation,
        )
        if wavlm.num_layers != num_layers:
            raise ValueError(f"arch frontend (wavlm): num_layers {num_layers} but config has {wavlm.num_layers}")
    else:
        wavlm = load_wavlm(
            spec.get("checkpoint"),
            num_layers,
            tiny=bool(spec.get("tiny", False)),
            normalize_input=normalize_input,
            regularisation=regularisation,
        )
    resolved = {
        "type": "wavlm",
        "checkpoint": None if spec.get("checkpoint") is None else str(spec["checkpoint"]),
        "num_layers": num_layers,
        "tiny": bool(spec.get("tiny", False)),
        "normalize_input": normalize_input,
        "regularisation": dict(wavlm.regularisation),
        "config": wavlm.config,
        "checkpoint_normalize": wavlm.checkpoint_normalize,
    }
    return WavLMFrontend(wavlm), resolved


def build_speaker_model(arch: dict) -> SpeakerModel:
    """Build a :class:`SpeakerModel` from ``{"frontend": {...}, "encoder": {...}}``.

    frontend ``type``:
      * ``"mel"`` (default): :class:`MelFrontend` keyword arguments;
        encoder defaults ``log_input=True, detach_norm=True``.
      * ``"wavlm"``: ``num_layers`` (L), ``checkpoint`` (path or None), ``tiny``,
        ``normalize_input`` (quirk Q7, default False), ``regularisation`` (the
        fine-tuning dropouts, layer drop and feature_grad_mult of
        :data:`~ssrl.models.wavlm.REGULARISATION_KEYS`, active in train mode only;
        default: the checkpoint's own, none for random weights; a model file's
        older single ``dropout`` is read as every dropout) and
        optionally ``config`` (a recorded WavLM architecture: when present the
        network is built from it with random weights, to be filled from a state
        dict, and ``checkpoint`` is only provenance); encoder defaults
        ``log_input=False, detach_norm=False``.
    encoder: :class:`ECAPATDNN` keyword arguments; ``in_dim`` comes from the front-end.

    The returned model's ``arch`` holds every value resolved (defaults filled in,
    WavLM config recorded); store that in the model file.
    """
    if not isinstance(arch, dict) or "frontend" not in arch or "encoder" not in arch:
        raise ValueError(f"arch must be a dict with 'frontend' and 'encoder', got {arch!r}")
    unknown = sorted(set(arch) - {"frontend", "encoder"})
    if unknown:
        raise ValueError(f"arch: unknown keys {unknown}")
    frontend_spec = dict(arch["frontend"])
    kind = frontend_spec.pop("type", "mel")
    encoder_spec = dict(arch["encoder"])
    if kind == "mel":
        frontend_args = _resolve(MelFrontend, frontend_spec, "frontend (mel)")
        frontend = MelFrontend(**frontend_args)
        resolved_frontend = {"type": "mel", **frontend_args}
        encoder_spec.setdefault("log_input", True)
        encoder_spec.setdefault("detach_norm", True)
    elif kind == "wavlm":
        frontend, resolved_frontend = _build_wavlm_frontend(frontend_spec)
        encoder_spec.setdefault("log_input", False)
        encoder_spec.setdefault("detach_norm", False)
    else:
        raise ValueError(f"arch frontend: unknown type {kind!r} (mel or wavlm)")
    if encoder_spec.get("in_dim", frontend.out_dim) != frontend.out_dim:
        raise ValueError(
            f"arch encoder: in_dim {encoder_spec['in_dim']} does not match the front-end's {frontend.out_dim}-d output"
        )
    encoder_spec["in_dim"] = frontend.out_dim
    encoder_args = _resolve(ECAPATDNN, encoder_spec, "encoder")
    encoder = ECAPATDNN(**encoder_args)
    return SpeakerModel(frontend, encoder, {"frontend": resolved_frontend, "encoder": encoder_args})
