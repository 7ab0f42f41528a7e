"""Result tables, built only from the files the pipeline wrote (docs/method.md §10, §13).

Tables (:func:`build_tables`): ``main``, ``ablations``, ``wavlm``, ``pseudo_labels``,
``training``, ``published``; each a :class:`~ssrl.report.render.Table` (a DataFrame with
full-precision numbers, blank (NaN/None) where unknown) written by :func:`ssrl.report.render.write_tables`.
The system tables and the pseudo-label table are here; the training cost (its columns and the
``training`` table) is :mod:`ssrl.report.cost`, the published numbers (``config/published.yaml``, their
columns and the ``published`` table) :mod:`ssrl.report.published`.
Numbers are copied from the inputs (EER converted to %, bytes to MiB), never computed from anything
else, except the training cost of a chain of jobs, summed as :data:`ssrl.report.cost.COST_RULE` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cost import COST_COLUMNS, COST_FORMATS, cost_cells, cost_columns, cost_note, training_table
from .published import (
    PUBLISHED_COLUMNS,
    PUBLISHED_FORMATS,
    Reference,
    check_compare,
    published_cells,
    published_notes,
    published_table,
)
from .render import Table, table_frame
from .spec import RunData, SystemData, blank, provenance_warnings, trial_list_name


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


def _label_cells(system: SystemData) -> dict[str, Any]:
    q = system.labels() or {}
    return {LABEL_COLUMNS["live"]: q.get("live"), LABEL_COLUMNS["nmi"]: q.get("nmi")}


def _how_to_read(run: RunData, systems: Sequence[SystemData]) -> str:
    """EER/minDCF reading guide with the trial lists' sizes and score normalisation."""
    parts = ["EER in %, minDCF with C_miss = C_fa = 1 normalised, at P_target 0.01 and 0.05; lower is better."]
    if systems:
        for t in run.trial_lists:
            m = systems[0].metrics[t]
            norm = m.get("score_norm", "none")
            norm_text = {"none": "cosine scores", "asnorm": "cosine scores, adaptive s-norm"}.get(
                norm, f"cosine scores, {norm}"
            )
            parts.append(
                f"Trial list {trial_list_name(t)}: {int(m['n_trials'])} trials ({int(m['n_target'])} "
                f"target, {int(m['n_nontarget'])} non-target), {norm_text}."
            )
    return " ".join(parts)


def _system_row(
    run: RunData,
    s: SystemData,
    what: str,
    extra: Mapping[str, Any] | None = None,
    published: tuple[Mapping[str, Reference], set[str]] | None = None,
) -> dict[str, Any]:
    """A system table's row: name, ``what`` it is, the ``extra`` cells, metrics per trial list, label
    quality, training cost and, given ``(references, unmatched)``, the published columns."""
    row = {
        "system": s.name,
        "what it is": what,
        **(extra or {}),
        **_metric_cells(s, run.trial_lists),
        **_label_cells(s),
        **cost_cells(run, s),
    }
    if published is not None:
        row.update(published_cells(s, run, *published))
    return row


def _system_table(
    name: str,
    title: str,
    run: RunData,
    systems: Sequence[SystemData],
    rows: list[dict[str, Any]],
    notes: list[str],
    extra_columns: Sequence[str] = (),
    published: bool = False,
) -> Table:
    """A system table (main, ablations, wavlm) of :func:`_system_row` rows, in their column order."""
    columns = [
        "system",
        "what it is",
        *extra_columns,
        *[c for t in run.trial_lists for c in metric_columns(t)],
        *LABEL_COLUMNS.values(),
        *cost_columns(run),
        *(PUBLISHED_COLUMNS if published else ()),
    ]
    formats = {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **COST_FORMATS}
    if published:
        formats.update(PUBLISHED_FORMATS)
    frame = table_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]])
    return Table(name, title, _how_to_read(run, systems), frame, formats, notes)


def main_table(run: RunData, references: Mapping[str, Reference]) -> Table:
    """DINO, iterative rounds 1..R and SSRL: EER %, minDCF per trial list, the quality of the
    pseudo labels each system yields, and the published reference configured for it."""
    systems = run.in_table("main")
    unmatched: set[str] = set()
    rows = [_system_row(run, s, s.description(run.k), published=(references, unmatched)) for s in systems]
    notes = [
        "label clusters / NMI: non-empty clusters and NMI against the true speakers of the pseudo "
        "labels the system yields (k-means on its embeddings for DINO and the iterative rounds; "
        "the final online labels for SSRL); blank without true labels.",
        cost_note(run),
        *published_notes(run, references, unmatched),
        "SSRL's own published numbers are not available to this project and are left blank.",
    ]
    if not systems:
        notes.insert(0, "No systems.")
    title = "Main results: DINO, iterative clustering rounds, SSRL"
    return _system_table("main", title, run, systems, rows, notes, published=True)


