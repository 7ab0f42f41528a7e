"""Two runs side by side (``ssrl compare RUN_A RUN_B``): what differs in how they were made
(commit, config keys, software, hardware; from their provenance.json) and what it did to their
results (the metrics and training cost of every system in their result tables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from .provenance import PROVENANCE_FILE, config_diff, flatten, format_value, hardware_line, read_provenance

RESULT_TABLES = ("main", "ablations", "wavlm")
"""Result tables compared (tables/<name>.csv), each keyed by its ``system`` column."""

RESULT_PREFIXES = (
    "EER %",
    "minDCF",
    "label NMI",
    "label clusters",
    "train steps × batch",
    "train CPU-s",
    "train GPU-s",
)
"""Columns compared: those whose name starts with one of these."""


def resolve_run(arg: str | os.PathLike) -> Path:
    """A run folder (``results/<run>``, holding provenance.json) from a path or a run name."""
    path = Path(arg)
    for candidate in (path, Path("results") / path):
        if (candidate / PROVENANCE_FILE).exists():
            return candidate
    raise FileNotFoundError(
        f"{arg}: no {PROVENANCE_FILE} here or in results/{arg} (a run folder is results/<run>, written by the workflow)"
    )


def _commit(p: dict[str, Any]) -> str:
    if p.get("commit") is None:
        return "unknown"
    return p["commit"][:12] + (f" + uncommitted changes (diff {p['diff_sha256'][:12]})" if p.get("dirty") else "")


def _columns(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    """Text lines of a left-aligned table (two spaces between columns)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _results(run: Path, table: str) -> pd.DataFrame | None:
    path = run / "tables" / f"{table}.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path)
    keep = [c for c in frame.columns if c.startswith(RESULT_PREFIXES)]
    return frame.set_index("system")[keep]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> str:
    """The report of ``ssrl compare``: provenance, config differences (dotted keys, A -> B),
    differing software versions, and each result table's numbers for A and B with B - A."""
    a_dir, b_dir = resolve_run(run_a), resolve_run(run_b)
    a, b = read_provenance(a_dir), read_provenance(b_dir)
    lines = [f"A: {a_dir}", f"B: {b_dir}", ""]
    lines += _columns(
        [
            ("run", str(a.get("run")), str(b.get("run"))),
            ("commit", _commit(a), _commit(b)),
            ("config hash", str(a.get("config_hash")), str(b.get("config_hash"))),
            ("started", str(a.get("started")), str(b.get("started"))),
            ("finished", f"{a.get('finished')} ({a.get('status')})", f"{b.get('finished')} ({b.get('status')})"),
            ("profile", str(a.get("profile")), str(b.get("profile"))),
            ("hardware", hardware_line(a.get("hardware") or {}), hardware_line(b.get("hardware") or {})),
        ],
        ("", "A", "B"),
    )
    diff = config_diff(a.get("config") or {}, b.get("config") or {})
    lines += ["", f"Config differences (A -> B): {len(diff) or 'none'}"]
    if diff:
        lines += [
            "  " + line
            for line in _columns([(k, format_value(x), format_value(y)) for k, x, y in diff], ("key", "A", "B"))
        ]
    soft = config_diff(flatten(a.get("software") or {}), flatten(b.get("software") or {}))
    lines += ["", f"Software differences: {len(soft) or 'none'}"]
    if soft:
        lines += [
            "  " + line
            for line in _columns([(k, format_value(x), format_value(y)) for k, x, y in soft], ("package", "A", "B"))
        ]
    for table in RESULT_TABLES:
        ra, rb = _results(a_dir, table), _results(b_dir, table)
        lines += ["", f"Results: {table} table (A, B, B - A)"]
        if ra is None or rb is None:
            missing = [str(d / "tables" / f"{table}.csv") for d, r in ((a_dir, ra), (b_dir, rb)) if r is None]
            lines.append(f"  not available: {', '.join(missing)}")
            continue
        systems = list(dict.fromkeys([*ra.index, *rb.index]))
        rows = []
        for system in systems:
            for col in dict.fromkeys([*ra.columns, *rb.columns]):
                x = ra.at[system, col] if system in ra.index and col in ra.columns else None
                y = rb.at[system, col] if system in rb.index and col in rb.columns else None
                both = all(v is not None and not pd.isna(v) for v in (x, y))
                if x is None and y is None:
                    continue
                rows.append((system, col, _fmt(x), _fmt(y), _fmt(float(y) - float(x)) if both else ""))
        if not rows:
            lines.append("  (no rows)")
            continue
        lines += ["  " + line for line in _columns(rows, ("system", "column", "A", "B", "B - A"))]
    return "\n".join(lines) + "\n"
