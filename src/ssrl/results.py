"""The files between stages that the report reads, one home per file family: the column and key
constants, the writer and the reader with its schema check.

=========================================  ======================================  ===========================
file (under ``results/<run>/``)            written by                              read by
=========================================  ======================================  ===========================
``<system>/scores/<list>.tsv``             :func:`write_scores` (scripts/score.py) :func:`read_scores`
``<system>/scores/<list>.det.tsv``         :func:`write_det` (scripts/score.py)    :func:`read_det`
``<system>/metrics/<list>.json``           :func:`write_metrics` (score.py)        :func:`read_metrics`
``<system>/kmeans_k<K>/quality.json``      :func:`write_quality` (with             :func:`read_quality`
                                           :func:`size_stats`; scripts/kmeans.py)
``<system>/label_log.tsv``                 :func:`write_tsv` of                    :func:`read_label_log`
                                           :data:`LABEL_LOG_COLUMNS`
                                           (ssrl.train.ssrl_stage)
``<system>/train_log.tsv``                 :class:`TsvLog` (ssrl.train.loop)       :func:`read_train_log`
``<system>/kmeans_k<K>/centers.npy``       :func:`write_centers` (scripts/kmeans.py)  :func:`read_centers`
``<system>/train_record.json``             :func:`write_train_record` (values:     :func:`read_train_record`
                                           ssrl.train.record)
=========================================  ======================================  ===========================

Readers raise :class:`ResultsError` naming the file (and line) at fault. pandas is imported by the TSV
readers only, so that the stage scripts that write these files start quickly.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .fileio import atomic_open, atomic_path, read_json, write_json
from .provenance import STAMP_KEYS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

METRIC_KEYS = ("eer", "min_dcf_0.01", "min_dcf_0.05", "n_trials", "n_target", "n_nontarget")
LABEL_LOG_REQUIRED = ("epoch", "phase", "live_classes", "nmi", "accuracy", "purity")
TRAIN_LOG_COLUMNS = ("kind", "epoch", "step", "lr", "loss")
TRAIN_RECORD_NUMBERS = (
    "optimiser_steps",
    "global_batch",
    "examples_seen",
    "processes",
    "wall_s",
    "cpu_s",
    "peak_rss_bytes",
    "attempts",
)
TRAIN_RECORD_KEYS = (*TRAIN_RECORD_NUMBERS, "device", "gpu_s", "peak_gpu_bytes", *STAMP_KEYS)


class ResultsError(ValueError):
    """A file between stages that does not hold what it should; the message starts with the file at fault."""


# ---------------------------------------------------------------------------------------
# the training logs (ssrl.train): train_log.tsv, label_log.tsv

LABEL_LOG_COLUMNS = (
    "epoch",
    "phase",
    "relabelled",
    "replaced",
    "live_classes",
    "changed",
    "nmi",
    "accuracy",
    "purity",
    "p_clean_mean",
    "clean_tp",
    "clean_fp",
    "clean_tn",
    "clean_fn",
    "clean_tpr",
    "clean_fpr",
    "loss",
    "acc",
    "teacher_eer",
)
"""Columns of ``<system>/label_log.tsv`` (empty cell: not applicable, e.g. no truth / not validated)."""


def format_cell(value: Any) -> str:
    """A TSV cell: empty for None, floats ``%.6g``, anything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_tsv(path: str | os.PathLike, columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> None:
    """Write a TSV with a header atomically; missing/None cells are empty, floats ``%.6g``."""
    with atomic_open(path) as fh:
        fh.write("\t".join(columns) + "\n")
        for row in rows:
            fh.write("\t".join(format_cell(row.get(c)) for c in columns) + "\n")


class TsvLog:
    """The live training log: a TSV file with a fixed header, appended row by row.

    ``kind`` is ``step`` (means over the last ``log_every`` steps) or ``epoch``
    (means over the epoch, validation results, wall time). Empty cells mean
    "not applicable". On resume the file is cut back to the rows the checkpoint
    had seen, so no row appears twice.
    """

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        self.lines = 0

    def start(self, keep_lines: int | None) -> None:
        """Fresh log (``keep_lines`` None) or keep the first ``keep_lines`` lines of the existing one."""
        header = "\t".join(self.columns) + "\n"
        kept = [header]
        if keep_lines is not None and self.path.exists():
            old = self.path.read_text().splitlines(keepends=True)
            if old and old[0] == header:
                kept = old[:keep_lines]
            else:
                log.warning("%s: header differs from this run's columns; starting a new log", self.path)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(kept))
        self.lines = len(kept)

    def write(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"log row has unknown column(s) {sorted(unknown)}")
        with open(self.path, "a") as fh:
            fh.write("\t".join(format_cell(row.get(col)) for col in self.columns) + "\n")
        self.lines += 1


