"""Networks (docs/method.md §3, §9), the speaker-model wrapper, the model file and embedding extraction.

* :class:`SpeakerModel` = front-end (log-mel :class:`~ssrl.features.MelFrontend` or
  :class:`~ssrl.models.wavlm.WavLMFrontend`) + :class:`~ssrl.models.ecapa.ECAPATDNN`:
  waveforms ``(batch, samples)`` [+ sample lengths] -> embeddings ``(batch, emb_dim)``.
* :func:`build_speaker_model` builds one from a plain-dict architecture, e.g.
  ``{"frontend": {"type": "mel", "n_mels": 80}, "encoder": {"channels": 64, "emb_dim": 128}}`` or
  ``{"frontend": {"type": "wavlm", "checkpoint": "WavLM-Large.pt", "num_layers": 24},
  "encoder": {...}}``; ``model.arch`` is the resolved architecture to store in
  the model file (for WavLM it records the network config, so that loading a
  trained model never re-reads the original WavLM checkpoint).
* The model file (``<system>/model.pt``, docs/internals.md): written only by
  :func:`save_model_file`, read by :func:`read_model_file` and
  :func:`load_speaker_model`.
* :func:`extract_embeddings`: whole-utterance embeddings over a DataLoader of
  padded batches (docs/method.md §5).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..features import MelFrontend
from ..fileio import save_torch
from ..progress import Progress
from .ecapa import ECAPATDNN
from .heads import AAMSoftmax, DINOHead, SoftmaxHead, build_head
from .wavlm import REGULARISATION_KEYS, LayerWeighting, WavLM, WavLMCheckpointError, WavLMFrontend, load_wavlm

__all__ = [
    "ECAPATDNN", "DINOHead", "AAMSoftmax", "SoftmaxHead", "build_head", "LayerWeighting", "WavLM",
    "WavLMFrontend", "WavLMCheckpointError", "load_wavlm", "SpeakerModel", "build_speaker_model",
    "MODEL_FORMAT", "ModelFileError", "save_model_file", "read_model_file", "load_speaker_model",
    "extract_embeddings", "WAVLM_MAX_SECONDS", "default_max_seconds",
]

MODEL_FORMAT = "ssrl-model/1"

WAVLM_MAX_SECONDS = 100.0
"""WavLM systems embed only the first 100 s of each file (docs/method.md §5)."""


def default_max_seconds(model: "SpeakerModel") -> float | None:
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
            features = self.frontend(wave, lengths)                       # (B, n_mels, T)
            frame_lengths = None if lengths is None else self.frontend.num_frames(lengths)
        else:
            features, frame_lengths = self.frontend(wave, lengths)        # (B, D, T)
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
    allowed = {"checkpoint", "num_layers", "tiny", "normalize_input", "regularisation", "dropout", "config",
               "checkpoint_normalize"}
    unknown = sorted(set(spec) - allowed)
    if unknown or "num_layers" not in spec:
        raise ValueError(f"arch frontend (wavlm): unknown keys {unknown}" if unknown
                         else "arch frontend (wavlm): num_layers is required")
    num_layers = int(spec["num_layers"])
    normalize_input = bool(spec.get("normalize_input", False))
    regularisation = spec.get("regularisation")
    if "dropout" in spec:                  # model files written before the regularisation dict
        if regularisation is not None:
            raise ValueError("arch frontend (wavlm): give regularisation or the older dropout, not both")
        regularisation = {key: float(spec["dropout"]) for key in REGULARISATION_KEYS if key.endswith("_dropout")}
    if spec.get("config") is not None:     # a recorded architecture: weights come from a state dict
        wavlm = WavLM(spec["config"], normalize_input=normalize_input,
                      checkpoint_normalize=spec.get("checkpoint_normalize"), regularisation=regularisation)
        if wavlm.num_layers != num_layers:
            raise ValueError(f"arch frontend (wavlm): num_layers {num_layers} but config has {wavlm.num_layers}")
    else:
        wavlm = load_wavlm(spec.get("checkpoint"), num_layers, tiny=bool(spec.get("tiny", False)),
                           normalize_input=normalize_input, regularisation=regularisation)
    resolved = {
        "type": "wavlm", "checkpoint": None if spec.get("checkpoint") is None else str(spec["checkpoint"]),
        "num_layers": num_layers, "tiny": bool(spec.get("tiny", False)), "normalize_input": normalize_input,
        "regularisation": dict(wavlm.regularisation), "config": wavlm.config,
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
        raise ValueError(f"arch encoder: in_dim {encoder_spec['in_dim']} does not match the front-end's "
                         f"{frontend.out_dim}-d output")
    encoder_spec["in_dim"] = frontend.out_dim
    encoder_args = _resolve(ECAPATDNN, encoder_spec, "encoder")
    encoder = ECAPATDNN(**encoder_args)
    return SpeakerModel(frontend, encoder, {"frontend": resolved_frontend, "encoder": encoder_args})


# --------------------------------------------------------------------------- model file


class ModelFileError(ValueError):
    """A model file that cannot be read; the message starts with its path."""


def _storable(obj: Any, where: str) -> Any:
    """Check that ``obj`` loads with ``torch.load(weights_only=True)``; numpy becomes torch/Python."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy()) if obj.dtype.kind in "biuf" else obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, _storable(v, f"{where}.{k}")) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_storable(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"model file: {where} is a {type(obj).__name__}; only tensors, numpy arrays, "
                    f"numbers, strings, None and dicts/lists of them can be stored")


