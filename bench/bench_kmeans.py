"""Benchmark of k-means pseudo labelling at VoxCeleb2 scale (docs/method.md §6).

Synthetic embeddings (speaker centres + noise, 5,994 speakers per 1,092,009 points,
scaled with n) are clustered into K = 8000 by ssrl.kmeans.kmeans with a fixed number
of Lloyd iterations. Each size runs in its own process so that its peak RSS
(resource.getrusage) is its own. Prints, per size: wall time of the clustering,
seconds per iteration (wall, and CPU time summed over threads: on a shared machine
CPU s/iter divided by the core count estimates the unloaded wall time), iterations
run, peak RSS, inertia, NMI against the synthetic speakers. Side by side on each size
(--reference): the reference's plain Lloyd in torch (`reference_lloyd`: a full chunked
distance product per iteration until no label changes), from the same initial centers; with
--sklearn also scikit-learn's KMeans (Lloyd, random init, same K and iterations) on the first
size. --device runs ssrl on cpu (pruned Lloyd, numba + BLAS) or cuda (torch).
Target for 1.09M x 512, K = 8000: < 15 min on 2 cores and < 24 GB.

    python bench/bench_kmeans.py                           # 100k only (a few minutes)
    python bench/bench_kmeans.py --sizes 100000 --dim 256 --k 1000 --max-iter 300 --reference  # issue 14
    python bench/bench_kmeans.py --sizes 100000 300000 1090000 --sklearn   # the full set
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SPEAKERS_PER_POINT = 5994 / 1_092_009


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 points around max(2, n * 5994 / 1092009) random speaker centres."""
    rng = np.random.default_rng(seed)
    n_spk = max(2, round(n * SPEAKERS_PER_POINT))
    centres = rng.standard_normal((n_spk, dim), dtype=np.float32)
    spk = rng.integers(0, n_spk, n)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= 1.5
    x += centres[spk]
    return x, spk


def reference_lloyd(x: np.ndarray, centers: np.ndarray, max_iter: int, chunk: int = 8192) -> tuple[np.ndarray, int]:
    """The reference's k-means: plain Lloyd in torch from ``centers`` (k, dim) on the unit rows ``x``
    (n, dim): per iteration a full float32 distance product ``-2 x.c + ||c||^2`` over ``chunk`` rows at a
    time and argmin, then cluster means (an empty cluster keeps its center), until no label changes or
    ``max_iter`` assignments. Returns (labels (n,), assignments run)."""
    import torch

    xt, c = torch.from_numpy(x), torch.from_numpy(centers.copy())
    labels = torch.full((len(x),), -1, dtype=torch.int64)
    for it in range(1, max_iter + 1):
        c_sq = (c * c).sum(dim=1)
        new = torch.cat(
            [
                torch.argmin(torch.addmm(c_sq, xt[s : s + chunk], c.T, alpha=-2.0), dim=1)
                for s in range(0, len(x), chunk)
            ]
        )
        if torch.equal(new, labels):
            return labels.numpy(), it
        labels = new
        sums = torch.zeros(c.shape, dtype=torch.float64).index_add_(0, labels, xt.double())
        counts = torch.bincount(labels, minlength=len(c))
        c = torch.where(counts[:, None] > 0, (sums / counts.clamp(min=1)[:, None]).float(), c)
    return labels.numpy(), max_iter


