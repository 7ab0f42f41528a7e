"""Benchmark of trial scoring and metrics at VoxCeleb1-O scale (SPEC 10).

Times, on random embeddings (default 4,874 utterances x 512, 37,611 trials):
  * cosine scoring (score_trials on an in-memory trial list, and from a trials file),
  * EER + two minDCFs + DET points,
  * AS-norm against a random cohort (default 100,000 x 512, top 300).
Targets: scoring < 0.5 s on one thread; AS-norm < 30 s.

    OMP_NUM_THREADS=1 python bench/bench_scoring.py [--utts 4874 --trials 37611 --dim 512
        --cohort 100000 --top-n 300 --threads 1 --repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssrl.manifest import Trials, write_trials
from ssrl.metrics import compute_eer, compute_min_dcf, det_curve, score_trials


def best_of(repeat: int, fn):
    """Run ``fn`` ``repeat`` times -> (fastest wall time in s, last result)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utts", type=int, default=4874)
    ap.add_argument("--trials", type=int, default=37611)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--cohort", type=int, default=100_000, help="cohort size for AS-norm (0: skip)")
    ap.add_argument("--top-n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    utts = [f"id{i // 10:05d}-vid-{i:05d}" for i in range(args.utts)]
    emb = rng.standard_normal((args.utts, args.dim), dtype=np.float32)
    pairs = rng.integers(0, args.utts, size=(args.trials, 2))
    trials = Trials.from_lists(rng.integers(0, 2, args.trials), [utts[i] for i in pairs[:, 0]],
                               [utts[i] for i in pairs[:, 1]])
    print(f"scoring {args.trials} trials over {args.utts} x {args.dim} embeddings, "
          f"torch threads {torch.get_num_threads()}")

    t, res = best_of(args.repeat, lambda: score_trials(utts, emb, trials))
    print(f"  cosine scoring (Trials in memory):   {t:.3f} s  (target < 0.5 s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.txt"
        write_trials(path, trials)
        t, _ = best_of(args.repeat, lambda: score_trials(utts, emb, path))
        print(f"  cosine scoring (from trials file):   {t:.3f} s")

    def metrics():
        return (compute_eer(res.scores, res.labels), compute_min_dcf(res.scores, res.labels, 0.01),
                compute_min_dcf(res.scores, res.labels, 0.05), det_curve(res.scores, res.labels, 500))

    t, (eer, dcf1, dcf5, _) = best_of(args.repeat, metrics)
    print(f"  EER + 2 minDCF + DET:                {t:.3f} s  (EER {100 * eer:.2f} % on random scores)")

    if args.cohort:
        cohort = rng.standard_normal((args.cohort, args.dim), dtype=np.float32)
        t, res = best_of(1, lambda: score_trials(utts, emb, trials, cohort=cohort, top_n=args.top_n))
        print(f"  AS-norm, cohort {args.cohort} x {args.dim}, top {args.top_n}: {t:.2f} s  (target < 30 s)")


if __name__ == "__main__":
    main()
