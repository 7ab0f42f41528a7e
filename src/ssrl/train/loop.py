"""The training loop shared by every stage (DINO, SSRL, iterative rounds, WavLM steps).

Over 450 lines for a reason: :class:`Trainer` is one object whose methods share the run's state
(models, optimiser, schedules, sampler, checkpoint position, log); split, they would pass it around.

Extension point
===============

A stage subclasses :class:`Stage` and fills in *what* is trained; the
:class:`Trainer` owns *how*: devices and DDP, global-batch BatchNorm, the data
order, per-step LR and EMA schedules, the EMA teacher update, bf16 autocast,
checkpoints and automatic resume, SIGTERM/SIGINT handling, the non-finite loss
stop, the TSV log, progress lines, validation scheduling and the final model
file. One optimiser step of the trainer, for global step ``g`` in epoch ``e``::

    batch = next(loader)                       # rank's slice of global batch g (EpochSampler)
    batch = stage.batch_to_device(batch)       # default: every tensor to env.device
    lr of every param group = lr_schedule[g] * group.get("lr_scale", 1.0)
    student.train(); teacher.eval()
    with autocast:  loss, metrics = stage.train_step(ddp_student, batch, e)
    (loss, metrics) averaged over ranks        # stop if the loss (or a metric named *loss*) is NaN/inf
    loss.backward()                            # DDP averages gradients over ranks
    stage.after_backward(e, g)                 # clip, zero frozen grads, ...
    optimizer.step()
    ema_update(teacher, student, ema_schedule[g])   # when stage.teacher is not None
    stage.after_step(e, g)                     # e.g. the DINO centre update

Per epoch: ``stage.on_epoch_start(e)`` (also again when a run resumes inside
epoch ``e``: make it depend only on ``e`` and restored state), the steps,
``stage.on_epoch_end(e) -> dict`` (e.g. SSRL label replacement), then every
``stage.val_every`` epochs and after the last one ``stage.validate(e) -> dict``,
then one ``epoch`` row in the log and a checkpoint. The DataLoader is created
anew for every epoch (workers are not persistent), after ``on_epoch_start`` and
``train_set.set_epoch(e)``, so dataset state changed by the hooks (e.g. SSRL
labels) reaches the workers.

What a stage provides: :mod:`ssrl.train.stage`.

Exit behaviour (:func:`run`): 0 when the model file is written; on SIGTERM or
SIGINT a checkpoint is saved at the next step boundary and the exit code is
``128 + signal`` (143 for SIGTERM, 130 for SIGINT), so a requeued job
resumes; a non-finite loss stops with exit code 1, no output written and the
last good checkpoint kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data import EpochSampler
from ..fileio import atomic_path
from ..progress import Progress
from ..results import TsvLog, write_train_record
from . import distributed as D
from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .config import RuntimeConfig
from .ema import ema_update
from .record import add_attempt, process_usage, train_record
from .stage import Stage

log = logging.getLogger("ssrl.train")

LIVE_LOG = "train_log.tsv"
"""Name of the live TSV log inside the checkpoint directory."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT received: a checkpoint was saved; exit with :attr:`exit_code`."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum = signum
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}; rerun the same command to resume"
        )


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped without writing outputs."""


def _ignore_signals_in_worker(_: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to the main process, which shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Means:
    """Running sums of named values (``{name: [sum, count]}``), checkpointable."""

    def __init__(self, state: dict[str, list[float]] | None = None):
        self.sums: dict[str, list[float]] = {k: list(v) for k, v in (state or {}).items()}

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            s = self.sums.setdefault(k, [0.0, 0.0])
            s[0] += v
            s[1] += 1

    def means(self) -> dict[str, float]:
        return {k: s / n for k, (s, n) in self.sums.items() if n}

    @property
    def count(self) -> int:
        return int(max((n for _, n in self.sums.values()), default=0))


class Trainer:
    """Runs a :class:`Stage` to completion (or to an interruption); see the module docstring.

    ``ckpt_dir`` holds the checkpoints and the live log; :meth:`fit` resumes from
    the newest checkpoint made with the same stage fingerprint.
    """

    def __init__(self, stage: Stage, runtime: RuntimeConfig, ckpt_dir: str | os.PathLike, env: D.DistEnv | None = None):
        self.stage = stage
        self.runtime = runtime
        self.env = env if env is not None else D.DistEnv()
        self.ckpt = CheckpointManager(ckpt_dir, keep=runtime.keep_checkpoints)
        self._signal: int | None = None

    # ---- set-up ----------------------------------------------------------------------------
    def _configure_backends(self) -> None:
        rt = self.runtime
        if self.env.device.type == "cuda":
            # The CPU kernels used here are deterministic for a fixed thread count; the global
            # switch matters (and is paid for: it imports torch._inductor) on CUDA only.
            if rt.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            if torch.are_deterministic_algorithms_enabled() != rt.deterministic:
                torch.use_deterministic_algorithms(rt.deterministic, warn_only=True)
        torch.backends.cudnn.deterministic = rt.deterministic
        torch.backends.cudnn.benchmark = rt.cudnn_benchmark and not rt.deterministic

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def fingerprint(self) -> str:
        """The stage's hyper-parameters minus the runtime ``train`` section, and its
        ``inputs_digest``, as canonical JSON (call after ``build``)."""
        hp = {k: v for k, v in self.stage.hparams.items() if k != "train"}
        return json.dumps({"hparams": hp, "inputs": self.stage.inputs_digest}, sort_keys=True, default=str)

    def _check_stage(self) -> None:
        st = self.stage
        for attr in ("epochs", "batch_size"):
            value = getattr(st, attr)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{st.name}: {attr} must be a positive integer, got {value!r}")
        if st.batch_size % self.env.world_size:
            raise ValueError(
                f"{st.name}: global batch {st.batch_size} is not divisible by the {self.env.world_size} processes"
            )
        if not isinstance(getattr(st, "student", None), nn.Module):
            raise TypeError(f"{st.name}: build() must set self.student to an nn.Module")
        if not hasattr(st, "train_set"):
            raise TypeError(f"{st.name}: build() must set self.train_set")
        clash = set(st.step_metrics) & set(st.epoch_metrics) | ({"loss", "lr"} & set(st.step_metrics))
        if clash:
            raise ValueError(f"{st.name}: metric names used twice: {sorted(clash)}")

    def _schedule(self, name: str, values: np.ndarray | None, total: int) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (total,):
            raise ValueError(
                f"{self.stage.name}: {name} has shape {arr.shape}, expected ({total},) (one value per optimiser step)"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"{self.stage.name}: {name} contains non-finite values")
        return arr

    # ---- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            # A second SIGTERM is the same stop request again: SLURM signals every process of the
            # job and torchrun forwards the signal to its workers (both follow up with SIGKILL).
            # A second SIGINT (Ctrl-C pressed again) gives up on the clean stop.
            if signum == signal.SIGINT:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self._signal = signum
        log.warning("%s received: saving a checkpoint after this step, then exiting", signal.Signals(signum).name)

    # ---- checkpoints -----------------------------------------------------------------------
    def _save(
        self, epoch: int, batches_done: int, step: int, window: _Means, epoch_acc: _Means, epoch_seconds: float
    ) -> Path | None:
        """Collective: every rank calls it; rank 0 writes. Returns the path on rank 0."""
        rngs = D.all_gather_objects(rng_state())
        cost = add_attempt(self.cost_before, D.all_gather_objects(process_usage(self.env.device)), self.env.device)
        path = None
        if self.env.is_main:
            st = self.stage
            state = {
                "stage": st.name,
                "fingerprint": self.fingerprint(),
                "epoch": epoch,
                "batches_done": batches_done,
                "global_step": step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.env.world_size,
                "student": st.student.state_dict(),
                "teacher": None if st.teacher is None else st.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "stage_state": st.state_dict(),
                "rng": rngs,
                "log_lines": self.tsv.lines,
                "window": window.sums,
                "epoch_acc": epoch_acc.sums,
                "epoch_seconds": epoch_seconds,
                "cost": cost,
            }
            path = self.ckpt.save(state, step)
        D.barrier()
        return path

    def _resume(self) -> dict[str, Any] | None:
        found = self.ckpt.load_latest(map_location="cpu")
        if found is None:
            return None
        path, state = found
        if state.get("stage") != self.stage.name or state.get("fingerprint") != self.fingerprint():
            D.barrier()  # every rank has read the directory before it is cleared
            if self.env.is_main:
                removed = self.ckpt.clear()
                log.warning(
                    "%s: checkpoints in %s were made with other hyper-parameters or data; deleted %d, "
                    "starting from scratch",
                    self.stage.name,
                    self.ckpt.directory,
                    len(removed),
                )
            D.barrier()
            return None
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"{path}: made with {state['steps_per_epoch']} steps per epoch, this run has "
                f"{self.steps_per_epoch} (did the training list change?); delete "
                f"{self.ckpt.directory} to start over"
            )
        st = self.stage
        self.cost_before = state.get("cost")
        st.student.load_state_dict(state["student"])
        if st.teacher is not None:
            st.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        st.load_state_dict(state["stage_state"])
        rngs = state["rng"]
        if len(rngs) == self.env.world_size:
            set_rng_state(rngs[self.env.rank])
        else:
            log.warning(
                "checkpoint made with %d processes, now %d: RNG states not restored (the data order is unaffected)",
                len(rngs),
                self.env.world_size,
            )
        log.info(
            "%s: resuming from %s: epoch %d, step %d of %d in the epoch (global step %d of %d)",
            st.name,
            path,
            state["epoch"],
            state["batches_done"],
            self.steps_per_epoch,
            state["global_step"],
            self.total_steps,
        )
        return state

    # ---- the loop --------------------------------------------------------------------------
    def fit(
        self, model_out: str | os.PathLike, log_out: str | os.PathLike, record_out: str | os.PathLike | None = None
    ) -> None:
        """Train (resuming if possible), then write ``model_out`` and ``log_out`` (rank 0), and
        ``record_out`` if given (``train_record.json``: cost and provenance, :mod:`.cost`).

        Raises :class:`TrainingInterrupted` after a SIGTERM/SIGINT checkpoint and
        :class:`NonFiniteLossError` on a NaN/inf loss (outputs not written).
        """
        env, rt, st = self.env, self.runtime, self.stage
        self.cost_before: dict[str, Any] | None = None  # earlier attempts (set by _resume)
        self._configure_backends()
        st.env, st.runtime = env, rt
        self._seed(st.seed)
        st.build()
        self._check_stage()
        st.student.to(env.device)
        if st.teacher is not None:
            st.teacher.to(env.device)
        st.student = D.convert_sync_batchnorm(st.student, env)
        self.optimizer = st.configure_optimizer(st.student)

        sampler = EpochSampler(len(st.train_set), st.batch_size, st.seed, env.rank, env.world_size)
        self.steps_per_epoch = len(sampler)
        self.total_steps = st.epochs * self.steps_per_epoch
        lr = self._schedule("lr_schedule", st.lr_schedule(self.steps_per_epoch), self.total_steps)
        ema = None
        if st.teacher is not None:
            ema = self._schedule("ema_schedule", st.ema_schedule(self.steps_per_epoch), self.total_steps)

        columns = [
            "kind",
            "epoch",
            "step",
            "lr",
            "loss",
            *st.step_metrics,
            "examples_per_s",
            *st.epoch_metrics,
            "seconds",
        ]
        self.tsv = TsvLog(self.ckpt.directory / LIVE_LOG, columns)
        state = self._resume()
        epoch0, batch0, step = (state["epoch"], state["batches_done"], state["global_step"]) if state else (0, 0, 0)
        window = _Means(state["window"] if state else None)
        epoch_acc = _Means(state["epoch_acc"] if state else None)
        epoch_seconds = float(state["epoch_seconds"]) if state else 0.0
        if env.is_main:
            self.ckpt.directory.mkdir(parents=True, exist_ok=True)
            self.tsv.start(state["log_lines"] if state else None)
        if state is None:
            st.on_train_start()
            # Model-side randomness (e.g. dropout) differs between ranks; data randomness does not.
            torch.manual_seed(st.seed + 7919 * (env.rank + 1))
        del state

        ddp_student: nn.Module = st.student
        if env.distributed:
            ddp_student = DistributedDataParallel(
                st.student,
                device_ids=[env.device.index] if env.device.type == "cuda" else None,
                find_unused_parameters=st.find_unused_parameters,
            )
        autocast = torch.autocast(
            device_type=env.device.type, dtype=torch.bfloat16, enabled=rt.bf16 and env.device.type == "cuda"
        )
        loss_names = ["loss", *[m for m in st.step_metrics if "loss" in m]]
        progress = Progress(
            self.total_steps, st.name, unit="step", every_s=rt.progress_every_s, start=step, enabled=env.is_main
        )
        if env.is_main:
            log.info(
                "%s: %d epochs x %d steps, global batch %d on %d process(es), device %s",
                st.name,
                st.epochs,
                self.steps_per_epoch,
                st.batch_size,
                env.world_size,
                env.device,
            )

        # Signal handlers can only be installed from the main thread (scripts always are).
        handlers = (
            {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        try:
            for epoch in range(epoch0, st.epochs):
                start_batch = batch0 if epoch == epoch0 else 0
                if start_batch == 0:
                    epoch_acc, epoch_seconds = _Means(), 0.0
                t_epoch = time.monotonic() - epoch_seconds
                st.on_epoch_start(epoch)
                if hasattr(st.train_set, "set_epoch"):
                    st.train_set.set_epoch(epoch)
                sampler.set_epoch(epoch, start_batch)
                loader = DataLoader(
                    st.train_set,
                    batch_sampler=sampler,
                    num_workers=rt.workers,
                    collate_fn=st.collate,
                    pin_memory=env.device.type == "cuda",
                    worker_init_fn=_ignore_signals_in_worker,
                )
                t_window, window_steps = time.monotonic(), 0
                batches_done = start_batch
                for batch in loader:
                    batch = st.batch_to_device(batch)
                    for group in self.optimizer.param_groups:
                        group["lr"] = float(lr[step]) * group.get("lr_scale", 1.0)
                    # The modes of a step; a stage whose student and teacher share modules (WavLM
                    # step 2-ft, quirk Q3) also sets the mode right before each forward.
                    st.student.train()
                    if st.teacher is not None:
                        st.teacher.eval()
                    self.optimizer.zero_grad(set_to_none=True)
                    with autocast:
                        loss, metrics = st.train_step(ddp_student, batch, epoch)
                    values, stop = self._reduce(loss, metrics)
                    bad = {k: values[k] for k in loss_names if not math.isfinite(values[k])}
                    if bad:
                        self._non_finite(bad, epoch, batches_done, step)
                    loss.backward()
                    st.after_backward(epoch, step)
                    self.optimizer.step()
                    if st.teacher is not None:
                        ema_update(st.teacher, st.student, float(ema[step]))  # type: ignore[index]
                    st.after_step(epoch, step)
                    step += 1
                    batches_done += 1
                    window_steps += 1
                    window.add(values)
                    epoch_acc.add(values)
                    progress.update(1, epoch=epoch, loss=values["loss"], lr=float(lr[step - 1]))
                    if window.count >= rt.log_every:
                        now = time.monotonic()
                        self._row(
                            "step",
                            epoch,
                            step,
                            float(lr[step - 1]),
                            window.means(),
                            examples_per_s=window_steps * st.batch_size / max(now - t_window, 1e-9),
                            seconds=now - t_window,
                        )
                        window, t_window, window_steps = _Means(), now, 0
                    stop = stop or (not env.distributed and self._signal is not None)
                    if stop or (rt.ckpt_every_steps and step % rt.ckpt_every_steps == 0):
                        path = self._save(epoch, batches_done, step, window, epoch_acc, time.monotonic() - t_epoch)
                        if stop:
                            raise TrainingInterrupted(self._signal or signal.SIGTERM, path)
                del loader
                ep = epoch_acc.means()
                ep.update(self._checked(st.on_epoch_end(epoch), "on_epoch_end"))
                if st.val_every and ((epoch + 1) % st.val_every == 0 or epoch + 1 == st.epochs):
                    ep.update(self._checked(st.validate(epoch), "validate"))
                seconds = time.monotonic() - t_epoch
                n_steps = epoch_acc.count
                self._row(
                    "epoch",
                    epoch,
                    step,
                    float(lr[step - 1]) if step else None,
                    ep,
                    seconds=seconds,
                    examples_per_s=n_steps * st.batch_size / max(seconds, 1e-9),
                )
                if env.is_main:
                    shown = "  ".join(f"{k}={v:.4g}" for k, v in ep.items())
                    log.info("%s: epoch %d/%d done in %.1f s  %s", st.name, epoch + 1, st.epochs, seconds, shown)
                path = self._save(epoch + 1, 0, step, window, _Means(), 0.0)
                if D.all_reduce_sum(torch.tensor([float(self._signal is not None)])).item() > 0:
                    raise TrainingInterrupted(self._signal or signal.SIGTERM, path)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

        cost = add_attempt(self.cost_before, D.all_gather_objects(process_usage(env.device)), env.device)
        if env.is_main:
            st.write_model_file(Path(model_out))
            with atomic_path(log_out) as tmp:
                shutil.copyfile(self.tsv.path, tmp)
            if record_out is not None:
                write_train_record(
                    record_out,
                    train_record(
                        st.name,
                        steps=step,
                        global_batch=st.batch_size,
                        epochs=st.epochs,
                        steps_per_epoch=self.steps_per_epoch,
                        processes=env.world_size,
                        device=env.device,
                        cost=cost,
                    ),
                )
            log.info("%s: wrote %s and %s", st.name, model_out, log_out)
        D.barrier()

    # ---- helpers ---------------------------------------------------------------------------
    def _reduce(self, loss: torch.Tensor, metrics: Mapping[str, Any]) -> tuple[dict[str, float], bool]:
        """Loss and metrics averaged over ranks, as floats, and whether any rank received
        SIGTERM/SIGINT (one collective per step)."""
        st = self.stage
        if set(metrics) != set(st.step_metrics):
            raise ValueError(
                f"{st.name}: train_step returned metrics {sorted(metrics)}, expected {sorted(st.step_metrics)}"
            )
        names = ["loss", *st.step_metrics]
        vec = torch.stack(
            [loss.detach().float().reshape(())]
            + [
                torch.as_tensor(metrics[k], dtype=torch.float32, device=loss.device).detach().reshape(())
                for k in st.step_metrics
            ]
            + [torch.tensor(float(self._signal is not None), device=loss.device)]
        )
        vec = D.all_reduce_mean(vec).tolist()
        return dict(zip(names, vec[:-1])), vec[-1] > 0

    def _checked(self, values: Mapping[str, float], hook: str) -> dict[str, float]:
        unknown = set(values) - set(self.stage.epoch_metrics)
        if unknown:
            raise ValueError(
                f"{self.stage.name}: {hook} returned {sorted(unknown)}, not in epoch_metrics "
                f"{list(self.stage.epoch_metrics)}"
            )
        return {k: float(v) for k, v in values.items()}

    def _row(
        self, kind: str, epoch: int, step: int, lr: float | None, values: Mapping[str, float], **extra: float
    ) -> None:
        if self.env.is_main:
            self.tsv.write({"kind": kind, "epoch": epoch, "step": step, "lr": lr, **values, **extra})

    def _non_finite(self, bad: Mapping[str, float], epoch: int, batch: int, step: int) -> None:
        kept = self.ckpt.checkpoints()
        where = (
            f"{kept[-1][1]} is kept (the last checkpoint before it; its weights may already be diverging)"
            if kept
            else "no checkpoint had been saved yet"
        )
        losses = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"{self.stage.name}: non-finite loss at epoch {epoch}, step {batch + 1} of {self.steps_per_epoch} "
            f"(global step {step + 1}): {losses}. Training stopped; {where}; no model file was written. "
            f"Lower the learning rate or check the input data."
        )


def run(
    stage: Stage,
    runtime: RuntimeConfig,
    ckpt_dir: str | os.PathLike,
    model_out: str | os.PathLike,
    log_out: str | os.PathLike,
    record_out: str | os.PathLike | None = None,
) -> int:
    """Entry point for training scripts: set up (distributed) logging and devices, train,
    and return the process exit code (0 done, 1 non-finite loss, 128 + signal when
    stopped by SIGTERM/SIGINT after saving a checkpoint)."""
    env = D.init_distributed(runtime.device)
    if not logging.getLogger().handlers:
        prefix = f"[rank {env.rank}] " if env.distributed else ""
        logging.basicConfig(
            level=logging.INFO if env.is_main else logging.WARNING,
            format=f"%(asctime)s {prefix}%(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    try:
        Trainer(stage, runtime, ckpt_dir, env).fit(model_out, log_out, record_out)
        return 0
    except TrainingInterrupted as exc:
        log.warning("%s: %s", stage.name, exc)
        return exc.exit_code
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 1
    finally:
        D.shutdown(env)
