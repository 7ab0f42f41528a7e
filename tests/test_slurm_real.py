"""The workflow on a real SLURM (issue 15): a one-node SLURM 22.05 from the distribution's packages
(tests/slurm/start_slurm.sh: no accounting database, one fake GPU) runs the tiny configuration through
a profile made from profiles/slurm with only the edits the README asks for, and one training job gets
SIGTERM on its steps (as the profile's `--signal=TERM@300` sends before a time limit), saves a
checkpoint, fails, and is retried by Snakemake and resumed.

Runs with SSRL_TEST_SLURM=auto (`make test` sets it) when this machine can start SLURM (root, apt-get
and the distribution's packages reachable; they are installed for the test and purged afterwards,
tests/slurm/stop_slurm.sh), and is skipped with the reason otherwise; SSRL_TEST_SLURM=1 (`make test-slurm`)
turns that reason into a failure; without the variable (plain `pytest`) it is skipped. SSRL_SLURM_DIR=DIR
reuses a cluster already started with `tests/slurm/start_slurm.sh DIR` (left running afterwards).
About 1.8-2.5 min on an idle 2-core machine (load 0.4-0.5), installation and purge included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_config

from ssrl.preflight import parse_gres_gpus

pytestmark = pytest.mark.slow
SCRIPTS = REPO / "tests" / "slurm"
RUN = Path("results") / "tiny"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """The environment for Snakemake and the SLURM clients, with a one-node cluster started."""
    mode = os.environ.get("SSRL_TEST_SLURM", "")
    if mode not in ("1", "auto") and not os.environ.get("SSRL_SLURM_DIR"):
        pytest.skip(
            "the real-SLURM test runs under `make test` (SSRL_TEST_SLURM=auto) or `make test-slurm` "
            "(SSRL_TEST_SLURM=1): it installs and purges SLURM from the distribution's packages as root"
        )
    reuse = os.environ.get("SSRL_SLURM_DIR")
    cluster = Path(reuse) if reuse else tmp_path_factory.mktemp("slurm")
    if not reuse:
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "start_slurm.sh"), str(cluster)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        if proc.returncode == 2:  # this machine cannot run SLURM: a skip unless asked for explicitly
            reason = proc.stdout.strip().splitlines()[-1]
            if mode == "1":
                pytest.fail(f"SSRL_TEST_SLURM=1 but {reason}")
            pytest.skip(reason)
        if proc.returncode != 0:
            subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh"), str(cluster)], timeout=900)
            pytest.fail(f"start_slurm.sh failed:\n{proc.stdout[-3000:]}")
    try:
        yield {**os.environ, "PYTHONUNBUFFERED": "1"}
    finally:
        if not reuse:
            stop = subprocess.run(
                ["bash", str(SCRIPTS / "stop_slurm.sh"), str(cluster)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=900,
            )
            assert stop.returncode == 0, stop.stdout


def readme_profile(path: Path, cpus: int, mem_mb: int, gpus: int) -> Path:
    """profiles/slurm/config.yaml with the README's edits for this cluster: the partitions set (`cpu`,
    `gpu`), the account line deleted (no accounting), CPUs, memory and GPUs lowered to what the node
    offers. Nothing else changes (runtimes, retries, the status command)."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = re.sub(r"^\s*slurm_account:.*\n", "", text, flags=re.M)
    text = text.replace("CHANGE_ME_cpu_partition", "cpu").replace("CHANGE_ME_gpu_partition", "gpu")
    text = re.sub(r"cpus_per_task: \d+", lambda m: f"cpus_per_task: {min(cpus, int(m.group(0).split()[-1]))}", text)
    text = re.sub(r"mem_mb: \d+", lambda m: f"mem_mb: {min(mem_mb, int(m.group(0).split()[-1]))}", text)
    text = re.sub(r"gpu: \d+", lambda m: f"gpu: {min(gpus, int(m.group(0).split()[-1]))}", text)
    assert "CHANGE_ME_" not in text
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(text)
    return path


def _node(env: dict) -> tuple[int, int, int]:
    """(CPUs, memory in MB, GPUs) of the cluster's node."""
    out = subprocess.run(
        ["sinfo", "--Node", "--noheader", "--format=%c %m %G"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1]), parse_gres_gpus(out[2])


def _checkpoints(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("ckpt-*.pt")) if ckpt.is_dir() else []


