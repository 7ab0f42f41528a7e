"""Result tables and plots, built only from the files the pipeline wrote (docs/method.md §10, §13).

Inputs (under ``results/<run>/``, see docs/internals.md): per system
``metrics/<list>.json`` (EER as a fraction, minDCF at P_target 0.01 / 0.05, trial
counts), ``scores/<list>.tsv`` and ``.det.tsv``, ``train_log.tsv``, ``train_record.json``
(cost and provenance of the training job, ssrl.train.cost); k-means ``quality.json`` of
DINO and the iterative rounds; ``label_log.tsv`` of the SSRL systems; a YAML file of
published reference numbers (``config/published.yaml``); and the run's ``provenance.json``
with its config store ``provenance/`` (ssrl.provenance; read when present, never an input
of a rule).

A *run spec* (a JSON-able dict, built by rules/report.smk) says which systems exist
and where their files are::

    {"run": "demo", "k": 62, "trial_lists": ["demo"],
     "compare": {"dino": "sslsv_dino_ecapa_c1024", ...},      # system -> published id (or null)
     "provenance": "results/demo/provenance.json",            # optional
     "systems": [{"name": "dino", "table": "main", "kind": "dino",
                  "files": {"metrics": {"demo": path}, "det": {...}, "scores": {...},
                            "train_log": path, "train_record": path, "quality": path,
                            "label_log": path}}, ...]}

``table`` is ``main`` | ``ablations`` | ``wavlm``; ``kind`` one of :data:`KINDS`;
``iterative`` systems carry ``round``, ``ablation`` systems ``overrides`` (the config
overrides of SSRL), WavLM systems ``checkpoint`` (null: randomly initialised front-end).

Tables (:func:`build_tables`): ``main``, ``ablations``, ``wavlm``, ``pseudo_labels``,
``training``, ``published``; each a :class:`Table` (a DataFrame with full-precision numbers,
blank (NaN/None) where unknown) written as Markdown and CSV (:func:`write_tables`), plus
``summary.md`` / ``summary.html`` holding them all after a provenance block
(:func:`provenance_lines`; a warning when the files come from different commits or configs,
:func:`provenance_warnings`). Numbers are copied from the inputs (EER converted to %, bytes
to MiB), never computed from anything else, except the training cost of a chain of jobs,
summed as :data:`COST_RULE` says. Plots (:func:`make_plots`):
``det.png``, ``labels.png``, ``training.png``, ``scores.png``; matplotlib's Agg
renderer through :class:`matplotlib.figure.Figure` (no pyplot, no global backend).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.special import ndtri

from .fileio import atomic_open, atomic_path, read_json
from .progress import Progress
from .report import KINDS, PLOT_NAMES, SYSTEM_TABLES, TABLE_NAMES
from .provenance import (STAMP_KEYS, config_diff, format_value, hardware_line, job_stamp, now_iso, read_provenance,
                         stored_config)

METRIC_KEYS = ("eer", "min_dcf_0.01", "min_dcf_0.05", "n_trials", "n_target", "n_nontarget")
LABEL_LOG_COLUMNS = ("epoch", "phase", "live_classes", "nmi", "accuracy", "purity")
TRAIN_LOG_COLUMNS = ("kind", "epoch", "step", "lr", "loss")
REFERENCE_KEYS = ("system", "trials", "eer_percent", "min_dcf", "p_target", "source")
TRAIN_RECORD_NUMBERS = ("optimiser_steps", "global_batch", "examples_seen", "processes", "wall_s", "cpu_s",
                        "peak_rss_bytes", "attempts")
TRAIN_RECORD_KEYS = (*TRAIN_RECORD_NUMBERS, "device", "gpu_s", "peak_gpu_bytes", *STAMP_KEYS)
TRIAL_LIST_NAMES = {"vox1_o": "VoxCeleb1-O, cleaned", "vox1_e": "VoxCeleb1-E, cleaned",
                    "vox1_h": "VoxCeleb1-H, cleaned"}

# Column formats for Markdown/HTML (CSV keeps full precision).
_FORMATS: dict[str, Callable[[Any], str]] = {
    "eer": lambda v: f"{v:.2f}",
    "dcf": lambda v: f"{v:.4f}",
    "frac": lambda v: f"{v:.4f}",
    "g": lambda v: f"{v:g}",
    "int": lambda v: f"{int(v)}",
    "one": lambda v: f"{v:.1f}",
    # published EER %: as reported, but at least 2 decimals (1.8 -> 1.80, 2.627 stays)
    "pub_eer": lambda v: f"{v:.{max(2, len(repr(float(v)).partition('.')[2]))}f}",
}


class TablesError(ValueError):
    """Bad input to the tables or plots; the message starts with the file (or spec key) at fault."""


# ---------------------------------------------------------------------------------------
# reading the pipeline's files


def _number(value: Any, where: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TablesError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _read_json(path: str | os.PathLike) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise TablesError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def _read_object(path: str | os.PathLike, required: Sequence[str]) -> dict[str, Any]:
    """A JSON object holding every key of ``required``; TablesError naming the file otherwise."""
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise TablesError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise TablesError(f"{path}: missing key(s) {missing}")
    return obj


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A ``metrics/<list>.json`` of workflow/scripts/score.py, checked: EER (fraction, 0..1),
    ``min_dcf_0.01``, ``min_dcf_0.05``, trial counts; other keys are kept as they are."""
    m = _read_object(path, METRIC_KEYS)
    for key in METRIC_KEYS:
        _number(m[key], f"{path}: {key}")
    if not 0.0 <= m["eer"] <= 1.0:
        raise TablesError(f"{path}: eer must be a fraction in [0, 1], got {m['eer']!r}")
    return m


def read_quality(path: str | os.PathLike) -> dict[str, Any]:
    """A k-means ``quality.json`` (workflow/scripts/kmeans.py): ``n_clusters`` and, when the true
    speakers were known, ``nmi`` / ``accuracy`` / ``purity`` (absent otherwise)."""
    q = _read_json(path)
    if not isinstance(q, dict) or "n_clusters" not in q:
        raise TablesError(f"{path}: expected a JSON object with key 'n_clusters'")
    for key in ("n_clusters", "nmi", "accuracy", "purity"):
        if key in q:
            _number(q[key], f"{path}: {key}")
    return q


def read_train_record(path: str | os.PathLike) -> dict[str, Any]:
    """A ``<system>/train_record.json`` of the trainer (ssrl.train.cost): :data:`TRAIN_RECORD_KEYS`,
    numbers checked (``gpu_s`` / ``peak_gpu_bytes`` null on CPU; stamp keys null when unknown)."""
    r = _read_object(path, TRAIN_RECORD_KEYS)
    for key in TRAIN_RECORD_NUMBERS:
        _number(r[key], f"{path}: {key}")
    for key in ("gpu_s", "peak_gpu_bytes"):
        _number(r[key], f"{path}: {key}", allow_none=True)
    return r