# ---------------------------------------------------------------------------------------
# k-means quality.json (workflow/scripts/kmeans.py)


def size_stats(sizes: np.ndarray) -> dict:
    """Statistics of the (k,) cluster sizes (empty clusters counted in n_empty, not in the rest)."""
    used = sizes[sizes > 0]
    return {
        "n_clusters": int(len(used)),
        "n_empty": int((sizes == 0).sum()),
        "size_min": int(used.min()),
        "size_median": float(np.median(used)),
        "size_mean": float(used.mean()),
        "size_max": int(used.max()),
        "n_singletons": int((used == 1).sum()),
        "sizes": sizes.tolist(),
    }


def write_quality(path: str | os.PathLike, quality: Mapping[str, Any]) -> None:
    """Write a k-means ``quality.json`` (atomically): the run's numbers, :func:`size_stats` and, with the
    true speakers, :func:`ssrl.kmeans.cluster_quality`; :func:`read_quality` reads it."""
    write_json(path, dict(quality))


# ---------------------------------------------------------------------------------------
# trial scores, DET points and metrics (workflow/scripts/score.py)

SCORE_COLUMNS = ("enroll", "test", "label", "score")
"""Header of ``<system>/scores/<list>.tsv``."""

DET_COLUMNS = ("far", "frr")
"""Header of ``<system>/scores/<list>.det.tsv``."""


def write_scores(
    path: str | os.PathLike, enroll: Sequence[str], test: Sequence[str], labels: Sequence[int], scores: Sequence[float]
) -> None:
    """Write the trial scores (one row per trial, :data:`SCORE_COLUMNS`, scores ``%.6f``) atomically."""
    with atomic_open(path) as fh:
        fh.write("\t".join(SCORE_COLUMNS) + "\n")
        fh.writelines(f"{e}\t{t}\t{lab}\t{s:.6f}\n" for e, t, lab, s in zip(enroll, test, labels, scores))


def write_det(path: str | os.PathLike, far: Sequence[float], frr: Sequence[float]) -> None:
    """Write the DET points (:data:`DET_COLUMNS`, ``%.8g``, increasing threshold) atomically."""
    with atomic_open(path) as fh:
        fh.write("\t".join(DET_COLUMNS) + "\n")
        fh.writelines(f"{a:.8g}\t{b:.8g}\n" for a, b in zip(far, frr))


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    """Write a ``metrics/<list>.json`` (atomically) holding every key of :data:`METRIC_KEYS`."""
    missing = [key for key in METRIC_KEYS if key not in metrics]
    if missing:
        raise ValueError(f"{path}: metrics lack {missing}")
    write_json(path, dict(metrics))


# ---------------------------------------------------------------------------------------
# k-means centers.npy (workflow/scripts/kmeans.py -> ssrl.train.ssrl_init)


def write_centers(path: str | os.PathLike, centers: np.ndarray) -> None:
    """Write the (k, dim) cluster centers as float32 ``.npy`` (atomically)."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(centers, dtype=np.float32))


def read_centers(path: str | os.PathLike) -> np.ndarray:
    """A ``centers.npy`` -> (k, dim) array; ValueError naming the file when it is not a readable 2-D array."""
    try:
        centers = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    if centers.ndim != 2:
        raise ValueError(f"{path}: centers have shape {centers.shape}, expected (K, dim)")
    return centers


# ---------------------------------------------------------------------------------------
# train_record.json (ssrl.train.record builds it, the trainer writes it)


def write_train_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write a ``train_record.json`` (atomically) holding every key of :data:`TRAIN_RECORD_KEYS`."""
    missing = [key for key in TRAIN_RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path}: train record lacks {missing}")
    write_json(path, dict(record))


# ---------------------------------------------------------------------------------------
# reading the pipeline's files


