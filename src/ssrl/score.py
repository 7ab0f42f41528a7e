"""Speaker-verification scoring and metrics (docs/method.md §10).

* :func:`score_trials`: cosine scores of a trial list, optionally with adaptive
  s-norm (AS-norm) against a cohort.
* :func:`compute_eer`, :func:`compute_eer_threshold`, :func:`compute_eer_ref`,
  :func:`compute_min_dcf`, :func:`det_curve`: error rates from scores and
  target labels.

Conventions shared by the metric functions: ``labels`` are 1 for target and 0
for non-target trials; a trial is accepted when ``score >= threshold``. The
error rates are evaluated at every distinct score value (plus one threshold
above the largest score, where everything is rejected), so trials with tied
scores are always accepted or rejected together: a tie is one operating
point, never split by the order in which a sort happened to place the tied
trials. Error rates and the EER are fractions (0.023, not 2.3 %).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from .manifest import Trials, check_trials_cover, read_trials, split_trials, trials_from_split

# ---------------------------------------------------------------------------
# error rates, EER, minDCF, DET


def _check_scores(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert -> (scores (n,) float64, is_target (n,) bool)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{int(bad.sum())} non-finite score(s), first at index {i} ({s[i]})")
    if not np.isin(y, (0, 1)).all():
        i = int(np.flatnonzero(~np.isin(y, (0, 1)))[0])
        raise ValueError(f"labels must be 1 (target) or 0 (non-target), got {y[i]!r} at index {i}")
    is_target = y == 1
    n_tar = int(is_target.sum())
    if n_tar == 0 or n_tar == len(y):
        raise ValueError(f"need both target and non-target trials, got {n_tar} target and {len(y) - n_tar} non-target")
    return s, is_target


def error_rates(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every operating point.

    Returns ``(thresholds, frr, far)``, each ``(m + 1,)`` float64 for ``m``
    distinct scores: ``thresholds`` are the distinct scores in increasing
    order followed by the next float above the largest (reject all);
    ``frr[j]`` is the fraction of target trials with score < thresholds[j],
    ``far[j]`` the fraction of non-target trials with score >= thresholds[j].
    ``frr`` rises from 0 to 1 and ``far`` falls from 1 to 0.
    """
    s, is_target = _check_scores(scores, labels)
    values, inverse = np.unique(s, return_inverse=True)
    tar_at = np.bincount(inverse, weights=is_target, minlength=len(values))
    non_at = np.bincount(inverse, weights=~is_target, minlength=len(values))
    n_tar, n_non = tar_at.sum(), non_at.sum()
    tar_below = np.concatenate(([0.0], np.cumsum(tar_at)))
    non_below = np.concatenate(([0.0], np.cumsum(non_at)))
    thresholds = np.append(values, np.nextafter(values[-1], np.inf))
    return thresholds, tar_below / n_tar, (n_non - non_below) / n_non


