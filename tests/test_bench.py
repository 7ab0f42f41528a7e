"""Smoke tests of the benchmarks in bench/ at tiny sizes: they run, and their figures are
positive and consistent (bench_train: the real DINO / SSRL stage steps; bench_extract:
batched and one-at-a-time embeddings agree)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

TINY = {
    "model": {"frontend": {"type": "mel", "n_mels": 20}, "encoder": {"channels": 16, "emb_dim": 8}},
    "kmeans": {"k": 6},
    "dino": {
        "epochs": 2,
        "batch_size": 4,
        "warmup_epochs": 1,
        "global_crop_s": 0.5,
        "local_crop_s": 0.25,
        "n_local": 2,
        "head": {"n_prototypes": 32, "hidden": 16, "mid": 16, "bottleneck": 8},
    },
    "ssrl": {"fixed_epochs": 2, "update_epochs": 1, "batch_size": 4, "student_crop_s": 0.5, "teacher_crop_s": 1.0},
}
PAPER = {"model": {"encoder": {"channels": 24, "emb_dim": 12}}, "dino": {"head": {"n_prototypes": 64}}}


def load_bench(name: str):
    """Import bench/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench_cfg")
    (root / "config.yaml").write_text(yaml.safe_dump(TINY))
    (root / "paper.yaml").write_text(yaml.safe_dump(PAPER))
    return root / "config.yaml", root / "paper.yaml"


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def check_step_figures(r: dict) -> None:
    for key in ("first_step_s", "s_per_step", "cpu_s_per_step", "steps_per_s", "utts_per_s", "peak_rss_gb"):
        assert r[key] > 0, key
    assert r["steps_per_s"] == pytest.approx(1.0 / r["s_per_step"])
    assert r["utts_per_s"] == pytest.approx(r["batch"] / r["s_per_step"])
    assert r["peak_rss_gb"] >= r["import_rss_gb"]
    assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])


def test_merged_is_a_recursive_override():
    bench = load_bench("bench_train")
    assert bench.merged({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 5}, "e": 6}) == {
        "a": {"b": 1, "c": 5},
        "d": 3,
        "e": 6,
    }


def test_bench_train_cases(configs, tmp_path, monkeypatch, capsys, keep_threads):
    """The driver's per-case commands, run through ``main`` in this process instead of a new
    interpreter (which would cost a torch import per case): the real stage steps at the tiny
    configured sizes, the table and the JSON file."""
    config, paper = configs
    bench = load_bench("bench_train")

    def run_here(cmd, check, stdout, text):
        assert cmd[1] == bench.__file__ and check
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = bench.main(cmd[2:])
        return subprocess.CompletedProcess(cmd, rc, stdout=buf.getvalue())

    monkeypatch.setattr(bench.subprocess, "run", run_here)
    out = tmp_path / "train.json"
    assert (
        bench.main(
            [
                "--cases",
                "dino-demo",
                "ssrl-paper",
                "--config",
                str(config),
                "--paper-config",
                str(paper),
                "--steps",
                "2",
                "--warmup",
                "1",
                "--paper-steps",
                "1",
                "--paper-warmup",
                "1",
                "--paper-batch",
                "2",
                "--paper-classes",
                "10",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    dino, ssrl = json.loads(out.read_text())
    for r in (dino, ssrl):
        check_step_figures(r)
    # demo sizes as configured; DINO timed after the frozen-prototype epoch
    assert (dino["case"], dino["steps"], dino["warmup_steps"]) == ("dino-demo", 2, 1)
    assert (dino["batch"], dino["channels"], dino["emb_dim"], dino["classes"], dino["epoch"]) == (4, 16, 8, 32, 1)
    assert dino["crops"] == "2x0.5s+2x0.25s"
    # paper config merged over the demo one; SSRL timed in the first label-update epoch
    assert (ssrl["case"], ssrl["steps"], ssrl["warmup_steps"]) == ("ssrl-paper", 1, 1)
    assert (ssrl["batch"], ssrl["channels"], ssrl["emb_dim"], ssrl["classes"], ssrl["epoch"]) == (2, 24, 12, 10, 2)
    assert ssrl["crops"] == "student 0.5s, teacher 1s"
    table = capsys.readouterr().out
    assert "dino-demo" in table and "ssrl-paper" in table


def test_bench_extract_batched_equals_single(configs, tmp_path, capsys, keep_threads):
    config, _ = configs
    bench = load_bench("bench_extract")
    out = tmp_path / "extract.json"
    assert (
        bench.main(
            [
                "--config",
                str(config),
                "--n-utts",
                "5",
                "--median-s",
                "1.0",
                "--min-s",
                "0.5",
                "--max-s",
                "2.0",
                "--max-batch-seconds",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["agree"] and r["max_abs_diff"] <= 1e-4 and r["min_cosine"] > 0.9999
    assert 0.5 <= r["min_s"] <= r["mean_s"] <= r["max_s"] <= 2.0
    assert r["audio_s"] == pytest.approx(5 * r["mean_s"])
    for mode in ("single", "batched"):
        assert r[mode]["seconds"] > 0 and r[mode]["cpu_s"] > 0
        assert r[mode]["utts_per_s"] == pytest.approx(5 / r[mode]["seconds"])
    assert "batched / single" in capsys.readouterr().out


def test_extract_durations_are_clipped_lognormal():
    bench = load_bench("bench_extract")
    d = bench.durations(20000, median_s=7.5, min_s=4.0, max_s=20.0)
    assert d.min() >= 4.0 and d.max() <= 20.0
    assert np.median(d) == pytest.approx(7.5, rel=0.02)
    assert 7.8 < d.mean() < 8.5  # VoxCeleb1 test: mean about 8 s


def test_gpu_check_cpu_fallback(tmp_path):
    """bench/gpu_check.sh --cpu: the tiny end-to-end configuration as a dry run with bf16 and the GPU
    resources, k-means and batched / single extraction on the CPU at toy sizes, and the summary."""
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu" and summary["gpus"] == 0
    assert summary["tiny_end_to_end"]["jobs"] > 10  # the whole tiny DAG was planned
    km = summary["kmeans"]
    assert (km["n"], km["k"], km["device"]) == (3000, 30, "cpu") and km["s_per_iter"] > 0
    assert summary["extract"]["agree"] and summary["extract"]["batched_utts_per_s"] > 0
    for line in ("1. tiny end-to-end", "2. k-means", "3. extraction"):
        assert line in proc.stdout


def test_bench_threads_runs_each_setting():
    """bench/bench_threads.py: one row per OMP:MKL setting and repeat, positive wall and CPU seconds."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_threads.py"), "--steps", "1", "--batch", "2", "--crop-s", "0.5"]
        + ["--repeat", "1", "--settings", "1:1", "1:2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line[:3].strip().isdigit()]
    assert [row[:2] for row in rows] == [["1", "1"], ["1", "2"]]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
