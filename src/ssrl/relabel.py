"""SSRL relabelling and noisy-label modelling (docs/method.md §7 and §12); the label state and the
phases that use them are :mod:`ssrl.labels` (its docstring shows an epoch of SSRL training).

* Relabelling (torch, any device): :func:`relabel_logits` (teacher logits with
  removed classes at -inf and, quirk Q2, the AAM margin on the current label),
  :func:`sinkhorn` (optional SwAV-style balancing), :func:`relabel` (both,
  giving the new labels), :func:`mask_removed` (the -inf mask for the student).
* Noisy-label modelling: :func:`clean_probability` (2-component GMM on the log
  teacher losses), :func:`weighted_ce` (the student loss), and for the logs
  :func:`majority_label_correct` + :func:`clean_detector_stats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

AllReduce = Callable[[torch.Tensor, str], None]
"""In-place all-reduce over ranks: ``fn(tensor, op)`` with ``op`` in {"sum", "max"}."""


# --------------------------------------------------------------------------- relabelling (torch)


def mask_removed(logits: torch.Tensor, removed: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """``logits`` (batch, n_classes) with the columns of ``removed`` (n_classes,) bool set to -inf."""
    if removed is None:
        return logits
    removed = torch.as_tensor(removed, dtype=torch.bool, device=logits.device)
    if logits.dim() != 2 or removed.shape != (logits.shape[1],):
        raise ValueError(
            f"mask_removed: logits {tuple(logits.shape)} and removed mask {tuple(removed.shape)} "
            f"do not match (batch, n_classes) / (n_classes,)"
        )
    return logits.masked_fill(removed, float("-inf"))


def relabel_logits(
    cosine: torch.Tensor,
    current_labels: torch.Tensor,
    removed: torch.Tensor | np.ndarray | None,
    scale: float,
    margin: float,
    margin_quirk: bool = True,
) -> torch.Tensor:
    """Teacher relabelling logits (docs/method.md §7): (batch, n_classes) float32.

    ``cosine`` (batch, n_classes): cosines between the L2-normalised teacher
    embeddings and the L2-normalised AAM weight rows (any device/dtype). Logits are
    ``scale * cos``; with ``margin_quirk`` (Q2, the reference behaviour) the logit of
    each item's ``current_labels`` (batch,) class is the AAM training logit
    ``scale * cos(theta + margin)``, or ``scale * (cos - sin(pi - margin) * margin)``
    where ``cos <= cos(pi - margin)``. Removed classes are -inf.
    """
    if cosine.dim() != 2 or current_labels.shape != (cosine.shape[0],):
        raise ValueError(
            f"relabel_logits: cosine {tuple(cosine.shape)} must be (batch, n_classes) and labels "
            f"{tuple(current_labels.shape)} (batch,)"
        )
    cos = cosine.float()
    logits = scale * cos
    if margin_quirk:
        target = current_labels.long().unsqueeze(1)
        cos_t = cos.gather(1, target).clamp(-1.0, 1.0)
        sin_t = (1.0 - cos_t * cos_t).clamp_min(0.0).sqrt()
        phi = cos_t * math.cos(margin) - sin_t * math.sin(margin)
        phi = torch.where(cos_t > math.cos(math.pi - margin), phi, cos_t - math.sin(math.pi - margin) * margin)
        logits = logits.scatter(1, target, scale * phi)
    return mask_removed(logits, removed)


def sinkhorn(
    scores: torch.Tensor,
    n_iters: int = 3,
    epsilon: float = 0.05,
    removed: torch.Tensor | np.ndarray | None = None,
    all_reduce: AllReduce | None = None,
) -> torch.Tensor:
    """SwAV-style Sinkhorn-Knopp balancing of (batch, n_classes) scores -> (batch, n_classes) assignments.

    Starting from ``exp(scores / epsilon)``, each iteration rescales every live class
    to equal total mass over the batch, then every item to equal mass; the result is
    returned with each row summing to 1 (``n_iters = 0`` gives ``softmax(scores /
    epsilon)``). Its argmax gives the balanced labels. Removed classes (``removed``
    (n_classes,) bool) get 0 and do not count. SwAV applies it to cosine
    similarities with epsilon = 0.05 (:func:`relabel` passes ``logits / scale``).
    Computed in the log domain, so any score scale is safe.

    Under DDP the class totals must be taken over the global batch: pass
    ``all_reduce`` (see :func:`distributed_all_reduce`), which is called with the
    per-class max and sum (n_classes,) and the batch size; every rank then returns
    the rows of its own items. Without it the local batch is balanced on its own.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn: scores must be (batch, n_classes), got {tuple(scores.shape)}")
    if n_iters < 0 or epsilon <= 0:
        raise ValueError(f"sinkhorn: need n_iters >= 0 and epsilon > 0, got {n_iters}, {epsilon}")
    log_q = scores.float() / epsilon
    n_live = scores.shape[1]
    if removed is not None:
        removed = torch.as_tensor(removed, dtype=torch.bool, device=scores.device)
        log_q = mask_removed(log_q, removed)
        n_live = int(scores.shape[1] - int(removed.sum()))
        if n_live == 0:
            raise ValueError("sinkhorn: every class is removed")
    batch = torch.tensor(float(scores.shape[0]), dtype=torch.float64, device=scores.device)
    if all_reduce is not None:
        all_reduce(batch, "sum")
    log_batch, log_live = math.log(float(batch)), math.log(n_live)
    for _ in range(n_iters):
        # classes: total mass 1 / n_live each over the (global) batch
        col_max = log_q.max(dim=0).values
        if all_reduce is not None:
            all_reduce(col_max, "max")
        col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max))
        col_sum = torch.exp(log_q - col_max).sum(dim=0)
        if all_reduce is not None:
            all_reduce(col_sum, "sum")
        col_lse = torch.where(col_sum > 0, col_max + col_sum.log(), torch.zeros_like(col_sum))
        log_q = log_q - col_lse - log_live
        # items: total mass 1 / batch each
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_batch
    return torch.softmax(log_q, dim=1)


