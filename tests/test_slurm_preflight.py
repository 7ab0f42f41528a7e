"""SLURM preflight (ssrl.preflight, rules/common.smk slurm_preflight): placeholders, requests against
what the partitions offer (a fake `sinfo`), and the job-status check without accounting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_CONFIG

from ssrl import preflight
from ssrl.preflight import Node, Request

# A cluster as `sinfo --Node --noheader --format=%P|%N|%c|%m|%G|%l` prints it: a default CPU
# partition of two 16-CPU nodes (one with more memory), a GPU partition with one 4-GPU node.
SINFO = """\
cpu*|n01|16|64000|(null)|2-00:00:00
cpu*|n02|16+|128000|(null)|2-00:00:00
gpu|g01|32|256000|gpu:a100:4(S:0-1)|1-00:00:00
"""


def test_parse_sinfo():
    nodes = preflight.parse_sinfo(SINFO)
    assert nodes[0] == Node("cpu", True, "n01", 16, 64000, 0, 2880)
    assert nodes[2] == Node("gpu", False, "g01", 32, 256000, 4, 1440)
    with pytest.raises(ValueError, match="sinfo line 1"):
        preflight.parse_sinfo("cpu|n01|16\n")


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("infinite", None),
        ("UNLIMITED", None),
        ("2-00:00:00", 2880),
        ("1-12", 2160),
        ("4:00:00", 240),
        ("30:00", 30),
        ("30:01", 31),
        ("45", 45),
    ],
)
def test_parse_time_minutes(text, minutes):
    assert preflight.parse_time_minutes(text) == minutes


@pytest.mark.parametrize(
    "text, gpus",
    [
        ("(null)", 0),
        ("gpu:4", 4),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:2,gpu:v100:1,shard:8", 3),
        ("gpu:2(S:0),mps:100", 2),
    ],
)
def test_parse_gres_gpus(text, gpus):
    assert preflight.parse_gres_gpus(text) == gpus


def test_placeholders_named_by_key_and_rule():
    resources = {
        "a": {"slurm_account": "CHANGE_ME_account", "slurm_partition": "cpu", "mem_mb": 100},
        "b": {"slurm_account": "CHANGE_ME_account", "slurm_partition": "CHANGE_ME_gpu_partition"},
    }
    assert preflight.placeholder_findings(resources) == [
        "slurm_account = CHANGE_ME_account (every rule)",
        "slurm_partition = CHANGE_ME_gpu_partition (rules: b)",
    ]


def test_every_unrunnable_rule_is_named_with_its_key():
    nodes = preflight.parse_sinfo(SINFO)
    requests = [
        Request("fits_default", None, 16, 100000, None, 60),  # n02
        Request("fits_gpu", "gpu", 32, 256000, 4, 1440),
        Request("too_many_cpus", "cpu", 64, 1000, None, 60),  # would pend forever (PartitionConfig)
        Request("too_much_mem", "cpu", 4, 500000, None, 60),
        Request("gpu_on_cpu", "cpu", 4, 1000, 1, 60),
        Request("too_long", "gpu", 4, 1000, 1, 2880),
        Request("no_such", "a100", 4, 1000, 1, 60),
        Request("big_node", "cpu", 16, 100000, None, 60),  # only n02 has the memory
        Request("placeholder", "CHANGE_ME_gpu_partition", 999, None, None, None),
    ]
    lines = preflight.unrunnable(requests, nodes)
    named = [line.split(" ", 1)[0] for line in lines]
    assert named == ["too_many_cpus", "too_much_mem", "gpu_on_cpu", "too_long", "no_such"]
    assert "cpus_per_task = 64 but its nodes have at most 16 CPUs" in lines[0]
    assert "mem_mb = 500000 but its nodes have at most 128000 MB" in lines[1]
    assert "gpu = 1 but its nodes have at most 0 GPUs" in lines[2]
    assert "runtime = 2880 min but the partition's time limit is 1440 min" in lines[3]
    assert "not a partition of this cluster (partitions: cpu, gpu)" in lines[4]


def test_no_single_node_offers_everything():
    nodes = [Node("p", True, "a", 32, 1000, 0, None), Node("p", True, "b", 4, 64000, 0, None)]
    (line,) = preflight.unrunnable([Request("r", "p", 32, 64000, None, 10)], nodes)
    assert "no single node offers all of it" in line


def test_min_job_age_and_status_problem():
    assert preflight.parse_min_job_age("AuthType = auth/munge\nMinJobAge               = 300 sec\n") == 300
    assert preflight.parse_min_job_age("nothing") is None
    off = "Slurm accounting storage is disabled"
    assert preflight.status_problem("sacct", None, 10) is None  # accounting works
    assert preflight.status_problem("squeue", off, 300) is None  # squeue is trusted
    assert "slurm-status-command: squeue" in preflight.status_problem("sacct", off, 300)
    assert "MinJobAge is 60 s" in preflight.status_problem("squeue", off, 60)


def _fake_slurm(tmp_path: Path, sinfo: str) -> dict:
    """PATH with fake SLURM clients: `sinfo` printing ``sinfo``, a `sacct` failing as without accounting,
    an empty `squeue` and an `scontrol show config` with MinJobAge 300 (the executor plugin looks for
    them when it is loaded)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sinfo": f"cat <<'EOF'\n{sinfo}EOF",
        "squeue": "exit 0",
        "sacct": "echo 'Slurm accounting storage is disabled' >&2; exit 1",
        "scontrol": "echo 'MinJobAge               = 300 sec'",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _profile(tmp_path: Path, edits: dict) -> Path:
    """profiles/slurm with ``edits`` merged into its config.yaml (set-resources merged per rule)."""
    cfg = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for key, value in edits.items():
        if key == "set-resources":
            for rule, res in value.items():
                cfg[key].setdefault(rule, {}).update(res)
        elif isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    prof = tmp_path / "profile"
    prof.mkdir()
    (prof / "config.yaml").write_text(yaml.safe_dump(cfg))
    return prof


