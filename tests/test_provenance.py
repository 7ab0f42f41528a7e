"""Provenance: ssrl.provenance (git state, config hash, job stamp, records), the trainer's
train_record.json, the tiny run's provenance.json and tables, and ``ssrl compare``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_RUN_ARGS, run_snakemake, write_config

from ssrl import provenance as P
from ssrl.cli import main as cli_main

RUN = ("results", "tiny")


# --------------------------------------------------------------------------- ssrl.provenance


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"run": "x", "ssrl": {"lr": 0.1, "queue_len": 3}}
    b = {"ssrl": {"queue_len": 3, "lr": 0.1}, "run": "x"}
    assert P.config_hash(a) == P.config_hash(b) and len(P.config_hash(a)) == 16
    assert P.config_hash({**a, "ssrl": {"lr": 0.1, "queue_len": 4}}) != P.config_hash(a)
    assert P.config_diff(a, {"run": "x", "ssrl": {"lr": 0.2}, "new": [1, 2]}) == [
        ("new", P.MISSING, [1, 2]),
        ("ssrl.lr", 0.1, 0.2),
        ("ssrl.queue_len", 3, P.MISSING),
    ]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_commit_dirty_flag_and_diff_hash(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    clean = P.git_state(repo)
    assert clean == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False, "diff_sha256": None}
    (repo / "a.txt").write_text("two\n")
    edited = P.git_state(repo)
    assert edited["dirty"] and edited["commit"] == clean["commit"] and len(edited["diff_sha256"]) == 64
    (repo / "a.txt").write_text("three\n")
    assert P.git_state(repo)["diff_sha256"] != edited["diff_sha256"]  # another change, another hash
    (repo / "a.txt").write_text("one\n")
    (repo / "new.py").write_text("x = 1\n")  # untracked files count too
    untracked = P.git_state(repo)
    assert untracked["dirty"] and untracked["diff_sha256"] not in (None, edited["diff_sha256"])
    outside = P.git_state(tmp_path / "nowhere")
    assert outside["commit"] is None and outside["dirty"] is None and "git" in outside["error"]


def test_job_stamp_comes_from_the_environment():
    stamp = {"commit": "abc", "dirty": True, "diff_sha256": "d" * 64, "config_hash": "f" * 16}
    assert P.job_stamp({P.STAMP_ENV: json.dumps({**stamp, "extra": 1})}) == stamp
    assert P.job_stamp({}) == dict.fromkeys(P.STAMP_KEYS)
    with pytest.raises(ValueError, match=P.STAMP_ENV):
        P.job_stamp({P.STAMP_ENV: "{not json"})


def test_profile_and_reproduce_command(tmp_path):
    argv = ["snakemake", "--profile", "profiles/demo", "--cores", "2"]
    assert P.profile_from_argv(argv, {}) == "profiles/demo"
    assert P.profile_from_argv(["snakemake", "--profile=slurm"], {"SNAKEMAKE_PROFILE": "x"}) == "slurm"
    assert P.profile_from_argv(["snakemake"], {"SNAKEMAKE_PROFILE": "x"}) == "x"
    assert P.profile_from_argv(["snakemake"], {}) is None
    cmd = P.reproduce_command(
        "slurm", [tmp_path / "config" / "voxceleb.yaml", "/elsewhere/my site.yaml"], ["kmeans.k=10"], tmp_path
    )
    assert cmd == (
        "snakemake --profile slurm --cores all --configfile config/voxceleb.yaml '/elsewhere/my site.yaml'"
        " --config kmeans.k=10"
    )


def test_start_and_finish_records_keep_earlier_invocations(tmp_path):
    config = {"run": "r", "kmeans": {"k": 4}}
    stamp = {"commit": "c1", "dirty": False, "diff_sha256": None, "config_hash": P.config_hash(config)}
    kwargs = dict(
        profile=None,
        argv=["/x/snakemake/__main__.py", "--cores", "1"],
        reproduce="snakemake --cores all",
        executor="local",
        workdir=tmp_path,
    )
    P.start_record(tmp_path, stamp=stamp, config=config, **kwargs)
    first = P.read_provenance(tmp_path)
    assert first["status"] == "running" and first["finished"] is None and first["command"] == "snakemake --cores 1"
    assert first["software"]["executor"]["name"] == "local" and first["hardware"]["cpu_count"] >= 1
    P.finish_record(tmp_path, "succeeded")
    config2 = {"run": "r", "kmeans": {"k": 5}}
    P.start_record(tmp_path, stamp={**stamp, "config_hash": P.config_hash(config2)}, config=config2, **kwargs)
    second = P.read_provenance(tmp_path)
    assert second["config"] == config2 and [i["status"] for i in second["invocations"]] == ["succeeded"]
    assert second["invocations"][0]["config_hash"] == stamp["config_hash"]
    assert P.stored_config(tmp_path, stamp["config_hash"]) == config  # both configs kept
    assert P.stored_config(tmp_path, P.config_hash(config2)) == config2
    with pytest.raises(ValueError, match="not that of the config"):
        P.start_record(tmp_path, stamp=stamp, config=config2, **kwargs)


def test_gpus_from_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 550.54.15, 143771 MiB\\nNVIDIA H200, 550.54.15, 143771 MiB\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    gpus = P.gpus()
    assert gpus == [{"name": "NVIDIA H200", "driver": "550.54.15", "memory": "143771 MiB"}] * 2
    hw = {**P.hardware(), "gpus": gpus}
    assert P.hardware_line(hw).endswith("; GPUs: 2 x NVIDIA H200 (driver 550.54.15)")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert P.gpus() == []


# --------------------------------------------------------------------------- the trainer's record


def test_add_attempt_sums_seconds_and_keeps_peaks():
    import torch

    from ssrl.train.record import add_attempt

    usages = [
        {"wall_s": 10.0, "cpu_s": 5.0, "peak_rss_bytes": 1, "peak_gpu_bytes": 7},
        {"wall_s": 12.0, "cpu_s": 6.0, "peak_rss_bytes": 3, "peak_gpu_bytes": 4},
    ]  # two ranks
    before = {"wall_s": 100.0, "cpu_s": 50.0, "gpu_s": 200.0, "peak_rss_bytes": 2, "peak_gpu_bytes": 9, "attempts": 1}
    assert add_attempt(before, usages, torch.device("cuda")) == {
        "wall_s": 112.0,
        "cpu_s": 61.0,
        "gpu_s": 224.0,
        "peak_rss_bytes": 3,
        "peak_gpu_bytes": 9,
        "attempts": 2,
    }
    assert add_attempt(None, usages, torch.device("cpu")) == {
        "wall_s": 12.0,
        "cpu_s": 11.0,
        "gpu_s": 0.0,
        "peak_rss_bytes": 3,
        "peak_gpu_bytes": 7,
        "attempts": 1,
    }


def test_train_record_adds_the_attempts_of_a_resumed_job(tmp_path, monkeypatch):
    """Known answer: every process_usage sample is 10 s wall, 20 CPU-s, 100 bytes; the job is killed after
    its step-8 checkpoint and resumed, so the record holds two attempts."""
    from test_train import RUNTIME, ToyStage

    import ssrl.train.loop as loop
    from ssrl.train import RuntimeConfig, Trainer

    monkeypatch.setattr(
        loop,
        "process_usage",
        lambda device: {"wall_s": 10.0, "cpu_s": 20.0, "peak_rss_bytes": 100, "peak_gpu_bytes": 0},
    )
    stamp = {"commit": "c" * 40, "dirty": False, "diff_sha256": None, "config_hash": "e" * 16}
    monkeypatch.setenv(P.STAMP_ENV, json.dumps(stamp))
    runtime = RuntimeConfig(**{**RUNTIME, "ckpt_every_steps": 4})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyStage(crash_at_call=11), runtime, out / "ckpt").fit(out / "m.pt", out / "l.tsv", out / "r.json")
    assert not (out / "r.json").exists()
    Trainer(ToyStage(), runtime, out / "ckpt").fit(out / "m.pt", out / "l.tsv", out / "r.json")
    record = json.loads((out / "r.json").read_text())
    assert {
        k: record[k]
        for k in (
            "optimiser_steps",
            "global_batch",
            "examples_seen",
            "epochs",
            "steps_per_epoch",
            "processes",
            "device",
            "gpu_s",
            "peak_gpu_bytes",
        )
    } == {
        "optimiser_steps": 18,
        "global_batch": 8,
        "examples_seen": 144,
        "epochs": 3,
        "steps_per_epoch": 6,
        "processes": 1,
        "device": "cpu",
        "gpu_s": None,
        "peak_gpu_bytes": None,
    }
    assert (record["wall_s"], record["cpu_s"], record["peak_rss_bytes"], record["attempts"]) == (20.0, 40.0, 100, 2)
    assert {k: record[k] for k in P.STAMP_KEYS} == stamp


# --------------------------------------------------------------------------- the tiny run


def _settings(workdir: Path) -> dict:
    from conftest import deep_update

    return deep_update(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
        yaml.safe_load((workdir / "config.yaml").read_text()),
    )


def test_the_tiny_run_records_its_provenance(tiny_run):
    run_dir = tiny_run.joinpath(*RUN)
    p = P.read_provenance(run_dir)
    assert p["status"] == "succeeded" and p["started"] <= p["finished"]
    subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", p["commit"], "HEAD"], check=True)
    assert len(p["commit"]) == 40 and isinstance(p["dirty"], bool)
    assert (p["diff_sha256"] is not None) == p["dirty"]
    assert p["config"] == _settings(tiny_run) and p["config_hash"] == P.config_hash(p["config"])
    assert P.stored_config(run_dir, p["config_hash"]) == p["config"]
    assert p["reproduce"] == "snakemake --cores all --configfile config.yaml" and p["workdir"] == str(tiny_run)
    assert p["command"].startswith("snakemake ") and "--max-threads 1" in p["command"]
    soft = p["software"]
    assert all(soft[k] for k in ("python", "torch", "torchaudio", "snakemake", "numpy", "scikit-learn"))
    assert soft["executor"] == {"name": "local", "version": f"built into snakemake {soft['snakemake']}"}
    hw = p["hardware"]
    assert hw["cpu_count"] >= 1 and hw["cpu_model"] and hw["gpu_count"] == len(hw["gpus"])
    # every training job names the commit and config hash it ran under, and its cost
    records = sorted(run_dir.glob("*/train_record.json"))
    assert len(records) >= 8
    for path in records:
        r = json.loads(path.read_text())
        assert (r["commit"], r["config_hash"], r["diff_sha256"]) == (p["commit"], p["config_hash"], p["diff_sha256"])
        assert r["examples_seen"] == r["optimiser_steps"] * r["global_batch"] > 0 and r["cpu_s"] > 0
    summary = (run_dir / "tables" / "summary.md").read_text()
    head = summary.split("\n## ")[0]
    assert head.startswith("# Results of run tiny\n\n**Provenance** (results/tiny/provenance.json")
    assert f"- commit: {p['commit'][:12]}" in head and f"- config hash: {p['config_hash']}\n" in head
    assert f"- hardware: {P.hardware_line(hw)}" in head
    assert f"- reproduce: `snakemake --cores all --configfile config.yaml` (in {tiny_run}" in head
    assert "WARNING" not in summary


@pytest.mark.slow
def test_a_changed_config_value_shows_in_provenance_tables_and_compare(tiny_run, tmp_path, capsys):
    """A second run: a copy of the tiny run with one config value changed (tables.compare.dino, which
    only the tables job uses); only the tables are rebuilt. Both runs' provenance and `ssrl compare`
    name the value, and the new tables warn that their systems were trained under another config."""
    second = tmp_path / "second"
    shutil.copytree(tiny_run, second, symlinks=True)
    before = _settings(tiny_run)["tables"]["compare"]["dino"]
    assert before is not None
    cfg = write_config(second / "config.yaml", {"tables": {"compare": {"dino": None}}}, base=tiny_run / "config.yaml")
    out = run_snakemake(
        second, *TINY_RUN_ARGS, "results/tiny/tables/summary.md", "--allowed-rules", "tables", configfile=cfg
    ).stdout
    assert "rule tables:" in out or "localrule tables:" in out, out[-3000:]
    a, b = P.read_provenance(tiny_run.joinpath(*RUN)), P.read_provenance(second.joinpath(*RUN))
    assert a["config"]["tables"]["compare"]["dino"] == before and b["config"]["tables"]["compare"]["dino"] is None
    assert a["config_hash"] != b["config_hash"] and b["invocations"][-1]["config_hash"] == a["config_hash"]
    summary = second.joinpath(*RUN, "tables", "summary.md").read_text()
    assert f"tables.compare.dino: {before} -> null" in summary and "WARNING" in summary

    assert cli_main(["compare", str(tiny_run.joinpath(*RUN)), str(second.joinpath(*RUN))]) == 0
    text = capsys.readouterr().out
    assert "Config differences (A -> B): 1" in text
    line = next(ln for ln in text.splitlines() if "tables.compare.dino" in ln)
    assert before in line and "null" in line
    assert a["config_hash"] in text and b["config_hash"] in text
    dino_eer = [ln for ln in text.splitlines() if ln.strip().startswith("dino") and "EER % (demo)" in ln]
    assert len(dino_eer) == 1 and dino_eer[0].split()[-1] in ("0", "0.0")  # same models, same EER: B - A = 0


def test_compare_names_a_missing_run(tmp_path, capsys):
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "no provenance.json" in capsys.readouterr().err
