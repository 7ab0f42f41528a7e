"""The tiny end-to-end run: the whole workflow (default target) on tests/config/tiny.yaml.

The run itself is the session fixture ``tiny_run`` (tests/conftest.py), shared with the stage
tests that inspect its outputs (test_ssrl_stage, test_fault_tolerance). Here: every system of
the config reaches the result tables with a measured EER, every job left a log and a benchmark
file, and a second invocation has nothing to do.
"""

from __future__ import annotations

import math

import pandas as pd
import yaml
from conftest import REPO, deep_update, run_snakemake

RUN = ("results", "tiny")


def _settings(tiny_run) -> dict:
    return deep_update(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
        yaml.safe_load((tiny_run / "config.yaml").read_text()),
    )


def test_every_system_reaches_the_tables(tiny_run):
    cfg = _settings(tiny_run)
    tables = tiny_run.joinpath(*RUN, "tables")
    expected = {
        "main": ["dino", *[f"iter_r{r}" for r in range(1, cfg["iterative"]["rounds"] + 1)], "ssrl"],
        "ablations": ["ssrl", *[name for name, overrides in cfg["ablations"].items() if overrides is not None]],
        "wavlm": ["wavlm_step1", "wavlm_step2", "wavlm_ft"] if cfg["wavlm"]["enabled"] else [],
    }
    assert len(expected["ablations"]) > 1 and expected["wavlm"], "the tiny config should exercise ablations and WavLM"
    for name, systems in expected.items():
        table = pd.read_csv(tables / f"{name}.csv")
        assert table["system"].tolist() == systems, name
        eer = table["EER % (demo)"]
        assert all(0.0 <= v <= 100.0 and not math.isnan(v) for v in eer), (name, eer.tolist())
    summary = (tables / "summary.md").read_text()
    assert summary.startswith("# Results of run tiny") and all(s in summary for s in expected["main"])
    assert all(
        tiny_run.joinpath(*RUN, "plots", f"{p}.png").stat().st_size > 5000
        for p in ("det", "labels", "training", "scores")
    )


def test_every_job_has_a_log_and_a_benchmark(tiny_run):
    """Logs for every job; time and memory (Snakemake benchmark files) for every job that computes
    (all but the tables and plots)."""
    run_dir = tiny_run.joinpath(*RUN)
    logs = {str(p.relative_to(run_dir / "logs").with_suffix("")) for p in (run_dir / "logs").rglob("*.log")}
    benchmarks = {
        str(p.relative_to(run_dir / "benchmarks").with_suffix("")) for p in (run_dir / "benchmarks").rglob("*.tsv")
    }
    assert logs - benchmarks == {"tables", "plots"} and benchmarks <= logs and len(benchmarks) >= 25


def test_a_second_run_has_nothing_to_do(tiny_run):
    """Also with other cores (the tiny run capped every job at 1 thread): the training jobs' threads and
    launcher are computed in the shell, not params, so they are no rerun trigger."""
    dry = run_snakemake(tiny_run, "-n", "--cores", "8", configfile=tiny_run / "config.yaml")
    assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
