"""Benchmark of the SSRL label machinery at VoxCeleb2 scale (docs/method.md §7).

Times one relabelling epoch's label work for every training utterance: append
the teacher's argmax to each queue (a shuffled epoch order), vote all queues,
and the end-of-epoch replacement (vote ignoring removed classes + class
removal). Target: append + vote under 2 s for 1,092,009 utterances, L = 5.
The simulated teacher keeps most labels, moves some at random and merges a
few classes into others each epoch so that removal is exercised. ``--gmm`` also times the
noisy-label-modelling fit on one epoch of losses.

    python bench/bench_labels.py [--n-utts 1092009 --queue-len 5 --classes 8000 --epochs 4 --gmm]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ssrl.labels import LabelState, vote
from ssrl.relabel import clean_probability


class SimulatedTeacher:
    """Teacher argmax: the current label, except that a fraction ``move`` of the items
    go to a random live class each epoch (noise), and each epoch a fraction ``die`` of
    the live classes is merged into another class for good (so replacements remove
    classes once the merged items' queues agree)."""

    def __init__(self, n_classes: int, move: float, die: float, rng: np.random.Generator):
        self.merge = np.arange(n_classes)
        self.dead = np.zeros(n_classes, dtype=bool)
        self.move, self.die, self.rng = move, die, rng

    def __call__(self, state: LabelState, order: np.ndarray) -> np.ndarray:
        rng = self.rng
        alive = np.flatnonzero(~state.removed & ~self.dead)
        dying = rng.choice(alive, max(1, int(self.die * alive.size)), replace=False)
        self.dead[dying] = True
        alive = np.flatnonzero(~state.removed & ~self.dead)
        self.merge[dying] = rng.choice(alive, dying.size)
        new = self.merge[state.labels[order]]
        noisy = (rng.random(order.size) < self.move) | state.removed[new]
        new[noisy] = rng.choice(alive, int(noisy.sum()))
        return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-utts", type=int, default=1_092_009)
    ap.add_argument("--queue-len", type=int, default=5)
    ap.add_argument("--classes", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=4, help="relabelling epochs to time")
    ap.add_argument("--move", type=float, default=0.15, help="fraction of items relabelled at random per epoch")
    ap.add_argument("--die", type=float, default=0.005, help="fraction of live classes merged away per epoch")
    ap.add_argument("--gmm", action="store_true", help="also time clean_probability on n-utts losses")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    state = LabelState(rng.integers(0, args.classes, args.n_utts), n_classes=args.classes, queue_len=args.queue_len)
    teacher = SimulatedTeacher(args.classes, args.move, args.die, rng)
    print(f"{args.n_utts} utterances, L={args.queue_len}, K={args.classes}")
    print("epoch\tappend_s\tvote_s\treplace_s\tappend+vote_s\tappend+replace_s\tlive\tchanged")
    totals = []
    for epoch in range(args.epochs):
        order = rng.permutation(args.n_utts)
        new = teacher(state, order)
        t0 = time.perf_counter()
        state.append(order, new)
        t1 = time.perf_counter()
        vote(state.queues)
        t2 = time.perf_counter()
        stats = state.replace()
        t3 = time.perf_counter()
        totals.append((t1 - t0) + (t2 - t1))
        print(
            f"{epoch}\t{t1 - t0:.3f}\t{t2 - t1:.3f}\t{t3 - t2:.3f}\t{(t1 - t0) + (t2 - t1):.3f}\t"
            f"{(t1 - t0) + (t3 - t2):.3f}\t{stats.num_live}\t{stats.num_changed}"
        )
    verdict = "OK" if max(totals) < 2.0 else "SLOW"
    print(f"append+vote: median {np.median(totals):.3f} s, max {max(totals):.3f} s (target < 2 s: {verdict})")

    if args.gmm:
        clean = rng.lognormal(np.log(0.05), 1.0, args.n_utts - args.n_utts // 4)
        noisy = rng.lognormal(np.log(3.0), 1.0, args.n_utts // 4)
        t0 = time.perf_counter()
        p = clean_probability(np.concatenate([clean, noisy]))
        print(
            f"clean_probability on {p.size} losses: {time.perf_counter() - t0:.2f} s "
            f"(mean p_clean clean {p[: clean.size].mean():.3f}, noisy {p[clean.size :].mean():.3f})"
        )


if __name__ == "__main__":
    main()
