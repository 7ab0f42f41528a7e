"""Optimisation-step throughput of the DINO and SSRL stages (docs/method.md §4, §7), on the CPU by default.

Each case builds the real stage object (:class:`ssrl.train.dino_stage.DINOStage`,
:class:`ssrl.train.ssrl_stage.SSRLStage`) with its own ``build()`` from synthetic
inputs written to a temporary folder (a wav.scp of short synthetic utterances;
for SSRL also a random-weight init model file, k-means labels and centers), collates
one batch from the stage's own training set, and then times the trainer's step
on that batch (the body of ``ssrl.train.Trainer.fit``): set the LR, forward
(``stage.train_step``: student, teacher, loss), backward, ``after_backward``
(DINO: per-tensor clipping), optimiser step, EMA teacher update, ``after_step``
(DINO: centre update; SSRL: relabel gather). Data loading and augmentation are
not timed (bench_loader.py measures them).

* ``demo``: the model / dino / ssrl sections of ``--config`` (config/config.yaml)
  as they are; the SSRL classifier has ``kmeans.k`` classes.
* ``paper``: ``--paper-config`` (config/voxceleb.yaml) merged over ``--config``
  (ECAPA C=1024, 512-d; DINO head 65,536 prototypes; 2 x 4 s + 4 x 2 s DINO
  crops; SSRL 2 s student + 6 s teacher crops) with a global batch of
  ``--paper-batch`` utterances and ``--paper-classes`` SSRL classes (paper: 8000).

DINO steps are timed after the frozen-prototype epochs (``epoch =
freeze_last_layer_epochs``), SSRL steps in the first label-update epoch (the
teacher relabels its 6 s crop every step, as in 100 of the paper's 105 epochs).
Every case runs in its own process, so its peak RSS (``ru_maxrss``) is its own.
Prints, per case: batch, warm-up and timed steps, seconds per step (wall and
CPU summed over threads: on a shared machine CPU s / threads estimates the
unloaded wall time), steps/s, utterances/s, peak RSS; with ``--device cuda``
(bf16 autocast, as the trainer) also the peak GPU memory.

    python bench/bench_train.py                                # demo + paper, 1 thread
    python bench/bench_train.py --cases dino-demo ssrl-demo --steps 20 --threads 2
    python bench/bench_train.py --cases dino-paper --paper-batch 8 --json results/bench/train.json
    python bench/bench_train.py --device cuda --cases dino-paper --paper-batch 60 --paper-steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from ssrl import SAMPLE_RATE
from ssrl.audio import write_audio
from ssrl.fileio import write_json
from ssrl.manifest import write_labels, write_wav_scp
from ssrl.models import build_speaker_model, save_model_file
from ssrl.train import DistEnv, RuntimeConfig, Stage, ema_update
from ssrl.train.dino_stage import DINOStage
from ssrl.train.ssrl_stage import SSRLStage

REPO = Path(__file__).resolve().parents[1]
CASES = ("dino-demo", "ssrl-demo", "dino-paper", "ssrl-paper")
N_AUDIO_FILES = 8
"""Distinct synthetic audio files; the wav.scp names them round robin (crops are random anyway)."""


def merged(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` recursively (mappings merge, other values replace), as
    Snakemake merges ``--configfile`` files."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: Path) -> dict:
    """A config file as a dict; ValueError naming the file if it is not a YAML mapping."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of config sections")
    return data


def case_config(args: argparse.Namespace) -> dict:
    """The config of ``args.one`` ("<stage>-<size>"): ``{model, dino, ssrl, classes}``;
    the paper size overrides the batch size and the number of SSRL classes."""
    cfg = read_yaml(args.config)
    size = args.one.split("-")[1]
    if size == "paper":
        cfg = merged(cfg, read_yaml(args.paper_config))
    for key in ("model", "dino", "ssrl"):
        if key not in cfg:
            raise ValueError(f"{args.config}: no {key!r} section")
    out = {"model": cfg["model"], "dino": dict(cfg["dino"]), "ssrl": dict(cfg["ssrl"])}
    if size == "paper":
        out["dino"]["batch_size"] = out["ssrl"]["batch_size"] = args.paper_batch
        out["classes"] = args.paper_classes
    else:
        if "k" not in (cfg.get("kmeans") or {}):
            raise ValueError(f"{args.config}: no kmeans.k (the demo's number of SSRL classes)")
        out["classes"] = int(cfg["kmeans"]["k"])
    return out


