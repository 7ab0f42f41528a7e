"""Known-answer tests of the SSRL label machinery (ssrl.labels, ssrl.relabel; docs/method.md §7 and §12)."""

from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssrl.labels import (
    FILL,
    LabelState,
    first_replace_epoch,
    is_relabel_epoch,
    is_replace_epoch,
    relabel_start_epoch,
    vote,
)
from ssrl.relabel import (
    clean_detector_stats,
    clean_probability,
    distributed_all_reduce,
    majority_label_correct,
    mask_removed,
    relabel,
    relabel_logits,
    sinkhorn,
    weighted_ce,
)


def brute_vote(row, fill=FILL):
    entries = [v for v in row if v != fill]
    if not entries:
        return fill
    counts = Counter(entries)
    best = max(counts.values())
    return next(v for v in entries if counts[v] == best)


# --------------------------------------------------------------------------- phases


def test_phase_table_paper_setting():
    # E_fix = 5, L = 5: relabel from epoch 2, replace at the end of epochs 4, 5, ...
    assert relabel_start_epoch(5, 5) == 2
    assert first_replace_epoch(5) == 4
    assert [is_relabel_epoch(e, 5, 5) for e in range(8)] == [False, False, True, True, True, True, True, True]
    assert [is_replace_epoch(e, 5) for e in range(8)] == [False, False, False, False, True, True, True, True]


def test_phase_table_queue1_and_no_fixed_epochs():
    # L = 1: relabelling and replacement start together at E_fix - 1.
    assert [is_relabel_epoch(e, 5, 1) for e in range(6)] == [False, False, False, False, True, True]
    assert [is_replace_epoch(e, 5) for e in range(6)] == [False, False, False, False, True, True]
    # E_fix = 0 (WavLM step 2-ft): the negative starts clamp to 0, everything from epoch 0.
    assert relabel_start_epoch(0, 1) == 0 and relabel_start_epoch(0, 5) == 0 and first_replace_epoch(0) == 0
    assert all(is_relabel_epoch(e, 0, 1) and is_replace_epoch(e, 0) for e in range(4))
    # L // 2 + 1 > E_fix clamps too
    assert relabel_start_epoch(2, 9) == 0


# --------------------------------------------------------------------------- vote


def test_vote_known_answers():
    q = np.array(
        [
            [3, 3, 1, 1, 2],  # tie 3 vs 1: oldest (3)
            [1, 2, 2, 1, 1],  # 1 wins 3:2
            [4, 5, 6, 7, 8],  # all different: oldest
            [-1, -1, -1, -1, 9],  # single entry
            [-1, -1, -1, -1, -1],  # empty -> fill
            [-1, 7, -1, 5, 5],  # fill slots ignored wherever they are
            [-1, 6, 5, 6, 5],  # tie with fill at front: oldest non-fill (6)
            [0, 2, 2, 0, -1],  # tie, label 0 is a real label
        ]
    )
    assert vote(q).tolist() == [3, 1, 4, 9, -1, 5, 6, 0]
    assert vote(np.array([[2, 2, 0], [-5, 1, 1]]), fill=-5).tolist() == [2, 1]
    assert vote(np.array([[4], [-1]])).tolist() == [4, -1]


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8])
def test_vote_matches_brute_force(length):
    rng = np.random.default_rng(length)
    q = rng.integers(0, 4, size=(3000, length))
    q[rng.random(q.shape) < 0.3] = FILL
    assert vote(q).tolist() == [brute_vote(row) for row in q]


def test_vote_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D integer"):
        vote(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="2-D integer"):
        vote(np.zeros((2, 3)))


# --------------------------------------------------------------------------- label state


def test_initial_queue_and_append_window():
    st = LabelState(np.array([3, 1, 0]), n_classes=5, queue_len=5)
    assert st.queues.tolist() == [[-1, -1, -1, 3, 3], [-1, -1, -1, 1, 1], [-1, -1, -1, 0, 0]]
    st.append(np.array([0, 2]), np.array([4, 2]))
    assert st.queues.tolist() == [[-1, -1, 3, 3, 4], [-1, -1, -1, 1, 1], [-1, -1, 0, 0, 2]]
    for new in (4, 4, 2):
        st.append(np.array([0]), np.array([new]))
    # keeps the last 5 entries: the oldest 3 dropped, item 1 (not seen) untouched
    assert st.queues[0].tolist() == [3, 4, 4, 4, 2]
    assert st.queues[1].tolist() == [-1, -1, -1, 1, 1]
    assert st.labels.tolist() == [3, 1, 0]  # labels change only in replace()
    stats = st.replace()
    assert st.labels.tolist() == [4, 1, 0]
    assert stats.num_changed == 1 and stats.num_live == 3 and stats.num_newly_removed == 2
    assert st.removed.tolist() == [False, False, True, True, False]


