"""The two Lloyd drivers of :func:`ssrl.kmeans.kmeans` (docs/method.md §6), which give the same labels:

* :func:`lloyd_cpu` (numpy + numba): exact Lloyd with Yinyang bounds. Each point keeps an
  upper bound on the distance to its center and, per group of nearby
  centers, a lower bound on the distance to the group's other centers; after
  a center update the bounds move by the centers' drifts, and only the
  distances that the bounds cannot rule out are computed, in compiled
  per-point loops (:mod:`ssrl.kmeans_kernels`, imported on this path only), or
  by a chunked float32 BLAS product ``||c||^2 - 2 x.c`` for the points left
  with many candidate centers, and for every point while many labels change.
  Where a bfloat16 product is fast (a CPU matrix unit; torch), those full
  assignments are screened with one instead (:class:`Bf16Product`): its
  error bounds leave about one center per point for an exact float32
  distance. Every iteration yields exactly the labels that a full assignment
  would (the bounds carry a margin for float32 rounding).
* :func:`lloyd_torch` (torch, imported only on this path; CUDA in the pipeline): a full chunked
  distance product per iteration, chunks sized to the free GPU memory, float32.

Both start from given centers and return ``(labels, centers, n_iter, converged, work)``; the
initialisation, the choice of driver and the final centers are :func:`ssrl.kmeans.kmeans`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int, block: int = 1 << 13) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (k, dim) float64 and counts (k,) int64 of the rows of ``x`` (n, dim)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), block):
        lab = labels[start : start + block]
        onehot = scipy.sparse.csr_matrix((np.ones(len(lab)), (lab, np.arange(len(lab)))), shape=(k, len(lab)))
        sums += onehot @ x[start : start + block].astype(np.float64)
    return sums, np.bincount(labels, minlength=k)


def sums_to_means(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Cluster means (k, dim) float32 from sums and counts; empty clusters keep ``previous``."""
    out = previous.copy()
    nonempty = counts > 0
    out[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    return out


# --------------------------------------------------------------------------- CPU: Lloyd with Yinyang bounds

#: Bytes of one chunk's (rows, k) float32 distance block in the assignments.
CHUNK_BYTES = 16 << 20
#: The same for the bfloat16 screen, whose compiled pass walks its (k, rows) block once per COLUMNS points:
#: smaller blocks stay in the caches (100k x 256, K = 1000 to convergence, one thread: 4 MiB 1.43 CPU-s,
#: 8 MiB 1.52, 16 MiB 1.71, 32 MiB 2.12).
SCREEN_CHUNK_BYTES = 4 << 20
#: Fraction of the centers in the groups left open by the group filter above which a point of the pruned CPU
#: Lloyd gets a full BLAS assignment (a compiled per-point distance costs a few times one of the BLAS product).
DENSE_CENTERS = 0.2
#: Share of the points whose label an assignment changed above which the next one re-assigns every point in
#: full without the compiled filter pass: while the centers still move far, the bounds fail for most points and
#: the pass's work is lost (100k x 256, K = 1000: iterations 2-5 follow 100 %, 24 %, 12 % and 1.6 % changed
#: labels and sent 100, 100, 99.997 and 94.9 % of the points to the full assignment).
FULL_AFTER_MOVED = 0.01
#: Centers per group of the pruned CPU Lloyd (fewer groups when their bounds would exceed BOUND_BYTES).
GROUP_SIZE = 10
#: Bytes at most of the (n, groups) float32 group lower bounds of the pruned CPU Lloyd.
BOUND_BYTES = 2 << 30
#: Multiply-adds of one full assignment (n * k * dim) from which the pruned CPU Lloyd may screen its full
#: assignments with a bfloat16 product (torch is imported, ~1-2 s, only from there on).
SCREEN_MIN_WORK = 1 << 32


class Bf16Product:
    """Dot products of the unit rows ``xn`` (n, dim) with the centers in bfloat16 (torch on the CPU, where a
    matrix unit such as AMX or AVX512-BF16 makes them several times as fast as float32), with what
    :func:`ssrl.kmeans_kernels.assign_rows_screened` needs to bound their errors (float32, rounded up): the
    norms of the rows' rounding errors and of the rounded rows (n,), after :meth:`set_centers` those of the
    centers and of their rounding errors plus the float32 accumulation's share (k,)."""

    def __init__(self, xn: np.ndarray):
        import torch

        self.torch = torch
        self.dim = xn.shape[1]
        self.xq, self.x_err, self.xq_norm = self._round(xn)
        self._out = self._out16 = None

    def _round(self, a: np.ndarray) -> tuple[object, np.ndarray, np.ndarray]:
        from .kmeans_kernels import round_bf16

        bits = np.empty(a.shape, dtype=np.uint16)
        err, norm = np.empty(len(a), dtype=np.float32), np.empty(len(a), dtype=np.float32)
        round_bf16(np.ascontiguousarray(a, dtype=np.float32), bits, err, norm)
        return self.torch.from_numpy(bits.view(np.int16)).view(self.torch.bfloat16), err, norm

    def set_centers(self, centers: np.ndarray) -> None:
        self.cq, err, _ = self._round(centers)
        c64 = centers.astype(np.float64)
        self.c_norm = (np.sqrt(np.einsum("ij,ij->i", c64, c64)) * (1.0 + 1e-6)).astype(np.float32)
        self.c_err = err + np.float32(self.dim * 2.0**-23) * self.c_norm

    def dots(self, rows: np.ndarray | slice) -> np.ndarray:
        """The products of every center with the rows ``rows`` (at most SCREEN_CHUNK_BYTES of them): (k, m)
        float32, in a buffer that the next call overwrites."""
        torch = self.torch
        x = self.xq[rows] if isinstance(rows, slice) else self.xq[torch.from_numpy(rows)]
        k, m = len(self.cq), len(x)
        if self._out is None or self._out.shape[0] != k * m:  # a chunk size seen before: no new pages
            self._out16 = torch.empty(k * m, dtype=torch.bfloat16)
            self._out = torch.empty(k * m, dtype=torch.float32)
        out16, out = self._out16.view(k, m), self._out.view(k, m)
        torch.mm(self.cq, x.T, out=out16)
        out.copy_(out16)
        return out.numpy()


def screen_pays(n: int, k: int, dim: int) -> bool:
    """The automatic choice of :func:`lloyd_cpu`'s bfloat16 screen for n points, k centers, dim dimensions:
    at least SCREEN_MIN_WORK multiply-adds per full assignment on a CPU with AMX bfloat16."""
    return float(n) * k * dim >= SCREEN_MIN_WORK and has_amx_bf16()


def has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX bfloat16 tiles (Linux ``/proc/cpuinfo`` flag ``amx_bf16``: Intel Sapphire Rapids
    and later) and torch is installed: there the bfloat16 product of the screen runs ~6x as fast as numpy's
    float32 one (100k x 1000 x 256, one thread: 0.13 vs 0.81 s). Decided from the flag, not by timing: a timed
    probe on a 2-core machine under load chose wrongly (idle threads' spinning counts as CPU time)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    if "amx_bf16" not in flags:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _center_groups(centers: np.ndarray, n_groups: int) -> np.ndarray:
    """Group of each center (k,) in [0, n_groups): 5 plain Lloyd steps on the centers themselves, started
    from every (k / n_groups)-th center, so that the centers of a group lie close together."""
    means = centers[np.linspace(0, len(centers) - 1, n_groups).astype(np.int64)]
    for _ in range(5):
        group = np.argmin(np.einsum("ij,ij->i", means, means) - 2.0 * (centers @ means.T), axis=1)
        means = sums_to_means(*cluster_sums(centers, group, n_groups), means)
    return group


class _Yinyang:
    """State of the pruned Lloyd of :func:`lloyd_cpu`, in a center order where each group is contiguous.

    xn (n, dim) unit rows, x_sq their squared norms; centers (k, dim) float32 in
    group order, c_sq their squared norms; starts (G,) first center of each group, bounds
    (G + 1,) the same and k;
    labels (n,) in group order; upper (n,) float64 >= the distance of each point
    to its center; lower (n, G) float32: ``lower[i, g] - cum[g]`` <= its distance
    to every other center of group g, where cum (G,) float64 sums the group's
    shifts (largest center drifts) over the updates, so an update moves every
    stored bound without touching it; glower (n,) float64 <= every group bound of
    the point; slack: absolute error bound of a float32 squared distance.
    """

    def __init__(
        self, xn: np.ndarray, centers: np.ndarray, starts: np.ndarray, slack: float, screen: Bf16Product | None
    ):
        self.xn, self.starts, self.slack, self.screen = xn, starts, slack, screen
        self.bounds = np.append(starts, len(centers))
        self.x_sq = np.einsum("ij,ij->i", xn, xn)
        self.set_centers(centers)
        n = len(xn)
        self.labels = np.empty(n, dtype=np.int64)
        self.upper = np.empty(n, dtype=np.float64)
        self.glower = np.empty(n, dtype=np.float64)
        self.lower = np.empty((n, len(starts)), dtype=np.float32)
        self.cum = np.zeros(len(starts), dtype=np.float64)
        self.first_work = self.assign_all(np.arange(n))
        self.moved_share = 1.0  # share of the points whose label the last assignment changed

    def assign_all(self, rows: np.ndarray) -> int:
        """Full assignment of the points ``rows`` (m,): labels and bounds from their distances to every
        center, per chunk of CHUNK_BYTES: one float32 BLAS product and a compiled pass (exact bounds), or
        with a bfloat16 screen one bfloat16 product and a compiled pass that computes the float32 distances
        its error bounds cannot rule out. Returns the float32 distances computed."""
        from .kmeans_kernels import assign_rows, assign_rows_screened

        step = max(1, (SCREEN_CHUNK_BYTES if self.screen else CHUNK_BYTES) // (4 * len(self.centers)))
        state = (self.bounds, self.cum, self.slack, self.labels, self.upper, self.glower, self.lower)  # written
        computed = 0
        for s in range(0, len(rows), step):
            idx = rows[s : s + step]
            whole = len(rows) == len(self.xn)  # all rows: slices, no copies
            if self.screen is not None:
                computed += assign_rows_screened(
                    self.screen.dots(slice(s, s + step) if whole else idx),
                    idx,
                    self.xn,
                    self.x_sq,
                    self.screen.x_err,
                    self.screen.xq_norm,
                    self.centers,
                    self.c_sq,
                    self.screen.c_norm,
                    self.screen.c_err,
                    *state,
                )
                continue
            computed += len(idx) * len(self.centers)
            x = self.xn[s : s + step] if whole else self.xn[idx]
            assign_rows(
                x @ self.centers.T,
                idx,
                self.x_sq,
                self.c_sq,
                *state,
            )
        return computed

    def set_centers(self, centers: np.ndarray) -> None:
        self.centers = centers
        self.c_sq = np.einsum("ij,ij->i", centers, centers)
        if self.screen is not None:
            self.screen.set_centers(centers)

    def step(self, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Move to ``centers`` (k, dim) and re-assign -> (moved rows, their old labels, new labels, distances
        computed). The compiled pass (:func:`ssrl.kmeans_kernels.yinyang_pass`) filters and re-assigns the
        points; those with more than DENSE_CENTERS of the centers in open groups get a full BLAS assignment."""
        from .kmeans_kernels import yinyang_pass

        drift = np.sqrt(((centers.astype(np.float64) - self.centers) ** 2).sum(axis=1)) * (1 + 1e-6) + 1e-7
        shift = np.maximum.reduceat(drift, self.starts) + 1e-6
        self.cum += shift
        self.set_centers(centers)
        old = self.labels.copy()
        if self.moved_share > FULL_AFTER_MOVED:  # the bounds would fail for most points: skip the filter pass
            computed = self.assign_all(np.arange(len(old)))
        else:
            dense = np.zeros(len(old), dtype=bool)
            computed = yinyang_pass(
                self.xn,
                self.x_sq,
                self.centers,
                self.c_sq,
                self.bounds,
                drift,
                shift,
                self.cum,
                self.slack,
                int(DENSE_CENTERS * len(centers)),
                self.labels,
                self.upper,
                self.glower,
                self.lower,
                dense,
            )
            computed += self.assign_all(np.flatnonzero(dense))
        moved = np.flatnonzero(self.labels != old)
        self.moved_share = len(moved) / len(old)
        return moved, old[moved], self.labels[moved], computed


def lloyd_cpu(
    xn: np.ndarray,
    centers: np.ndarray,
    max_iter: int,
    on_iter: Callable[[int, float], None],
    bound_bytes: int = BOUND_BYTES,
    screen: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool, float]:
    """Lloyd iterations from ``centers`` (k, dim) on the unit rows ``xn`` (n, dim) on the CPU, pruned by
    Yinyang bounds (Ding et al., ICML 2015).

    The centers are split into G groups of nearby centers (about k /
    GROUP_SIZE, fewer when the (n, G) float32 bounds would exceed
    ``bound_bytes``). Per point: an upper bound on the distance to its center
    and, per group, a lower bound on the distance to the group's other centers
    (Euclidean). After a center update the upper bound grows by its center's
    drift and each group bound shrinks by the group's largest drift. A point
    keeps its label without a distance computed when its upper bound is below
    every group bound (checked first against one bound per point over all
    groups, lowered by the largest drift at each update); otherwise the upper bound is tightened to the exact
    distance, and only the centers of the groups whose bound still fails, less
    those whose old group bound minus their own drift exceeds the best distance
    so far (local filter), get a distance (:func:`ssrl.kmeans_kernels.yinyang_pass`).
    A point whose open groups hold more than DENSE_CENTERS of the k centers is re-assigned
    by one float32 BLAS product with all of them instead, which also makes its
    bounds exact (:func:`ssrl.kmeans_kernels.assign_rows`); so is every point
    in the first iteration, and in every iteration after one that changed more
    than FULL_AFTER_MOVED of the labels (without the filter pass). ``screen``
    (None: :func:`screen_pays`) computes these full assignments from a
    bfloat16 product instead, whose error bounds leave about one candidate per
    point for an exact float32 distance (:class:`Bf16Product`,
    :func:`ssrl.kmeans_kernels.assign_rows_screened`): the same labels, at a
    fraction of a float32 product on CPUs with a bfloat16 matrix unit. Squared distances ``||x||^2 + (||c||^2 - 2 x.c)``
    carry a float32 absolute error below ``slack`` (dim * 2^-21 for unit rows
    and centers of norm <= 1), which the bounds absorb, so every label is the
    one a full assignment gives (exact ties aside). Center sums are kept in
    float64 and updated with the moved points only. ``on_iter(changed,
    seconds)`` is called after each assignment. Returns ``(labels, centers,
    n_iter, converged, work)`` with the centers of the last update (not of the
    final labels) and ``work`` the fraction of the n * k * n_iter point-center
    distances computed in float32 (a screen's bfloat16 products not counted).
    """
    from .kmeans_kernels import move_points

    n, dim = xn.shape
    k = len(centers)
    t0 = time.monotonic()
    n_groups = max(1, min(k // GROUP_SIZE, bound_bytes // (4 * n)))
    group = _center_groups(centers, n_groups) if n_groups > 1 else np.zeros(k, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    if screen is None:
        screen = screen_pays(n, k, dim)
    state = _Yinyang(xn, centers[order], starts, slack=dim * 2.0**-21, screen=Bf16Product(xn) if screen else None)
    computed = float(state.first_work)
    n_iter, converged = 1, False
    on_iter(n, time.monotonic() - t0)
    sums, counts = cluster_sums(xn, state.labels, k)
    while n_iter < max_iter:
        t0 = time.monotonic()
        rows, old, new, work = state.step(sums_to_means(sums, counts, state.centers))
        computed += work
        move_points(xn, rows, old, new, sums, counts)
        n_iter += 1
        on_iter(len(rows), time.monotonic() - t0)
        if not len(rows):
            converged = True
            break
    centers = np.empty_like(state.centers)
    centers[order] = state.centers
    return order[state.labels], centers, n_iter, converged, computed / (float(n) * k * n_iter)


# --------------------------------------------------------------------------- torch (CUDA): plain chunked Lloyd


def lloyd_torch(
    xn: np.ndarray,
    centers: np.ndarray,
    max_iter: int,
    device: str,
    on_iter: Callable[[int, float], None],
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool, float]:
    """Plain Lloyd iterations in torch on ``device`` (any torch device; CUDA in the pipeline, CPU in the tests).

    Same iteration and stopping rule as :func:`lloyd_cpu`: each assignment is
    a full float32 product ``-2 x.c + ||c||^2`` (argmin; ``||x||^2`` does not
    change it) over chunks of ``chunk_rows`` points (default: a quarter of the
    free GPU memory, 1 GiB on a CPU), then centers are the float64 means of
    their points, an empty cluster keeping its center. TF32 is off, so products
    are full float32. Returns ``(labels, centers, n_iter, converged, work)`` as
    :func:`lloyd_cpu` (``work`` is 1.0).
    """
    import torch

    dev = torch.device(device)
    n, dim = xn.shape
    k = len(centers)
    if chunk_rows is None:
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else 1 << 30
        chunk_rows = max(1, min(n, int(free // 4 // (4 * k))))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            x = torch.from_numpy(xn).to(dev)
            c = torch.from_numpy(centers).to(dev)
            labels = torch.full((n,), -1, dtype=torch.int64, device=dev)
            converged, n_iter = False, 0
            while n_iter < max_iter:
                t0 = time.monotonic()
                c_sq = (c * c).sum(dim=1)
                new = torch.cat(
                    [
                        torch.argmin(torch.addmm(c_sq, x[s : s + chunk_rows], c.T, alpha=-2.0), dim=1)
                        for s in range(0, n, chunk_rows)
                    ]
                )
                changed = int((new != labels).sum())
                labels = new
                n_iter += 1
                on_iter(changed, time.monotonic() - t0)
                if changed == 0:
                    converged = True
                    break
                sums = torch.zeros((k, dim), dtype=torch.float64, device=dev).index_add_(0, labels, x.double())
                counts = torch.bincount(labels, minlength=k)
                keep = counts > 0
                c = c.clone()
                c[keep] = (sums[keep] / counts[keep, None]).float()
            out = labels.cpu().numpy(), c.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out[0], out[1], n_iter, converged, 1.0
