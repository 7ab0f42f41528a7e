"""Compiled (numba) per-point loops of the pruned CPU Lloyd of :mod:`ssrl.kmeans`.

Imported only by :func:`ssrl.kmeans_lloyd.lloyd_cpu` (numba costs ~0.5 s to
import). The functions are compiled on first use and cached next to this file
(``cache=True``; numba falls back to a per-user cache directory when that is not
writable), so a job pays the compilation once per machine and environment.

Conventions shared with :class:`ssrl.kmeans_lloyd._Yinyang`: centers are in group
order (group g holds centers ``starts[g]:starts[g + 1]``); squared distances
are computed in float32 as ``||x||^2 - 2 x.c + ||c||^2`` (absolute error below
``slack`` for unit points and centers of norm <= 1); upper bounds are float64
and rounded up, lower bounds float32 and rounded down.
"""

from __future__ import annotations

import numba
import numpy as np

#: Points per parallel block of :func:`yinyang_pass`.
BLOCK = 256


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    """float32 dot product of two (dim,) float32 vectors (vectorised: summation order is free)."""
    s = np.float32(0.0)
    for d in range(a.shape[0]):
        s += a[d] * b[d]
    return s


@numba.njit(cache=True)
def _up(d_sq: float, slack: float) -> float:
    """Upper bound (float64) on a distance whose float32 square is ``d_sq``."""
    return np.sqrt(max(d_sq, 0.0) + slack)


@numba.njit(cache=True)
def _lo(d_sq: float, slack: float) -> np.float32:
    """Lower bound (float32, rounded down) on a distance whose float32 square is ``d_sq``."""
    return np.float32(np.sqrt(max(d_sq - slack, 0.0)) * (1.0 - 1e-6) - 1e-6)


@numba.njit(cache=True)
def _store(v: float, cum: float) -> np.float32:
    """A group lower bound ``v`` as stored: ``v + cum`` (the group's accumulated shift), rounded down to float32."""
    s = v + cum
    return np.float32(s - abs(s) * 1.2e-7)


@numba.njit(cache=True, inline="always")  # a call would pass (and reference-count) every array
def _point(
    i,
    xn,
    x_sq,
    centers,
    c_sq,
    starts,
    drift,
    shift,
    cum,
    slack,
    dense_centers,
    labels,
    upper,
    glower,
    lower,
    dense,
    old_lb,
    new_lb,
    first_v,
    first_j,
    second_v,
):
    """One Yinyang step of point ``i``, whose moved bounds ``upper[i]`` and ``glower[i]`` failed the global
    filter (see :func:`yinyang_pass`); returns the distances computed."""
    n_groups = len(starts) - 1
    lab = labels[i]
    ub = upper[i]
    glb = np.inf
    for g in range(n_groups):
        new_lb[g] = lower[i, g] - cum[g]
        old_lb[g] = new_lb[g] + shift[g]
        glb = min(glb, new_lb[g])
    glower[i] = glb
    if ub <= glb:  # the same filter with the (tighter) minimum of the group bounds
        return 0
    x, xs = xn[i], np.float64(x_sq[i])
    e_own = c_sq[lab] - np.float32(2.0) * _dot(x, centers[lab])
    ub = _up(xs + e_own, slack)
    computed = 1
    n_cand = 0  # centers of the groups that fail the group filter
    for g in range(n_groups):
        if new_lb[g] < ub:
            n_cand += starts[g + 1] - starts[g]
    upper[i] = ub
    if n_cand == 0:
        return computed
    if n_cand > dense_centers:  # cheaper as a full BLAS assignment
        dense[i] = True
        return computed
    best_j, best_e, best_ub = lab, e_own, ub
    for g in range(n_groups):  # group filter
        if new_lb[g] >= ub:
            continue
        f_v, f_j, s_v = np.float32(np.inf), -1, np.float32(np.inf)
        for j in range(starts[g], starts[g + 1]):
            if j == lab:
                v = _lo(xs + e_own, slack)
            else:
                bound = old_lb[g] - drift[j]  # local filter: d(x, c_j) >= bound
                if bound >= best_ub:
                    v = np.float32(bound - 1e-6)
                else:
                    e = c_sq[j] - np.float32(2.0) * _dot(x, centers[j])
                    computed += 1
                    v = _lo(xs + e, slack)
                    if e < best_e:
                        best_j, best_e, best_ub = j, e, _up(xs + e, slack)
            if v < f_v:
                s_v = f_v
                f_v, f_j = v, j
            elif v < s_v:
                s_v = v
        first_v[g], first_j[g], second_v[g] = f_v, f_j, s_v
    glb = np.inf
    for g in range(n_groups):
        if new_lb[g] < ub:  # an open group: its bound from the distances above
            new_lb[g] = second_v[g] if first_j[g] == best_j else first_v[g]
            lower[i, g] = _store(new_lb[g], cum[g])
        elif best_j != lab and starts[g] <= lab < starts[g + 1]:  # the old center joins the other centers
            new_lb[g] = min(new_lb[g], _lo(xs + e_own, slack))
            lower[i, g] = _store(new_lb[g], cum[g])
        glb = min(glb, new_lb[g])
    glower[i] = glb
    if best_j != lab:
        upper[i] = best_ub
        labels[i] = best_j
    return computed


