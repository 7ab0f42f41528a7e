"""k-means pseudo labels and their quality against true speakers (docs/method.md §6).

:func:`kmeans` clusters L2-normalised embeddings with Lloyd iterations on the
squared Euclidean distance: it draws the initial centers, picks the device and
the best of several inits, and recomputes the final centers. The Lloyd
iterations themselves are :mod:`ssrl.kmeans_lloyd`: a pruned exact CPU driver
(Yinyang bounds, numba kernels in :mod:`ssrl.kmeans_kernels`) and a torch
driver for CUDA, which give the same labels.

:func:`cluster_quality` scores labels against the truth (NMI, one-to-one
accuracy, purity).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from .kmeans_lloyd import cluster_sums, lloyd_cpu, lloyd_torch, sums_to_means
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
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))  # NaN/inf when a row holds one
    if not np.isfinite(norms).all():
        finite = np.isfinite(norms)
        raise ValueError(f"{int((~finite).sum())} row(s) contain NaN/inf, first row {int(np.argmin(finite))}")
    if (norms == 0).any():
        raise ValueError(f"row {int(np.argmax(norms == 0))} is all zeros (cannot be L2-normalised)")
    x /= norms[:, None].astype(np.float32)
    return x


def cluster_means(x: np.ndarray, labels: np.ndarray, previous: np.ndarray, block: int = 1 << 13) -> np.ndarray:
    """Per-cluster means of the rows of ``x`` (n, dim), accumulated in float64.

    ``labels`` (n,) in [0, k); ``previous`` (k, dim): centers kept for empty
    clusters. Returns (k, dim) float32.
    """
    sums, counts = cluster_sums(x, labels, len(previous), block)
    return sums_to_means(sums, counts, previous)


def _inertia(x: np.ndarray, labels: np.ndarray, centers: np.ndarray, block: int = 1 << 13) -> float:
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


# --------------------------------------------------------------------------- device


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


# --------------------------------------------------------------------------- k-means


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    max_iter: int = 100,
    n_init: int = 1,
    progress: bool = True,
    device: str = "auto",
    screen: bool | None = None,
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
    ``screen``: the CPU Lloyd's bfloat16 screen of its full assignments (see
    :func:`ssrl.kmeans_lloyd.lloyd_cpu`; None: where it pays; the labels are the same).
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
    with _torch_threads_kept():  # numba's kernels below, torch in the caller
        for init in range(n_init):
            bar = Progress(
                max_iter,
                f"k-means k={k} init {init + 1}/{n_init} on {device}",
                unit="iter",
                every_s=30.0,
                enabled=progress,
            )
            state = {"changed": n}

            def on_iter(changed: int, seconds: float, state: dict = state, bar: Progress = bar) -> None:
                state["changed"] = changed
                bar.update(1, changed=changed, s_per_iter=round(seconds, 3))

            centers = initial_centers(xn, k, seed, init)
            if device == "cpu":
                labels, centers, n_iter, converged, work = lloyd_cpu(xn, centers, max_iter, on_iter, screen=screen)
            else:
                labels, centers, n_iter, converged, work = lloyd_torch(xn, centers, max_iter, device, on_iter)
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


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Restores the thread count of a torch already imported in this process: numba's OpenMP threading
    layer shares libgomp with torch, and its parallel kernels leave torch on numba's pool size, by default
    every CPU (bench/RESULTS.md, "numba's OpenMP pool and torch's threads"). Never imports torch."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else 0
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(threads)


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