def distributed_all_reduce(group: Any = None) -> AllReduce:
    """An :data:`AllReduce` over ``torch.distributed`` (initialised by the caller) for :func:`sinkhorn`."""
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

    def reduce(tensor: torch.Tensor, op: str) -> None:
        dist.all_reduce(tensor, op=ops[op], group=group)

    return reduce


class Relabelled(NamedTuple):
    labels: torch.Tensor
    """(batch,) int64 new labels (the teacher's argmax, after Sinkhorn when on)."""
    logits: torch.Tensor
    """(batch, n_classes) float32 relabelling logits (:func:`relabel_logits`), for the NLM teacher loss."""


def relabel(
    cosine: torch.Tensor,
    current_labels: torch.Tensor,
    removed: torch.Tensor | np.ndarray | None,
    scale: float,
    margin: float,
    margin_quirk: bool = True,
    sinkhorn_iters: int = 0,
    epsilon: float = 0.05,
    all_reduce: AllReduce | None = None,
) -> Relabelled:
    """Online clustering step of docs/method.md §7: teacher cosines (batch, n_classes) -> new labels + logits.

    ``sinkhorn_iters = 0`` (the default configuration) takes the argmax of
    :func:`relabel_logits`; otherwise the argmax of :func:`sinkhorn` applied to
    ``logits / scale`` (the margin-adjusted cosines) with ``epsilon``.
    """
    logits = relabel_logits(cosine, current_labels, removed, scale, margin, margin_quirk)
    if sinkhorn_iters > 0:
        assign = sinkhorn(logits / scale, sinkhorn_iters, epsilon, removed, all_reduce)
        return Relabelled(assign.argmax(dim=1), logits)
    return Relabelled(logits.argmax(dim=1), logits)


# --------------------------------------------------------------------------- noisy-label modelling


def clean_probability(
    teacher_losses: np.ndarray, max_iter: int = 500, tol: float = 1e-5, seed: int = 0, min_points: int = 10
) -> np.ndarray:
    """p_clean (n,) float32 in [0, 1] from per-utterance teacher losses (n,) (docs/method.md §7, NLM).

    x = log(loss + 1e-12); lo = max(0.1th percentile of x, -20), hi = 99.9th
    percentile; a 2-component 1-D Gaussian mixture (scikit-learn, ``max_iter``,
    ``tol``, ``random_state=seed``) is fitted to the x within [lo, hi]; x is clipped
    to [lo, hi] and p_clean is the posterior of the component with the smaller mean.

    Infinite losses (a teacher target in a class it scored -inf, docs/method.md §7)
    count as the largest finite x for the percentiles, which therefore stay finite,
    and are clipped to hi like every x above it: they get the noisiest p_clean.

    Degenerate input gives p_clean = 1 for every item (nothing can be called noisy):
    fewer than ``min_points`` losses, or fewer than ``min_points`` of them or fewer
    than 2 distinct values within [lo, hi] (e.g. all losses equal, or all below
    e^-20 so that hi < lo, or none finite). Losses must be >= 0 (+inf allowed).
    """
    from sklearn.mixture import GaussianMixture

    losses = np.asarray(teacher_losses, dtype=np.float64)
    if losses.ndim != 1:
        raise ValueError(f"clean_probability: teacher losses must be 1-D, got shape {losses.shape}")
    bad = np.flatnonzero(np.isnan(losses) | (losses < 0))
    if bad.size:
        raise ValueError(
            f"clean_probability: loss {losses[bad[0]]} at position {bad[0]} is NaN or negative ({bad.size} such losses)"
        )
    ones = np.ones(losses.size, dtype=np.float32)
    finite = np.isfinite(losses)
    if losses.size < min_points or not finite.any():
        return ones
    x = np.log(losses + 1e-12)
    x = np.where(finite, x, x[finite].max())
    lo = max(float(np.percentile(x, 0.1)), -20.0)
    hi = float(np.percentile(x, 99.9))
    fit_x = x[(x >= lo) & (x <= hi)]
    if fit_x.size < min_points or np.ptp(fit_x) == 0:
        return ones
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, random_state=seed)
    gmm.fit(fit_x[:, None])
    clean = int(np.argmin(gmm.means_[:, 0]))
    post = gmm.predict_proba(np.clip(x, lo, hi)[:, None])[:, clean]
    return np.clip(post, 0.0, 1.0).astype(np.float32)