def run_one(args: argparse.Namespace) -> dict:
    """One measurement in this process -> dict printed as JSON."""
    x, spk = synthetic(args.one, args.dim)
    if args.impl == "reference":
        import torch  # imported before the clock starts
    elif args.impl == "ssrl" and args.device == "cpu":
        import ssrl.kmeans_kernels  # numba, likewise; the cached kernels load inside the clock
        import ssrl.kmeans_lloyd

        if args.screen == "on" or (args.screen == "auto" and ssrl.kmeans_lloyd.screen_pays(args.one, args.k, args.dim)):
            import torch  # noqa: F401  (the bfloat16 screen's, as the reference's)
    t0, c0 = time.perf_counter(), time.process_time()
    work = 1.0
    if args.impl == "ssrl":
        from ssrl.kmeans import kmeans

        screen = {"auto": None, "on": True, "off": False}[args.screen]
        res = kmeans(x, args.k, seed=0, max_iter=args.max_iter, progress=True, device=args.device, screen=screen)
        n_iter, inertia, labels, work = res.n_iter, res.inertia, res.labels, res.work
    elif args.impl == "reference":
        from ssrl.kmeans import cluster_means, initial_centers, normalise_rows

        xn = normalise_rows(x)
        labels, n_iter = reference_lloyd(xn, initial_centers(xn, args.k, 0, 0), args.max_iter)
        inertia = float(
            ((xn - cluster_means(xn, labels, initial_centers(xn, args.k, 0, 0))[labels]) ** 2).sum(dtype=np.float64)
        )
    else:
        from sklearn.cluster import KMeans

        x /= np.linalg.norm(x, axis=1, keepdims=True)
        km = KMeans(
            n_clusters=args.k,
            init="random",
            n_init=1,
            max_iter=args.max_iter,
            tol=0.0,
            algorithm="lloyd",
            random_state=0,
        ).fit(x)
        n_iter, inertia, labels = int(km.n_iter_), float(km.inertia_), km.labels_
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    from ssrl.kmeans import cluster_quality

    return {
        "impl": args.impl,
        "work": work,
        "n": args.one,
        "k": args.k,
        "dim": args.dim,
        "seconds": seconds,
        "n_iter": n_iter,
        "s_per_iter": seconds / n_iter,
        "cpu_s_per_iter": cpu / n_iter,
        "inertia": inertia,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "nmi": cluster_quality(labels, spk)["nmi"],
        "labels_sha1": hashlib.sha1(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--k", type=int, default=8000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--max-iter", type=int, default=10, help="Lloyd iterations (runs stop only at convergence earlier)")
    ap.add_argument("--sklearn", action="store_true", help="also time scikit-learn KMeans on the first size")
    ap.add_argument("--reference", action="store_true", help="also time the reference's torch Lloyd on each size")
    ap.add_argument("--device", default="cpu", help="ssrl.kmeans.kmeans device (cpu, cuda, auto)")
    ap.add_argument(
        "--screen",
        choices=["auto", "on", "off"],
        default="auto",
        help="the CPU path's bfloat16 screen of full assignments (auto: on CPUs with AMX bfloat16, from 2^32 "
        "multiply-adds per assignment)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="threads of every pool (OpenMP, BLAS, numba, torch) in each run; default: the libraries' own "
        "(on a shared machine, idle pool threads spin and inflate the CPU seconds of both sides)",
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=["ssrl", "reference", "sklearn"], default="ssrl", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return

    jobs = [(impl, n) for n in args.sizes for impl in ("ssrl", "reference")[: 1 + args.reference]]
    jobs += [("sklearn", args.sizes[0])] if args.sklearn else []
    print(
        f"k-means K={args.k}, dim {args.dim}, max_iter {args.max_iter}, threads {args.threads or 'default'}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    results = {}
    for impl, n in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--impl",
            impl,
            "--k",
            str(args.k),
            "--dim",
            str(args.dim),
            "--max-iter",
            str(args.max_iter),
            "--device",
            args.device,
            "--screen",
            args.screen,
        ]
        env = dict(os.environ)
        if args.threads:
            pools = ("OMP", "OPENBLAS", "MKL", "NUMBA")
            env.update({f"{pool}_NUM_THREADS": str(args.threads) for pool in pools})
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"  {r['impl']:9s} n={r['n']:>9,d}: {r['seconds']:8.1f} s  "
            f"({r['s_per_iter']:.2f} s/iter x {r['n_iter']}, "
            f"CPU {r['cpu_s_per_iter']:.2f} s/iter)  peak RSS {r['peak_rss_gb']:.2f} GB  inertia {r['inertia']:.1f}  "
            f"NMI {r['nmi']:.4f}  distances computed {100 * r['work']:.1f} %  load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        results[impl, n] = r
    for n in args.sizes if args.reference else []:
        ours, ref = results["ssrl", n], results["reference", n]
        print(
            f"  n={n:,d}: reference / ssrl: wall {ref['seconds'] / ours['seconds']:.2f}x, "
            f"CPU {ref['cpu_s_per_iter'] * ref['n_iter'] / (ours['cpu_s_per_iter'] * ours['n_iter']):.2f}x; "
            f"inertia ssrl / reference {ours['inertia'] / ref['inertia']:.6f}; "
            f"same labels: {ours['labels_sha1'] == ref['labels_sha1']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