def test_tiny_run_through_slurm_with_sigterm_retry_resume(slurm, tmp_path):
    env = slurm
    cpus, mem, gpus = _node(env)
    assert gpus >= 1
    profile = readme_profile(tmp_path / "profile", cpus, mem, gpus)
    work = tmp_path / "work"
    work.mkdir()
    # More steps than the tiny default, so that the signal lands mid-run (a checkpoint every step).
    cfg = write_config(work / "config.yaml", {"dino": {"epochs": 3}})
    tiny = yaml.safe_load(cfg.read_text())
    # DINO and what follows it on both partitions: its extraction (gpu), k-means (gpu in the paper
    # profile) and scoring (cpu). The whole tiny pipeline (33 jobs) takes ~7 min here, too long for `make test`.
    targets = [
        str(RUN / "dino" / "metrics" / "demo.json"),  # the demo corpus' trial list is "demo"
        str(RUN / "dino" / f"kmeans_k{tiny['kmeans']['k']}" / "labels.txt"),
    ]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--profile",
        str(profile),
        "--cores",
        "all",
        "--configfile",
        str(cfg),
        # test speed only: the first status query after 2 s, not 40 s (MinJobAge 300 >= 3 x 2)
        "--slurm-init-seconds-before-status-checks",
        "2",
    ]
    start = time.monotonic()
    log_out = tmp_path / "snakemake.txt"
    with open(log_out, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            # SIGTERM to the DINO job once it has saved a checkpoint: the trainer saves one more
            # and exits, the job fails.
            ckpt = work / RUN / "dino" / "ckpt"
            job_id = None
            while proc.poll() is None and time.monotonic() - start < 2400:
                if _checkpoints(ckpt):
                    # The executor names every job by the run's UUID; the rule is in the comment (rule_<name>).
                    queue = subprocess.run(
                        ["squeue", "--noheader", "--format=%i %k"], env=env, capture_output=True, text=True
                    ).stdout
                    job_id = next((line.split()[0] for line in queue.splitlines() if "rule_dino_train" in line), None)
                    if job_id:
                        # SIGTERM to the job's steps, not the batch shell: what the profile's
                        # `--signal=TERM@300` delivers before a time limit (docs/preemption.md).
                        subprocess.run(["scancel", "--signal=TERM", job_id], env=env, check=True)
                        break
                time.sleep(0.2)
            assert job_id, f"no DINO checkpoint while the job ran:\n{log_out.read_text()[-4000:]}"
            # The signalled job's record, read once it has ended: the controller forgets a finished job
            # after MinJobAge (300 s), which the rest of the run may outlast on a loaded machine.
            job = ""
            for _ in range(600):
                job = subprocess.run(
                    ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True
                ).stdout
                if re.search(r"JobState=(FAILED|COMPLETED|CANCELLED|TIMEOUT)", job):
                    break
                time.sleep(0.2)
            code = proc.wait(timeout=max(10.0, 3000 - (time.monotonic() - start)))
        finally:
            if proc.poll() is None:
                proc.kill()
                subprocess.run(["scancel", "--full", "--user", "root"], env=env)
    output = log_out.read_text()
    assert code == 0, output[-5000:]
    # The signalled submission: the in-job Snakemake exits 1 when its rule fails (docs/preemption.md).
    assert "JobState=FAILED" in job and "ExitCode=1:0" in job, job
    assert re.search(rf"SLURM-job '{job_id}' failed", output) or "Error in rule dino_train" in output, output[-5000:]
    # One log for both attempts: the first stopped on SIGTERM with a checkpoint, the retry resumed.
    log = (work / RUN / "logs" / "dino_train.log").read_text()
    # (The first attempt's "attempt ended" line is missing when the signal ends its shell before the trap runs.)
    headers = [line for line in log.splitlines() if line.startswith("=== attempt ")]
    starts = [line for line in headers if re.match(r"=== attempt \d+:", line)]
    assert starts[0].startswith("=== attempt 1:") and f"SLURM job {job_id}" in starts[0], log[-4000:]
    assert len(starts) == 2 and starts[1].startswith("=== attempt 2:"), headers
    assert headers[-1] == "=== attempt ended: exit 0", headers
    first, second = log.split(starts[1])
    assert "SIGTERM received" in first and "rerun the same command to resume" in first, first[-3000:]
    assert "dino: resuming from" in second, second[-3000:]
    assert f"gpus={gpus};" in output  # the GPU count lowered to the node's, as the README says
    assert (work / RUN / "dino" / "train_log.tsv").is_file()
    assert all((work / target).is_file() for target in targets), targets
