"""The model file ``<system>/model.pt`` (docs/internals.md): written only by :func:`save_model_file`,
read by :func:`read_model_file` and :func:`load_speaker_model`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..fileio import save_torch
from .speaker import SpeakerModel, build_speaker_model

MODEL_FORMAT = "ssrl-model/1"
"""The ``format`` entry of every model file this version writes."""


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
    raise TypeError(
        f"model file: {where} is a {type(obj).__name__}; only tensors, numpy arrays, "
        f"numbers, strings, None and dicts/lists of them can be stored"
    )


def save_model_file(
    path: str | os.PathLike,
    system: str,
    arch: dict,
    eval_state: dict,
    student: dict | None = None,
    teacher: dict | None = None,
    head: dict | None = None,
    hparams: dict | None = None,
    extra: dict | None = None,
) -> None:
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
        "format": MODEL_FORMAT,
        "system": system,
        "arch": arch,
        "eval_state": eval_state,
        "student": student,
        "teacher": teacher,
        "head": head,
        "hparams": hparams or {},
        "extra": extra or {},
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


def load_speaker_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", which: str = "eval_state"
) -> SpeakerModel:
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
