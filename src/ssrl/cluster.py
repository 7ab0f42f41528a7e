"""k-means pseudo labels and their quality against true speakers (SPEC 6).

:func:`kmeans` clusters L2-normalised embeddings with Lloyd iterations on the
squared Euclidean distance; the nearest-center search runs in faiss (on a GPU
when the installed faiss has GPU support and sees one, else on the CPU with
``OMP_NUM_THREADS`` threads). :func:`cluster_quality` scores labels against
the truth (NMI, one-to-one accuracy, purity).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import faiss
import numpy as np
import scipy.sparse
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score

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
    device    "faiss-gpu" or "faiss-cpu"
    """

    labels: np.ndarray
    centers: np.ndarray
    n_iter: int
    converged: bool
    inertia: float
    seconds: float
    device: str

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


def _flat_index(dim: int) -> tuple[faiss.Index, str, object]:
    """Exact squared-L2 index, on GPU 0 when faiss can use one -> (index, device, gpu resources)."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatL2(resources, dim), "faiss-gpu", resources
    return faiss.IndexFlatL2(dim), "faiss-cpu", None


#: Below this many multiply-adds per assignment step (n * k * dim), faiss runs on one thread:
#: OpenMP start-up and barriers then cost more than the work, badly so on a busy machine.
SINGLE_THREAD_WORK = 1 << 24


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    """Run the block with faiss on ``n`` OpenMP threads, restoring the previous count after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def cluster_means(x: np.ndarray, labels: np.ndarray, previous: np.ndarray, block: int = 1 << 16
                  ) -> np.ndarray:
    """Per-cluster means of the rows of ``x`` (n, dim), accumulated in float64.

    ``labels`` (n,) in [0, k); ``previous`` (k, dim): centers kept for empty
    clusters. Returns (k, dim) float32.
    """
    k, dim = previous.shape
    sums = np.zeros((k, dim), dtype=np.float64)
    for start in range(0, len(x), block):
        lab = labels[start:start + block]
        onehot = scipy.sparse.csr_matrix((np.ones(len(lab)), (lab, np.arange(len(lab)))), shape=(k, len(lab)))
        sums += onehot @ x[start:start + block].astype(np.float64)
    counts = np.bincount(labels, minlength=k)
    out = previous.copy()
    nonempty = counts > 0
    out[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    return out


def _inertia(x: np.ndarray, labels: np.ndarray, centers: np.ndarray, block: int = 1 << 16) -> float:
    total = 0.0
    for start in range(0, len(x), block):
        diff = x[start:start + block] - centers[labels[start:start + block]]
        total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total


def kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 100, n_init: int = 1,
           progress: bool = True) -> KMeansResult:
    """Lloyd k-means of the L2-normalised rows of ``x`` (n, dim) into ``k`` clusters (SPEC 6).

    The rows are normalised here (a copy; ``x`` is untouched). Each init picks
    ``k`` distinct random rows as centers (``numpy.random.default_rng([seed,
    init])``), then alternates nearest-center assignment (squared Euclidean
    distance, exact, faiss) and center update (cluster means) until an
    assignment changes no label or ``max_iter`` assignments have run. A cluster
    that loses all its points keeps its previous center (it may win points back
    later; if it ends empty, its label is simply unused). The returned centers
    are recomputed from the final assignment. With ``n_init > 1`` the init with
    the lowest inertia wins. Returns a :class:`KMeansResult` (unpacks as
    ``(labels, centers)``).
    """
    xn = normalise_rows(x)
    n, dim = xn.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    if max_iter < 1 or n_init < 1:
        raise ValueError(f"max_iter and n_init must be >= 1, got {max_iter} and {n_init}")
    t0 = time.monotonic()
    index, device, _resources = _flat_index(dim)
    threads = 1 if n * k * dim < SINGLE_THREAD_WORK else faiss.omp_get_max_threads()
    with _faiss_threads(threads):
        best = _lloyd_inits(xn, k, seed, max_iter, n_init, index, progress)
    inertia, labels, centers, n_iter, converged = best
    return KMeansResult(labels=labels, centers=centers, n_iter=n_iter, converged=converged, inertia=inertia,
                        seconds=time.monotonic() - t0, device=device)


def _lloyd_inits(xn: np.ndarray, k: int, seed: int, max_iter: int, n_init: int, index: faiss.Index,
                 progress: bool) -> tuple[float, np.ndarray, np.ndarray, int, bool]:
    """The Lloyd runs of :func:`kmeans` -> (inertia, labels, centers, n_iter, converged) of the best."""
    n = len(xn)
    best: tuple[float, np.ndarray, np.ndarray, int, bool] | None = None
    for init in range(n_init):
        rng = np.random.default_rng([seed, init])
        centers = xn[np.sort(rng.choice(n, size=k, replace=False))].copy()
        labels = np.full(n, -1, dtype=np.int64)
        bar = Progress(max_iter, f"k-means k={k} init {init + 1}/{n_init}", unit="iter", every_s=30.0,
                       enabled=progress)
        converged = False
        n_iter = 0
        while n_iter < max_iter:
            index.reset()
            index.add(centers)
            dist, nearest = index.search(xn, 1)
            n_iter += 1
            new = nearest[:, 0].astype(np.int64)
            changed = int((new != labels).sum())
            labels = new
            bar.update(1, changed=changed, inertia=float(dist.sum(dtype=np.float64)))
            if changed == 0:
                converged = True
                break
            centers = cluster_means(xn, labels, centers)
        centers = cluster_means(xn, labels, centers)
        inertia = _inertia(xn, labels, centers)
        bar.write(changed=changed, inertia=inertia, converged=converged)
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers, n_iter, converged)
    return best


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
        raise ValueError(f"pred and true must be non-empty 1-D arrays of equal length, got {pred.shape}, "
                         f"{true.shape}")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    counts = scipy.sparse.coo_matrix((np.ones(len(p)), (p, t))).toarray()    # (clusters, speakers)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {
        "nmi": float(normalized_mutual_info_score(t, p, average_method="arithmetic")),
        "accuracy": float(counts[rows, cols].sum() / len(p)),
        "purity": float(np.mean(counts.max(axis=1) / counts.sum(axis=1))),
        "n_clusters": int(counts.shape[0]),
        "n_speakers": int(counts.shape[1]),
    }
