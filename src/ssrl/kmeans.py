"""k-means pseudo labels and their quality against true speakers (docs/method.md §6).

:func:`kmeans` clusters L2-normalised embeddings with Lloyd iterations on the
squared Euclidean distance. Two implementations of the same iteration give the
same labels:

* CPU (numpy + numba): exact Lloyd with Yinyang bounds. Each point keeps an
  upper bound on the distance to its center and, per group of nearby
  centers, a lower bound on the distance to the group's other centers; after
  a center update the bounds move by the centers' drifts, and only the
  distances that the bounds cannot rule out are computed, in compiled
  per-point loops (:mod:`ssrl.kmeans_kernels`, imported on this path only), or
  by a chunked float32 BLAS product ``||c||^2 - 2 x.c`` for the points left
  with many candidate centers. Every iteration yields exactly the labels that
  a full assignment would (the bounds carry a margin for float32 rounding).
* CUDA (torch, imported only on this path): a full chunked distance product
  per iteration, chunks sized to the free GPU memory, float32.

:func:`cluster_quality` scores labels against the truth (NMI, one-to-one
accuracy, purity).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from .progress import Progress


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`. Unpacks as ``labels, centers = kmeans(...)``.

    labels    (n,) int64 in [0, k): cluster of each point
    centers   (k, dim) float32: mean of the normalised points of each cluster
              (not re-normalised); an empty cluster keeps its last center
    n_iter    assignment steps run (of the best init)
    converged True when an assignment step changed no label
    inertia   sum of squared distances of the normalised points to their centers
    seconds   wall time of all inits
    device    "cpu" (numpy + numba, pruned) or the torch device ("cuda:0", ...)
    work      point-center distances computed over n * k * n_iter (1.0 without pruning; of the best init)
    """

    labels: np.ndarray
    centers: np.ndarray
    n_iter: int
    converged: bool
    inertia: float
    seconds: float
    device: str
    work: float

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.labels
        yield self.centers


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """(n, dim) -> float32 copy with unit L2 rows; ValueError naming the first NaN/inf or all-zero row."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, dim) matrix, got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} row(s) contain NaN/inf, first row {int(np.argmin(finite))}")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"row {int(np.argmax(norms == 0))} is all zeros (cannot be L2-normalised)")
    x /= norms[:, None]
    return x


def cluster_means(x: np.ndarray, labels: np.ndarray, previous: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Per-cluster means of the rows of ``x`` (n, dim), accumulated in float64.

    ``labels`` (n,) in [0, k); ``previous`` (k, dim): centers kept for empty
    clusters. Returns (k, dim) float32.
    """
    sums, counts = _cluster_sums(x, labels, len(previous), block)
    return _means(sums, counts, previous)


def _cluster_sums(x: np.ndarray, labels: np.ndarray, k: int, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (k, dim) float64 and counts (k,) int64 of the rows of ``x`` (n, dim)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), block):
        lab = labels[start : start + block]
        onehot = scipy.sparse.csr_matrix((np.ones(len(lab)), (lab, np.arange(len(lab)))), shape=(k, len(lab)))
        sums += onehot @ x[start : start + block].astype(np.float64)
    return sums, np.bincount(labels, minlength=k)