def compute_eer_threshold(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs -> ``(eer, threshold)``.

    The (far, frr) operating points of :func:`error_rates` are joined by
    straight lines; the EER is where that line crosses far == frr, and the
    threshold is interpolated between the two neighbouring thresholds with the
    same weight (accept when ``score >= threshold``). Examples: perfectly
    separated scores give EER 0 at the lowest target score; constant scores
    give 0.5.
    """
    thresholds, frr, far = error_rates(scores, labels)
    gap = frr - far  # non-decreasing, -1 at j = 0, +1 at the end
    j = int(np.argmax(gap >= 0))  # first point at or past the crossing (j >= 1)
    alpha = -gap[j - 1] / (gap[j] - gap[j - 1])  # position of the crossing on segment j-1 -> j
    eer = frr[j - 1] + alpha * (frr[j] - frr[j - 1])
    threshold = thresholds[j - 1] + alpha * (thresholds[j] - thresholds[j - 1])
    return float(eer), float(threshold)


def compute_eer(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Equal error rate as a fraction; see :func:`compute_eer_threshold`.

    ``scores`` (n,) finite floats, ``labels`` (n,) 1 = target / 0 = non-target,
    both classes present (ValueError otherwise).
    """
    return compute_eer_threshold(scores, labels)[0]


def compute_eer_ref(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The reference implementation's EER definition: at the operating point of :func:`error_rates` where
    ``|frr - far|`` is smallest (the lowest threshold on a tie), the mean ``(frr + far) / 2``.

    Not interpolated, so it can differ from :func:`compute_eer` by up to half
    the step of frr or far there; given next to it so that numbers can be
    compared with the reference's printed ones.
    """
    _, frr, far = error_rates(scores, labels)
    j = int(np.argmin(np.abs(frr - far)))
    return float((frr[j] + far[j]) / 2)


def compute_min_dcf(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Normalised minimum detection cost over all thresholds of :func:`error_rates`.

    DCF(t) = c_miss * p_target * frr(t) + c_fa * (1 - p_target) * far(t),
    divided by min(c_miss * p_target, c_fa * (1 - p_target)) (the cost of the
    better trivial system), so 1.0 means "no better than always accepting or
    always rejecting".
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    _, frr, far = error_rates(scores, labels)
    dcf = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def det_curve(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, max_points: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Points of the DET curve -> ``(far, frr)``, each (p,) float64, p <= max_points.

    Ordered by increasing threshold (far falling, frr rising), first point
    (far 1, frr 0) and last (far 0, frr 1) always included. When there are
    more operating points than ``max_points``, points are picked evenly along
    the curve's length on the probit (normal-deviate) axes a DET plot uses, so
    the low-error tails keep their resolution.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    _, frr, far = error_rates(scores, labels)
    if len(far) <= max_points:
        return far, frr
    s, is_target = _check_scores(scores, labels)
    eps_far = 0.5 / int((~is_target).sum())
    eps_frr = 0.5 / int(is_target.sum())
    x = ndtri(np.clip(far, eps_far, 1.0 - eps_far))
    y = ndtri(np.clip(frr, eps_frr, 1.0 - eps_frr))
    arc = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    targets = np.linspace(0.0, arc[-1], max_points)
    keep = np.unique(np.clip(np.searchsorted(arc, targets), 0, len(arc) - 1))
    keep[0], keep[-1] = 0, len(arc) - 1
    keep = np.unique(keep)
    return far[keep], frr[keep]


# ---------------------------------------------------------------------------
# scoring


@dataclass(frozen=True)
class TrialScores:
    """Scores of a trial list. Unpacks as ``scores, labels = score_trials(...)``.

    scores    (n,) float64 cosine (or AS-normalised) scores, in trial-list order
    labels    (n,) int8, 1 target / 0 non-target
    enroll    (n,) str, test (n,) str: the utterances of each kept trial
    n_dropped trials dropped because an utterance had no embedding
              (only with ``allow_missing=True``; otherwise 0)
    norm      "none" or "asnorm"
    """

    scores: np.ndarray
    labels: np.ndarray
    enroll: np.ndarray
    test: np.ndarray
    n_dropped: int
    norm: str

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.scores
        yield self.labels


def _row_norms(embeddings: np.ndarray, utts: Sequence[str] | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Check an (N, dim) embedding matrix (against its ids, when given) -> (rows (N, dim) float32, L2 norms (N,)
    float32); every norm is finite and non-zero."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or (utts is not None and x.shape[0] != len(utts)):
        raise ValueError(
            f"{what}: embeddings of shape {x.shape} do not match {len(utts)} utterance ids"
            if utts is not None
            else f"{what}: expected an (N, dim) matrix, got shape {x.shape}"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.isfinite(norms).all() and norms.all():
        return x, norms

    def name(i: int) -> str:
        return repr(utts[i]) if utts is not None else f"row {i}"

    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{what}: {int((~finite).sum())} embedding(s) contain NaN/inf, first {name(i)}")
    if not np.isfinite(norms).all():
        i = int(np.flatnonzero(~np.isfinite(norms))[0])
        raise ValueError(f"{what}: the squared norm of the embedding of {name(i)} overflows float32")
    i = int(np.flatnonzero(norms == 0)[0])
    raise ValueError(f"{what}: embedding of {name(i)} is all zeros (cosine undefined)")


def _normalised_rows(embeddings: np.ndarray, utts: Sequence[str] | None, what: str) -> np.ndarray:
    """Check an (N, dim) embedding matrix (see :func:`_row_norms`) and L2-normalise its rows (float32)."""
    x, norms = _row_norms(embeddings, utts, what)
    return x / norms[:, None]


def cohort_statistics(
    x: np.ndarray, cohort: np.ndarray, top_n: int, chunk_bytes: int = 256 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row's ``top_n`` largest cohort scores.

    ``x`` (u, dim) and ``cohort`` (m, dim) L2-normalised float32 rows; scores are
    dot products. Rows are processed in chunks so that one chunk's score matrix
    stays under ``chunk_bytes``. The standard deviation is the sample one
    (ddof = 1). Returns two (u,) float64 arrays.
    """
    m = cohort.shape[0]
    if top_n < 2 or m < 2:
        raise ValueError(
            f"AS-norm needs top_n >= 2 and at least 2 cohort embeddings, got top_n={top_n}, {m} cohort embedding(s)"
        )
    k = min(top_n, m)
    rows = max(1, chunk_bytes // (4 * m))
    mean = np.empty(len(x), dtype=np.float64)
    std = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), rows):
        scores = x[start : start + rows] @ cohort.T
        top = np.partition(scores, m - k, axis=1)[:, m - k :].astype(np.float64)
        mean[start : start + rows] = top.mean(axis=1)
        std[start : start + rows] = top.std(axis=1, ddof=1)
    return mean, std


def score_trials(
    utts: Sequence[str],
    embeddings: np.ndarray,
    trials: str | os.PathLike | Trials,
    cohort: np.ndarray | None = None,
    top_n: int = 300,
    allow_missing: bool = False,
) -> TrialScores:
    """Score a trial list by cosine similarity, optionally AS-normalised (docs/method.md §10).

    ``utts`` (N,) ids of the rows of ``embeddings`` (N, dim); ``trials`` a trials
    file (``1|0 enroll test`` per line) or a :class:`ssrl.manifest.Trials`.
    With ``cohort`` (m, dim) (e.g. training-set embeddings or cluster means),
    each score s becomes ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2, where mu
    and sd are the mean and sample std of the ``top_n`` highest cosine scores
    of that side's utterance against the cohort (all of it when m < top_n),
    computed once per distinct utterance.

    A trial naming an utterance without an embedding is a ValueError (count and
    first few ids in the message) unless ``allow_missing``, which drops those
    trials and reports their number in ``n_dropped``. Returns a
    :class:`TrialScores`, which unpacks as ``(scores, labels)``. The cosines
    are computed by a compiled loop that reads the embedding rows in place.
    """
    source = os.fspath(trials) if isinstance(trials, (str, os.PathLike)) else "trials"
    parsed = None  # (labels, enroll ids, test ids as UTF-8 bytes) of a well-formed trials file
    if isinstance(trials, (str, os.PathLike)):
        try:
            with open(trials, "rb") as fh:
                parsed = split_trials(fh.read())
        except OSError:
            pass  # read_trials raises the error
        if parsed is None:
            trials = read_trials(trials)
    index = {u: i for i, u in enumerate(utts)}
    if len(index) != len(utts):
        seen: set[str] = set()
        dup = next(u for u in utts if u in seen or seen.add(u))
        raise ValueError(f"duplicate utterance id {dup!r} in the embeddings")
    x, norms = _row_norms(embeddings, utts, "embeddings")

    # Embedding row of each trial side (-1: no embedding).
    def rows_of(ids: list, rows: dict) -> np.ndarray:
        return np.fromiter(map(rows.get, ids, itertools.repeat(-1)), dtype=np.int64, count=len(ids))

    if parsed is not None:
        keys = "\n".join(utts).encode("utf-8", "surrogatepass").split(b"\n")  # one encode (ids hold no newline)
        if len(keys) != len(utts):
            keys = [u.encode("utf-8", "surrogatepass") for u in utts]
        byte_index = dict(zip(keys, range(len(keys))))
        labels, e_rows, t_rows = parsed[0], rows_of(parsed[1], byte_index), rows_of(parsed[2], byte_index)
        if (e_rows < 0).any() or (t_rows < 0).any():  # the general path below names or drops them
            trials = trials_from_split(parsed)
            parsed = None
        else:
            ids = np.asarray(utts, dtype=str)
            enroll, test = ids[e_rows], ids[t_rows]
    if parsed is None:
        enroll = np.asarray(trials.enroll, dtype=str)
        test = np.asarray(trials.test, dtype=str)
        labels = np.asarray(trials.labels, dtype=np.int8)
        if not len(labels):
            raise ValueError(f"{source}: no trials")
        e_rows, t_rows = rows_of(enroll.tolist(), index), rows_of(test.tolist(), index)
    missing = (e_rows < 0) | (t_rows < 0)
    n_dropped = int(missing.sum())
    if n_dropped:
        if not allow_missing:
            check_trials_cover(trials, utts, source)  # raises, naming the first trials and utterances
        if n_dropped == len(labels):
            raise ValueError(f"{source}: every trial names an utterance without an embedding")
        keep = ~missing
        enroll, test, labels, e_rows, t_rows = enroll[keep], test[keep], labels[keep], e_rows[keep], t_rows[keep]

    from .score_kernels import row_dots  # numba: imported only here

    dots = np.empty(len(labels), dtype=np.float32)
    row_dots(x, e_rows, t_rows, dots)
    scores = dots / (norms[e_rows].astype(np.float64) * norms[t_rows])  # cosines

    norm = "none"
    if cohort is not None:
        cohort = np.asarray(cohort)
        if cohort.ndim != 2 or cohort.shape[1] != x.shape[1]:
            raise ValueError(f"cohort of shape {cohort.shape} does not match embedding dim {x.shape[1]}")
        c = _normalised_rows(cohort, None, "cohort")
        # cohort statistics once per distinct utterance; e_loc / t_loc index them
        used, local = np.unique(np.concatenate([e_rows, t_rows]), return_inverse=True)
        e_loc, t_loc = local[: len(labels)], local[len(labels) :]
        mean, std = cohort_statistics(x[used] / norms[used, None], c, top_n)
        if (std == 0).any():
            i = int(np.flatnonzero(std == 0)[0])
            raise ValueError(f"AS-norm: the top-{top_n} cohort scores of {utts[used[i]]!r} are all equal")
        scores = 0.5 * ((scores - mean[e_loc]) / std[e_loc] + (scores - mean[t_loc]) / std[t_loc])
        norm = "asnorm"
    return TrialScores(scores=scores, labels=labels, enroll=enroll, test=test, n_dropped=n_dropped, norm=norm)
