"""Workflow-level checks: lint, schema validation, SLURM profile dry run."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, run_snakemake, write_config


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_config_key_is_rejected(workdir):
    cfg = write_config(workdir / "bad.yaml", {"corpus": {"demo": {"n_speakers_typo": 3}}})
    proc = run_snakemake(workdir, "-n", configfile=cfg, check=False)
    assert proc.returncode != 0
    assert "n_speakers_typo" in proc.stdout


def test_wrong_type_is_rejected(workdir):
    cfg = write_config(workdir / "bad.yaml", {"corpus": {"demo": {"n_train_speakers": "many"}}})
    proc = run_snakemake(workdir, "-n", configfile=cfg, check=False)
    assert proc.returncode != 0
    assert "n_train_speakers" in proc.stdout and "many" in proc.stdout


def test_slurm_profile_dry_run():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_priorities_order_the_jobs(workdir):
    """Rule priorities (dry run of the tiny config): DINO 10, the SSRL systems 6, the iterative rounds'
    training, extraction and k-means 5, the WavLM training chain 3; every other job (the DINO and SSRL
    systems' extraction, k-means and scoring) the default 0."""
    proc = run_snakemake(workdir, "-n", configfile=write_config(workdir / "c.yaml"))
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", proc.stdout):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if head is None:
            continue
        system = re.search(r"^\s+wildcards: .*?system=([\w-]+)", block, re.M)
        priority = re.search(r"^\s+priority: (\d+)", block, re.M)
        jobs.append((head.group(1), system and system.group(1), int(priority.group(1)) if priority else 0))
    by_job = {(rule, system): p for rule, system, p in jobs}
    assert by_job[("dino_train", None)] == 10
    assert {p for (rule, _), p in by_job.items() if rule == "ssrl_train"} == {6}
    assert by_job[("iterative_train", None)] == 5
    assert by_job[("extract_train_test", "iter_r1")] == 5 and by_job[("kmeans", "iter_r1")] == 5
    assert {p for (rule, _), p in by_job.items() if rule.startswith("wavlm_")} == {3}
    assert by_job[("kmeans", "dino")] == 0 and by_job[("extract_train_test", "ssrl")] == 0
    assert by_job[("score", "iter_r1")] == 0
