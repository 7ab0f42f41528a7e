"""Typed configuration sections: :func:`config_from_dict` builds a stage's dataclass from its config
mapping (each stage's config class checks its own bounds), and :class:`RuntimeConfig` is the ``train:``
section that every training stage shares. No torch: the classes are plain dataclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def config_from_dict(cls: type, d: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from config mapping ``d``, typed by the fields' defaults.

    Fields named in ``skip`` are neither accepted nor set (the caller builds them). Unknown
    keys and values of the wrong type raise ValueError naming ``where.key``; an int is
    accepted (and converted) where a float is expected, a bool never counts as an int.
    """
    names = sorted(f.name for f in dataclasses.fields(cls) if f.name not in skip)
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {names}")
    defaults = cls()
    values = {}
    for key, value in d.items():
        want = type(getattr(defaults, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
        values[key] = value
    return cls(**values)


def check_bounds(
    cfg: Any,
    where: str,
    *,
    non_negative: Iterable[str] = (),
    at_least_one: Iterable[str] = (),
    positive: Iterable[str] = (),
    fraction: Iterable[str] = (),
) -> None:
    """Check the bounds of a typed config's fields: ``non_negative`` (>= 0), ``at_least_one`` (>= 1),
    ``positive`` (> 0) and ``fraction`` (in [0, 1]); ValueError naming ``where.key`` and the value."""
    for keys, ok, rule in (
        (non_negative, lambda v: v >= 0, "must be >= 0"),
        (at_least_one, lambda v: v >= 1, "must be >= 1"),
        (positive, lambda v: v > 0, "must be > 0"),
        (fraction, lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    ):
        for key in keys:
            if not ok(getattr(cfg, key)):
                raise ValueError(f"{where}.{key}: {rule}, got {getattr(cfg, key)}")


@dataclass
class RuntimeConfig:
    """The ``train:`` config section: how (not what) to train. Not part of a stage's
    hyper-parameter fingerprint, so changing it never invalidates checkpoints.

    device            auto | cpu | cuda
    workers           DataLoader worker processes per rank (0: load in the main process)
    ckpt_every_steps  also checkpoint every N optimiser steps (0: only at epoch ends)
    keep_checkpoints  how many of the newest checkpoints to keep
    log_every         one ``step`` row in the TSV log every N steps (means over those steps)
    progress_every_s  seconds between progress lines
    bf16              bfloat16 autocast on CUDA (ignored on CPU)
    cudnn_benchmark   torch.backends.cudnn.benchmark (off when deterministic)
    deterministic     deterministic algorithms (bit-exact resume on CPU; slower on GPU)
    """

    device: str = "auto"
    workers: int = 2
    ckpt_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    progress_every_s: float = 30.0
    bf16: bool = True
    cudnn_benchmark: bool = True
    deterministic: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "train") -> RuntimeConfig:
        """Build from a config mapping; unknown keys and wrong types raise ValueError naming ``where.key``."""
        cfg = config_from_dict(cls, d or {}, where)
        check_bounds(
            cfg, where, non_negative=("workers", "ckpt_every_steps"), at_least_one=("keep_checkpoints", "log_every")
        )
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"{where}.device: expected auto, cpu or cuda, got {cfg.device!r}")
        return cfg