def ablations_table(run: RunData) -> Table:
    """Each ablation system (config ``ablations``) against SSRL (the first row)."""
    ablations = run.in_table("ablations")
    ssrl = run.system("ssrl")
    systems = []
    if ablations:  # no ablations: no rows at all (not even the SSRL reference)
        systems = ([ssrl] if ssrl is not None else []) + ablations
    rows = [
        _system_row(run, s, "SSRL as configured (the reference row)" if s.kind == "ssrl" else s.description(run.k))
        for s in systems
    ]
    notes = [
        "label clusters / NMI: the final online pseudo labels (non-empty classes, NMI against the true "
        "speakers; blank without true labels).",
        cost_note(run),
    ]
    if not ablations:
        notes.insert(0, "No ablation systems are configured (config `ablations`): the table has no rows.")
    return _system_table("ablations", "Ablations of SSRL", run, systems, rows, notes)


def wavlm_table(run: RunData, references: Mapping[str, Reference]) -> Table:
    """WavLM step 1, step 2 and step 2-ft, with the front-end they used."""
    systems = run.in_table("wavlm")
    unmatched: set[str] = set()
    rows = [
        _system_row(
            run,
            s,
            s.description(run.k),
            {"front-end": "random-init front-end" if s.checkpoint is None else f"checkpoint {Path(s.checkpoint).name}"},
            published=(references, unmatched),
        )
        for s in systems
    ]
    notes = []
    if not systems:
        notes.append("The WavLM systems are off (config `wavlm.enabled`): the table has no rows.")
    else:
        if any(s.checkpoint is None for s in systems):
            notes.append(
                "random-init front-end: no WavLM checkpoint is configured (config `wavlm.checkpoint` is "
                "null), so the front-end is a tiny randomly initialised WavLM; these rows exercise the "
                "mechanics, not WavLM's accuracy."
            )
        notes.append(
            "label clusters / NMI: the final online pseudo labels of step 2 and step 2-ft (step 1 trains "
            "on the fixed DINO k-means labels)."
        )
        notes.append(cost_note(run))
        notes += published_notes(run, references, unmatched)
    return _system_table("wavlm", "WavLM systems", run, systems, rows, notes, ["front-end"], published=True)


def pseudo_labels_table(run: RunData) -> Table:
    """Pseudo-label quality: k-means init (on DINO), each iterative round's k-means, and SSRL's
    labels after each label-update epoch (live clusters, NMI, accuracy, purity)."""
    rows = []

    def add(labels: str, what: str, epoch: Any, live: Any, q: Mapping[str, Any]) -> None:
        rows.append(
            {
                "labels": labels,
                "what they are": what,
                "epoch": epoch,
                "live clusters": live,
                **{
                    name: blank(q.get(key))
                    for name, key in (("NMI", "nmi"), ("accuracy", "accuracy"), ("purity", "purity"))
                },
            }
        )

    dino = run.system("dino")
    if dino is not None and dino.quality is not None:
        add("k-means init", f"k-means (K={run.k}) on DINO embeddings", None, dino.quality["n_clusters"], dino.quality)
    for s in run.systems:
        if s.kind == "iterative" and s.quality is not None:
            add(
                f"round {s.round}",
                f"k-means (K={run.k}) on {s.name} embeddings",
                None,
                s.quality["n_clusters"],
                s.quality,
            )
    ssrl = run.system("ssrl")
    if ssrl is not None and ssrl.label_log is not None:
        for _, r in ssrl.label_log[ssrl.label_log["phase"] == "update"].iterrows():
            add("SSRL", "online labels after this label-update epoch", r["epoch"], r["live_classes"], r)
    frame = table_frame(
        rows,
        ["labels", "what they are", "epoch", "live clusters", "NMI", "accuracy", "purity"],
        ["epoch", "live clusters"],
    )
    notes = []
    if not rows:
        notes.append("No pseudo labels were found.")
    if rows and frame[["NMI", "accuracy", "purity"]].isna().all().all():
        notes.append("NMI / accuracy / purity are blank: the training set has no true speaker labels.")
    return Table(
        "pseudo_labels",
        "Pseudo-label quality",
        "live clusters: non-empty clusters (classes holding an utterance); NMI (arithmetic "
        "normalisation), accuracy (one-to-one Hungarian matching) and purity against the true "
        "speakers, in [0, 1], higher is better. epoch: the index in the label log (from 0).",
        frame,
        {"NMI": "frac", "accuracy": "frac", "purity": "frac"},
        notes,
    )


def build_tables(run: RunData, references: Mapping[str, Reference]) -> list[Table]:
    """All tables of :data:`TABLE_NAMES`, in that order; the tables of systems open their notes
    with :func:`provenance_warnings` when there are any."""
    check_compare(run.compare, references)
    tables = [
        main_table(run, references),
        ablations_table(run),
        wavlm_table(run, references),
        pseudo_labels_table(run),
        training_table(run),
        published_table(references, run.compare),
    ]
    warnings = provenance_warnings(run)
    for table in tables:
        if table.name != "published":
            table.notes[:0] = warnings
    return tables