def test_paper_schedule_trajectory():
    """E_fix = 5, L = 5: relabel in epochs 2..4, first replacement at the end of epoch 4."""
    e_fix, length = 5, 5
    st = LabelState(np.array([0, 0, 1]), n_classes=3, queue_len=length)
    initial = st.queues.copy()
    argmax = {2: [2, 1, 1], 3: [2, 2, 1], 4: [2, 2, 1], 5: [0, 0, 0], 6: [0, 0, 0]}
    labels_after, queues_after = {}, {}
    for epoch in range(7):
        if is_relabel_epoch(epoch, e_fix, length):
            st.append(np.arange(3), np.array(argmax[epoch]))
        if is_replace_epoch(epoch, e_fix):
            st.replace()
        labels_after[epoch] = st.labels.tolist()
        queues_after[epoch] = st.queues.copy()
    np.testing.assert_array_equal(queues_after[1], initial)  # label-fixed epochs touch nothing
    assert labels_after[3] == [0, 0, 1]  # no replacement yet
    # [0,0,2,2,2] -> 2; [0,0,1,2,2] -> tie 0/2, oldest 0; [1,1,1,1,1] -> 1
    assert queues_after[4].tolist() == [[0, 0, 2, 2, 2], [0, 0, 1, 2, 2], [1, 1, 1, 1, 1]]
    assert labels_after[4] == [2, 0, 1]
    # [0,2,2,2,0] -> 2; [0,1,2,2,0] -> tie 0/2, oldest 0; [1,1,1,1,0] -> 1
    assert labels_after[5] == [2, 0, 1] and st.num_replacements == 3
    # [2,2,2,0,0] -> 2; [1,2,2,0,0] -> tie 2/0, oldest 2: class 0 is held by nobody
    assert labels_after[6] == [2, 2, 1]
    assert st.removed.tolist() == [True, False, False] and st.num_live == 2


def test_queue_length_one():
    st = LabelState(np.array([2, 0, 1]), n_classes=3, queue_len=1)
    assert (st.queues == FILL).all()
    assert st.vote_after_append(np.array([0]), np.array([1])).tolist() == [1]
    st.replace()  # empty queues keep the k-means labels
    assert st.labels.tolist() == [2, 0, 1] and st.num_live == 3
    st.append(np.array([0, 1]), np.array([1, 1]))
    assert st.queues[:, 0].tolist() == [1, 1, FILL]
    stats = st.replace()
    assert st.labels.tolist() == [1, 1, 1]
    assert st.removed.tolist() == [True, False, True] and stats.num_live == 1


def _removed_class_in_old_entries(removed_permanent: bool) -> LabelState:
    # class 0 is removed while old entries still sit in the queues of items 1 and 2
    st = LabelState(np.array([1, 2, 3]), n_classes=4, queue_len=5, removed_permanent=removed_permanent)
    st.removed[0] = True
    st.queues[1] = [2, 0, 2, 0, 3]  # counts 2:2, 0:2 -> 2 (oldest) either way
    st.queues[2] = [0, 3, 0, 1, 1]  # 0:2, 1:2 -> 0 when removed entries count; 1 when they are ignored
    return st


def test_removed_class_voted_back_is_live_again():
    """Default (the reference): votes count entries of removed classes; the removed set is recomputed."""
    st = _removed_class_in_old_entries(removed_permanent=False)
    idx = np.array([2])
    assert st.vote_after_append(idx, np.array([3])).tolist() == [3]  # [3, 0, 1, 1, 3]: 3 and 1 twice, 3 oldest
    stats = st.replace()
    assert st.labels.tolist() == [1, 2, 0]
    assert st.removed.tolist() == [False, False, False, True]  # 0 held again; 3 held by nobody
    assert stats.num_live == 3 and stats.num_newly_removed == 1
    # the next replacement: class 3 comes back through item 2's queue, class 0 leaves again
    st.queues[2] = [3, 3, 1, 3, 0]
    st.replace()
    assert st.labels.tolist() == [1, 2, 3] and st.removed.tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="removed class"):  # the teacher never names a removed class
        st.append(np.array([0]), np.array([0]))


