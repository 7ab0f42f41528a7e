"""The shared trainer (ssrl.train): schedules, EMA, checkpoints, resume, signals, NaN stop, DDP.

The generic trainer is exercised with a toy stage (a BatchNorm MLP regressing
fixed targets, an EMA teacher, a DINO-like running centre as stage state).
The SIGTERM and 2-process tests run it in forked child processes (the second
with the torchrun environment variables, gloo on CPU).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ssrl.data import item_rng
from ssrl.fileio import save_torch
from ssrl.train import (
    CheckpointManager,
    NonFiniteLossError,
    RuntimeConfig,
    Stage,
    Trainer,
    all_gather_tensor,
    all_reduce_sum,
    clip_grad_per_tensor,
    decay_param_groups,
    ema_update,
    make_teacher,
    run,
    schedules,
)
from ssrl.train.distributed import DistEnv, GlobalBatchNorm, convert_sync_batchnorm

# --------------------------------------------------------------------------- the toy stage


class ToyData(Dataset):
    """Fixed inputs (6-d) and targets (3-d); each epoch adds noise drawn from (seed, epoch, index)."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng([seed, 12345])
        self.x = rng.normal(size=(n, 6)).astype(np.float32)
        self.y = np.tanh(self.x @ rng.normal(size=(6, 3))).astype(np.float32)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = item_rng(self.seed, self.epoch, i).normal(scale=0.1, size=6).astype(np.float32)
        return torch.from_numpy(self.x[i] + noise), torch.from_numpy(self.y[i])


class ToyStage(Stage):
    name = "toy"
    step_metrics = ("gap",)
    epoch_metrics = ("val_mse", "center_norm")

    def __init__(
        self,
        epochs: int = 3,
        batch_size: int = 8,
        n: int = 48,
        lr: float = 0.1,
        seed: int = 3,
        nan_at_call: int | None = None,
        crash_at_call: int | None = None,
        sleep_after: int | None = None,
        marker: Path | None = None,
        dump_dir: Path | None = None,
    ):
        self.epochs, self.batch_size, self.seed, self.n, self.lr = epochs, batch_size, seed, n, lr
        self.hparams = {"epochs": epochs, "batch_size": batch_size, "n": n, "lr": lr, "seed": seed}
        self.val_every = 1
        self.nan_at_call, self.crash_at_call = nan_at_call, crash_at_call
        self.sleep_after, self.marker, self.dump_dir = sleep_after, marker, dump_dir
        self.calls = 0

    def build(self) -> None:
        self.student = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        self.teacher = make_teacher(self.student)
        self.train_set = ToyData(self.n, self.seed)
        self.center = torch.zeros(3)
        self.fresh_start = False

    def on_train_start(self):
        self.fresh_start = True

    def configure_optimizer(self, student):
        return torch.optim.SGD(decay_param_groups(student, 1e-3), lr=0.0, momentum=0.9)

    def lr_schedule(self, spe):
        return schedules.warmup_cosine(self.lr, self.lr / 100, self.epochs * spe, spe)

    def ema_schedule(self, spe):
        return schedules.ema_decay(0.9, 0.99, self.epochs * spe)

    def train_step(self, student, batch, epoch):
        self.calls += 1
        if self.crash_at_call == self.calls:
            raise KeyboardInterrupt("simulated kill")
        x, y = batch
        out = student(x)
        with torch.no_grad():
            target = self.teacher(x)
        loss = F.mse_loss(out, y) + 0.1 * F.mse_loss(out, target)
        if self.nan_at_call == self.calls:
            loss = loss * float("nan")
        self._out = out.detach()
        return loss, {"gap": (out - target).pow(2).mean().detach()}

    def after_step(self, epoch, step):
        total = all_reduce_sum(torch.cat([self._out.sum(0), torch.tensor([float(len(self._out))])]))
        self.center = 0.9 * self.center + 0.1 * total[:3] / total[3]
        if self.marker is not None and step + 1 == self.sleep_after:
            self.marker.write_text(str(step + 1))
        if self.sleep_after is not None and step + 1 >= self.sleep_after:
            time.sleep(0.3)

    def validate(self, epoch):
        # Uneven shares of 7 validation items, gathered (exercises all_gather_tensor).
        rng = np.random.default_rng([99])
        x = torch.from_numpy(rng.normal(size=(7, 6)).astype(np.float32))
        share = np.array_split(np.arange(7), self.env.world_size)[self.env.rank]
        with torch.no_grad():
            err = (self.teacher(x[share]) - 0.5).pow(2).mean(dim=1)
        return {"val_mse": float(all_gather_tensor(err).mean()), "center_norm": float(self.center.norm())}

    def on_epoch_end(self, epoch):
        if self.dump_dir is not None and epoch + 1 == self.epochs:
            torch.save(
                {"student": self.student.state_dict(), "center": self.center}, self.dump_dir / f"rank{self.env.rank}.pt"
            )
        return {}

    def state_dict(self):
        return {"center": self.center.clone()}

    def load_state_dict(self, state):
        self.center = state["center"].clone()

    def write_model_file(self, path):
        save_torch(
            path, {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(), "center": self.center}
        )


# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


RUNTIME = dict(device="cpu", workers=0, log_every=2, progress_every_s=1000.0, deterministic=True, bf16=False)


def _fit(tmp: Path, stage: ToyStage, name: str = "run", **runtime) -> Path:
    out = tmp / name
    Trainer(stage, RuntimeConfig(**{**RUNTIME, **runtime}), out / "ckpt").fit(out / "model.pt", out / "log.tsv")
    return out


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def _assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted single-process toy run (3 epochs x 6 steps), shared by several tests."""
    tmp = tmp_path_factory.mktemp("reference")
    return _fit(tmp, ToyStage(dump_dir=tmp), "run")


def _log_rows(path: Path, drop_timing: bool = True) -> list[list[str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    timing = {header.index(c) for c in ("examples_per_s", "seconds")} if drop_timing else set()
    return [[c for i, c in enumerate(line.split("\t")) if i not in timing] for line in lines]


# --------------------------------------------------------------------------- schedules, EMA, optimiser helpers


def test_linear_and_cosine_segments_follow_the_spec_formula():
    np.testing.assert_allclose(schedules.linear(0.0, 1.0, 4), [0.25, 0.5, 0.75, 1.0])
    c = schedules.cosine(1.0, 0.1, 4)
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * i / 4)) / 2 for i in range(1, 5)]
    np.testing.assert_allclose(c, want)
    assert c[-1] == pytest.approx(0.1)
    assert schedules.cosine(1.0, 0.0, 0).shape == (0,)


def test_warmup_cosine_and_piecewise():
    s = schedules.warmup_cosine(0.25, 1e-5, total_steps=10, warmup_steps=4)
    np.testing.assert_allclose(s[:4], [0.0625, 0.125, 0.1875, 0.25])
    np.testing.assert_allclose(s[4:], [1e-5 + (0.25 - 1e-5) * (1 + math.cos(math.pi * i / 6)) / 2 for i in range(1, 7)])
    assert s[-1] == pytest.approx(1e-5) and s.shape == (10,)
    p = schedules.piecewise_cosine([(0.1, 0.01, 3), (0.5, 0.01, 2)])
    np.testing.assert_allclose(p, np.concatenate([schedules.cosine(0.1, 0.01, 3), schedules.cosine(0.5, 0.01, 2)]))
    with pytest.raises(ValueError, match="exceed"):
        schedules.warmup_cosine(1.0, 0.0, total_steps=3, warmup_steps=4)


def test_ema_decay_is_linear_from_first_to_last_step():
    d = schedules.ema_decay(0.999, 0.9999, 5)
    np.testing.assert_allclose(d, [0.999, 0.999225, 0.99945, 0.999675, 0.9999])


def test_ema_update_known_answer():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        student[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        student[0].bias.zero_()
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student[0].weight.fill_(11.0)
        student[0].bias.requires_grad_(False)
        student[0].bias.fill_(7.0)  # frozen parameter: copied, not averaged
        student[1].running_mean.fill_(10.0)
        student[1].num_batches_tracked.fill_(5)
    ema_update(teacher, student, decay=0.9)
    torch.testing.assert_close(teacher[0].weight, torch.tensor([[2.0, 2.9], [3.8, 4.7]]))
    torch.testing.assert_close(teacher[0].bias, torch.tensor([7.0, 7.0]))
    torch.testing.assert_close(teacher[1].running_mean, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(teacher[1].running_var, torch.tensor([1.0, 1.0]))
    assert int(teacher[1].num_batches_tracked) == 5
    with pytest.raises(ValueError, match="no matching student"):
        ema_update(teacher, nn.Sequential(nn.Linear(2, 3)), 0.9)


def test_decay_groups_and_per_tensor_clipping():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    m[2].weight.requires_grad_(False)
    decay, no_decay = decay_param_groups(m, 5e-5)
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0
    assert [p is m[0].weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {id(m[0].bias), id(m[1].weight), id(m[1].bias)}
    m[0].weight.grad = torch.full((4, 3), 1.0)  # norm sqrt(12) > 3: scaled to norm 3
    m[0].bias.grad = torch.full((4,), 0.5)  # norm 1 < 3: unchanged
    norms = clip_grad_per_tensor(m.parameters(), 3.0)
    torch.testing.assert_close(norms, torch.tensor([math.sqrt(12), 1.0]))
    assert m[0].weight.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(m[0].bias.grad, torch.full((4,), 0.5))


def test_global_batchnorm_is_plain_batchnorm_in_one_process():
    bn = nn.BatchNorm1d(4)
    g = convert_sync_batchnorm(nn.Sequential(bn), DistEnv(world_size=2))[0]  # CPU -> GlobalBatchNorm
    assert isinstance(g, GlobalBatchNorm) and g.weight is bn.weight and g.running_mean is bn.running_mean
    ref = nn.BatchNorm1d(4)
    x = torch.randn(5, 4, 3)
    torch.testing.assert_close(g(x), ref(x))  # no process group: plain BatchNorm
    torch.testing.assert_close(g.running_var, ref.running_var)


def test_runtime_config_rejects_bad_keys():
    with pytest.raises(ValueError, match="unknown key"):
        RuntimeConfig.from_dict({"wrokers": 2})
    with pytest.raises(ValueError, match="train.log_every"):
        RuntimeConfig.from_dict({"log_every": 0})
    with pytest.raises(ValueError, match="train.bf16: expected bool"):
        RuntimeConfig.from_dict({"bf16": 1})
    assert RuntimeConfig.from_dict({"progress_every_s": 5}).progress_every_s == 5.0


# --------------------------------------------------------------------------- checkpoints and resume


def test_checkpoint_manager_keeps_newest_and_skips_unreadable(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (3, 6, 9):
        mgr.save({"global_step": step}, step)
    assert [s for s, _ in mgr.checkpoints()] == [6, 9]
    (tmp_path / ".ckpt-000000012.pt.abc.tmp.pt").write_bytes(b"partial")  # an interrupted write
    assert [s for s, _ in mgr.checkpoints()] == [6, 9]
    mgr.path_for(12).write_bytes(b"not a checkpoint")  # e.g. disk full
    path, state = mgr.load_latest()
    assert path == mgr.path_for(9) and state["global_step"] == 9
    assert "cannot be loaded" in caplog.text


def test_resume_after_kill_matches_straight_run(tmp_path, caplog, reference):
    straight = reference
    # Killed during global step 11 (epoch 1, batch 5 of 6); checkpoints every 4 steps -> resumes at step 8.
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, ToyStage(crash_at_call=11), "resumed", ckpt_every_steps=4)
    out = tmp_path / "resumed"
    assert not (out / "model.pt").exists() and not (out / "log.tsv").exists()
    resumed = ToyStage()
    with caplog.at_level("INFO", logger="ssrl.train"):
        _fit(tmp_path, resumed, "resumed", ckpt_every_steps=4)
    assert not resumed.fresh_start  # on_train_start runs on fresh starts only
    assert "resuming from" in caplog.text and "epoch 1, step 2 of 6 in the epoch (global step 8 of 18)" in caplog.text
    a, b = _load(straight / "model.pt"), _load(out / "model.pt")
    _assert_same_state(a["student"], b["student"])
    _assert_same_state(a["teacher"], b["teacher"])
    assert torch.equal(a["center"], b["center"])
    # The resumed log is the straight log (no duplicated or missing rows).
    assert _log_rows(out / "log.tsv") == _log_rows(straight / "log.tsv")
    rows = _log_rows(straight / "log.tsv", drop_timing=False)
    assert rows[0] == [
        "kind",
        "epoch",
        "step",
        "lr",
        "loss",
        "gap",
        "examples_per_s",
        "val_mse",
        "center_norm",
        "seconds",
    ]
    kinds = [r[0] for r in rows[1:]]
    assert kinds.count("step") == 9 and kinds.count("epoch") == 3
    assert all(r[7] == "" for r in rows[1:] if r[0] == "step") and all(r[7] for r in rows[1:] if r[0] == "epoch")


def test_changed_hyperparameters_discard_old_checkpoints(tmp_path, caplog):
    _fit(tmp_path, ToyStage(epochs=1), "run")
    with caplog.at_level("WARNING", logger="ssrl.train"):
        out = _fit(tmp_path, ToyStage(epochs=1, lr=0.05), "run")
    assert "other hyper-parameters or data" in caplog.text
    fresh = _fit(tmp_path, ToyStage(epochs=1, lr=0.05), "fresh")
    _assert_same_state(_load(out / "model.pt")["student"], _load(fresh / "model.pt")["student"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        _fit(tmp_path, ToyStage(nan_at_call=9), "nan", ckpt_every_steps=4)
    msg = str(err.value)
    assert "epoch 1, step 3 of 6 (global step 9)" in msg and "loss=nan" in msg
    assert "ckpt-000000008.pt is kept" in msg and "no model file" in msg
    assert not (tmp_path / "nan" / "model.pt").exists()
    assert [s for s, _ in CheckpointManager(tmp_path / "nan" / "ckpt").checkpoints()] == [6, 8]


# --------------------------------------------------------------------------- child processes: SIGTERM, 2 ranks


def _child(log_file: str, env: dict, stage_kwargs: dict, runtime: dict) -> None:
    """Forked training process in its own process group: logs to ``log_file``, exits with run()'s code."""
    os.setpgrp()
    sys.stdout = sys.stderr = open(log_file, "w", buffering=1)  # pytest's capture objects are the parent's
    os.environ.update(env)
    torch.set_num_threads(1)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    out = Path(env["TOY_OUT"])
    code = run(
        ToyStage(**stage_kwargs),
        RuntimeConfig(**{**RUNTIME, **runtime}),
        out / "ckpt",
        out / "model.pt",
        out / "log.tsv",
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start(log_file: Path, out: Path, env: dict | None = None, runtime: dict | None = None, **stage_kwargs):
    # fork: the children reuse this process's imports (torch, ssrl), which keeps the test fast.
    proc = mp.get_context("fork").Process(
        target=_child, args=(str(log_file), {"TOY_OUT": str(out), **(env or {})}, stage_kwargs, runtime or {})
    )
    proc.start()
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_rerun_resumes(tmp_path, reference):
    out, marker = tmp_path / "term", tmp_path / "marker"
    # One DataLoader worker: SLURM signals every process of the job; the worker must ignore it.
    proc = _start(tmp_path / "first.log", out, runtime={"workers": 1}, sleep_after=8, marker=marker)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), (tmp_path / "first.log").read_text()
    os.killpg(proc.pid, signal.SIGTERM)  # during epoch 1 (global steps 7..12 of 18)
    proc.join(60)
    first = (tmp_path / "first.log").read_text()
    assert proc.exitcode == 128 + signal.SIGTERM, first
    assert "SIGTERM received" in first and "rerun the same command to resume" in first
    assert not (out / "model.pt").exists() and not (out / "log.tsv").exists()
    steps = [s for s, _ in CheckpointManager(out / "ckpt").checkpoints()]
    assert steps and 8 <= steps[-1] < 12, steps  # saved mid-epoch, at the step boundary
    proc = _start(tmp_path / "second.log", out)
    proc.join(120)
    second = (tmp_path / "second.log").read_text()
    assert proc.exitcode == 0, second
    assert f"(global step {steps[-1]} of 18)" in second
    a, b = _load(reference / "model.pt"), _load(out / "model.pt")
    _assert_same_state(a["student"], b["student"], atol=1e-6)
    _assert_same_state(a["teacher"], b["teacher"], atol=1e-6)
    assert _log_rows(out / "log.tsv") == _log_rows(reference / "log.tsv")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, reference):
    out = tmp_path / "ddp"
    out.mkdir()
    common = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        _start(tmp_path / f"rank{r}.log", out, {**common, "RANK": str(r), "LOCAL_RANK": str(r)}, dump_dir=out)
        for r in range(2)
    ]
    for p in procs:
        p.join(120)
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert [p.exitcode for p in procs] == [0, 0], logs
    assert "on 2 process(es)" in logs[0]
    r0, r1 = _load(out / "rank0.pt"), _load(out / "rank1.pt")
    _assert_same_state(r0["student"], r1["student"])  # DDP keeps the ranks identical
    assert torch.equal(r0["center"], r1["center"])
    ref = _load(reference.parent / "rank0.pt")
    _assert_same_state(ref["student"], r0["student"], atol=1e-5)  # global batch of 2 x 4 == one batch of 8
    torch.testing.assert_close(ref["center"], r0["center"], atol=1e-5, rtol=0)
    # The log (rank 0) agrees with the single-process log up to float tolerance.
    a, b = _log_rows(reference / "log.tsv"), _log_rows(out / "log.tsv")
    assert len(a) == len(b) and [r[:3] for r in a] == [r[:3] for r in b]
    for ra, rb in zip(a[1:], b[1:]):
        np.testing.assert_allclose([float(c) for c in ra[3:] if c], [float(c) for c in rb[3:] if c], rtol=1e-4)
