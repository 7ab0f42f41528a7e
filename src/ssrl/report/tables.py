"""Result tables, built only from the files the pipeline wrote (docs/method.md §10, §13).

Tables (:func:`build_tables`): ``main``, ``ablations``, ``wavlm``, ``pseudo_labels``,
``training``, ``published``; each a :class:`~ssrl.report.render.Table` (a DataFrame with
full-precision numbers, blank (NaN/None) where unknown) written by :func:`ssrl.report.render.write_tables`.
The published numbers come from a YAML file (``config/published.yaml``, :func:`read_published`).
Numbers are copied from the inputs (EER converted to %, bytes to MiB), never computed from anything
else, except the training cost of a chain of jobs, summed as :data:`COST_RULE` says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..results import check_number
from .render import Table
from .spec import RunData, SystemData, TablesError, blank, provenance_warnings, short_commit, trial_list_name

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


def check_compare(compare: Mapping[str, str | None], references: Mapping[str, Reference]) -> None:
    """Every published id named by config ``tables.compare`` must exist in the published file."""
    for system, rid in compare.items():
        if rid is not None and rid not in references:
            raise TablesError(
                f"config tables.compare.{system}: unknown published id {rid!r}; "
                f"the published file has {sorted(references)}"
            )


def _published_cells(
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


def _system_frame(rows: list[dict[str, Any]], columns: list[str], int_columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for col in int_columns:
        frame[col] = frame[col].astype("Int64") if len(frame) else frame[col]
    return frame


def _published_notes(run: RunData, references: Mapping[str, Reference], unmatched: set[str]) -> list[str]:
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


COST_COLUMNS = {"examples": "train steps × batch", "cpu": "train CPU-s", "gpu": "train GPU-s"}
_COST_FORMATS = {COST_COLUMNS["examples"]: "int", COST_COLUMNS["cpu"]: "one", COST_COLUMNS["gpu"]: "one"}
COST_RULE = (
    "Training cost (train steps × batch: optimiser steps × global batch, the utterances drawn for "
    "training, one batch item each (DINO cuts several crops of each); "
    "train CPU-s: CPU-seconds of the training processes from their start, imports and DataLoader workers "
    "included; train GPU-s: processes × wall seconds on CUDA, blank on CPU): the training jobs of the "
    "system's chain after DINO, summed: iter_rN = rounds 1..N, SSRL and each ablation = its own stage, "
    "wavlm_step2 = steps 1-2, wavlm_ft = steps 1, 2 and 2-ft. DINO's cost is in its own row only: every "
    "other system starts from the same DINO model{dino}. Not counted: embedding extraction and k-means "
    "(also those between iterative rounds), scoring. Source: <system>/train_record.json, written by the "
    "trainer (table 'training' lists each job)."
)


def cost_chain(run: RunData, system: SystemData) -> list[SystemData]:
    """The systems whose training jobs make up ``system``'s training cost (:data:`COST_RULE`): the
    iterative rounds 1..r for round r, WavLM steps 1..this step, else the system itself."""
    if system.kind == "iterative":
        return sorted(
            (s for s in run.systems if s.kind == "iterative" and s.round <= system.round), key=lambda s: s.round
        )
    if system.kind in ("wavlm_step2", "wavlm_ft"):
        steps = ("wavlm_step1", "wavlm_step2", "wavlm_ft")
        upto = steps[: steps.index(system.kind) + 1]
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
    cells = {
        COST_COLUMNS["examples"]: sum(int(r["examples_seen"]) for r in records),
        COST_COLUMNS["cpu"]: sum(float(r["cpu_s"]) for r in records),
    }
    if _has_gpu(run):
        cells[COST_COLUMNS["gpu"]] = sum(gpu) if gpu else None
    return cells


def _cost_note(run: RunData) -> str:
    dino = run.system("dino")
    text = ""
    if dino is not None and dino.record is not None:
        text = f" ({int(dino.record['examples_seen'])} utterances, {float(dino.record['cpu_s']):.0f} CPU-s in this run)"
    return COST_RULE.format(dino=text)


def training_table(run: RunData) -> Table:
    """Each training job as its train_record.json gives it: cost, device, and the commit and config
    hash it ran under."""
    rows = []
    for s in run.systems:
        r = s.record
        if r is None:
            continue
        rows.append(
            {
                "system": s.name,
                "optimiser steps": r["optimiser_steps"],
                "global batch": r["global_batch"],
                "steps × batch": r["examples_seen"],
                "processes": r["processes"],
                "device": f"{r['device']}: {r.get('device_name', '')}".rstrip(": "),
                "wall s": r["wall_s"],
                "CPU-s": r["cpu_s"],
                "GPU-s": r["gpu_s"],
                "peak RSS MiB": r["peak_rss_bytes"] / 2**20,
                "peak GPU MiB": None if r["peak_gpu_bytes"] is None else r["peak_gpu_bytes"] / 2**20,
                "attempts": r["attempts"],
                "commit": short_commit(r["commit"], r["dirty"], r["diff_sha256"]),
                "config hash": r["config_hash"] or "unknown",
            }
        )
    columns = [
        "system",
        "optimiser steps",
        "global batch",
        "steps × batch",
        "processes",
        "device",
        "wall s",
        "CPU-s",
        "GPU-s",
        "peak RSS MiB",
        "peak GPU MiB",
        "attempts",
        "commit",
        "config hash",
    ]
    frame = _system_frame(rows, columns, ["optimiser steps", "global batch", "steps × batch", "processes", "attempts"])
    notes = [
        "One row per training job, its own cost only (the system tables sum the jobs of a chain). wall s / "
        "CPU-s / GPU-s count from each training process's start (imports included) to its model file; a job "
        "stopped and resumed adds its earlier attempts up to their last checkpoint (attempts). peak RSS: the "
        "largest training process without its DataLoader workers; peak GPU: torch's peak allocation on one "
        "GPU. Source: <system>/train_record.json; Snakemake's own measurements of each job (sampled) are in "
        "results/<run>/benchmarks/."
    ]
    if not rows:
        notes.insert(0, "No training records (train_record.json) were found.")
    return Table(
        "training",
        "Training jobs: cost and provenance",
        "Per training job: optimiser steps, global batch (over all processes), processes, device, seconds, "
        "peak memory, and the commit and config hash it ran under (results/<run>/provenance/).",
        frame,
        {"wall s": "one", "CPU-s": "one", "GPU-s": "one", "peak RSS MiB": "one", "peak GPU MiB": "one"},
        notes,
    )


def main_table(run: RunData, references: Mapping[str, Reference]) -> Table:
    """DINO, iterative rounds 1..R and SSRL: EER %, minDCF per trial list, the quality of the
    pseudo labels each system yields, and the published reference configured for it."""
    systems = run.in_table("main")
    unmatched: set[str] = set()
    label_note = (
        "label clusters / NMI: non-empty clusters and NMI against the true speakers of the pseudo "
        "labels the system yields (k-means on its embeddings for DINO and the iterative rounds; "
        "the final online labels for SSRL); blank without true labels."
    )
    rows = [
        {
            "system": s.name,
            "what it is": s.description(run.k),
            **_metric_cells(s, run.trial_lists),
            **_label_cells(s),
            **_cost_cells(run, s),
            **_published_cells(s, run, references, unmatched),
        }
        for s in systems
    ]
    columns = [
        "system",
        "what it is",
        *[c for t in run.trial_lists for c in metric_columns(t)],
        *LABEL_COLUMNS.values(),
        *_cost_columns(run),
        *PUBLISHED_COLUMNS,
    ]
    notes = [
        label_note,
        _cost_note(run),
        *_published_notes(run, references, unmatched),
        "SSRL's own published numbers are not available to this project and are left blank.",
    ]
    if not systems:
        notes.insert(0, "No systems.")
    return Table(
        "main",
        "Main results: DINO, iterative clustering rounds, SSRL",
        _how_to_read(run, systems),
        _system_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]]),
        {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **_COST_FORMATS, **_PUBLISHED_FORMATS},
        notes,
    )


def ablations_table(run: RunData) -> Table:
    """Each ablation system (config ``ablations``) against SSRL (the first row)."""
    ablations = run.in_table("ablations")
    ssrl = run.system("ssrl")
    systems = []
    if ablations:  # no ablations: no rows at all (not even the SSRL reference)
        systems = ([ssrl] if ssrl is not None else []) + ablations
    rows = [
        {
            "system": s.name,
            "what it is": "SSRL as configured (the reference row)" if s.kind == "ssrl" else s.description(run.k),
            **_metric_cells(s, run.trial_lists),
            **_label_cells(s),
            **_cost_cells(run, s),
        }
        for s in systems
    ]
    columns = [
        "system",
        "what it is",
        *[c for t in run.trial_lists for c in metric_columns(t)],
        *LABEL_COLUMNS.values(),
        *_cost_columns(run),
    ]
    notes = [
        "label clusters / NMI: the final online pseudo labels (non-empty classes, NMI against the true "
        "speakers; blank without true labels).",
        _cost_note(run),
    ]
    if not ablations:
        notes.insert(0, "No ablation systems are configured (config `ablations`): the table has no rows.")
    return Table(
        "ablations",
        "Ablations of SSRL",
        _how_to_read(run, systems),
        _system_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]]),
        {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **_COST_FORMATS},
        notes,
    )


def wavlm_table(run: RunData, references: Mapping[str, Reference]) -> Table:
    """WavLM step 1, step 2 and step 2-ft, with the front-end they used."""
    systems = run.in_table("wavlm")
    unmatched: set[str] = set()
    rows = []
    for s in systems:
        front = "random-init front-end" if s.checkpoint is None else f"checkpoint {Path(s.checkpoint).name}"
        rows.append(
            {
                "system": s.name,
                "what it is": s.description(run.k),
                "front-end": front,
                **_metric_cells(s, run.trial_lists),
                **_label_cells(s),
                **_cost_cells(run, s),
                **_published_cells(s, run, references, unmatched),
            }
        )
    columns = [
        "system",
        "what it is",
        "front-end",
        *[c for t in run.trial_lists for c in metric_columns(t)],
        *LABEL_COLUMNS.values(),
        *_cost_columns(run),
        *PUBLISHED_COLUMNS,
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
        notes.append(_cost_note(run))
        notes += _published_notes(run, references, unmatched)
    return Table(
        "wavlm",
        "WavLM systems",
        _how_to_read(run, systems),
        _system_frame(rows, columns, [LABEL_COLUMNS["live"], COST_COLUMNS["examples"]]),
        {**_metric_formats(run.trial_lists), LABEL_COLUMNS["nmi"]: "frac", **_COST_FORMATS, **_PUBLISHED_FORMATS},
        notes,
    )


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
    frame = pd.DataFrame(
        rows, columns=["labels", "what they are", "epoch", "live clusters", "NMI", "accuracy", "purity"]
    )
    if len(frame):
        frame["epoch"] = frame["epoch"].astype("Int64")
        frame["live clusters"] = frame["live clusters"].astype("Int64")
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
