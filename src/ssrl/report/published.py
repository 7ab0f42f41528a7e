"""The published-numbers file (``config/published.yaml``, docs/method.md §13): its reader
(:func:`read_published`), the check of config ``tables.compare`` against it, the published columns of
the system tables and the ``published`` table that lists every entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..results import check_number
from .render import Table
from .spec import RunData, SystemData, TablesError, trial_list_name

REFERENCE_KEYS = ("system", "trials", "eer_percent", "min_dcf", "p_target", "source")


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
        eer = check_number(entry["eer_percent"], f"{where}.eer_percent", allow_none=True)
        dcf = check_number(entry["min_dcf"], f"{where}.min_dcf", allow_none=True)
        p = check_number(entry["p_target"], f"{where}.p_target", allow_none=True)
        if (dcf is None) != (p is None):
            raise TablesError(f"{where}: min_dcf and p_target go together (both given or both null)")
        if p is not None and not 0.0 < p < 1.0:
            raise TablesError(f"{where}.p_target: must be in (0, 1), got {p}")
        out[str(rid)] = Reference(str(rid), entry["system"], entry["trials"], eer, dcf, p, entry["source"])
    return out


def check_compare(compare: Mapping[str, str | None], references: Mapping[str, Reference]) -> None:
    """Every published id named by config ``tables.compare`` must exist in the published file."""
    for system, rid in compare.items():
        if rid is not None and rid not in references:
            raise TablesError(
                f"config tables.compare.{system}: unknown published id {rid!r}; "
                f"the published file has {sorted(references)}"
            )


PUBLISHED_COLUMNS = ("published EER %", "published minDCF", "published P_target", "published reference")
PUBLISHED_FORMATS = {"published EER %": "pub_eer", "published minDCF": "g", "published P_target": "g"}


def published_cells(
    system: SystemData, run: RunData, references: Mapping[str, Reference], unmatched: set[str]
) -> dict[str, Any]:
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
    row.update(
        {
            "published EER %": ref.eer_percent,
            "published minDCF": ref.min_dcf,
            "published P_target": ref.p_target,
            "published reference": f"{ref.system}; source: {ref.source}",
        }
    )
    return row


def published_notes(run: RunData, references: Mapping[str, Reference], unmatched: set[str]) -> list[str]:
    notes = []
    if unmatched:
        lists = ", ".join(trial_list_name(t) for t in sorted(unmatched))
        notes.append(
            f"The published numbers refer to {lists}, which this run does not score "
            f"(its trial lists: {', '.join(run.trial_lists)}): the published columns are blank."
        )
    else:
        notes.append(
            "Published numbers come from other papers/toolkits (system and source in the row); "
            "they are shown for the system config `tables.compare` maps to them, on the same trial list."
        )
    return notes


def published_table(references: Mapping[str, Reference], compare: Mapping[str, str | None]) -> Table:
    """Every entry of the published-numbers file, with the systems of this run compared to it."""
    compared: dict[str, list[str]] = {}
    for system, rid in compare.items():
        if rid is not None:
            compared.setdefault(rid, []).append(system)
    rows = [
        {
            "reference": r.system,
            "trial list": r.trials,
            "EER %": r.eer_percent,
            "minDCF": r.min_dcf,
            "P_target": r.p_target,
            "source": r.source,
            "compared with": ", ".join(compared.get(r.id, [])),
        }
        for r in references.values()
    ]
    frame = pd.DataFrame(
        rows, columns=["reference", "trial list", "EER %", "minDCF", "P_target", "source", "compared with"]
    )
    return Table(
        "published",
        "Published reference numbers",
        "Numbers reported elsewhere (config `tables.published`), as reported: EER in %, minDCF at the "
        "P_target given; blank where the source gives none. 'compared with': this pipeline's systems shown beside them "
        "(config `tables.compare`).",
        frame,
        {"EER %": "pub_eer", "minDCF": "g", "P_target": "g"},
        ["SSRL's own published numbers are not available to this project and are not listed."],
    )
