"""Workflow-level checks: lint, schema validation, SLURM profile dry run."""

from __future__ import annotations

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