def test_removed_permanent_never_votes_a_removed_class_back():
    st = _removed_class_in_old_entries(removed_permanent=True)
    st.replace()
    assert st.labels.tolist() == [1, 2, 1]
    assert st.removed.tolist() == [True, False, False, True]
    # removed only grows; appending a removed class is refused
    st.queues[2] = [3, 3, 1, 3, 0]  # only removed entries but one: votes 1
    st.replace()
    assert st.labels.tolist() == [1, 2, 1] and st.removed.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="removed class"):
        st.append(np.array([0]), np.array([3]))


def test_all_entries_removed_keeps_current_label():
    st = LabelState(np.array([1, 2]), n_classes=4, queue_len=3, removed_permanent=True)
    st.queues[0] = [0, 3, 3]
    st.removed[[0, 3]] = True
    st.replace()
    assert st.labels.tolist() == [1, 2]
    # by default the removed entries count: 3 wins and is live again
    st = LabelState(np.array([1, 2]), n_classes=4, queue_len=3)
    st.queues[0] = [0, 3, 3]
    st.removed[[0, 3]] = True
    st.replace()
    assert st.labels.tolist() == [3, 2] and st.removed.tolist() == [True, True, False, False]


def test_append_duplicates_keep_last_and_validation():
    st = LabelState(np.array([0, 1, 2]), n_classes=3, queue_len=3)
    st.append(np.array([2, 0, 2]), np.array([0, 1, 1]))
    assert st.queues.tolist() == [[-1, 0, 1], [-1, -1, 1], [-1, 2, 1]]
    st.append(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="index 3 is outside"):
        st.append(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="outside"):
        st.append(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="shape"):
        st.append(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="item 1"):
        LabelState(np.array([0, 5]), n_classes=3)
    # a saved state with no queue slots (L taken from the file, not from a checked config)
    empty = {**st.state_dict(), "queues": np.zeros((3, 0), dtype=np.int64)}
    with pytest.raises(ValueError, match="LabelState: queue length must be >= 1, got 0"):
        LabelState.from_state_dict(empty)


def test_nlm_target_may_be_a_removed_class_with_infinite_loss():
    """Default mode: the vote of a replacement epoch can bring a removed class back; the teacher masked
    it, so the NLM teacher loss against it is +inf, which clean_probability absorbs."""
    st = LabelState(np.array([1, 2]), n_classes=3, queue_len=3)
    st.removed[0] = True
    st.queues[:] = [[0, 0, 0], [2, 2, 2]]
    target = st.nlm_targets(np.array([0, 1]), np.array([1, 2]), replace_this_epoch=True)
    assert target.tolist() == [0, 2]  # [0, 0, 1] votes the removed class 0
    logits = mask_removed(torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 4.0]]), torch.from_numpy(st.removed))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(target), reduction="none")
    assert torch.isinf(loss[0]) and torch.isfinite(loss[1])
    st_perm = LabelState(np.array([1, 2]), n_classes=3, queue_len=3, removed_permanent=True)
    st_perm.removed[0] = True
    st_perm.queues[:] = [[0, 0, 0], [2, 2, 2]]
    assert st_perm.nlm_targets(np.array([0, 1]), np.array([1, 2]), replace_this_epoch=True).tolist() == [1, 2]


def test_nlm_targets():
    st = LabelState(np.array([0, 1]), n_classes=3, queue_len=3)
    st.queues[:] = [[0, 2, 2], [1, 1, 2]]
    idx, new = np.array([0, 1]), np.array([1, 2])
    # before the first replacement epoch: the argmax itself
    assert st.nlm_targets(idx, new, replace_this_epoch=False).tolist() == [1, 2]
    # replacement epoch: vote of [2, 2, 1] and [1, 2, 2]
    assert st.nlm_targets(idx, new, replace_this_epoch=True).tolist() == [2, 2]
    assert st.queues.tolist() == [[0, 2, 2], [1, 1, 2]]  # no state change
    st.append(idx, new)
    st.replace()
    assert st.labels.tolist() == [2, 2]  # what the vote predicted


