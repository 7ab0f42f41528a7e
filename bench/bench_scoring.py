"""Benchmark of trial scoring and metrics at VoxCeleb1-O scale (docs/method.md §10).

Times, on random embeddings (default 4,874 utterances x 512, 37,611 trials):
  * cosine scoring (score_trials on an in-memory trial list, and from a trials file),
  * side by side with it, the reference's scoring (`reference_scores`: the trials file read line by
    line, one scipy cosine per trial), both from the same file, parsing included,
  * EER + two minDCFs + DET points,
  * AS-norm against a random cohort (default 100,000 x 512, top 300).
Targets: scoring < 0.5 s on one thread and >= 10x the reference loop; AS-norm < 30 s.

    OMP_NUM_THREADS=1 python bench/bench_scoring.py [--utts 4874 --trials 37611 --dim 512
        --cohort 100000 --top-n 300 --threads 1 --repeat 3 --clock wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ssrl.manifest import Trials, write_trials
from ssrl.score import compute_eer, compute_min_dcf, det_curve, score_trials

#: Clock of :func:`best_of`: time.perf_counter (wall) or time.process_time (CPU, for a loaded machine).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def best_of(repeat: int, fn, clock=time.perf_counter):
    """Run ``fn`` ``repeat`` times -> (fastest time in s on ``clock``, last result)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = clock()
        out = fn()
        times.append(clock() - t0)
    return min(times), out


def reference_scores(path: Path, embeddings: dict[str, np.ndarray]) -> tuple[list[float], list[int]]:
    """The reference's scoring: read the trials file line by line, one scipy cosine similarity per trial
    -> (scores, labels)."""
    from scipy.spatial.distance import cosine

    scores, labels = [], []
    with open(path) as fh:
        for line in fh:
            label, enroll, test = line.split()
            scores.append(1.0 - cosine(embeddings[enroll], embeddings[test]))
            labels.append(int(label))
    return scores, labels


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utts", type=int, default=4874)
    ap.add_argument("--trials", type=int, default=37611)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--cohort", type=int, default=100_000, help="cohort size for AS-norm (0: skip)")
    ap.add_argument("--top-n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCK),
        default="wall",
        help="wall time, or CPU time of this process (usable on a loaded machine)",
    )
    args = ap.parse_args(argv)
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements of :func:`main`."""

    rng = np.random.default_rng(0)
    utts = [f"id{i // 10:05d}-vid-{i:05d}" for i in range(args.utts)]
    emb = rng.standard_normal((args.utts, args.dim), dtype=np.float32)
    pairs = rng.integers(0, args.utts, size=(args.trials, 2))
    trials = Trials.from_lists(
        rng.integers(0, 2, args.trials), [utts[i] for i in pairs[:, 0]], [utts[i] for i in pairs[:, 1]]
    )
    print(
        f"scoring {args.trials} trials over {args.utts} x {args.dim} embeddings, {args.threads} BLAS thread(s), "
        f"{args.clock} clock, load average {os.getloadavg()[0]:.2f}"
    )
    clock = CLOCK[args.clock]

    t, res = best_of(args.repeat, lambda: score_trials(utts, emb, trials), clock)
    print(f"  cosine scoring (Trials in memory):   {t:.3f} s  (target < 0.5 s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.txt"
        write_trials(path, trials)
        t, ours = best_of(args.repeat, lambda: score_trials(utts, emb, path), clock)
        print(f"  cosine scoring (from trials file):   {t:.3f} s")
        table = dict(zip(utts, emb))
        t_ref, (ref, ref_labels) = best_of(args.repeat, lambda: reference_scores(path, table), clock)
        print(
            f"  reference loop (from trials file):   {t_ref:.3f} s  -> reference / ours {t_ref / t:.1f}x "
            f"(target >= 10x); max |score difference| {np.abs(ours.scores - ref).max():.1e}, "
            f"labels equal: {np.array_equal(ours.labels, ref_labels)}; load average {os.getloadavg()[0]:.2f}"
        )

    def metrics():
        return (
            compute_eer(res.scores, res.labels),
            compute_min_dcf(res.scores, res.labels, 0.01),
            compute_min_dcf(res.scores, res.labels, 0.05),
            det_curve(res.scores, res.labels, 500),
        )

    t, (eer, dcf1, dcf5, _) = best_of(args.repeat, metrics, clock)
    print(f"  EER + 2 minDCF + DET:                {t:.3f} s  (EER {100 * eer:.2f} % on random scores)")

    if args.cohort:
        cohort = rng.standard_normal((args.cohort, args.dim), dtype=np.float32)
        t, res = best_of(1, lambda: score_trials(utts, emb, trials, cohort=cohort, top_n=args.top_n), clock)
        print(f"  AS-norm, cohort {args.cohort} x {args.dim}, top {args.top_n}: {t:.2f} s  (target < 30 s)")


if __name__ == "__main__":
    main()