def write_corpus(root: Path, n_utts: int, seconds: float, seed: int = 0) -> Path:
    """``n_utts`` wav.scp entries over :data:`N_AUDIO_FILES` synthetic voiced FLAC files of
    ``seconds`` s -> the wav.scp path."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    files = []
    for i in range(N_AUDIO_FILES):
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) + 0.05 * rng.standard_normal(t.size)
        path = root / f"audio/{i}.flac"
        write_audio(path, (0.9 * x / np.abs(x).max()).astype(np.float32))
        files.append(str(path))
    scp = root / "wav.scp"
    write_wav_scp(scp, {f"utt{i:06d}": files[i % N_AUDIO_FILES] for i in range(n_utts)})
    return scp


def build_dino(cfg: dict, root: Path) -> tuple[Stage, int]:
    """A DINOStage on synthetic audio (``build()`` not yet called) -> (stage, epoch to time: the
    first one with trainable prototypes)."""
    d = cfg["dino"]
    scp = write_corpus(root, d["batch_size"], seconds=max(d.get("global_crop_s", 4.0), d.get("local_crop_s", 2.0)))
    stage = DINOStage({"dino": d, "model": cfg["model"]}, scp, augment_lists=None)
    return stage, stage.cfg.freeze_last_layer_epochs


def build_ssrl(cfg: dict, root: Path) -> tuple[Stage, int]:
    """An SSRLStage (``build()`` not yet called) on synthetic audio, a random-weight init model
    file, ``classes`` k-means classes of one utterance or more each and random unit centers
    -> (stage, its first label-update epoch)."""
    s, n_classes = cfg["ssrl"], cfg["classes"]
    n_utts = max(n_classes, s["batch_size"])
    scp = write_corpus(root, n_utts, seconds=max(s.get("student_crop_s", 2.0), s.get("teacher_crop_s", 6.0)))
    model = build_speaker_model(cfg["model"])
    save_model_file(root / "init.pt", system="dino", arch=model.arch, eval_state=model.state_dict())
    utts = [f"utt{i:06d}" for i in range(n_utts)]
    write_labels(root / "labels.txt", utts, [i % n_classes for i in range(n_utts)])
    centers = np.random.default_rng(1).standard_normal((n_classes, model.emb_dim)).astype(np.float32)
    np.save(root / "centers.npy", centers / np.linalg.norm(centers, axis=1, keepdims=True))
    stage = SSRLStage(
        {"ssrl": s},
        "ssrl",
        scp,
        root / "init.pt",
        labels=root / "labels.txt",
        centers=root / "centers.npy",
        augment_lists=None,
    )
    return stage, stage.cfg.fixed_epochs


def train_step(
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    epoch: int,
    step: int,
    lr: float,
    decay: float,
    autocast: torch.autocast,
) -> float:
    """One optimiser step exactly as ``Trainer.fit`` runs it in a single process (bf16 autocast
    on CUDA, as the trainer's default) -> the loss; returns once the device is idle."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    stage.teacher.eval()
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        loss, _ = stage.train_step(stage.student, batch, epoch)
    value = float(loss.detach())  # the trainer's per-step reduction / finiteness check
    loss.backward()
    stage.after_backward(epoch, step)
    optimizer.step()
    ema_update(stage.teacher, stage.student, decay)
    stage.after_step(epoch, step)
    if stage.env.device.type == "cuda":
        torch.cuda.synchronize(stage.env.device)
    return value


def _crops(stage: Stage) -> str:
    """The crops of one item, e.g. ``2x4s+4x2s`` (DINO) or ``student 2s, teacher 6s`` (SSRL)."""
    c = stage.cfg
    if isinstance(stage, DINOStage):
        return f"{c.n_global}x{c.global_crop_s:g}s+{c.n_local}x{c.local_crop_s:g}s"
    return f"student {c.student_crop_s:g}s, teacher {c.teacher_crop_s:g}s"


def run_one(args: argparse.Namespace) -> dict:
    """One case in this process -> dict printed as JSON."""
    torch.set_num_threads(args.threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # after the imports
    cfg = case_config(args)
    what, size = args.one.split("-")
    paper = size == "paper"
    warmup, steps = (args.paper_warmup, args.paper_steps) if paper else (args.warmup, args.steps)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        stage, epoch = (build_dino if what == "dino" else build_ssrl)(cfg, Path(tmp))
        device = torch.device(args.device)
        stage.env, stage.runtime = DistEnv(device=device), RuntimeConfig(device=device.type, workers=0)
        torch.manual_seed(0)
        stage.build()
        stage.student.to(device)
        stage.teacher.to(device)
        optimizer = stage.configure_optimizer(stage.student)
        autocast = torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=stage.runtime.bf16 and device.type == "cuda"
        )
        steps_per_epoch = max(1, len(stage.train_set) // stage.batch_size)
        lr = stage.lr_schedule(steps_per_epoch)
        ema = stage.ema_schedule(steps_per_epoch)
        stage.on_epoch_start(epoch)
        stage.train_set.set_epoch(epoch)
        batch = next(iter(DataLoader(stage.train_set, batch_size=stage.batch_size, collate_fn=stage.collate)))
        batch = stage.batch_to_device(batch)
        first = epoch * steps_per_epoch
        stage.student.train()
        losses, times = [], []
        for i in range(warmup + steps):
            g = min(first + i, lr.size - 1)
            t0, c0 = time.perf_counter(), time.process_time()
            losses.append(train_step(stage, optimizer, batch, epoch, g, float(lr[g]), float(ema[g]), autocast))
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = np.array(times[warmup:]).T
    s_per_step = float(wall.mean())
    params = sum(p.numel() for p in stage.student.parameters())
    return {
        "case": args.one,
        "stage": what,
        "size": size,
        "device": args.device,
        "threads": args.threads,
        "batch": stage.batch_size,
        "channels": cfg["model"]["encoder"]["channels"],
        "emb_dim": cfg["model"]["encoder"]["emb_dim"],
        "classes": (cfg["dino"]["head"]["n_prototypes"] if what == "dino" else cfg["classes"]),
        "crops": _crops(stage),
        "student_params": params,
        "epoch": epoch,
        "warmup_steps": warmup,
        "steps": steps,
        "first_step_s": times[0][0],
        "s_per_step": s_per_step,
        "cpu_s_per_step": float(cpu.mean()),
        "steps_per_s": 1.0 / s_per_step,
        "utts_per_s": stage.batch_size / s_per_step,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "import_rss_gb": base_rss,
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument(
        "--config",
        type=Path,
        default=REPO / "config" / "config.yaml",
        help="demo sizes: its model, dino, ssrl and kmeans sections",
    )
    ap.add_argument(
        "--paper-config", type=Path, default=REPO / "config" / "voxceleb.yaml", help="paper sizes: merged over --config"
    )
    ap.add_argument("--steps", type=int, default=10, help="timed steps per demo case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    ap.add_argument("--paper-steps", type=int, default=1, help="timed steps per paper case")
    ap.add_argument("--paper-warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--paper-batch", type=int, default=4, help="utterances per paper-size step")
    ap.add_argument("--paper-classes", type=int, default=8000, help="SSRL classes at paper size (k-means K)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: bf16 autocast as the trainer; also reports the peak GPU memory",
    )
    ap.add_argument("--json", type=Path, help="also write the results (a list of dicts) to this JSON file")
    ap.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key in ("steps", "paper_steps", "paper_batch", "paper_classes", "threads"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.paper_warmup < 0:
        ap.error("--warmup and --paper-warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return 0

    where = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU"
    print(f"optimisation steps on {where}, torch {torch.__version__}, {args.threads} thread(s)")
    print(
        "case        batch  C     emb  classes  params      first_s  s/step   CPU_s/step  steps/s  utts/s   "
        "peak_RSS_GB (after imports)  crops"
    )
    results = []
    for case in args.cases:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            case,
            "--config",
            str(args.config),
            "--paper-config",
            str(args.paper_config),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--paper-steps",
            str(args.paper_steps),
            "--paper-warmup",
            str(args.paper_warmup),
            "--paper-batch",
            str(args.paper_batch),
            "--paper-classes",
            str(args.paper_classes),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['case']:11s} {r['batch']:5d}  {r['channels']:<5d} {r['emb_dim']:<4d} {r['classes']:<8d} "
            f"{r['student_params']:<11,d} {r['first_step_s']:<8.2f} {r['s_per_step']:<8.3f} "
            f"{r['cpu_s_per_step']:<11.3f} {r['steps_per_s']:<8.3f} {r['utts_per_s']:<8.1f} "
            f"{r['peak_rss_gb']:.2f} ({r['import_rss_gb']:.2f})          {r['crops']}"
            + (f"  peak GPU {r['peak_gpu_gb']:.2f} GB" if r["peak_gpu_gb"] is not None else ""),
            flush=True,
        )
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