def _means(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Cluster means (k, dim) float32 from sums and counts; empty clusters keep ``previous``."""
    out = previous.copy()
    nonempty = counts > 0
    out[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    return out


def _inertia(x: np.ndarray, labels: np.ndarray, centers: np.ndarray, block: int = 1 << 16) -> float:
    total = 0.0
    for start in range(0, len(x), block):
        diff = x[start : start + block] - centers[labels[start : start + block]]
        total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total


def initial_centers(xn: np.ndarray, k: int, seed: int, init: int) -> np.ndarray:
    """The ``k`` distinct random rows of ``xn`` (n, dim) that start init number ``init``: (k, dim) float32,
    in row order, drawn with ``numpy.random.default_rng([seed, init])``."""
    rng = np.random.default_rng([seed, init])
    return xn[np.sort(rng.choice(len(xn), size=k, replace=False))].copy()


# --------------------------------------------------------------------------- CPU: Lloyd with Yinyang bounds

#: Bytes of one chunk's (rows, k) float32 distance block in the assignments.
CHUNK_BYTES = 16 << 20
#: Fraction of the centers left by the filters above which a point of the pruned CPU Lloyd gets a full BLAS
#: assignment (a compiled per-point distance costs a few times one of the BLAS product).
DENSE_CENTERS = 0.2
#: Centers per group of the pruned CPU Lloyd (fewer groups when their bounds would exceed BOUND_BYTES).
GROUP_SIZE = 10
#: Bytes at most of the (n, groups) float32 group lower bounds of the pruned CPU Lloyd.
BOUND_BYTES = 2 << 30


def _center_groups(centers: np.ndarray, n_groups: int) -> np.ndarray:
    """Group of each center (k,) in [0, n_groups): 5 plain Lloyd steps on the centers themselves, started
    from every (k / n_groups)-th center, so that the centers of a group lie close together."""
    means = centers[np.linspace(0, len(centers) - 1, n_groups).astype(np.int64)]
    for _ in range(5):
        group = np.argmin(np.einsum("ij,ij->i", means, means) - 2.0 * (centers @ means.T), axis=1)
        means = _means(*_cluster_sums(centers, group, n_groups), means)
    return group


class _Yinyang:
    """State of the pruned Lloyd of :func:`_lloyd_cpu`, in a center order where each group is contiguous.

    xn (n, dim) unit rows, x_sq their squared norms; centers (k, dim) float32 in
    group order, c_sq their squared norms; starts (G,) first center of each group, bounds
    (G + 1,) the same and k;
    labels (n,) in group order; upper (n,) float64 >= the distance of each point
    to its center; lower (n, G) float32 <= its distance to every other center of
    each group; slack: absolute error bound of a float32 squared distance.
    """

    def __init__(self, xn: np.ndarray, centers: np.ndarray, starts: np.ndarray, slack: float):
        self.xn, self.starts, self.slack = xn, starts, slack
        self.bounds = np.append(starts, len(centers))
        self.x_sq = np.einsum("ij,ij->i", xn, xn)
        self.set_centers(centers)
        n = len(xn)
        self.labels = np.empty(n, dtype=np.int64)
        self.upper = np.empty(n, dtype=np.float64)
        self.lower = np.empty((n, len(starts)), dtype=np.float32)
        self.assign_all(np.arange(n))

    def assign_all(self, rows: np.ndarray) -> None:
        """Full assignment of the points ``rows`` (m,): labels and exact bounds from their distances to
        every center (one float32 BLAS product per chunk of CHUNK_BYTES, then a compiled pass)."""
        from .kmeans_kernels import assign_rows

        step = max(1, CHUNK_BYTES // (4 * len(self.centers)))
        for s in range(0, len(rows), step):
            idx = rows[s : s + step]
            x = self.xn[s : s + step] if len(rows) == len(self.xn) else self.xn[idx]  # all rows: no copy
            assign_rows(
                x @ self.centers.T,
                idx,
                self.x_sq,
                self.c_sq,
                self.bounds,
                self.slack,
                self.labels,
                self.upper,
                self.lower,
            )

    def set_centers(self, centers: np.ndarray) -> None:
        self.centers = centers
        self.c_sq = np.einsum("ij,ij->i", centers, centers)

    def step(self, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Move to ``centers`` (k, dim) and re-assign -> (moved rows, their old labels, new labels, distances
        computed). The compiled pass (:func:`ssrl.kmeans_kernels.yinyang_pass`) filters and re-assigns the
        points; those with more than DENSE_CENTERS of the centers left by the filters get a full BLAS assignment."""
        from .kmeans_kernels import yinyang_pass

        drift = np.sqrt(((centers.astype(np.float64) - self.centers) ** 2).sum(axis=1)) * (1 + 1e-6) + 1e-7
        shift = np.maximum.reduceat(drift, self.starts).astype(np.float32) + np.float32(1e-6)
        self.set_centers(centers)
        old = self.labels.copy()
        dense = np.zeros(len(old), dtype=bool)
        computed = yinyang_pass(
            self.xn,
            self.x_sq,
            self.centers,
            self.c_sq,
            self.bounds,
            drift,
            shift,
            self.slack,
            int(DENSE_CENTERS * len(centers)),
            self.labels,
            self.upper,
            self.lower,
            dense,
        )
        rows_d = np.flatnonzero(dense)
        self.assign_all(rows_d)
        computed += len(rows_d) * len(centers)
        moved = np.flatnonzero(self.labels != old)
        return moved, old[moved], self.labels[moved], computed


def _lloyd_cpu(
    xn: np.ndarray,
    centers: np.ndarray,
    max_iter: int,
    on_iter: Callable[[int, float], None],
    bound_bytes: int = BOUND_BYTES,
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
    every group bound; otherwise the upper bound is tightened to the exact
    distance, and only the centers of the groups whose bound still fails, less
    those whose old group bound minus their own drift exceeds the best distance
    so far (local filter), get a distance (:func:`ssrl.kmeans_kernels.yinyang_pass`).
    A point left with more than DENSE_CENTERS of the k centers is re-assigned
    by one float32 BLAS product with all of them instead, which also makes its
    bounds exact (:func:`ssrl.kmeans_kernels.assign_rows`); so is every point
    in the first iteration. Squared distances ``||x||^2 + (||c||^2 - 2 x.c)``
    carry a float32 absolute error below ``slack`` (dim * 2^-21 for unit rows
    and centers of norm <= 1), which the bounds absorb, so every label is the
    one a full assignment gives (exact ties aside). Center sums are kept in
    float64 and updated with the moved points only. ``on_iter(changed,
    seconds)`` is called after each assignment. Returns ``(labels, centers,
    n_iter, converged, work)`` with the centers of the last update (not of the
    final labels) and ``work`` the fraction of the n * k * n_iter point-center
    distances computed.
    """
    from .kmeans_kernels import move_points

    n, dim = xn.shape
    k = len(centers)
    t0 = time.monotonic()
    n_groups = max(1, min(k // GROUP_SIZE, bound_bytes // (4 * n)))
    group = _center_groups(centers, n_groups) if n_groups > 1 else np.zeros(k, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    state = _Yinyang(xn, centers[order], starts, slack=dim * 2.0**-21)
    computed = float(n) * k
    n_iter, converged = 1, False
    on_iter(n, time.monotonic() - t0)
    sums, counts = _cluster_sums(xn, state.labels, k)
    while n_iter < max_iter:
        t0 = time.monotonic()
        rows, old, new, work = state.step(_means(sums, counts, state.centers))
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


def cuda_visible() -> bool:
    """Whether this machine may have a usable CUDA device, decided without importing torch: an NVIDIA
    driver is loaded (``/proc/driver/nvidia/gpus`` lists a GPU) and ``CUDA_VISIBLE_DEVICES`` does not hide
    them all."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def resolve_device(device: str) -> str:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> "cpu" or a CUDA device name.

    "auto" picks "cuda" when :func:`cuda_visible` and torch sees a device
    (torch is imported only then), else "cpu". A CUDA device that torch does not
    see is a ValueError.
    """
    if device == "cpu":
        return "cpu"
    if device != "auto" and not (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"k-means device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto" and not cuda_visible():
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if device == "auto":
            return "cpu"
        raise ValueError(f"k-means device {device!r} requested but torch sees no CUDA device")
    return "cuda" if device == "auto" else device


def _lloyd_torch(
    xn: np.ndarray,
    centers: np.ndarray,
    max_iter: int,
    device: str,
    on_iter: Callable[[int, float], None],
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool, float]:
    """Plain Lloyd iterations in torch on ``device`` (any torch device; CUDA in the pipeline, CPU in the tests).

    Same iteration and stopping rule as :func:`_lloyd_cpu`: each assignment is
    a full float32 product ``-2 x.c + ||c||^2`` (argmin; ``||x||^2`` does not
    change it) over chunks of ``chunk_rows`` points (default: a quarter of the
    free GPU memory, 1 GiB on a CPU), then centers are the float64 means of
    their points, an empty cluster keeping its center. TF32 is off, so products
    are full float32. Returns ``(labels, centers, n_iter, converged, work)`` as
    :func:`_lloyd_cpu` (``work`` is 1.0).
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


# --------------------------------------------------------------------------- k-means


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    max_iter: int = 100,
    n_init: int = 1,
    progress: bool = True,
    device: str = "auto",
) -> KMeansResult:
    """Lloyd k-means of the L2-normalised rows of ``x`` (n, dim) into ``k`` clusters (docs/method.md §6).

    The rows are normalised here (a copy; ``x`` is untouched). Each init picks
    ``k`` distinct random rows as centers (:func:`initial_centers`), then
    alternates nearest-center assignment (squared Euclidean distance, exact)
    and center update (cluster means) until an assignment changes no label or
    ``max_iter`` assignments have run. A cluster that loses all its points
    keeps its previous center (it may win points back later; if it ends empty,
    its label is simply unused). The returned centers are recomputed from the
    final assignment. With ``n_init > 1`` the init with the lowest inertia
    wins. ``device`` (see :func:`resolve_device`): "cpu" runs the pruned numpy
    Lloyd, a CUDA device the torch one; "auto" picks CUDA when there is one.
    Returns a :class:`KMeansResult` (unpacks as ``(labels, centers)``).
    """
    xn = normalise_rows(x)
    n = len(xn)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    if max_iter < 1 or n_init < 1:
        raise ValueError(f"max_iter and n_init must be >= 1, got {max_iter} and {n_init}")
    device = resolve_device(device)
    t0 = time.monotonic()
    best: tuple | None = None
    for init in range(n_init):
        bar = Progress(
            max_iter, f"k-means k={k} init {init + 1}/{n_init} on {device}", unit="iter", every_s=30.0, enabled=progress
        )
        state = {"changed": n}

        def on_iter(changed: int, seconds: float, state: dict = state, bar: Progress = bar) -> None:
            state["changed"] = changed
            bar.update(1, changed=changed, s_per_iter=round(seconds, 3))

        centers = initial_centers(xn, k, seed, init)
        if device == "cpu":
            labels, centers, n_iter, converged, work = _lloyd_cpu(xn, centers, max_iter, on_iter)
        else:
            labels, centers, n_iter, converged, work = _lloyd_torch(xn, centers, max_iter, device, on_iter)
        centers = cluster_means(xn, labels, centers)
        inertia = _inertia(xn, labels, centers)
        bar.write(changed=state["changed"], inertia=inertia, converged=converged)
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers, n_iter, converged, work)
    inertia, labels, centers, n_iter, converged, work = best
    return KMeansResult(
        labels=labels,
        centers=centers,
        n_iter=n_iter,
        converged=converged,
        inertia=inertia,
        seconds=time.monotonic() - t0,
        device=device,
        work=work,
    )