def test_state_dict_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    st = LabelState(rng.integers(0, 6, 50), n_classes=6, queue_len=5)
    for _ in range(4):
        idx = rng.permutation(50)[:40]
        st.append(idx, rng.choice(np.flatnonzero(~st.removed), 40))
        st.replace()
    st.update_p_clean(np.arange(50), rng.exponential(1.0, 50))
    path = tmp_path / "state.pt"
    torch.save(st.state_dict(), path)
    loaded = torch.load(path, weights_only=False)
    other = LabelState.from_state_dict(loaded)
    for key in ("queues", "labels", "removed", "p_clean"):
        np.testing.assert_array_equal(getattr(other, key), getattr(st, key))
    assert other.num_replacements == 4
    # tensors (a weights_only checkpoint) load too
    as_tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in st.state_dict().items()}
    other.load_state_dict(torch.load(_saved(tmp_path / "t.pt", as_tensors), weights_only=True))
    np.testing.assert_array_equal(other.queues, st.queues)
    # a state_dict is a copy
    sd = st.state_dict()
    sd["queues"][:] = 0
    assert not (st.queues == 0).all()
    with pytest.raises(ValueError, match=r"state\['queues'\] has shape"):
        LabelState(np.zeros(50, dtype=np.int64), n_classes=6, queue_len=3).load_state_dict(st.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"queues": st.queues})
    bad = st.state_dict()
    bad["labels"][0] = 9
    with pytest.raises(ValueError, match=r"state\['labels'\] holds labels outside"):
        other.load_state_dict(bad)


def _saved(path, obj):
    torch.save(obj, path)
    return path


def test_update_p_clean_keeps_unseen():
    rng = np.random.default_rng(1)
    st = LabelState(np.zeros(300, dtype=np.int64), n_classes=1, queue_len=5)
    idx = np.arange(200)
    losses = np.concatenate([rng.lognormal(-4, 0.5, 150), rng.lognormal(1, 0.5, 50)])
    p = st.update_p_clean(idx, losses)
    np.testing.assert_array_equal(st.p_clean[:200], p)
    assert (st.p_clean[200:] == 1).all()
    assert p[:150].min() > 0.5 and p[150:].max() < 0.5


# --------------------------------------------------------------------------- relabelling


def test_relabel_logits_margin_known_values():
    s, m = 32.0, 0.2
    cos = torch.tensor([[0.5, 0.2, 0.9], [-0.99, 0.1, 0.3]])
    labels = torch.tensor([0, 0])
    out = relabel_logits(cos, labels, None, scale=s, margin=m, margin_quirk=True)
    expected0 = s * math.cos(math.acos(0.5) + m)
    # cos <= cos(pi - m) = -0.980: the easy_margin=False fallback
    expected1 = s * (-0.99 - math.sin(math.pi - m) * m)
    torch.testing.assert_close(out[:, 0], torch.tensor([expected0, expected1]))
    torch.testing.assert_close(out[:, 1:], s * cos[:, 1:])
    plain = relabel_logits(cos, labels, None, scale=s, margin=m, margin_quirk=False)
    torch.testing.assert_close(plain, s * cos)


def test_relabel_quirk_changes_argmax_and_masks_removed():
    cos = torch.tensor([[0.80, 0.78, 0.95], [0.3, 0.5, 0.1]], dtype=torch.float16)
    labels = torch.tensor([0, 1])
    removed = torch.tensor([False, False, True])
    # margin on the current label 0: 0.8 -> cos(acos(0.8) + 0.2) = 0.665 < 0.78
    assert relabel(cos, labels, removed, 32.0, 0.2).labels.tolist() == [1, 1]
    assert relabel(cos, labels, removed, 32.0, 0.2, margin_quirk=False).labels.tolist() == [0, 1]
    out = relabel(cos, labels, removed.numpy(), 32.0, 0.2)
    assert out.logits.dtype == torch.float32 and torch.isneginf(out.logits[:, 2]).all()
    # the NLM teacher loss against live targets stays finite
    assert torch.isfinite(F.cross_entropy(out.logits, out.labels, reduction="none")).all()


def test_mask_removed():
    logits = torch.zeros(2, 3, requires_grad=True)
    out = mask_removed(logits, np.array([False, True, False]))
    assert torch.isneginf(out[:, 1]).all() and (out[:, [0, 2]] == 0).all()
    assert mask_removed(logits, None) is logits
    with pytest.raises(ValueError, match="do not match"):
        mask_removed(logits, torch.zeros(4, dtype=torch.bool))


