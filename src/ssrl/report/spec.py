"""The run spec of the report stage and the run it describes (docs/internals.md).

A *run spec* (a JSON-able dict, built by rules/report.smk) says which systems exist
and where their files are::

    {"run": "demo", "k": 62, "trial_lists": ["demo"],
     "compare": {"dino": "sslsv_dino_ecapa_c1024", ...},      # system -> published id (or null)
     "provenance": "results/demo/provenance.json",            # optional
     "systems": [{"name": "dino", "table": "main", "kind": "dino",
                  "files": {"metrics": {"demo": path}, "det": {...}, "scores": {...},
                            "train_log": path, "train_record": path, "quality": path,
                            "label_log": path}}, ...]}

``table`` is ``main`` | ``ablations`` | ``wavlm``; ``kind`` one of :data:`~ssrl.report.KINDS`;
``iterative`` systems carry ``round``, ``ablation`` systems ``overrides`` (the config
overrides of SSRL), WavLM systems ``checkpoint`` (null: randomly initialised front-end).
:func:`load_run` reads every file the spec names (through :mod:`ssrl.results`) and the run's
``provenance.json`` with its config store (ssrl.provenance; read when present, never an input of
a rule); :func:`provenance_lines` / :func:`provenance_warnings` describe where the files came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..provenance import STAMP_KEYS, config_diff, format_value, hardware_line, job_stamp, read_provenance, stored_config
from ..results import ResultsError, read_label_log, read_metrics, read_quality, read_train_record
from . import KINDS, SYSTEM_TABLES

TRIAL_LIST_NAMES = {
    "vox1_o": "VoxCeleb1-O, cleaned",
    "vox1_e": "VoxCeleb1-E, cleaned",
    "vox1_h": "VoxCeleb1-H, cleaned",
}
"""Long names of the trial lists the tables and plots know."""


class TablesError(ResultsError):
    """Bad input to the tables or plots; the message starts with the file (or spec key) at fault."""


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
        return {
            "wavlm_step1": "WavLM frozen + ECAPA back-end on DINO k-means labels",
            "wavlm_step2": "SSRL from step 1, WavLM frozen",
            "wavlm_ft": "step 2 continued, WavLM fine-tuned",
        }[self.kind]

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
            return {"live": last["live_classes"], **{k: blank(last[k]) for k in ("nmi", "accuracy", "purity")}}
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


def blank(value: Any) -> Any:
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
                raise TablesError(
                    f"{where}.files.{key}: trial lists {sorted(per_list)} differ from "
                    f"spec.trial_lists {spec['trial_lists']}"
                )


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
        systems.append(
            SystemData(
                name=s["name"],
                table=s["table"],
                kind=s["kind"],
                files=files,
                metrics={t: read_metrics(files["metrics"][t]) for t in spec["trial_lists"]},
                quality=read_quality(files["quality"]) if files.get("quality") else None,
                label_log=read_label_log(files["label_log"]) if files.get("label_log") else None,
                record=read_train_record(files["train_record"]) if files.get("train_record") else None,
                round=s.get("round"),
                overrides=s.get("overrides"),
                checkpoint=s.get("checkpoint"),
            )
        )
    run_dir = Path(spec["provenance"]).parent if spec.get("provenance") else None
    record = None
    if run_dir is not None and Path(spec["provenance"]).exists():
        try:
            record = read_provenance(run_dir)
        except ValueError as exc:
            raise TablesError(str(exc)) from None
    return RunData(
        run=spec["run"],
        k=spec["k"],
        trial_lists=list(spec["trial_lists"]),
        systems=systems,
        compare=dict(spec["compare"]),
        provenance=record,
        run_dir=run_dir,
        stamp=job_stamp(),
    )


def short_commit(commit: str | None, dirty: bool | None, diff: str | None) -> str:
    """``1c209feb30a2`` or ``1c209feb30a2 + uncommitted changes (diff 84f26926c70d)``; ``unknown``."""
    if commit is None:
        return "unknown"
    return commit[:12] + (f" + uncommitted changes (diff {diff[:12]})" if dirty and diff else "")


def _stamp_text(stamp: Sequence[Any]) -> str:
    commit, dirty, diff, chash = stamp
    return f"commit {short_commit(commit, dirty, diff)}, config {chash or 'unknown'}"


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
    text = (
        "WARNING: these tables combine files made by different code or configurations (they are not one "
        "experiment): " + "; ".join(parts) + "."
    )
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
    else:  # no training records: the run's record (or unknown)
        commit, dirty, diff, chash = (p.get(k) for k in STAMP_KEYS)
    where = f"results/{run.run}/provenance.json" if p else "no provenance.json (tables built outside the workflow)"
    mixed = "mixed, see the warning"
    lines = [
        f"**Provenance** ({where}; per training job: <system>/train_record.json, table 'training'; two runs: "
        f"`ssrl compare RUN_A RUN_B`)",
        "",
        f"- commit: {mixed if len(stamps) > 1 else short_commit(commit, dirty, diff)}",
        f"- config hash: {mixed if len(stamps) > 1 else chash or 'unknown'}",
    ]
    if p.get("hardware"):
        lines.append(
            f"- hardware: {hardware_line(p['hardware'])} (the machine running Snakemake; "
            f"training devices in table 'training')"
        )
    started = f"run started {p['started']}, " if p.get("started") else ""
    lines.append(f"- date: {started}tables built {built}")
    if p.get("reproduce"):
        at = f", at commit {short_commit(p['commit'], p.get('dirty'), p.get('diff_sha256'))}" if p.get("commit") else ""
        lines.append(f"- reproduce: `{p['reproduce']}` (in {p.get('workdir', 'the working directory')}{at})")
    lines += ["", *(f"> **{w}**" for w in provenance_warnings(run))]
    return lines


def trial_list_name(name: str) -> str:
    """``vox1_o (VoxCeleb1-O, cleaned)`` for a known list, else the name."""
    return f"{name} ({TRIAL_LIST_NAMES[name]})" if name in TRIAL_LIST_NAMES else name
