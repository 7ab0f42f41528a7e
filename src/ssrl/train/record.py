"""What a training job cost, and the record of it beside the model file.

``<system>/train_record.json`` (written by :meth:`ssrl.train.loop.Trainer.fit` on rank 0 after
the model file; the source of the tables' training-cost columns)::

    {"stage": "ssrl", "optimiser_steps": 160, "global_batch": 64, "examples_seen": 10240,
     "epochs": 4, "steps_per_epoch": 40, "processes": 1, "device": "cpu",
     "device_name": "Intel(R) Xeon(R) Processor", "threads_per_process": 1,
     "wall_s": 95.2, "cpu_s": 180.4, "gpu_s": null, "peak_rss_bytes": 1.2e9, "peak_gpu_bytes": null,
     "attempts": 1, "finished": "2026-12-02T14:05:09Z",
     "commit": "1c209fe...", "dirty": false, "diff_sha256": null, "config_hash": "69ca4d68d8559f91"}

Seconds count from each training process's start (Python and library imports included) to the
model file: ``wall_s`` the longest process of each attempt, ``cpu_s`` user + system CPU time of
every process with its finished DataLoader workers (``getrusage``), ``gpu_s`` processes x wall
seconds on CUDA (null on CPU). A job that was stopped and resumed adds the earlier attempts up
to their last checkpoint (``attempts`` counts them). Peak memory: the largest resident set of one
training process (without DataLoader workers) and the largest ``torch.cuda.max_memory_allocated``
of one GPU. The provenance keys are the job stamp (:func:`ssrl.provenance.job_stamp`).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil
import torch

from ..provenance import cpu_model, job_stamp, now_iso

NO_COST = {"wall_s": 0.0, "cpu_s": 0.0, "gpu_s": 0.0, "peak_rss_bytes": 0, "peak_gpu_bytes": 0, "attempts": 0}
"""The cost before a job's first attempt."""


def process_usage(device: torch.device) -> dict[str, float]:
    """This process since it started: ``wall_s``, ``cpu_s`` (self + waited-for children, user +
    system), ``peak_rss_bytes`` (self) and ``peak_gpu_bytes`` (0 off CUDA)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": time.time() - psutil.Process(os.getpid()).create_time(),
        "cpu_s": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
        "peak_rss_bytes": own.ru_maxrss * 1024,  # Linux: KiB
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
    }


def add_attempt(
    before: Mapping[str, Any] | None, usages: Sequence[Mapping[str, float]], device: torch.device
) -> dict[str, Any]:
    """The cost so far: ``before`` (earlier attempts, None: none) plus this attempt, whose
    ``usages`` are every process's :func:`process_usage` (one per rank)."""
    before = dict(NO_COST if before is None else before)
    wall = max(u["wall_s"] for u in usages)
    return {
        "wall_s": before["wall_s"] + wall,
        "cpu_s": before["cpu_s"] + sum(u["cpu_s"] for u in usages),
        "gpu_s": before["gpu_s"] + (len(usages) * wall if device.type == "cuda" else 0.0),
        "peak_rss_bytes": max(before["peak_rss_bytes"], *(u["peak_rss_bytes"] for u in usages)),
        "peak_gpu_bytes": max(before["peak_gpu_bytes"], *(u["peak_gpu_bytes"] for u in usages)),
        "attempts": before["attempts"] + 1,
    }


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def train_record(
    stage: str,
    *,
    steps: int,
    global_batch: int,
    epochs: int,
    steps_per_epoch: int,
    processes: int,
    device: torch.device,
    cost: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``train_record.json`` of a finished training (module docstring); ``cost`` from
    :func:`add_attempt`."""
    cuda = device.type == "cuda"
    return {
        "stage": stage,
        "optimiser_steps": steps,
        "global_batch": global_batch,
        "examples_seen": steps * global_batch,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "processes": processes,
        "device": device.type,
        "device_name": device_name(device),
        "threads_per_process": torch.get_num_threads(),
        "wall_s": round(cost["wall_s"], 3),
        "cpu_s": round(cost["cpu_s"], 3),
        "gpu_s": round(cost["gpu_s"], 3) if cuda else None,
        "peak_rss_bytes": int(cost["peak_rss_bytes"]),
        "peak_gpu_bytes": int(cost["peak_gpu_bytes"]) if cuda else None,
        "attempts": cost["attempts"],
        "finished": now_iso(),
        **job_stamp(),
    }
