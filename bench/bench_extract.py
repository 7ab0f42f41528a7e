"""Embedding extraction throughput: length-bucketed batches vs one utterance at a time (docs/method.md §5).

Writes ``--n-utts`` synthetic FLAC utterances with VoxCeleb1-test-like durations
(log-normal, median ``--median-s``, clipped to [``--min-s``, ``--max-s``]: 4-20 s,
mean about 8 s by default) and embeds them twice with the same random-weight
log-mel ECAPA-TDNN (the model section of ``--config``, config/config.yaml by
default, or ``--channels`` / ``--emb-dim``), through the pipeline's path
(:func:`ssrl.inference.embed_files`: EvalDataset, length-bucketed zero-padded
batches, :func:`ssrl.extract.extract_embeddings`):

* batched: ``--max-batch-seconds`` of padded audio and ``--max-batch-size``
  utterances per batch at most (the extract config's defaults, 240 s and 64);
* one at a time: ``max_batch_size = 1`` (no padding).

Both include reading and decoding the files (``--workers`` loader processes).
The two embedding matrices must agree (largest absolute difference at most
``--tol``, else exit code 1). Prints utterances/s, audio seconds per second and
the speed-up.

    python bench/bench_extract.py                                   # 200 utterances, demo ECAPA
    python bench/bench_extract.py --channels 1024 --emb-dim 512     # paper-size ECAPA
    python bench/bench_extract.py --channels 1024 --emb-dim 512 --device cuda --n-utts 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ssrl import SAMPLE_RATE
from ssrl.audio import write_audio
from ssrl.extract import embed_files
from ssrl.fileio import write_json
from ssrl.models import build_speaker_model

REPO = Path(__file__).resolve().parents[1]


def durations(n: int, median_s: float, min_s: float, max_s: float, seed: int = 0) -> np.ndarray:
    """(n,) utterance durations in seconds: log-normal (sigma 0.4) around ``median_s``, clipped."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median_s), 0.4, n), min_s, max_s)


def write_utterances(root: Path, seconds: np.ndarray, seed: int = 0) -> list[str]:
    """One synthetic voiced FLAC file per duration -> their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, dur in enumerate(seconds):
        t = np.arange(round(dur * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
        path = root / f"{i:05d}.flac"
        write_audio(path, (0.9 * x / np.abs(x).max()).astype(np.float32))
        paths.append(str(path))
    return paths


def model_arch(args: argparse.Namespace) -> dict:
    """The model section of ``--config`` with ``--channels`` / ``--emb-dim`` applied."""
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{args.config}: no 'model' section")
    arch = {"frontend": dict(cfg["model"]["frontend"]), "encoder": dict(cfg["model"]["encoder"])}
    if args.channels:
        arch["encoder"]["channels"] = args.channels
    if args.emb_dim:
        arch["encoder"]["emb_dim"] = args.emb_dim
    return arch


def timed(fn) -> tuple[float, float, np.ndarray]:
    """Run ``fn()`` -> (wall s, CPU s of this process, its result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-utts", type=int, default=200)
    ap.add_argument("--median-s", type=float, default=7.5, help="median utterance duration (s)")
    ap.add_argument("--min-s", type=float, default=4.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml", help="its model section")
    ap.add_argument("--channels", type=int, help="override the ECAPA channels (paper: 1024)")
    ap.add_argument("--emb-dim", type=int, help="override the embedding size (paper: 512)")
    ap.add_argument("--max-batch-seconds", type=float, default=240.0, help="padded audio per batch (s)")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader processes reading audio")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest |batched - single| allowed")
    ap.add_argument("--json", type=Path, help="also write the results (a dict) to this JSON file")
    args = ap.parse_args(argv)
    if args.n_utts < 1 or args.threads < 1 or not 0 < args.min_s <= args.median_s <= args.max_s:
        ap.error("need --n-utts >= 1, --threads >= 1 and 0 < --min-s <= --median-s <= --max-s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch = model_arch(args)
    model = build_speaker_model(arch).eval()
    seconds = durations(args.n_utts, args.median_s, args.min_s, args.max_s)
    utts = [f"utt{i:05d}" for i in range(args.n_utts)]

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        t = time.perf_counter()
        paths = write_utterances(Path(tmp), seconds)
        print(f"{args.n_utts} synthetic utterances written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        common = dict(
            device=args.device, workers=args.workers, max_batch_seconds=args.max_batch_seconds, progress=False
        )
        embed_files(model, utts[:2], paths[:2], max_batch_size=2, **common)  # warm-up (allocator, first calls)
        single_s, single_cpu, single = timed(lambda: embed_files(model, utts, paths, max_batch_size=1, **common))
        batch_s, batch_cpu, batched = timed(
            lambda: embed_files(model, utts, paths, max_batch_size=args.max_batch_size, **common)
        )
    diff = float(np.abs(batched - single).max())
    cos = np.sum(batched * single, axis=1) / (np.linalg.norm(batched, axis=1) * np.linalg.norm(single, axis=1))
    audio_s = float(seconds.sum())
    res = {
        "n_utts": args.n_utts,
        "audio_s": audio_s,
        "mean_s": float(seconds.mean()),
        "min_s": float(seconds.min()),
        "max_s": float(seconds.max()),
        "channels": arch["encoder"]["channels"],
        "emb_dim": arch["encoder"]["emb_dim"],
        "device": args.device,
        "threads": args.threads,
        "workers": args.workers,
        "max_batch_seconds": args.max_batch_seconds,
        "max_batch_size": args.max_batch_size,
        "single": {
            "seconds": single_s,
            "cpu_s": single_cpu,
            "utts_per_s": args.n_utts / single_s,
            "utts_per_cpu_s": args.n_utts / single_cpu,
            "audio_x_realtime": audio_s / single_s,
        },
        "batched": {
            "seconds": batch_s,
            "cpu_s": batch_cpu,
            "utts_per_s": args.n_utts / batch_s,
            "utts_per_cpu_s": args.n_utts / batch_cpu,
            "audio_x_realtime": audio_s / batch_s,
        },
        "speedup_wall": single_s / batch_s,
        "speedup_cpu": single_cpu / batch_cpu,
        "max_abs_diff": diff,
        "min_cosine": float(cos.min()),
        "agree": diff <= args.tol,
    }
    print(
        f"extraction on {args.device}, ECAPA C={res['channels']} emb {res['emb_dim']}, torch {torch.__version__}, "
        f"{args.threads} thread(s), {args.workers} loader worker(s); {args.n_utts} utterances, "
        f"{audio_s:.0f} s of audio (mean {res['mean_s']:.1f} s, {res['min_s']:.1f}-{res['max_s']:.1f} s)"
    )
    print("mode          wall_s   CPU_s    utts/s   utts/CPU_s  x_realtime")
    for name in ("single", "batched"):
        r = res[name]
        print(
            f"{name:12s}  {r['seconds']:<8.2f} {r['cpu_s']:<8.2f} {r['utts_per_s']:<8.2f} "
            f"{r['utts_per_cpu_s']:<11.2f} {r['audio_x_realtime']:.1f}"
        )
    print(
        f"batched / single: {res['speedup_wall']:.2f}x wall, {res['speedup_cpu']:.2f}x CPU; "
        f"max |diff| {diff:.2e} (tol {args.tol:g}), min cosine {res['min_cosine']:.6f}"
    )
    if args.json:
        write_json(args.json, res)
    if not res["agree"]:
        print(f"ERROR: batched and one-at-a-time embeddings differ by {diff:.2e} > --tol {args.tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