# --------------------------------------------------------------------------- quality


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a distribution given by non-negative counts."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def cluster_quality(pred: Sequence[int] | np.ndarray, true: Sequence | np.ndarray) -> dict[str, float | int]:
    """Quality of cluster labels ``pred`` (n,) against true labels ``true`` (n,) (any hashable ids).

    Returns a dict:
      nmi         normalised mutual information, arithmetic-mean normalisation
      accuracy    fraction of points correct under the best one-to-one mapping of
                  clusters to speakers (Hungarian); points of unmatched clusters are wrong
      purity      mean over non-empty clusters of the fraction held by its majority speaker
                  (every cluster weighs the same, whatever its size)
      n_clusters  non-empty clusters; n_speakers distinct true labels
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.ndim != 1 or pred.shape != true.shape or len(pred) == 0:
        raise ValueError(f"pred and true must be non-empty 1-D arrays of equal length, got {pred.shape}, {true.shape}")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    counts = scipy.sparse.coo_matrix((np.ones(len(p)), (p, t))).toarray()  # (clusters, speakers)
    from scipy.optimize import linear_sum_assignment  # not at module level: kmeans.py starts faster

    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {
        "nmi": _nmi(counts),
        "accuracy": float(counts[rows, cols].sum() / len(p)),
        "purity": float(np.mean(counts.max(axis=1) / counts.sum(axis=1))),
        "n_clusters": int(counts.shape[0]),
        "n_speakers": int(counts.shape[1]),
    }


def _nmi(counts: np.ndarray) -> float:
    """Normalised mutual information (arithmetic-mean normalisation) of a (clusters, classes) contingency
    table of counts; 1.0 when both sides have a single group, 0.0 when the mutual information is 0 (the
    conventions of scikit-learn's ``normalized_mutual_info_score``)."""
    if counts.shape[0] == counts.shape[1] == 1:
        return 1.0
    joint = counts / counts.sum()
    pc, pt = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pc, pt)[nz])).sum())
    if mi <= 0:
        return 0.0
    return mi / max(0.5 * (_entropy(pc) + _entropy(pt)), np.finfo(np.float64).eps)
