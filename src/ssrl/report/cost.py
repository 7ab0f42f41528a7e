"""Training cost in the tables: the summed cost of a system's chain of training jobs
(:data:`COST_RULE`, :func:`cost_chain`, the cost columns of the system tables) and the ``training``
table of each job's own ``train_record.json``.
"""

from __future__ import annotations

from typing import Any

from .render import Table, table_frame
from .spec import RunData, SystemData, short_commit

COST_COLUMNS = {"examples": "train steps × batch", "cpu": "train CPU-s", "gpu": "train GPU-s"}
COST_FORMATS = {COST_COLUMNS["examples"]: "int", COST_COLUMNS["cpu"]: "one", COST_COLUMNS["gpu"]: "one"}
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


def cost_columns(run: RunData) -> list[str]:
    """The cost columns of the system tables: GPU-seconds only when some job ran on CUDA."""
    return [COST_COLUMNS["examples"], COST_COLUMNS["cpu"], *([COST_COLUMNS["gpu"]] if _has_gpu(run) else [])]


def cost_cells(run: RunData, system: SystemData) -> dict[str, Any]:
    """Summed cost of ``system``'s chain (:func:`cost_chain`); blank when a job of it has no record."""
    chain = cost_chain(run, system)
    records = [s.record for s in chain]
    if any(r is None for r in records):
        return dict.fromkeys(cost_columns(run))
    gpu = [r["gpu_s"] for r in records if r["gpu_s"] is not None]
    cells = {
        COST_COLUMNS["examples"]: sum(int(r["examples_seen"]) for r in records),
        COST_COLUMNS["cpu"]: sum(float(r["cpu_s"]) for r in records),
    }
    if _has_gpu(run):
        cells[COST_COLUMNS["gpu"]] = sum(gpu) if gpu else None
    return cells


def cost_note(run: RunData) -> str:
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
    frame = table_frame(rows, columns, ["optimiser steps", "global batch", "steps × batch", "processes", "attempts"])
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
