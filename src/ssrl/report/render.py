"""A result table (:class:`Table`) and its renderings: Markdown, CSV, and the summary in Markdown and HTML
with its provenance block (:func:`write_tables`). Markdown/HTML numbers use :data:`FORMATS`; CSV keeps full
precision.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..fileio import atomic_open, atomic_path

# Column formats for Markdown/HTML (CSV keeps full precision).
FORMATS: dict[str, Callable[[Any], str]] = {
    "eer": lambda v: f"{v:.2f}",
    "dcf": lambda v: f"{v:.4f}",
    "frac": lambda v: f"{v:.4f}",
    "g": lambda v: f"{v:g}",
    "int": lambda v: f"{int(v)}",
    "one": lambda v: f"{v:.1f}",
    # published EER %: as reported, but at least 2 decimals (1.8 -> 1.80, 2.627 stays)
    "pub_eer": lambda v: f"{v:.{max(2, len(repr(float(v)).partition('.')[2]))}f}",
}


@dataclass
class Table:
    """One result table: ``frame`` holds full-precision values (None/NaN = blank), ``formats``
    maps a column to a :data:`FORMATS` key for Markdown/HTML; ``notes`` are printed under it."""

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
                    cells.append(FORMATS[self.formats[col]](value))
                else:
                    cells.append(str(value))
            out.append(cells)
        return out


def table_frame(rows: list[dict[str, Any]], columns: list[str], int_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The frame of a table: one row a dict, ``columns`` in order, ``int_columns`` as nullable integers."""
    frame = pd.DataFrame(rows, columns=columns)
    for col in int_columns:
        frame[col] = frame[col].astype("Int64") if len(frame) else frame[col]
    return frame


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
    parts = [
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:.2em .5em;font-size:.9em}td.n{text-align:right}"
        "th{background:#eee}p.how{color:#333}li{font-size:.9em}p.warn{color:#a00}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _block_html(block),
    ]
    for table in tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2><p class='how'>{html.escape(table.how_to_read)}</p>")
        if len(table.frame):
            numeric = [c in table.formats or pd.api.types.is_numeric_dtype(table.frame[c]) for c in table.frame.columns]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.frame.columns) + "</tr>")
            for row in table.cells():
                parts.append(
                    "<tr>"
                    + "".join(
                        f"<td class='n'>{html.escape(v)}</td>" if n else f"<td>{html.escape(v)}</td>"
                        for v, n in zip(row, numeric)
                    )
                    + "</tr>"
                )
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
    return (
        f"# Results of run {run}\n\n"
        + (head + "\n" if head else "")
        + "\n".join(to_markdown(t, level=2) for t in tables)
    )


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


def write_tables(
    tables: Sequence[Table], out_dir: str | os.PathLike, run: str, block: Sequence[str] = ()
) -> list[Path]:
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