@numba.njit(cache=True, parallel=True)
def yinyang_pass(
    xn: np.ndarray,
    x_sq: np.ndarray,
    centers: np.ndarray,
    c_sq: np.ndarray,
    starts: np.ndarray,
    drift: np.ndarray,
    shift: np.ndarray,
    cum: np.ndarray,
    slack: float,
    dense_centers: int,
    labels: np.ndarray,
    upper: np.ndarray,
    glower: np.ndarray,
    lower: np.ndarray,
    dense: np.ndarray,
) -> int:
    """Re-assign every point after the centers moved, in place; returns the point-center distances computed.

    xn (n, dim) float32 unit rows, x_sq (n,) float32 their squared norms;
    centers (k, dim) float32 (new), c_sq (k,) float32; starts (G + 1,) int64
    group boundaries; drift (k,) float64 upper bounds on each center's move;
    shift (G,) float64 upper bounds on the largest move in each group (plus
    the float32 rounding margin), cum (G,) float64 the shifts summed over all
    updates so far, this one included; slack: absolute error bound of a
    float32 squared distance. The state, updated: labels (n,) int64, upper (n,)
    float64; lower (n, G) float32, the group lower bounds stored as
    ``bound + cum[g]`` at the time they were set (so that a center update
    moves them all at once through ``cum``, without touching them); glower (n,)
    float64 <= every group bound of the point, lowered by the largest shift
    at each update (a point whose upper bound stays below it is skipped without
    reading its group bounds). A point whose groups left open by the group
    filter hold more than ``dense_centers`` centers gets ``dense[i] = True``
    and valid (not tight) bounds, its label unchanged: the caller re-assigns it
    in full, which also makes all its bounds exact again (counting whole groups
    rather than the centers that pass the local filter sends more points to
    the full assignment while the centers still move far, and so leaves tight
    bounds for the late updates, when few points fail the global filter). Otherwise
    the label is the nearest center: groups whose bound exceeds the point's
    exact own distance are skipped, and inside the other groups so is every
    center whose old group bound minus its own drift does (Yinyang's local
    filter, Ding et al., ICML 2015).
    """
    n = xn.shape[0]
    n_groups = len(starts) - 1
    n_blocks = (n + BLOCK - 1) // BLOCK
    max_shift = shift.max()
    computed = 0
    for b in numba.prange(n_blocks):
        old_lb = np.empty(n_groups, dtype=np.float64)
        new_lb = np.empty(n_groups, dtype=np.float64)
        first_v = np.empty(n_groups, dtype=np.float32)
        first_j = np.empty(n_groups, dtype=np.int64)
        second_v = np.empty(n_groups, dtype=np.float32)
        local = 0
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            upper[i] += drift[labels[i]]
            glower[i] -= max_shift
            if upper[i] <= glower[i]:  # global filter: O(1), no group bound read (most points, late on)
                continue
            local += _point(
                i,
                xn,
                x_sq,
                centers,
                c_sq,
                starts,
                drift,
                shift,
                cum,
                slack,
                dense_centers,
                labels,
                upper,
                glower,
                lower,
                dense,
                old_lb,
                new_lb,
                first_v,
                first_j,
                second_v,
            )
        computed += local
    return computed