def test_sinkhorn_balances_skewed_scores():
    # 8 items all prefer class 0, by margins 0.01 .. 0.08: balancing sends the 4 with
    # the smallest preference to class 1.
    margins = torch.arange(1, 9) * 0.01
    scores = torch.stack([0.5 + margins / 2, 0.5 - margins / 2], dim=1)
    assert scores.argmax(1).tolist() == [0] * 8
    q = sinkhorn(scores, n_iters=3, epsilon=0.05)
    torch.testing.assert_close(q.sum(1), torch.ones(8))
    assert q.argmax(1).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    torch.testing.assert_close(q.sum(0), torch.full((2,), 4.0), atol=0.05, rtol=0)


def test_sinkhorn_balanced_input_and_removed():
    rng = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 4, generator=rng) * 0.1
    scores[torch.arange(12), torch.arange(12) % 4] += 0.5  # 3 items per class, clear winners
    q = sinkhorn(scores)
    assert torch.equal(q.argmax(1), scores.argmax(1))
    # n_iters = 0 is the plain softmax
    torch.testing.assert_close(sinkhorn(scores, n_iters=0), torch.softmax(scores / 0.05, 1))
    removed = torch.tensor([False, True, False, False])
    q = sinkhorn(scores, removed=removed)
    assert (q[:, 1] == 0).all() and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(12))
    torch.testing.assert_close(q.sum(0)[[0, 2, 3]], torch.full((3,), 4.0), atol=0.3, rtol=0)
    # log domain: huge logits (scale 32 / epsilon 0.05) do not overflow
    assert torch.isfinite(sinkhorn(scores * 32)).all()
    with pytest.raises(ValueError, match="every class"):
        sinkhorn(scores, removed=torch.ones(4, dtype=torch.bool))


