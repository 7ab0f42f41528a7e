"""Compiled (numba) trial-scoring loop of :func:`ssrl.score.score_trials`.

Imported only when trials are scored (numba costs ~0.5 s to import); compiled on
first use and cached like :mod:`ssrl.kmeans_kernels`.
"""

from __future__ import annotations

import numba
import numpy as np

from .kmeans_kernels import _dot


@numba.njit(cache=True, nogil=True)
def row_dots(x: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = x[a[k]] . x[b[k]]`` for (n,) int64 row indices ``a``, ``b`` into (N, dim) float32 ``x``;
    ``out`` (n,) float32. Reads the rows in place (no gathered copies)."""
    for k in range(a.shape[0]):
        out[k] = _dot(x[a[k]], x[b[k]])