def check_number(value: Any, where: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResultsError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _read_json(path: str | os.PathLike) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def _read_object(path: str | os.PathLike, required: Sequence[str]) -> dict[str, Any]:
    """A JSON object holding every key of ``required``; ResultsError naming the file otherwise."""
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ResultsError(f"{path}: missing key(s) {missing}")
    return obj


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A ``metrics/<list>.json`` of workflow/scripts/score.py, checked: EER (fraction, 0..1),
    ``min_dcf_0.01``, ``min_dcf_0.05``, trial counts; other keys are kept as they are."""
    m = _read_object(path, METRIC_KEYS)
    for key in METRIC_KEYS:
        check_number(m[key], f"{path}: {key}")
    if not 0.0 <= m["eer"] <= 1.0:
        raise ResultsError(f"{path}: eer must be a fraction in [0, 1], got {m['eer']!r}")
    return m


def read_quality(path: str | os.PathLike) -> dict[str, Any]:
    """A k-means ``quality.json`` (workflow/scripts/kmeans.py): ``n_clusters`` and, when the true
    speakers were known, ``nmi`` / ``accuracy`` / ``purity`` (absent otherwise)."""
    q = _read_json(path)
    if not isinstance(q, dict) or "n_clusters" not in q:
        raise ResultsError(f"{path}: expected a JSON object with key 'n_clusters'")
    for key in ("n_clusters", "nmi", "accuracy", "purity"):
        if key in q:
            check_number(q[key], f"{path}: {key}")
    return q


def read_train_record(path: str | os.PathLike) -> dict[str, Any]:
    """A ``<system>/train_record.json`` of the trainer (ssrl.train.record): :data:`TRAIN_RECORD_KEYS`,
    numbers checked (``gpu_s`` / ``peak_gpu_bytes`` null on CPU; stamp keys null when unknown)."""
    r = _read_object(path, TRAIN_RECORD_KEYS)
    for key in TRAIN_RECORD_NUMBERS:
        check_number(r[key], f"{path}: {key}")
    for key in ("gpu_s", "peak_gpu_bytes"):
        check_number(r[key], f"{path}: {key}", allow_none=True)
    return r


def _read_tsv(path: str | os.PathLike, required: Sequence[str]) -> pd.DataFrame:
    import pandas as pd  # not at module level (module docstring)

    try:
        df = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable TSV file: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing} in the header {list(df.columns)}")
    return df


def _numeric_columns(df: pd.DataFrame, path: str | os.PathLike, columns: Iterable[str]) -> pd.DataFrame:
    """Columns as float (empty cells NaN); a non-numeric cell raises naming its line."""
    import pandas as pd  # not at module level (module docstring)

    for col in columns:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ResultsError(f"{path}:{i + 2}: column {col!r} is not a number: {df[col].iloc[i]!r}")
        df[col] = values.astype(float)
    return df


def read_label_log(path: str | os.PathLike) -> pd.DataFrame:
    """An SSRL ``label_log.tsv``: one row per epoch, columns at least :data:`LABEL_LOG_REQUIRED`
    (``phase`` fixed | update; nmi / accuracy / purity empty (NaN) without true labels)."""
    df = _read_tsv(path, LABEL_LOG_REQUIRED)
    bad = ~df["phase"].isin(["fixed", "update"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ResultsError(f"{path}:{i + 2}: phase must be 'fixed' or 'update', got {df['phase'].iloc[i]!r}")
    df = _numeric_columns(df, path, [c for c in LABEL_LOG_REQUIRED if c != "phase"])
    for col in ("epoch", "live_classes"):
        if df[col].isna().any():
            raise ResultsError(
                f"{path}:{int(np.flatnonzero(df[col].isna().to_numpy())[0]) + 2}: column {col!r} is empty"
            )
    return df.sort_values("epoch", kind="stable").reset_index(drop=True)


def read_train_log(path: str | os.PathLike) -> pd.DataFrame:
    """A ``train_log.tsv`` of the shared trainer (ssrl.train.loop.TsvLog): ``kind`` step | epoch,
    ``epoch``, ``step`` (global optimiser steps done), ``lr``, ``loss`` (as floats; empty cells
    NaN) and the stage's metric columns as they are."""
    df = _read_tsv(path, TRAIN_LOG_COLUMNS)
    return _numeric_columns(df, path, [c for c in TRAIN_LOG_COLUMNS if c != "kind"])


def read_det(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ``scores/<list>.det.tsv`` -> ``(far, frr)``, each (p,) float64 fractions."""
    df = _numeric_columns(_read_tsv(path, ("far", "frr")), path, ("far", "frr"))
    far, frr = df["far"].to_numpy(float), df["frr"].to_numpy(float)
    if len(far) == 0 or np.isnan(far).any() or np.isnan(frr).any():
        raise ResultsError(f"{path}: no DET points or empty cells")
    return far, frr


def read_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ``scores/<list>.tsv`` (enroll, test, label, score) -> ``(labels (n,) int, scores (n,) float64)``."""
    import pandas as pd  # not at module level (module docstring)

    try:
        df = pd.read_csv(path, sep="\t", usecols=lambda c: c in ("label", "score"))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable TSV file: {exc}") from None
    if set(df.columns) != {"label", "score"}:
        raise ResultsError(f"{path}: expected columns 'label' and 'score' in the header")
    df = _numeric_columns(df, path, ("label", "score"))
    if df.isna().any().any():
        raise ResultsError(f"{path}: empty label or score cells")
    labels = df["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ResultsError(f"{path}: labels must be 0 or 1")
    return labels.astype(np.int64), df["score"].to_numpy(float)