def test_sinkhorn_global_batch_over_ranks():
    """Two threads as ranks with an all-reduce: equal to one process with the whole batch."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(10, 5, generator=gen)
    scores[:, 0] += 0.3  # skewed towards class 0
    removed = torch.tensor([False, False, True, False, False])
    expected = sinkhorn(scores, removed=removed)

    barrier = threading.Barrier(2)
    slots: list[torch.Tensor | None] = [None, None]
    results: list[torch.Tensor | None] = [None, None]

    def make_reduce(rank):
        def reduce(tensor, op):
            slots[rank] = tensor.clone()
            barrier.wait()
            total = torch.maximum(slots[0], slots[1]) if op == "max" else slots[0] + slots[1]
            barrier.wait()
            tensor.copy_(total)

        return reduce

    def worker(rank, part):
        results[rank] = sinkhorn(part, removed=removed, all_reduce=make_reduce(rank))

    threads = [threading.Thread(target=worker, args=(r, p)) for r, p in enumerate((scores[:4], scores[4:]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(torch.cat(results), expected)
    assert not torch.allclose(sinkhorn(scores[:4], removed=removed), expected[:4])


def test_distributed_all_reduce_single_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        scores = torch.rand(6, 3)
        torch.testing.assert_close(sinkhorn(scores, all_reduce=distributed_all_reduce()), sinkhorn(scores))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- noisy-label modelling


def test_clean_probability_bimodal():
    rng = np.random.default_rng(0)
    clean = rng.lognormal(np.log(0.05), 0.5, 3000)
    noisy = rng.lognormal(np.log(3.0), 0.5, 1000)
    p = clean_probability(np.concatenate([clean, noisy]))
    assert p.dtype == np.float32 and p.shape == (4000,)
    assert (p >= 0).all() and (p <= 1).all()
    assert np.mean(p[:3000] > 0.5) > 0.99 and np.mean(p[3000:] < 0.5) > 0.99
    # monotone: a larger loss is never more likely clean
    order = np.argsort(np.concatenate([clean, noisy]))
    assert (np.diff(p[order]) <= 1e-6).all()


def test_clean_probability_percentile_trimming():
    rng = np.random.default_rng(1)
    bulk = np.concatenate([rng.lognormal(np.log(0.05), 0.5, 3000), rng.lognormal(np.log(3.0), 0.5, 1000)])
    outliers = np.array([0.0, 1e-30, 1e30, 1e25])
    losses = np.concatenate([bulk, outliers])
    p = clean_probability(losses)
    x = np.log(losses + 1e-12)
    lo, hi = max(np.percentile(x, 0.1), -20), np.percentile(x, 99.9)
    # outliers are clipped: they get the posterior of the range ends
    inside = (x >= lo) & (x <= hi)
    at_lo = p[inside][np.argmin(x[inside])]
    at_hi = p[inside][np.argmax(x[inside])]
    np.testing.assert_allclose(p[-4:], [at_lo, at_lo, at_hi, at_hi], atol=1e-3)
    # and do not move the fit of the bulk
    np.testing.assert_allclose(p[:-4], clean_probability(bulk), atol=0.02)


def test_clean_probability_floor_at_minus_20():
    rng = np.random.default_rng(2)
    tiny = np.full(50, 1e-11)  # x = log(1.1e-11) = -25.2 < -20
    bulk = np.concatenate([rng.lognormal(np.log(0.05), 0.5, 3000), rng.lognormal(np.log(3.0), 0.5, 1000)])
    p = clean_probability(np.concatenate([tiny, bulk]))
    assert (p[:50] > 0.99).all() and np.ptp(p[:50]) == 0


def test_clean_probability_degenerate():
    assert clean_probability(np.full(100, 0.7)).tolist() == [1.0] * 100
    assert clean_probability(np.array([0.1, 5.0, 0.2])).tolist() == [1.0] * 3
    assert clean_probability(np.zeros(0)).shape == (0,)
    assert (clean_probability(np.full(100, 1e-15)) == 1).all()  # all below e^-20: hi < lo
    with pytest.raises(ValueError, match="position 1"):
        clean_probability(np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="NaN or negative"):
        clean_probability(np.array([0.1, -1.0]))
    assert (clean_probability(np.full(20, np.inf)) == 1).all()  # nothing finite


def test_clean_probability_infinite_losses():
    """An infinite teacher loss (target in a class the teacher scored -inf) counts as the largest
    finite loss for the percentiles and is clipped to the upper end like it: the same p_clean as
    when it is replaced by the largest finite loss, the noisiest of all."""
    rng = np.random.default_rng(3)
    bulk = np.concatenate([rng.lognormal(np.log(0.05), 0.5, 3000), rng.lognormal(np.log(3.0), 0.5, 1000)])
    losses = np.concatenate([bulk, np.full(5, np.inf)])
    p = clean_probability(losses)
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p, clean_probability(np.concatenate([bulk, np.full(5, bulk.max())])))
    assert (p[-5:] == p.min()).all() and p[-5:].max() < 0.01


def test_weighted_ce():
    ce = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    p = torch.tensor([1.0, 0.5, 0.0])
    torch.testing.assert_close(weighted_ce(ce, p), torch.tensor((1 + 1) / 1.5))
    torch.testing.assert_close(weighted_ce(ce, p, nlm=False), torch.tensor(7 / 3))
    zero = weighted_ce(ce, torch.zeros(3))
    assert zero.item() == 0.0
    zero.backward()
    assert (ce.grad == 0).all()
    with pytest.raises(ValueError, match="does not match"):
        weighted_ce(ce, torch.ones(2))


def test_majority_label_correct_and_detector_stats():
    pseudo = np.array([5, 5, 5, 7, 7, 9, 9, 9, 9])
    true = np.array(["a", "a", "b", "c", "b", "a", "a", "d", "d"])
    # cluster 5 -> a; cluster 7: b/c tie -> "b"; cluster 9: a/d tie -> "a" (several clusters may map to a)
    correct = majority_label_correct(pseudo, true)
    assert correct.tolist() == [True, True, False, False, True, True, True, False, False]
    p = np.array([0.9, 0.2, 0.8, 0.1, 0.7, 0.6, 0.5, 0.4, 0.9])
    stats = clean_detector_stats(p, correct)
    # predicted clean: 0, 2, 4, 5, 8 (0.5 is not > 0.5)
    assert (stats["tp"], stats["fp"], stats["tn"], stats["fn"]) == (3, 2, 2, 2)
    assert stats["tpr"] == 3 / 5 and stats["fpr"] == 2 / 4 and stats["tnr"] == 2 / 4 and stats["fnr"] == 2 / 5
    all_correct = clean_detector_stats(np.ones(3), np.ones(3, dtype=bool))
    assert all_correct["tpr"] == 1.0 and math.isnan(all_correct["fpr"])