def _run(tmp_path: Path, profile: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--profile",
        str(profile),
        "--configfile",
        str(TINY_CONFIG),
        *args,
    ]
    return subprocess.run(
        cmd,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


GPU_EDITS = {
    rule: {"slurm_partition": "gpu"}
    for rule in (
        "dino_train",
        "ssrl_train",
        "iterative_train",
        "wavlm_step1",
        "wavlm_step2",
        "wavlm_ft",
        "extract",
        "kmeans",
        "extract_train_test",
    )
}


@pytest.mark.slow
def test_workflow_stops_before_submission(tmp_path):
    """Through Snakemake: a placeholder left and a rule asking more CPUs than any node has stop a real
    run (nothing submitted, no sbatch needed) and are listed by a dry run, naming rule and key."""
    env = _fake_slurm(tmp_path, SINFO)
    # The README's edits, except the account, and scoring asking 64 CPUs (the CPU nodes have 16).
    profile = _profile(
        tmp_path,
        {
            "default-resources": {"slurm_partition": "cpu"},
            "set-resources": {**GPU_EDITS, "score": {"cpus_per_task": 64}},
        },
    )
    real = _run(tmp_path, profile, env, "--cores", "2")
    assert real.returncode != 0
    out = real.stdout
    assert "SLURM preflight: nothing was submitted." in out, out[-3000:]
    assert "slurm_account = CHANGE_ME_account (every rule)" in out
    assert "score (partition cpu, 64 CPUs" in out and "cpus_per_task = 64 but its nodes have at most 16 CPUs" in out
    # Training rules ask 4 GPUs for 48 h on a 1-day GPU partition: named too.
    assert "dino_train (partition gpu" in out and "runtime = 2880 min" in out
    assert not (tmp_path / "work" / "results").exists()
    dry = _run(tmp_path, profile, env, "-n")
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert "SLURM preflight: a real run would stop here:" in dry.stdout
    assert "slurm_account = CHANGE_ME_account (every rule)" in dry.stdout
    assert "cpus_per_task = 64 but its nodes have at most 16 CPUs" in dry.stdout