def _read_tsv(path: str | os.PathLike, required: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TablesError(f"{path}: not a readable TSV file: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TablesError(f"{path}: missing column(s) {missing} in the header {list(df.columns)}")
    return df


def _numeric_columns(df: pd.DataFrame, path: str | os.PathLike, columns: Iterable[str]) -> pd.DataFrame:
    """Columns as float (empty cells NaN); a non-numeric cell raises naming its line."""
    for col in columns:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise TablesError(f"{path}:{i + 2}: column {col!r} is not a number: {df[col].iloc[i]!r}")
        df[col] = values.astype(float)
    return df


def read_label_log(path: str | os.PathLike) -> pd.DataFrame:
    """An SSRL ``label_log.tsv``: one row per epoch, columns at least :data:`LABEL_LOG_COLUMNS`
    (``phase`` fixed | update; nmi / accuracy / purity empty (NaN) without true labels)."""
    df = _read_tsv(path, LABEL_LOG_COLUMNS)
    bad = ~df["phase"].isin(["fixed", "update"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TablesError(f"{path}:{i + 2}: phase must be 'fixed' or 'update', got {df['phase'].iloc[i]!r}")
    df = _numeric_columns(df, path, [c for c in LABEL_LOG_COLUMNS if c != "phase"])
    for col in ("epoch", "live_classes"):
        if df[col].isna().any():
            raise TablesError(f"{path}:{int(np.flatnonzero(df[col].isna().to_numpy())[0]) + 2}: "
                              f"column {col!r} is empty")
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
        raise TablesError(f"{path}: no DET points or empty cells")
    return far, frr


def read_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ``scores/<list>.tsv`` (enroll, test, label, score) -> ``(labels (n,) int, scores (n,) float64)``."""
    try:
        df = pd.read_csv(path, sep="\t", usecols=lambda c: c in ("label", "score"))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TablesError(f"{path}: not a readable TSV file: {exc}") from None
    if set(df.columns) != {"label", "score"}:
        raise TablesError(f"{path}: expected columns 'label' and 'score' in the header")
    df = _numeric_columns(df, path, ("label", "score"))
    if df.isna().any().any():
        raise TablesError(f"{path}: empty label or score cells")
    labels = df["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise TablesError(f"{path}: labels must be 0 or 1")
    return labels.astype(np.int64), df["score"].to_numpy(float)


@dataclass(frozen=True)
class Reference:
    """A published result (docs/method.md §13): EER in %, minDCF at ``p_target`` (both may be None)."""

    id: str
    system: str
    trials: str
    eer_percent: float | None
    min_dcf: float | None
    p_target: float | None
    source: str


def read_published(path: str | os.PathLike) -> dict[str, Reference]:
    """The published-numbers file: ``references: {id: {system, trials, eer_percent, min_dcf,
    p_target, source}}`` -> ``{id: Reference}`` in file order."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise TablesError(f"{path}: not valid YAML: {exc}") from None
    refs = (doc or {}).get("references") if isinstance(doc, dict) else None
    if not isinstance(refs, dict):
        raise TablesError(f"{path}: expected a mapping 'references: {{id: {{...}}}}'")
    out = {}
    for rid, entry in refs.items():
        where = f"{path}: references.{rid}"
        if not isinstance(entry, dict):
            raise TablesError(f"{where}: expected a mapping with keys {list(REFERENCE_KEYS)}")
        missing = [k for k in REFERENCE_KEYS if k not in entry]
        unknown = sorted(set(entry) - set(REFERENCE_KEYS))
        if missing or unknown:
            raise TablesError(f"{where}: missing key(s) {missing}, unknown key(s) {unknown}")
        for key in ("system", "trials", "source"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise TablesError(f"{where}.{key}: expected a non-empty string, got {entry[key]!r}")
        eer = _number(entry["eer_percent"], f"{where}.eer_percent", allow_none=True)
        dcf = _number(entry["min_dcf"], f"{where}.min_dcf", allow_none=True)
        p = _number(entry["p_target"], f"{where}.p_target", allow_none=True)
        if (dcf is None) != (p is None):
            raise TablesError(f"{where}: min_dcf and p_target go together (both given or both null)")
        if p is not None and not 0.0 < p < 1.0:
            raise TablesError(f"{where}.p_target: must be in (0, 1), got {p}")
        out[str(rid)] = Reference(str(rid), entry["system"], entry["trials"], eer, dcf, p, entry["source"])
    return out


# ---------------------------------------------------------------------------------------
# the run


@dataclass
class SystemData:
    """One trained system's results: ``metrics`` (trial list -> metrics dict), the k-means
    ``quality`` of its embeddings (DINO, iterative rounds), its ``label_log`` (SSRL systems) and
    the ``record`` of its training job (train_record.json: cost and provenance)."""

    name: str
    table: str
    kind: str
    metrics: dict[str, dict[str, Any]]
    files: dict[str, Any]
    quality: dict[str, Any] | None = None
    label_log: pd.DataFrame | None = None
    record: dict[str, Any] | None = None
    round: int | None = None
    overrides: dict[str, Any] | None = None
    checkpoint: str | None = None

    def description(self, k: int) -> str:
        """What the system is, one short phrase."""
        if self.kind == "dino":
            return "DINO self-distillation, no labels"
        if self.kind == "iterative":
            src = "DINO k-means" if self.round == 1 else f"round {self.round - 1} k-means"
            return f"iterative round {self.round}: AAM classifier on {src} labels (K={k})"
        if self.kind == "ssrl":
            return "SSRL: DINO init, online relabelling + noisy-label modelling"
        if self.kind == "ablation":
            return f"SSRL with {format_overrides(self.overrides or {})}"
        return {"wavlm_step1": "WavLM frozen + ECAPA back-end on DINO k-means labels",
                "wavlm_step2": "SSRL from step 1, WavLM frozen",
                "wavlm_ft": "step 2 continued, WavLM fine-tuned"}[self.kind]

    def stamp(self) -> tuple[Any, ...] | None:
        """(commit, dirty, diff hash, config hash) its training job recorded; None without a record."""
        return None if self.record is None else tuple(self.record.get(k) for k in STAMP_KEYS)

    def labels(self) -> dict[str, float | None] | None:
        """Quality of the pseudo labels this system yields: k-means on its embeddings (DINO,
        iterative rounds) or its final online labels (SSRL systems); None when it yields none.
        Keys ``live``, ``nmi``, ``accuracy``, ``purity`` (None where unknown)."""
        if self.quality is not None:
            q = self.quality
            return {"live": q["n_clusters"], **{k: q.get(k) for k in ("nmi", "accuracy", "purity")}}
        if self.label_log is not None and len(self.label_log):
            last = self.label_log.iloc[-1]
            return {"live": last["live_classes"], **{k: _blank(last[k]) for k in ("nmi", "accuracy", "purity")}}
        return None


@dataclass
class RunData:
    """Everything the tables need: run name, K, trial lists, systems in table order, the
    ``compare`` mapping (system -> published reference id or None), the run's ``provenance``
    record (provenance.json; None when absent) and its folder ``run_dir`` (for the config store),
    and the ``stamp`` of the job building the tables (ssrl.provenance.job_stamp)."""

    run: str
    k: int
    trial_lists: list[str]
    systems: list[SystemData]
    compare: dict[str, str | None] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    run_dir: Path | None = None
    stamp: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(STAMP_KEYS))

    def system(self, name: str) -> SystemData | None:
        return next((s for s in self.systems if s.name == name), None)

    def in_table(self, table: str) -> list[SystemData]:
        return [s for s in self.systems if s.table == table]


def _blank(value: Any) -> Any:
    """None for NaN/None, else the value (as a plain float for numpy numbers)."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return float(value) if isinstance(value, (np.floating, np.integer)) else value


def format_overrides(overrides: Mapping[str, Any], prefix: str = "") -> str:
    """``{"ssrl": {"nlm": False}}`` -> ``"ssrl.nlm=false"`` (nested keys dotted, JSON values,
    strings unquoted)."""
    parts = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            parts.append(format_overrides(value, f"{name}."))
        else:
            parts.append(f"{name}={value if isinstance(value, str) else json.dumps(value)}")
    return ", ".join(parts) if parts else "no overrides"


def read_spec(text: str) -> dict[str, Any]:
    """A run spec from JSON text (starting with ``{``) or from the path of a JSON file."""
    try:
        spec = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TablesError(f"spec {text[:80]!r}: {exc}") from None
    if not isinstance(spec, dict):
        raise TablesError(f"spec: expected a JSON object, got {type(spec).__name__}")
    return spec


def validate_spec(spec: Mapping[str, Any]) -> None:
    """Check a run spec's structure; errors name the spec key."""
    for key, kind in (("run", str), ("k", int), ("trial_lists", list), ("systems", list), ("compare", dict)):
        if not isinstance(spec.get(key), kind):
            raise TablesError(f"spec.{key}: expected {kind.__name__}, got {spec.get(key)!r}")
    if not spec["trial_lists"]:
        raise TablesError("spec.trial_lists: empty")
    if spec.get("provenance") is not None and not isinstance(spec["provenance"], str):
        raise TablesError(f"spec.provenance: expected the path of provenance.json, got {spec['provenance']!r}")
    names = set()
    for i, s in enumerate(spec["systems"]):
        where = f"spec.systems[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise TablesError(f"{where}: expected a mapping with a 'name'")
        if s["name"] in names:
            raise TablesError(f"{where}: system {s['name']!r} listed twice")
        names.add(s["name"])
        if s.get("table") not in SYSTEM_TABLES:
            raise TablesError(f"{where}.table: expected one of {list(SYSTEM_TABLES)}, got {s.get('table')!r}")
        if s.get("kind") not in KINDS:
            raise TablesError(f"{where}.kind: expected one of {list(KINDS)}, got {s.get('kind')!r}")
        if s["kind"] == "iterative" and not (isinstance(s.get("round"), int) and s["round"] >= 1):
            raise TablesError(f"{where}.round: iterative systems need a round >= 1, got {s.get('round')!r}")
        if not isinstance(s.get("files"), dict):
            raise TablesError(f"{where}.files: expected a mapping")
        for key in ("metrics", "det", "scores"):
            per_list = s["files"].get(key)
            if per_list is not None and set(per_list) != set(spec["trial_lists"]):
                raise TablesError(f"{where}.files.{key}: trial lists {sorted(per_list)} differ from "
                                  f"spec.trial_lists {spec['trial_lists']}")


def load_run(spec: Mapping[str, Any]) -> RunData:
    """Read the metrics, k-means quality, label logs and training records named by a run spec
    (module docstring), the run's provenance.json (spec ``provenance``, when it exists) and the
    stamp of this job (environment)."""
    validate_spec(spec)
    systems = []
    for s in spec["systems"]:
        files = s["files"]
        if "metrics" not in files:
            raise TablesError(f"spec: system {s['name']!r} has no files.metrics")
        systems.append(SystemData(
            name=s["name"], table=s["table"], kind=s["kind"], files=files,
            metrics={t: read_metrics(files["metrics"][t]) for t in spec["trial_lists"]},
            quality=read_quality(files["quality"]) if files.get("quality") else None,
            label_log=read_label_log(files["label_log"]) if files.get("label_log") else None,
            record=read_train_record(files["train_record"]) if files.get("train_record") else None,
            round=s.get("round"), overrides=s.get("overrides"), checkpoint=s.get("checkpoint"),
        ))
    run_dir = Path(spec["provenance"]).parent if spec.get("provenance") else None
    record = None
    if run_dir is not None and Path(spec["provenance"]).exists():
        try:
            record = read_provenance(run_dir)
        except ValueError as exc:
            raise TablesError(str(exc)) from None
    return RunData(run=spec["run"], k=spec["k"], trial_lists=list(spec["trial_lists"]), systems=systems,
                   compare=dict(spec["compare"]), provenance=record, run_dir=run_dir, stamp=job_stamp())


# ---------------------------------------------------------------------------------------
# tables


@dataclass
class Table:
    """One result table: ``frame`` holds full-precision values (None/NaN = blank), ``formats``
    maps a column to a :data:`_FORMATS` key for Markdown/HTML; ``notes`` are printed under it."""

    name: str
    title: str
    how_to_read: str
    frame: pd.DataFrame
    formats: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        """The formatted cells, row by row ('' where blank)."""
        out = []
        for row in self.frame.itertuples(index=False):
            cells = []
            for col, value in zip(self.frame.columns, row):
                if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                    cells.append("")
                elif col in self.formats:
                    cells.append(_FORMATS[self.formats[col]](value))
                else:
                    cells.append(str(value))
            out.append(cells)
        return out


def metric_columns(trial_list: str) -> tuple[str, str, str]:
    """Column names of EER % and minDCF at P_target 0.01 / 0.05 for one trial list."""
    return (f"EER % ({trial_list})", f"minDCF 0.01 ({trial_list})", f"minDCF 0.05 ({trial_list})")


def _metric_cells(system: SystemData, trial_lists: Sequence[str]) -> dict[str, float]:
    row = {}
    for t in trial_lists:
        m = system.metrics[t]
        eer_col, dcf1_col, dcf5_col = metric_columns(t)
        row[eer_col] = 100.0 * float(m["eer"])
        row[dcf1_col] = float(m["min_dcf_0.01"])
        row[dcf5_col] = float(m["min_dcf_0.05"])
    return row


def _metric_formats(trial_lists: Sequence[str]) -> dict[str, str]:
    out = {}
    for t in trial_lists:
        eer_col, dcf1_col, dcf5_col = metric_columns(t)
        out.update({eer_col: "eer", dcf1_col: "dcf", dcf5_col: "dcf"})
    return out


LABEL_COLUMNS = {"live": "label clusters", "nmi": "label NMI"}
PUBLISHED_COLUMNS = ("published EER %", "published minDCF", "published P_target", "published reference")
_PUBLISHED_FORMATS = {"published EER %": "pub_eer", "published minDCF": "g", "published P_target": "g"}


def _label_cells(system: SystemData) -> dict[str, Any]:
    q = system.labels() or {}
    return {LABEL_COLUMNS["live"]: q.get("live"), LABEL_COLUMNS["nmi"]: q.get("nmi")}


def _trial_list_name(name: str) -> str:
    return f"{name} ({TRIAL_LIST_NAMES[name]})" if name in TRIAL_LIST_NAMES else name


def check_compare(compare: Mapping[str, str | None], references: Mapping[str, Reference]) -> None:
    """Every published id named by config ``tables.compare`` must exist in the published file."""
    for system, rid in compare.items():
        if rid is not None and rid not in references:
            raise TablesError(f"config tables.compare.{system}: unknown published id {rid!r}; "
                              f"the published file has {sorted(references)}")


def _published_cells(system: SystemData, run: RunData, references: Mapping[str, Reference],
                     unmatched: set[str]) -> dict[str, Any]:
    """The published columns of a row: filled only when config maps the system to a reference
    and the run scores the reference's trial list; ``unmatched`` collects the lists it misses."""
    row = dict.fromkeys(PUBLISHED_COLUMNS)
    rid = run.compare.get(system.name)
    if rid is None:
        return row
    ref = references[rid]
    if ref.trials not in run.trial_lists:
        unmatched.add(ref.trials)
        return row
    row.update({"published EER %": ref.eer_percent, "published minDCF": ref.min_dcf,
                "published P_target": ref.p_target, "published reference": f"{ref.system}; source: {ref.source}"})
    return row


def _how_to_read(run: RunData, systems: Sequence[SystemData]) -> str:
    """EER/minDCF reading guide with the trial lists' sizes and score normalisation."""
    parts = ["EER in %, minDCF with C_miss = C_fa = 1 normalised, at P_target 0.01 and 0.05; lower is better."]
    if systems:
        for t in run.trial_lists:
            m = systems[0].metrics[t]
            norm = m.get("score_norm", "none")
            norm_text = {"none": "cosine scores", "asnorm": "cosine scores, adaptive s-norm"}.get(
                norm, f"cosine scores, {norm}")
            parts.append(f"Trial list {_trial_list_name(t)}: {int(m['n_trials'])} trials ({int(m['n_target'])} "
                         f"target, {int(m['n_nontarget'])} non-target), {norm_text}.")
    return " ".join(parts)


def _system_frame(rows: list[dict[str, Any]], columns: list[str], int_columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for col in int_columns:
        frame[col] = frame[col].astype("Int64") if len(frame) else frame[col]
    return frame


def _published_notes(run: RunData, references: Mapping[str, Reference], unmatched: set[str]) -> list[str]:
    notes = []
    if unmatched:
        lists = ", ".join(_trial_list_name(t) for t in sorted(unmatched))
        notes.append(f"The published numbers refer to {lists}, which this run does not score "
                     f"(its trial lists: {', '.join(run.trial_lists)}): the published columns are blank.")
    else:
        notes.append("Published numbers come from other papers/toolkits (system and source in the row); "
                     "they are shown for the system config `tables.compare` maps to them, on the same trial list.")
    return notes


COST_COLUMNS = {"examples": "train steps × batch", "cpu": "train CPU-s", "gpu": "train GPU-s"}
_COST_FORMATS = {COST_COLUMNS["examples"]: "int", COST_COLUMNS["cpu"]: "one", COST_COLUMNS["gpu"]: "one"}
COST_RULE = ("Training cost (train steps × batch: optimiser steps × global batch, the utterances drawn for "
             "training, one batch item each (DINO cuts several crops of each); "
             "train CPU-s: CPU-seconds of the training processes from their start, imports and DataLoader workers "
             "included; train GPU-s: processes × wall seconds on CUDA, blank on CPU): the training jobs of the "
             "system's chain after DINO, summed: iter_rN = rounds 1..N, SSRL and each ablation = its own stage, "
             "wavlm_step2 = steps 1-2, wavlm_ft = steps 1, 2 and 2-ft. DINO's cost is in its own row only: every "
             "other system starts from the same DINO model{dino}. Not counted: embedding extraction and k-means "
             "(also those between iterative rounds), scoring. Source: <system>/train_record.json, written by the "
             "trainer (table 'training' lists each job).")


def cost_chain(run: RunData, system: SystemData) -> list[SystemData]:
    """The systems whose training jobs make up ``system``'s training cost (:data:`COST_RULE`): the
    iterative rounds 1..r for round r, WavLM steps 1..this step, else the system itself."""
    if system.kind == "iterative":
        return sorted((s for s in run.systems if s.kind == "iterative" and s.round <= system.round),
                      key=lambda s: s.round)
    if system.kind in ("wavlm_step2", "wavlm_ft"):
        steps = ("wavlm_step1", "wavlm_step2", "wavlm_ft")
        upto = steps[:steps.index(system.kind) + 1]
        return [s for s in run.systems if s.kind in upto]
    return [system]


def _has_gpu(run: RunData) -> bool:
    return any(s.record is not None and s.record["gpu_s"] is not None for s in run.systems)


def _cost_columns(run: RunData) -> list[str]:
    """The cost columns of the system tables: GPU-seconds only when some job ran on CUDA."""
    return [COST_COLUMNS["examples"], COST_COLUMNS["cpu"], *([COST_COLUMNS["gpu"]] if _has_gpu(run) else [])]


def _cost_cells(run: RunData, system: SystemData) -> dict[str, Any]:
    """Summed cost of ``system``'s chain (:func:`cost_chain`); blank when a job of it has no record."""
    chain = cost_chain(run, system)
    records = [s.record for s in chain]
    if any(r is None for r in records):
        return dict.fromkeys(_cost_columns(run))
    gpu = [r["gpu_s"] for r in records if r["gpu_s"] is not None]
    cells = {COST_COLUMNS["examples"]: sum(int(r["examples_seen"]) for r in records),
             COST_COLUMNS["cpu"]: sum(float(r["cpu_s"]) for r in records)}
    if _has_gpu(run):
        cells[COST_COLUMNS["gpu"]] = sum(gpu) if gpu else None
    return cells


def _cost_note(run: RunData) -> str:
    dino = run.system("dino")
    text = ""
    if dino is not None and dino.record is not None:
        text = (f" ({int(dino.record['examples_seen'])} utterances, {float(dino.record['cpu_s']):.0f} CPU-s "
                f"in this run)")
    return COST_RULE.format(dino=text)


def _short(commit: str | None, dirty: bool | None, diff: str | None) -> str:
    """``1c209feb30a2`` or ``1c209feb30a2 + uncommitted changes (diff 84f26926c70d)``; ``unknown``."""
    if commit is None:
        return "unknown"
    return commit[:12] + (f" + uncommitted changes (diff {diff[:12]})" if dirty and diff else "")


def training_table(run: RunData) -> Table:
    """Each training job as its train_record.json gives it: cost, device, and the commit and config
    hash it ran under."""
    rows = []
    for s in run.systems:
        r = s.record
        if r is None:
            continue
        rows.append({"system": s.name, "optimiser steps": r["optimiser_steps"], "global batch": r["global_batch"],
                     "steps × batch": r["examples_seen"], "processes": r["processes"],
                     "device": f"{r['device']}: {r.get('device_name', '')}".rstrip(": "),
                     "wall s": r["wall_s"], "CPU-s": r["cpu_s"], "GPU-s": r["gpu_s"],
                     "peak RSS MiB": r["peak_rss_bytes"] / 2**20,
                     "peak GPU MiB": None if r["peak_gpu_bytes"] is None else r["peak_gpu_bytes"] / 2**20,
                     "attempts": r["attempts"], "commit": _short(r["commit"], r["dirty"], r["diff_sha256"]),
                     "config hash": r["config_hash"] or "unknown"})
    columns = ["system", "optimiser steps", "global batch", "steps × batch", "processes", "device", "wall s", "CPU-s",
               "GPU-s", "peak RSS MiB", "peak GPU MiB", "attempts", "commit", "config hash"]
    frame = _system_frame(rows, columns, ["optimiser steps", "global batch", "steps × batch", "processes", "attempts"])
    notes = ["One row per training job, its own cost only (the system tables sum the jobs of a chain). wall s / "
             "CPU-s / GPU-s count from each training process's start (imports included) to its model file; a job "
             "stopped and resumed adds its earlier attempts up to their last checkpoint (attempts). peak RSS: the "
             "largest training process without its DataLoader workers; peak GPU: torch's peak allocation on one "
             "GPU. Source: <system>/train_record.json; Snakemake's own measurements of each job (sampled) are in "
             "results/<run>/benchmarks/."]
    if not rows:
        notes.insert(0, "No training records (train_record.json) were found.")
    return Table("training", "Training jobs: cost and provenance",
                 "Per training job: optimiser steps, global batch (over all processes), processes, device, seconds, "
                 "peak memory, and the commit and config hash it ran under (results/<run>/provenance/).",
                 frame, {"wall s": "one", "CPU-s": "one", "GPU-s": "one", "peak RSS MiB": "one",
                         "peak GPU MiB": "one"}, notes)


# ---------------------------------------------------------------------------------------
# provenance of the tables


def _stamp_text(stamp: Sequence[Any]) -> str:
    commit, dirty, diff, chash = stamp
    return f"commit {_short(commit, dirty, diff)}, config {chash or 'unknown'}"


def provenance_warnings(run: RunData) -> list[str]:
    """Warnings when the tables' files come from more than one (commit, uncommitted diff, config
    hash): the training records of the systems and the job building the tables (when known),
    grouped, with the config keys that differ (from the run's config store)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for s in run.systems:
        if s.record is not None:
            groups.setdefault(s.stamp(), []).append(s.name)
    tables_stamp = tuple(run.stamp.get(k) for k in STAMP_KEYS)
    if tables_stamp[0] is not None or tables_stamp[3] is not None:
        groups.setdefault(tables_stamp, []).append("these tables (and any scoring rerun with them)")
    if len(groups) <= 1:
        return []
    parts = [f"{', '.join(names)}: {_stamp_text(stamp)}" for stamp, names in groups.items()]
    text = ("WARNING: these tables combine files made by different code or configurations (they are not one "
            "experiment): " + "; ".join(parts) + ".")
    hashes = list(dict.fromkeys(stamp[3] for stamp in groups if stamp[3] is not None))
    if len(hashes) > 1 and run.run_dir is not None:
        base = stored_config(run.run_dir, hashes[0])
        for other in hashes[1:]:
            cfg = stored_config(run.run_dir, other)
            if base is None or cfg is None:
                text += f" Config {hashes[0]} vs {other}: not both in {run.run_dir}/provenance/."
                continue
            diff = config_diff(base, cfg)
            shown = "; ".join(f"{k}: {format_value(a)} -> {format_value(b)}" for k, a, b in diff[:12])
            more = f" (and {len(diff) - 12} more)" if len(diff) > 12 else ""
            text += f" Config {hashes[0]} -> {other}: {shown}{more}."
    return [text]


def provenance_lines(run: RunData, built: str) -> list[str]:
    """The provenance block opening summary.md / summary.html (Markdown lines): commit, config hash,
    hardware, dates, the reproduce command, and :func:`provenance_warnings`."""
    stamps = {s.stamp() for s in run.systems if s.record is not None}
    p = run.provenance or {}
    if len(stamps) == 1:
        commit, dirty, diff, chash = next(iter(stamps))
    else:                                       # no training records: the run's record (or unknown)
        commit, dirty, diff, chash = (p.get(k) for k in STAMP_KEYS)
    where = f"results/{run.run}/provenance.json" if p else "no provenance.json (tables built outside the workflow)"
    mixed = "mixed, see the warning"
    lines = [f"**Provenance** ({where}; per training job: <system>/train_record.json, table 'training'; two runs: "
             f"`ssrl compare RUN_A RUN_B`)", "",
             f"- commit: {mixed if len(stamps) > 1 else _short(commit, dirty, diff)}",
             f"- config hash: {mixed if len(stamps) > 1 else chash or 'unknown'}"]
    if p.get("hardware"):
        lines.append(f"- hardware: {hardware_line(p['hardware'])} (the machine running Snakemake; "
                     f"training devices in table 'training')")
    started = f"run started {p['started']}, " if p.get("started") else ""
    lines.append(f"- date: {started}tables built {built}")
    if p.get("reproduce"):
        at = f", at commit {_short(p['commit'], p.get('dirty'), p.get('diff_sha256'))}" if p.get("commit") else ""
        lines.append(f"- reproduce: `{p['reproduce']}` (in {p.get('workdir', 'the working directory')}{at})")
    lines += ["", *(f"> **{w}**" for w in provenance_warnings(run))]
    return lines


def main_table(run: RunData, references: Mapping[str, Reference]) -> Table:
    """DINO, iterative rounds 1..R and SSRL: EER %, minDCF per trial list, the quality of the
    pseudo labels each system yields, and the published reference configured for it."""
    systems = run.in_table("main")
    unmatched: set[str] = set()
    label_note = ("label clusters / NMI: non-empty clusters and NMI against the true speakers of the pseudo "
                  "labels the system yields (k-means on its embeddings for DINO and the iterative rounds; "
                  "the final online labels for SSRL); blank without true labels.")
    rows = [{"system": s.name, "what it is": s.description(run.k), **_metric_cells(s, run.trial_lists),
             **_label_cells(s), **_cost_cells(run, s), **_published_cells(s, run, references, unmatched)}
            for s in systems]
    columns = ["system", "what it is", *[c for t in run.trial_lists for c in metric_columns(t)],
               *LABEL_COLUMNS.values(), *_cost_columns(run), *PUBLISHED_COLUMNS]
    notes = [label_note, _cost_note(run), *_published_notes(run, references, unmatched),
             "SSRL's own published numbers are not available to this project and are left blank."]
    if not systems:
        notes.insert(0, "No systems.")
    return Table("main", "Main results: DINO, iterative clustering rounds, SSRL", _how_to_read(run, systems),
                 _system_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]]),
                 {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **_COST_FORMATS,
                  **_PUBLISHED_FORMATS}, notes)


def ablations_table(run: RunData) -> Table:
    """Each ablation system (config ``ablations``) against SSRL (the first row)."""
    ablations = run.in_table("ablations")
    ssrl = run.system("ssrl")
    systems = []
    if ablations:                      # no ablations: no rows at all (not even the SSRL reference)
        systems = ([ssrl] if ssrl is not None else []) + ablations
    rows = [{"system": s.name,
             "what it is": "SSRL as configured (the reference row)" if s.kind == "ssrl" else s.description(run.k),
             **_metric_cells(s, run.trial_lists), **_label_cells(s), **_cost_cells(run, s)} for s in systems]
    columns = ["system", "what it is", *[c for t in run.trial_lists for c in metric_columns(t)],
               *LABEL_COLUMNS.values(), *_cost_columns(run)]
    notes = ["label clusters / NMI: the final online pseudo labels (non-empty classes, NMI against the true "
             "speakers; blank without true labels).", _cost_note(run)]
    if not ablations:
        notes.insert(0, "No ablation systems are configured (config `ablations`): the table has no rows.")
    return Table("ablations", "Ablations of SSRL", _how_to_read(run, systems),
                 _system_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]]),
                 {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **_COST_FORMATS}, notes)


def wavlm_table(run: RunData, references: Mapping[str, Reference]) -> Table:
    """WavLM step 1, step 2 and step 2-ft, with the front-end they used."""
    systems = run.in_table("wavlm")
    unmatched: set[str] = set()
    rows = []
    for s in systems:
        front = "random-init front-end" if s.checkpoint is None else f"checkpoint {Path(s.checkpoint).name}"
        rows.append({"system": s.name, "what it is": s.description(run.k), "front-end": front,
                     **_metric_cells(s, run.trial_lists), **_label_cells(s), **_cost_cells(run, s),
                     **_published_cells(s, run, references, unmatched)})
    columns = ["system", "what it is", "front-end", *[c for t in run.trial_lists for c in metric_columns(t)],
               *LABEL_COLUMNS.values(), *_cost_columns(run), *PUBLISHED_COLUMNS]
    notes = []
    if not systems:
        notes.append("The WavLM systems are off (config `wavlm.enabled`): the table has no rows.")
    else:
        if any(s.checkpoint is None for s in systems):
            notes.append("random-init front-end: no WavLM checkpoint is configured (config `wavlm.checkpoint` is "
                         "null), so the front-end is a tiny randomly initialised WavLM; these rows exercise the "
                         "mechanics, not WavLM's accuracy.")
        notes.append("label clusters / NMI: the final online pseudo labels of step 2 and step 2-ft (step 1 trains "
                     "on the fixed DINO k-means labels).")
        notes.append(_cost_note(run))
        notes += _published_notes(run, references, unmatched)
    return Table("wavlm", "WavLM systems", _how_to_read(run, systems),
                 _system_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]]),
                 {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **_COST_FORMATS,
                  **_PUBLISHED_FORMATS}, notes)


def pseudo_labels_table(run: RunData) -> Table:
    """Pseudo-label quality: k-means init (on DINO), each iterative round's k-means, and SSRL's
    labels after each label-update epoch (live clusters, NMI, accuracy, purity)."""
    rows = []

    def add(labels: str, what: str, epoch: Any, live: Any, q: Mapping[str, Any]) -> None:
        rows.append({"labels": labels, "what they are": what, "epoch": epoch, "live clusters": live,
                     **{name: _blank(q.get(key)) for name, key in
                        (("NMI", "nmi"), ("accuracy", "accuracy"), ("purity", "purity"))}})

    dino = run.system("dino")
    if dino is not None and dino.quality is not None:
        add("k-means init", f"k-means (K={run.k}) on DINO embeddings", None, dino.quality["n_clusters"],
            dino.quality)
    for s in run.systems:
        if s.kind == "iterative" and s.quality is not None:
            add(f"round {s.round}", f"k-means (K={run.k}) on {s.name} embeddings", None, s.quality["n_clusters"],
                s.quality)
    ssrl = run.system("ssrl")
    if ssrl is not None and ssrl.label_log is not None:
        for _, r in ssrl.label_log[ssrl.label_log["phase"] == "update"].iterrows():
            add("SSRL", "online labels after this label-update epoch", r["epoch"], r["live_classes"], r)
    frame = pd.DataFrame(rows, columns=["labels", "what they are", "epoch", "live clusters", "NMI", "accuracy",
                                        "purity"])
    if len(frame):
        frame["epoch"] = frame["epoch"].astype("Int64")
        frame["live clusters"] = frame["live clusters"].astype("Int64")
    notes = []
    if not rows:
        notes.append("No pseudo labels were found.")
    if rows and frame[["NMI", "accuracy", "purity"]].isna().all().all():
        notes.append("NMI / accuracy / purity are blank: the training set has no true speaker labels.")
    return Table("pseudo_labels", "Pseudo-label quality",
                 "live clusters: non-empty clusters (classes holding an utterance); NMI (arithmetic "
                 "normalisation), accuracy (one-to-one Hungarian matching) and purity against the true "
                 "speakers, in [0, 1], higher is better. epoch: the index in the label log (from 0).",
                 frame, {"NMI": "frac", "accuracy": "frac", "purity": "frac"}, notes)


def published_table(references: Mapping[str, Reference], compare: Mapping[str, str | None]) -> Table:
    """Every entry of the published-numbers file, with the systems of this run compared to it."""
    compared: dict[str, list[str]] = {}
    for system, rid in compare.items():
        if rid is not None:
            compared.setdefault(rid, []).append(system)
    rows = [{"reference": r.system, "trial list": r.trials, "EER %": r.eer_percent, "minDCF": r.min_dcf,
             "P_target": r.p_target, "source": r.source, "compared with": ", ".join(compared.get(r.id, []))}
            for r in references.values()]
    frame = pd.DataFrame(rows, columns=["reference", "trial list", "EER %", "minDCF", "P_target", "source",
                                        "compared with"])
    return Table("published", "Published reference numbers",
                 "Numbers reported elsewhere (config `tables.published`), as reported: EER in %, minDCF at the "
                 "P_target given; blank where the source gives none. 'compared with': this pipeline's systems shown beside them "
                 "(config `tables.compare`).",
                 frame, {"EER %": "pub_eer", "minDCF": "g", "P_target": "g"},
                 ["SSRL's own published numbers are not available to this project and are not listed."])


def build_tables(run: RunData, references: Mapping[str, Reference]) -> list[Table]:
    """All tables of :data:`TABLE_NAMES`, in that order; the tables of systems open their notes
    with :func:`provenance_warnings` when there are any."""
    check_compare(run.compare, references)
    tables = [main_table(run, references), ablations_table(run), wavlm_table(run, references),
              pseudo_labels_table(run), training_table(run), published_table(references, run.compare)]
    warnings = provenance_warnings(run)
    for table in tables:
        if table.name != "published":
            table.notes[:0] = warnings
    return tables


def to_markdown(table: Table, level: int = 1) -> str:
    """Markdown: a heading, the how-to-read line, a pipe table (or a no-rows line), the notes."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"{'#' * level} {table.title}", "", table.how_to_read, ""]
    cols = list(table.frame.columns)
    if len(table.frame):
        right = [c in table.formats or pd.api.types.is_numeric_dtype(table.frame[c]) for c in cols]
        lines.append("| " + " | ".join(esc(c) for c in cols) + " |")
        lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.cells()]
    else:
        lines.append("(no rows)")
    if table.notes:
        lines.append("")
        lines += [f"* {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_html(tables: Sequence[Table], title: str, block: Sequence[str] = ()) -> str:
    """One self-contained HTML page: the provenance ``block`` (:func:`provenance_lines`), then every
    table (for the Snakemake report)."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #bbb;padding:.2em .5em;font-size:.9em}td.n{text-align:right}"
             "th{background:#eee}p.how{color:#333}li{font-size:.9em}p.warn{color:#a00}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", _block_html(block)]
    for table in tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2><p class='how'>{html.escape(table.how_to_read)}</p>")
        if len(table.frame):
            numeric = [c in table.formats or pd.api.types.is_numeric_dtype(table.frame[c])
                       for c in table.frame.columns]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.frame.columns)
                         + "</tr>")
            for row in table.cells():
                parts.append("<tr>" + "".join(f"<td class='n'>{html.escape(v)}</td>" if n
                                              else f"<td>{html.escape(v)}</td>" for v, n in zip(row, numeric))
                             + "</tr>")
            parts.append("</table>")
        else:
            parts.append("<p>(no rows)</p>")
        if table.notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def summary_markdown(tables: Sequence[Table], run: str, block: Sequence[str] = ()) -> str:
    """``summary.md``: the provenance ``block`` (:func:`provenance_lines`), then every table, under
    one heading."""
    head = "".join(f"{line}\n" for line in block)
    return f"# Results of run {run}\n\n" + (head + "\n" if head else "") + "\n".join(
        to_markdown(t, level=2) for t in tables)


def _block_html(block: Sequence[str]) -> str:
    """The provenance block's Markdown lines as HTML: ``- `` items, ``> **...**`` warnings,
    ``**...**`` bold and backtick code."""
    def inline(text: str) -> str:
        out = html.escape(text)
        out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", out)

    parts, items = [], []
    for line in [*block, ""]:
        if line.startswith("- "):
            items.append(f"<li>{inline(line[2:])}</li>")
            continue
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.startswith("> "):
            parts.append(f"<p class='warn'>{inline(line[2:])}</p>")
        elif line:
            parts.append(f"<p>{inline(line)}</p>")
    return "\n".join(parts)


def write_tables(tables: Sequence[Table], out_dir: str | os.PathLike, run: str,
                 block: Sequence[str] = ()) -> list[Path]:
    """Write ``<name>.md`` and ``<name>.csv`` per table and ``summary.md`` / ``summary.html``
    opening with the provenance ``block`` (atomically) under ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for table in tables:
        with atomic_open(out_dir / f"{table.name}.md") as fh:
            fh.write(to_markdown(table))
        with atomic_path(out_dir / f"{table.name}.csv") as tmp:
            table.frame.to_csv(tmp, index=False, na_rep="")
        written += [out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"]
    with atomic_open(out_dir / "summary.md") as fh:
        fh.write(summary_markdown(tables, run, block))
    with atomic_open(out_dir / "summary.html") as fh:
        fh.write(to_html(tables, f"Results of run {run}", block))
    return written + [out_dir / "summary.md", out_dir / "summary.html"]


# ---------------------------------------------------------------------------------------
# plots

_LINESTYLES = {"main": "-", "ablations": "--", "wavlm": ":"}
_DET_TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass
class DetCurve:
    """DET points of one system on one trial list (fractions) and its EER (fraction)."""

    far: np.ndarray
    frr: np.ndarray
    eer: float
    n_target: int
    n_nontarget: int


def _colour(i: int) -> Any:
    """The i-th line colour: tab10, then Dark2 (18 distinct colours, then repeating)."""
    from matplotlib import colormaps

    palette = [*colormaps["tab10"].colors, *colormaps["Dark2"].colors]
    return palette[i % len(palette)]


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _empty_figure(path: str | os.PathLike, message: str) -> None:
    fig = Figure(figsize=(6, 2))
    fig.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    _save(fig, path)


def plot_det(curves: Mapping[str, Mapping[str, DetCurve]], groups: Mapping[str, str],
             path: str | os.PathLike) -> None:
    """DET curves (normal-deviate axes, FAR vs FRR in %) of every system, one panel per trial
    list. ``curves``: trial list -> system -> :class:`DetCurve`; ``groups``: system -> table
    (sets the line style)."""
    lists = list(curves)
    if not lists or not any(curves.values()):
        return _empty_figure(path, "no DET curves")
    fig = Figure(figsize=(6.2 * len(lists), 6.2), layout="constrained")
    axes = fig.subplots(1, len(lists), squeeze=False)[0]
    for ax, t in zip(axes, lists):
        eps = min(min(0.5 / c.n_target, 0.5 / c.n_nontarget) for c in curves[t].values())
        lo = max(_DET_TICKS[0], max((x for x in _DET_TICKS if x <= eps), default=_DET_TICKS[0]))
        for i, (name, c) in enumerate(curves[t].items()):
            x = ndtri(np.clip(c.far, lo, 1.0 - lo))
            y = ndtri(np.clip(c.frr, lo, 1.0 - lo))
            line, = ax.plot(x, y, linestyle=_LINESTYLES.get(groups.get(name, "main"), "-"), color=_colour(i),
                            label=f"{name} (EER {100 * c.eer:.2f} %)")
            e = ndtri(min(max(c.eer, lo), 0.99))
            ax.plot([e], [e], marker="o", markersize=4, color=line.get_color())
        ticks = [v for v in _DET_TICKS if v >= lo]
        ax.set_xticks(ndtri(ticks), [f"{100 * v:g}" for v in ticks])
        ax.set_yticks(ndtri(ticks), [f"{100 * v:g}" for v in ticks])
        ax.set_xlim(ndtri(lo), ndtri(0.5))
        ax.set_ylim(ndtri(lo), ndtri(0.5))
        ax.plot(ax.get_xlim(), ax.get_ylim(), color="0.8", linewidth=0.8, zorder=0)
        ax.set_xlabel("false acceptance rate (%)")
        ax.set_ylabel("false rejection rate (%)")
        ax.set_title(f"DET: {_trial_list_name(t)}")
        ax.grid(True, color="0.9")
        ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)


def plot_labels(logs: Mapping[str, pd.DataFrame], init: Mapping[str, Any] | None,
                path: str | os.PathLike) -> None:
    """Label NMI and live clusters vs epoch for the SSRL systems (``logs``: system -> label log),
    with the k-means init (``init``: DINO quality.json, or None) as dashed reference lines."""
    if not logs:
        return _empty_figure(path, "no SSRL label logs")
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_nmi, ax_live = fig.subplots(1, 2)
    have_truth = False
    for i, (name, log) in enumerate(logs.items()):
        colour = _colour(i)
        if log["nmi"].notna().any():
            have_truth = True
            ax_nmi.plot(log["epoch"], log["nmi"], marker=".", color=colour, label=name)
        ax_live.plot(log["epoch"], log["live_classes"], marker=".", color=colour, label=name)
        update = log.loc[log["phase"] == "update", "epoch"]
        if name == "ssrl" and len(update):
            for ax in (ax_nmi, ax_live):
                ax.axvline(update.iloc[0] - 0.5, color="0.6", linestyle=":", linewidth=1)
    if init is not None:
        if init.get("nmi") is not None:
            ax_nmi.axhline(init["nmi"], color="k", linestyle="--", linewidth=1,
                           label=f"k-means init ({init['nmi']:.3f})")
        ax_live.axhline(init["n_clusters"], color="k", linestyle="--", linewidth=1,
                        label=f"k-means init ({init['n_clusters']})")
    if not have_truth:
        ax_nmi.text(0.5, 0.5, "no true speaker labels:\nNMI unavailable", ha="center", va="center",
                    transform=ax_nmi.transAxes)
    ax_nmi.set_ylabel("NMI of the pseudo labels")
    ax_live.set_ylabel("live clusters")
    ax_live.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, title in ((ax_nmi, "label NMI"), (ax_live, "live clusters")):
        ax.set_xlabel("epoch (dotted: first SSRL label-update epoch)")
        ax.set_title(title)
        ax.grid(True, color="0.9")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path)


def plot_training(logs: Mapping[str, pd.DataFrame], path: str | os.PathLike, ncols: int = 3) -> None:
    """Training loss (left axis) and learning rate (right axis, log scale) vs optimiser step,
    one panel per system (``logs``: system -> train log; ``step`` rows, else ``epoch`` rows)."""
    if not logs:
        return _empty_figure(path, "no training logs")
    n = len(logs)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, log) in zip(axes, logs.items()):
        rows = log[log["kind"] == "step"]
        if not len(rows):
            rows = log[log["kind"] == "epoch"]
        ax.set_title(name)
        ax.set_xlabel("optimiser step")
        if not len(rows):
            ax.text(0.5, 0.5, "empty log", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.plot(rows["step"], rows["loss"], color="tab:blue")
        ax.set_ylabel("loss", color="tab:blue")
        lr = rows[["step", "lr"]].dropna()
        if len(lr) and (lr["lr"] > 0).any():
            ax2 = ax.twinx()
            ax2.plot(lr["step"], lr["lr"], color="tab:orange", linestyle="--")
            ax2.set_yscale("log")
            ax2.set_ylabel("learning rate", color="tab:orange")
        ax.grid(True, color="0.9")
    for ax in axes[n:]:
        ax.set_visible(False)
    _save(fig, path)


def plot_scores(scores: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray, Mapping[str, Any]]],
                path: str | os.PathLike, ncols: int = 3, bins: int = 60) -> None:
    """Target / non-target score histograms, one panel per (system, trial list); ``scores``:
    ``(system, list) -> (labels, scores, metrics)``; the EER threshold is drawn as a line.
    ``bins``: at most this many bins (fewer, about sqrt(trials), for short lists)."""
    if not scores:
        return _empty_figure(path, "no trial scores")
    n = len(scores)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, ((name, t), (labels, values, metrics)) in zip(axes, scores.items()):
        edges = np.histogram_bin_edges(values, bins=min(bins, max(10, int(math.sqrt(len(values))))))
        for lab, colour, text in ((0, "tab:red", "non-target"), (1, "tab:green", "target")):
            if (labels == lab).any():
                density, _ = np.histogram(values[labels == lab], bins=edges, density=True)
                ax.stairs(density, edges, fill=True, alpha=0.55, color=colour, label=text)
        if metrics.get("eer_threshold") is not None:
            ax.axvline(metrics["eer_threshold"], color="k", linestyle="--", linewidth=1, label="EER threshold")
        ax.set_title(f"{name}, {t} (EER {100 * metrics['eer']:.2f} %)", fontsize=9)
        ax.set_xlabel("score" + (" (AS-norm)" if metrics.get("score_norm") == "asnorm" else " (cosine)"))
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    _save(fig, path)


def make_plots(spec: Mapping[str, Any], out_dir: str | os.PathLike, progress_every_s: float = 10.0) -> list[Path]:
    """Read the DET points, scores, training and label logs named by a run spec and write
    ``<out_dir>/{det,labels,training,scores}.png``; returns the paths written."""
    run = load_run(spec)
    out_dir = Path(out_dir)
    groups = {s.name: s.table for s in run.systems}
    curves: dict[str, dict[str, DetCurve]] = {t: {} for t in run.trial_lists}
    score_data = {}
    train_logs = {}
    progress = Progress(len(run.systems), "plots: reading", unit="system", every_s=progress_every_s)
    for s in run.systems:
        for key in ("det", "scores", "train_log"):
            if key not in s.files:
                raise TablesError(f"spec: system {s.name!r} has no files.{key}")
        for t in run.trial_lists:
            m = s.metrics[t]
            far, frr = read_det(s.files["det"][t])
            curves[t][s.name] = DetCurve(far, frr, float(m["eer"]), int(m["n_target"]), int(m["n_nontarget"]))
            labels, values = read_scores(s.files["scores"][t])
            score_data[(s.name, t)] = (labels, values, m)
        train_logs[s.name] = read_train_log(s.files["train_log"])
        progress.update(1)
    dino = run.system("dino")
    paths = {name: out_dir / f"{name}.png" for name in PLOT_NAMES}
    plot_det(curves, groups, paths["det"])
    plot_labels({s.name: s.label_log for s in run.systems if s.label_log is not None},
                dino.quality if dino is not None else None, paths["labels"])
    plot_training(train_logs, paths["training"])
    plot_scores(score_data, paths["scores"])
    return list(paths.values())
