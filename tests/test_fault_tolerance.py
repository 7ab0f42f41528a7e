"""Kill and resume at the workflow level (issue 8, item 1): for every training stage, the
stage's Snakemake target is started, its training process gets SIGTERM in the middle of an
epoch, and the same target is run again. Checked for each stage:

* the killed job exits 143 after saving a checkpoint at the step boundary, also when the signal
  comes twice (SLURM signals every process of a job, torchrun forwards it to its workers);
  Snakemake records the failure; none of the stage's outputs exists (nothing incomplete is
  taken as complete); the checkpoint directory (a ``params:`` value, not an output) survives;
* the rerun resumes from that checkpoint, and its job log says from which epoch and step;
* the resumed model file's student, teacher and eval_state tensors are bit-identical to those
  of an uninterrupted run of the same target (CPU, ``train.deterministic``, same thread count),
  and so are the training log (timing columns aside) and the SSRL label log.

The uninterrupted reference is the session's tiny end-to-end run (fixture ``tiny_run``); each
stage's kill test works in a copy of it without that stage's folder, so only the stage under
test trains again.
The WavLM steps are included when the Snakefile includes rules/wavlm.smk. Unit-level
kill/resume of the trainer and of the SSRL stage: tests/test_train.py, tests/test_ssrl_stage.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_RUN_ARGS, run_snakemake

RUN = Path("results") / "tiny"
TIMING_COLUMNS = {"examples_per_s", "seconds"}
HAVE_WAVLM = 'include: "rules/wavlm.smk"' in (REPO / "Snakefile").read_text()

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class StageCase:
    system: str  # <system>: results/tiny/<system>/{model.pt,train_log.tsv,...}
    kill_epoch: str  # "second" (mid epoch 1) or "last" (mid last epoch, e.g. after SSRL label updates)
    label_log: bool  # the stage also writes label_log.tsv


CASES = [
    StageCase("dino", "second", False),
    StageCase("ssrl", "last", True),  # after relabelling, label replacement and a GMM fit
    StageCase("iter_r1", "second", True),  # one epoch in the tiny config: killed in epoch 0
]
WAVLM_CASES = [StageCase(s, "second", True) for s in ("wavlm_step1", "wavlm_step2", "wavlm_ft")]


def _outputs(case: StageCase) -> list[Path]:
    names = ["model.pt", "train_log.tsv"] + (["label_log.tsv"] if case.label_log else [])
    return [RUN / case.system / n for n in names]


@pytest.fixture(scope="module")
def reference(tiny_run: Path) -> Path:
    """The session's uninterrupted tiny run (tests/config/tiny.yaml checkpoints every step)."""
    settings = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert settings["train"]["ckpt_every_steps"] == 1, "tests/config/tiny.yaml: train.ckpt_every_steps must be 1"
    return tiny_run