@numba.njit(cache=True)
def move_points(
    xn: np.ndarray, rows: np.ndarray, old: np.ndarray, new: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> None:
    """Move the points ``rows`` (m,) from clusters ``old`` (m,) to ``new`` (m,) in the float64 cluster
    ``sums`` (k, dim) and ``counts`` (k,), in place."""
    for r in range(len(rows)):
        i, a, b = rows[r], old[r], new[r]
        counts[a] -= 1
        counts[b] += 1
        for d in range(xn.shape[1]):
            v = np.float64(xn[i, d])
            sums[a, d] -= v
            sums[b, d] += v


@numba.njit(cache=True, parallel=True)
def assign_rows(
    dots: np.ndarray,
    rows: np.ndarray,
    x_sq: np.ndarray,
    c_sq: np.ndarray,
    starts: np.ndarray,
    cum: np.ndarray,
    slack: float,
    labels: np.ndarray,
    upper: np.ndarray,
    glower: np.ndarray,
    lower: np.ndarray,
) -> None:
    """Full assignment of the points ``rows`` (m,) from their dot products ``dots`` (m, k) float32 with every
    center: label = nearest center (least ``||c||^2 - 2 x.c``, the first on a tie), ``upper`` its distance,
    ``lower[:, g]`` the distance to the nearest other center of group g (``starts`` (G + 1,) group
    boundaries; stored as in :func:`yinyang_pass`, plus ``cum[g]``) and ``glower`` their minimum, as bounds;
    in place."""
    m, k = len(rows), dots.shape[1]
    n_groups = len(starts) - 1
    for b in numba.prange((m + BLOCK - 1) // BLOCK):
        e = np.empty(k, dtype=np.float32)
        low = np.empty(n_groups, dtype=np.float32)
        for r in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
            i = rows[r]
            _offsets(dots[r], c_sq, e)
            best_g = 0
            for g in range(n_groups):  # nearest center of each group
                v = np.float32(np.inf)
                for j in range(starts[g], starts[g + 1]):
                    v = min(v, e[j])
                low[g] = v
                if v < low[best_g]:
                    best_g = g
            best_j = starts[best_g]
            while e[best_j] != low[best_g]:  # the first nearest center of the nearest group
                best_j += 1
            xs = np.float64(x_sq[i])
            labels[i] = best_j
            upper[i] = _up(xs + low[best_g], slack)
            e[best_j] = np.inf
            v = np.float32(np.inf)
            for j in range(starts[best_g], starts[best_g + 1]):
                v = min(v, e[j])
            low[best_g] = v
            glb = np.inf
            for g in range(n_groups):
                lb = _lo(xs + low[g], slack)
                lower[i, g] = _store(lb, cum[g])
                glb = min(glb, lb)
            glower[i] = glb


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _offsets(dots: np.ndarray, c_sq: np.ndarray, out: np.ndarray) -> None:
    """out = ||c||^2 - 2 x.c (k,) float32 from the dot products ``dots`` (k,)."""
    for j in range(len(out)):
        out[j] = c_sq[j] - np.float32(2.0) * dots[j]


#: Points whose bounds :func:`assign_rows_screened` computes together (its loops run across them).
COLUMNS = 512


@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def assign_rows_screened(
    dots: np.ndarray,
    rows: np.ndarray,
    xn: np.ndarray,
    x_sq: np.ndarray,
    x_err: np.ndarray,
    xq_norm: np.ndarray,
    centers: np.ndarray,
    c_sq: np.ndarray,
    c_norm: np.ndarray,
    c_err: np.ndarray,
    starts: np.ndarray,
    cum: np.ndarray,
    slack: float,
    labels: np.ndarray,
    upper: np.ndarray,
    glower: np.ndarray,
    lower: np.ndarray,
) -> int:
    """:func:`assign_rows` of the points ``rows`` (m,) from bfloat16 dot products: the same labels and valid
    bounds; returns the float32 distances computed. Overwrites ``dots``.

    dots (k, m) float32: the bfloat16 products of the rounded centers and the
    rounded points ``rows`` (m,) (float32 accumulation, bfloat16 output), a row
    per center. Each differs from the exact ``x.c`` by at most ``x_err[i]
    c_norm[j] + xq_norm[i] c_err[j] + 2^-7 |dot|``: x_err (n,) and c_err (k,)
    float32 are the norms of the rounding errors of the points and centers
    (c_err with the float32 accumulation's ``dim 2^-23 ||c||`` added), xq_norm
    (n,) those of the rounded points, c_norm (k,) those of the centers; the last
    term is the output rounding (to nearest or toward zero). A center whose
    lower bound ``||c||^2 - 2 (dot + err)`` exceeds the least upper bound
    ``||c||^2 - 2 (dot - err)`` of the point cannot be the nearest one; the
    others (about one per point) get an exact float32 distance, as in
    :func:`yinyang_pass`, and the label is the nearest of them. The group
    bounds are the least lower bounds, in the nearest center's group over its
    other centers' exact distances where computed. COLUMNS points at a time go
    through the loops over the centers, which run across the points.
    """
    m = dots.shape[1]
    n_groups = len(starts) - 1
    margin = np.float32(slack)
    computed = 0
    for b in numba.prange((m + COLUMNS - 1) // COLUMNS):
        # max(., 0): an index numba can prove is not negative, so that the accesses below skip the
        # negative-index wraparound, whose check kept the loops over the points from vectorising (2.5x slower)
        c0 = max(np.int64(b) * COLUMNS, 0)
        w = min(COLUMNS, m - c0)
        local = 0
        ex = np.empty(w, dtype=np.float32)
        xq = np.empty(w, dtype=np.float32)
        xs = np.empty(w, dtype=np.float32)
        least = np.empty(w, dtype=np.float32)
        low = np.empty((n_groups, w), dtype=np.float32)
        for q in range(w):
            i = rows[c0 + q]
            ex[q] = np.float32(2.0) * x_err[i]
            xq[q] = np.float32(2.0) * xq_norm[i]
            xs[q] = x_sq[i]
            least[q] = np.inf
        for g in range(n_groups):  # lower bounds (in dots), their group minima and the least upper bound
            for q in range(w):
                low[g, q] = np.inf
            for j in range(starts[g], starts[g + 1]):
                cn, ce, cs = c_norm[j], c_err[j], c_sq[j]
                for q in range(w):
                    d = dots[j, c0 + q]
                    err = ex[q] * cn + xq[q] * ce + np.float32(0.0158) * abs(d) + margin
                    e = cs - np.float32(2.0) * d
                    v = e - err
                    dots[j, c0 + q] = v
                    low[g, q] = v if v < low[g, q] else low[g, q]
                    h = e + err
                    least[q] = h if h < least[q] else least[q]
        for q in range(w):  # exact distances to the centers the bounds leave
            i = rows[c0 + q]
            x = xn[i]
            best_j, best_g, best_e = -1, -1, np.float32(np.inf)
            for g in range(n_groups):
                if low[g, q] > least[q]:
                    continue
                for j in range(starts[g], starts[g + 1]):
                    if dots[j, c0 + q] <= least[q]:
                        e32 = c_sq[j] - np.float32(2.0) * _dot(x, centers[j])
                        local += 1
                        dots[j, c0 + q] = e32
                        if e32 < best_e:
                            best_j, best_g, best_e = j, g, e32
            v = np.float32(np.inf)
            for j in range(starts[best_g], starts[best_g + 1]):
                if j != best_j:
                    v = min(v, dots[j, c0 + q])
            low[best_g, q] = v
            labels[i] = best_j
            upper[i] = _up(np.float64(xs[q]) + best_e, slack)
        for q in range(w):
            least[q] = np.inf  # from here: the least group bound
        for g in range(n_groups):  # the group bounds as _lo gives them (float32, the margin covers its rounding)
            for q in range(w):
                lb = np.sqrt(max(xs[q] + low[g, q] - margin, np.float32(0.0))) * np.float32(1.0 - 1e-6)
                lb -= np.float32(1e-6)
                low[g, q] = lb
                least[q] = lb if lb < least[q] else least[q]
        for q in range(w):
            i = rows[c0 + q]
            for g in range(n_groups):
                lower[i, g] = _store(low[g, q], cum[g])
            glower[i] = least[q]
        computed += local
    return computed


@numba.njit(cache=True, parallel=True)
def round_bf16(a: np.ndarray, bits: np.ndarray, err_norm: np.ndarray, q_norm: np.ndarray) -> None:
    """Round the finite rows of ``a`` (m, dim) float32 to bfloat16 (to nearest, ties to even, as torch does)
    into ``bits`` (m, dim) uint16; ``err_norm`` (m,) gets the norm of each row's rounding error and
    ``q_norm`` (m,) that of the rounded row, float32, rounded up (by far more than their own rounding)."""
    words = a.view(np.uint32)
    dim = a.shape[1]
    for b in numba.prange((a.shape[0] + BLOCK - 1) // BLOCK):
        word = np.empty(dim, dtype=np.uint32)
        q = word.view(np.float32)
        for i in range(b * BLOCK, min(a.shape[0], (b + 1) * BLOCK)):
            for d in range(dim):
                u = words[i, d]
                r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
                bits[i, d] = np.uint16(r)
                word[d] = r << np.uint32(16)
            e2, q2 = 0.0, 0.0
            for d in range(dim):
                diff = np.float64(a[i, d]) - np.float64(q[d])
                e2 += diff * diff
                q2 += np.float64(q[d]) * np.float64(q[d])
            err_norm[i] = np.float32(np.sqrt(e2) * (1.0 + 1e-6))
            q_norm[i] = np.float32(np.sqrt(q2) * (1.0 + 1e-6))