def weighted_ce(
    per_item_ce: torch.Tensor, p_clean: torch.Tensor, nlm: bool = True, p_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """Student loss from per-item CE (batch,): sum(p * CE) / sum(p) with NLM, else mean(CE).

    A batch whose p_clean are all 0 gives loss 0 (with zero gradient). By default this
    is the local batch's weighted mean (under DDP, which averages the gradients over
    ranks, each rank's batch then weighs the same). ``p_sum`` (0-d) replaces the
    normaliser sum(p): pass the global batch's sum(p) divided by the number of ranks
    to make the DDP average the weighted mean over the global batch (docs/method.md §7).
    """
    if not nlm:
        return per_item_ce.mean()
    if p_clean.shape != per_item_ce.shape:
        raise ValueError(f"weighted_ce: p_clean {tuple(p_clean.shape)} does not match CE {tuple(per_item_ce.shape)}")
    p = p_clean.to(device=per_item_ce.device, dtype=per_item_ce.dtype)
    total = p.sum() if p_sum is None else p_sum.detach().to(device=p.device, dtype=p.dtype)
    return (p * per_item_ce).sum() / torch.where(total > 0, total, torch.ones_like(total))


def majority_label_correct(pseudo_labels: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """Whether each pseudo label is "correct": (n,) ints + (n,) speaker ids -> (n,) bool.

    A pseudo label is correct when the majority true speaker of its cluster (the
    utterances currently holding that label) is the utterance's speaker; several
    clusters may map to one speaker. This many-to-one mapping is the one behind
    purity (docs/method.md §6); a one-to-one Hungarian mapping would call every utterance of a
    pure but surplus cluster noisy whenever clusters outnumber speakers (K = 8000 vs
    5,994 speakers). Ties between speakers go to the smallest speaker id (sorted).
    """
    pseudo = np.asarray(pseudo_labels)
    true = np.asarray(true_labels)
    if pseudo.ndim != 1 or pseudo.shape != true.shape:
        raise ValueError(f"majority_label_correct: pseudo {pseudo.shape} and true {true.shape} must be equal 1-D")
    if pseudo.size == 0:
        return np.zeros(0, dtype=bool)
    _, cluster = np.unique(pseudo, return_inverse=True)
    speakers, spk = np.unique(true, return_inverse=True)
    pair = cluster.astype(np.int64) * speakers.size + spk
    pairs, counts = np.unique(pair, return_counts=True)
    pair_cluster, pair_spk = np.divmod(pairs, speakers.size)
    # per cluster: the largest count, ties to the smallest speaker index
    order = np.lexsort((pair_spk, -counts, pair_cluster))
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_cluster[order][1:] != pair_cluster[order][:-1]
    majority = np.empty(cluster.max() + 1, dtype=np.int64)
    majority[pair_cluster[order][first]] = pair_spk[order][first]
    return majority[cluster] == spk


def clean_detector_stats(p_clean: np.ndarray, label_correct: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Quality of ``p_clean > threshold`` as a detector of correct labels (docs/method.md §7 logs).

    Positive = predicted clean; actual positive = ``label_correct`` (e.g. from
    :func:`majority_label_correct`). Returns counts ``tp``, ``fp``, ``tn``, ``fn`` and
    rates ``tpr`` = tp/(tp+fn), ``fpr`` = fp/(fp+tn), ``tnr`` = 1 - fpr,
    ``fnr`` = 1 - tpr (NaN where the class is empty).
    """
    p = np.asarray(p_clean)
    correct = np.asarray(label_correct, dtype=bool)
    if p.shape != correct.shape or p.ndim != 1:
        raise ValueError(f"clean_detector_stats: p_clean {p.shape} and label_correct {correct.shape} must be equal 1-D")
    pred = p > threshold
    tp = int(np.count_nonzero(pred & correct))
    fp = int(np.count_nonzero(pred & ~correct))
    tn = int(np.count_nonzero(~pred & ~correct))
    fn = int(np.count_nonzero(~pred & correct))

    def rate(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "tpr": rate(tp, tp + fn),
        "fpr": rate(fp, fp + tn),
        "tnr": rate(tn, fp + tn),
        "fnr": rate(fn, tp + fn),
    }