def _copy_without(reference: Path, dest: Path, system: str) -> Path:
    """A copy of the reference work dir (mtimes and Snakemake metadata kept) without <system>/."""
    shutil.copytree(reference, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    shutil.rmtree(dest / RUN / system)
    return dest


def _snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def _training_pids(workdir: Path, ckpt: str) -> list[int]:
    """Python processes running in ``workdir`` with ``--ckpt-dir ckpt``: the training script itself,
    not the shell that Snakemake starts it from, nor its DataLoader workers (same command line)."""
    pids, parents = [], {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
            ppid = int(re.search(r"^PPid:\s+(\d+)", (entry / "status").read_text(), flags=re.M).group(1))
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if (
            len(argv) > 2
            and Path(argv[0]).name.startswith("python")
            and "--ckpt-dir" in argv
            and argv[argv.index("--ckpt-dir") + 1] == ckpt
            and Path(cwd) == workdir
        ):
            pids.append(int(entry.name))
            parents[int(entry.name)] = ppid
    return [p for p in pids if parents[p] not in parents]


def _checkpoint_steps(ckpt_dir: Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := re.fullmatch(r"ckpt-(\d+)\.pt", p.name)))


def _read_tsv(path: Path) -> list[dict[str, str]]:
    header, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [dict(zip(header, r)) for r in rows]


def _without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def _assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


def _kill_mid_epoch(workdir: Path, case: StageCase, steps_per_epoch: int, epochs: int) -> tuple[int, str, str]:
    """Start the stage's target, SIGTERM its training process during the chosen epoch (twice, as
    under SLURM + torchrun), wait for Snakemake to finish. Returns (Snakemake's exit code, its
    output, the job log)."""
    ckpt_rel = str(RUN / case.system / "ckpt")
    epoch = epochs - 1 if case.kill_epoch == "last" else min(1, epochs - 1)
    # A checkpoint after the epoch's first step: the signal then arrives during its second step,
    # and the trainer stops after it, mid-epoch (the tiny stages have >= 3 steps per epoch).
    trigger = epoch * steps_per_epoch + 1
    out_file = workdir / "killed_run.txt"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            _snakemake_cmd(workdir, *TINY_RUN_ARGS, str(_outputs(case)[0])),
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 600
            killed = False
            while proc.poll() is None and time.monotonic() < deadline:
                steps = _checkpoint_steps(workdir / ckpt_rel)
                if steps and steps[-1] >= trigger:
                    pids = _training_pids(workdir, ckpt_rel)
                    assert len(pids) == 1, f"expected one training process, found {pids}"
                    os.kill(pids[0], signal.SIGTERM)
                    killed = True
                    break
                time.sleep(0.02)
            assert killed, f"{case.system}: no checkpoint at step {trigger} appeared\n{out_file.read_text()[-4000:]}"
            # The same signal again once the first was handled, as under SLURM + torchrun (SLURM
            # signals every process of the job, torchrun forwards it to its workers).
            job_log = workdir / _job_log(out_file.read_text())
            while proc.poll() is None and "SIGTERM received" not in job_log.read_text():
                time.sleep(0.02)
            try:
                os.kill(pids[0], signal.SIGTERM)
            except ProcessLookupError:
                pass
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = out_file.read_text()
    return code, output, (workdir / _job_log(output)).read_text()


def _job_log(snakemake_output: str) -> str:
    """The job's log file (the last ``log:`` line Snakemake printed), relative to the work dir."""
    logs = re.findall(r"^\s+log: (\S+)", snakemake_output, flags=re.M)
    assert logs, snakemake_output[-4000:]
    return logs[-1]


@pytest.mark.parametrize("case", CASES + WAVLM_CASES, ids=lambda c: c.system)
def test_sigterm_mid_epoch_then_rerun_resumes_bit_exact(case: StageCase, reference: Path, tmp_path: Path):
    if case in WAVLM_CASES and not HAVE_WAVLM:
        pytest.skip("the Snakefile does not include rules/wavlm.smk")
    ref_log = _read_tsv(reference / RUN / case.system / "train_log.tsv")
    epochs = sum(r["kind"] == "epoch" for r in ref_log)
    total = int(ref_log[-1]["step"])
    steps_per_epoch = total // epochs
    assert steps_per_epoch >= 3, "the tiny config must give every stage >= 3 steps per epoch"
    workdir = _copy_without(reference, tmp_path / "work", case.system)
    ckpt_dir = workdir / RUN / case.system / "ckpt"

    code, output, job_log = _kill_mid_epoch(workdir, case, steps_per_epoch, epochs)
    # Snakemake saw the job fail (exit 143 = 128 + SIGTERM) and the stage wrote nothing.
    assert code != 0 and "exit status 143" in output and "Error in rule" in output, output[-4000:]
    assert "SIGTERM received" in job_log and "rerun the same command to resume" in job_log, job_log[-4000:]
    assert not [p for p in _outputs(case) if (workdir / p).exists()]
    steps = _checkpoint_steps(ckpt_dir)
    assert steps, f"{ckpt_dir} lost its checkpoints"
    state = torch.load(ckpt_dir / f"ckpt-{steps[-1]:09d}.pt", map_location="cpu", weights_only=False)
    epoch, done, step = state["epoch"], state["batches_done"], state["global_step"]
    assert 0 < done < steps_per_epoch and step == epoch * steps_per_epoch + done < total, (epoch, done, step)
    del state

    # The same target again: resumes from the newest checkpoint and finishes.
    proc = run_snakemake(workdir, *TINY_RUN_ARGS, str(_outputs(case)[0]), configfile=workdir / "config.yaml")
    resumed_log = (workdir / _job_log(proc.stdout)).read_text()
    expected = (
        f"{case.system}: resuming from {RUN / case.system / 'ckpt' / f'ckpt-{step:09d}.pt'}: "
        f"epoch {epoch}, step {done} of {steps_per_epoch} in the epoch (global step {step} of {total})"
    )
    assert expected in resumed_log, resumed_log[-4000:]

    ref = torch.load(reference / RUN / case.system / "model.pt", map_location="cpu", weights_only=True)
    new = torch.load(workdir / RUN / case.system / "model.pt", map_location="cpu", weights_only=True)
    for key in ("eval_state", "student", "teacher", "extra"):
        _assert_same_tensors(ref[key], new[key], f"{case.system}/model.pt[{key}]")
    assert _without_timing(_read_tsv(workdir / RUN / case.system / "train_log.tsv")) == _without_timing(ref_log)
    if case.label_log:
        assert _read_tsv(workdir / RUN / case.system / "label_log.tsv") == _read_tsv(
            reference / RUN / case.system / "label_log.tsv"
        )