def save_model_file(path: str | os.PathLike, system: str, arch: dict, eval_state: dict,
                    student: dict | None = None, teacher: dict | None = None, head: dict | None = None,
                    hparams: dict | None = None, extra: dict | None = None) -> None:
    """Write a model file atomically (format in docs/internals.md, "The model file").

    ``arch``: ``SpeakerModel.arch``; ``eval_state``: state dict of the SpeakerModel
    used for embeddings (EMA teacher); ``student`` / ``teacher``:
    ``{"model": SpeakerModel state dict, "head": head state dict}``; ``head``: the
    head spec for :func:`build_head`; ``hparams`` / ``extra``: plain values and
    tensors (numpy arrays are stored as tensors, or lists for strings).
    """
    if not isinstance(arch, dict) or "frontend" not in arch or "encoder" not in arch:
        raise ValueError("save_model_file: arch must be SpeakerModel.arch ({'frontend', 'encoder'})")
    if arch["frontend"].get("type") == "wavlm" and arch["frontend"].get("config") is None:
        raise ValueError("save_model_file: a WavLM arch must record its config (pass SpeakerModel.arch)")
    for name, part in (("student", student), ("teacher", teacher)):
        if part is not None and (not isinstance(part, dict) or "model" not in part):
            raise ValueError(f"save_model_file: {name} must be a dict with a 'model' state dict (and 'head')")
    obj = {
        "format": MODEL_FORMAT, "system": system, "arch": arch, "eval_state": eval_state,
        "student": student, "teacher": teacher, "head": head, "hparams": hparams or {}, "extra": extra or {},
    }
    save_torch(path, _storable(obj, "model"))


def read_model_file(path: str | os.PathLike) -> dict:
    """Read and check a model file written by :func:`save_model_file` (tensors on CPU)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise ModelFileError(f"{path}: not a readable model file ({err})") from None
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ModelFileError(f"{path}: expected format {MODEL_FORMAT!r}, found {found!r}")
    missing = [k for k in ("system", "arch", "eval_state") if k not in obj]
    if missing:
        raise ModelFileError(f"{path}: missing {', '.join(missing)}")
    return obj


def load_speaker_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                       which: str = "eval_state") -> SpeakerModel:
    """The eval-mode :class:`SpeakerModel` of a model file, built from ``arch``.

    ``which``: ``"eval_state"`` (EMA teacher used for embeddings), ``"student"``
    or ``"teacher"`` (their ``model`` state).
    """
    obj = read_model_file(path)
    if which == "eval_state":
        state = obj["eval_state"]
    elif which in ("student", "teacher"):
        if not obj.get(which):
            raise ModelFileError(f"{path}: holds no {which} state")
        state = obj[which]["model"]
    else:
        raise ValueError(f"which must be eval_state, student or teacher, got {which!r}")
    try:
        model = build_speaker_model(obj["arch"])
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path}: {which} does not fit its arch: {err}") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------- extraction


@torch.no_grad()
def extract_embeddings(model: SpeakerModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                       utts: list[str], device: str | torch.device = "cpu",
                       progress: Progress | None = None) -> np.ndarray:
    """Embeddings ``(N, emb_dim)`` float32 of ``utts`` in their order (docs/method.md §5).

    ``batches`` yields ``(indices (B,), padded waves (B, S), lengths (B,))`` as
    :func:`ssrl.data.collate_padded` makes them; every index in ``range(N)``
    must appear once. The model runs in eval mode without gradients. Fails
    naming the utterance on a non-finite embedding or a missing one.
    """
    model.eval()
    out = np.zeros((len(utts), model.emb_dim), dtype=np.float32)
    seen = np.zeros(len(utts), dtype=bool)
    for indices, wave, lengths in batches:
        emb = model(wave.to(device, non_blocking=True), lengths.to(device, non_blocking=True))
        emb = emb.float().cpu().numpy()
        idx = indices.numpy()
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            names = [utts[i] for i in idx[bad]]
            raise ValueError(f"non-finite embedding for {len(names)} utterance(s): {', '.join(names[:10])}")
        out[idx] = emb
        seen[idx] = True
        if progress is not None:
            progress.update(len(idx))
    if not seen.all():
        missing = [utts[i] for i in np.flatnonzero(~seen)[:10]]
        raise ValueError(f"{int((~seen).sum())} utterance(s) were never extracted, e.g. {', '.join(missing)}")
    return out
