"""ssrl.data: crop datasets, evaluation batching and the epoch sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from test_augment import write_augment_sources
from torch.utils.data import DataLoader

from ssrl import SAMPLE_RATE
from ssrl.audio import load_audio, random_crop, write_audio
from ssrl.augment import Augmenter, AugmentPolicy
from ssrl.data import (
    EpochSampler,
    EvalDataset,
    LabelledCropDataset,
    MultiCropDataset,
    collate_padded,
    item_rng,
    length_bucketed_batches,
    make_crop,
    normalise_waveform,
)

DURATIONS = [0.3, 0.5, 0.8, 1.0, 1.2, 0.45]  # seconds; some shorter than the crops (tiling)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[str], Augmenter]:
    root: Path = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    paths = []
    for i, dur in enumerate(DURATIONS):
        t = np.arange(round(dur * SAMPLE_RATE)) / SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t) + 0.02 * rng.standard_normal(t.size)
        path = root / f"utt{i}.flac"
        write_audio(path, x.astype(np.float32))
        paths.append(str(path))
    return paths, Augmenter(**write_augment_sources(root / "aug"))


def undo_pre_emphasis(y: np.ndarray) -> np.ndarray:
    return lfilter([1.0], [1.0, -0.97], y.astype(np.float64))


# --- MultiCropDataset (DINO) ---------------------------------------------------------------


def test_multicrop_shapes_and_normalisation(corpus):
    paths, aug = corpus
    ds = MultiCropDataset(paths, seed=3, augmenter=aug, global_s=0.5, local_s=0.25)
    glob, loc = ds[0]
    assert glob.shape == (2, 8000) and loc.shape == (4, 4000)
    assert glob.dtype == loc.dtype == torch.float32
    for view in [*glob, *loc]:
        # Pre-emphasis of a peak-normalised crop: undoing it gives peak |x| = 1.
        assert np.max(np.abs(undo_pre_emphasis(view.numpy()))) == pytest.approx(1.0, abs=1e-5)
    views = torch.cat([glob[:, :4000], loc]).numpy()
    assert len({v[:4000].tobytes() for v in views}) == 6  # independent crops


def test_multicrop_without_augmenter_is_clean_crops_known_answer(corpus):
    paths, _ = corpus
    ds = MultiCropDataset(paths, seed=1, n_global=2, global_s=0.5, n_local=1, local_s=0.25)
    ds.set_epoch(4)
    glob, loc = ds[2]
    rng = item_rng(1, 4, 2)
    wave = load_audio(paths[2])
    expect = [normalise_waveform(random_crop(wave, n, rng)) for n in (8000, 8000, 4000)]
    np.testing.assert_allclose(glob.numpy(), np.stack(expect[:2]), rtol=1e-6)
    np.testing.assert_allclose(loc.numpy(), expect[2][None], rtol=1e-6)


def test_multicrop_depends_on_seed_epoch_index_only(corpus):
    paths, aug = corpus
    ds = MultiCropDataset(paths, seed=0, augmenter=aug, global_s=0.4, local_s=0.2)
    a = ds[1]
    assert all(torch.equal(x, y) for x, y in zip(a, ds[1]))
    assert not torch.equal(a[0], ds[2][0])
    ds.set_epoch(1)
    assert not torch.equal(a[0], ds[1][0])
    other = MultiCropDataset(paths, seed=0, augmenter=aug, global_s=0.4, local_s=0.2)
    assert all(torch.equal(x, y) for x, y in zip(a, other[1]))


def _batches(loader) -> list:
    return [b for b in loader]


def test_loader_output_is_independent_of_num_workers(corpus):
    paths, aug = corpus
    ds = MultiCropDataset(paths, seed=7, augmenter=aug, global_s=0.3, local_s=0.2)
    sampler = EpochSampler(len(ds), batch_size=2, seed=7)
    runs = []
    for workers in (0, 2):
        ds.set_epoch(2)
        sampler.set_epoch(2)
        runs.append(_batches(DataLoader(ds, batch_sampler=sampler, num_workers=workers)))
    assert len(runs[0]) == len(runs[1]) == 3
    for (g0, l0), (g1, l1) in zip(*runs):
        assert torch.equal(g0, g1) and torch.equal(l0, l1)


def test_preloaded_utterances_give_the_items_read_from_disk(corpus):
    """Within preload_mb the utterances are decoded once; every crop equals the one read from disk."""
    paths, aug = corpus
    labels = np.arange(len(paths))
    for make in (
        lambda mb: MultiCropDataset(paths, seed=3, augmenter=aug, global_s=0.6, local_s=0.3, preload_mb=mb),
        lambda mb: LabelledCropDataset(
            paths, labels, seed=3, student_s=0.4, teacher_s=0.9, augmenter=aug, preload_mb=mb
        ),
    ):
        memory, disk = make(256.0), make(0.0)
        assert memory.preloaded == len(paths) and disk.preloaded == 0
        for epoch in (0, 1):
            memory.set_epoch(epoch), disk.set_epoch(epoch)
            for i in range(len(paths)):
                a, b = memory[i], disk[i]
                for x, y in zip(a.values() if isinstance(a, dict) else a, b.values() if isinstance(b, dict) else b):
                    assert torch.equal(x, y)


# --- LabelledCropDataset (SSRL) ------------------------------------------------------------


def test_labelled_item_contents(corpus):
    paths, aug = corpus
    labels = np.array([3, 1, 4, 1, 5, 9])
    ds = LabelledCropDataset(
        paths, labels, seed=2, student_s=0.25, teacher_s=0.75, augmenter=aug, p_clean=np.linspace(0, 1, 6)
    )
    item = ds[4]
    assert set(item) == {"student", "teacher", "label", "p_clean", "index"}
    assert item["student"].shape == (4000,) and item["teacher"].shape == (12000,)
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 5
    assert item["p_clean"].dtype == torch.float32 and float(item["p_clean"]) == pytest.approx(0.8)
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 4
    # The teacher crop is clean and drawn from the item's second child stream.
    _, teacher_rng = item_rng(2, 0, 4).spawn(2)
    expect = make_crop(load_audio(paths[4]), 12000, teacher_rng)
    np.testing.assert_allclose(item["teacher"].numpy(), expect, rtol=1e-6)
    # ... so it does not depend on the student's augmentation.
    clean = LabelledCropDataset(paths, labels, seed=2, student_s=0.25, teacher_s=0.75)
    assert torch.equal(clean[4]["teacher"], item["teacher"])
    assert not torch.equal(clean[4]["student"], item["student"])


def test_labelled_without_teacher_and_collated(corpus):
    paths, aug = corpus
    ds = LabelledCropDataset(
        paths,
        np.arange(6),
        seed=0,
        student_s=0.2,
        teacher_s=None,
        augmenter=aug,
        policy=AugmentPolicy.ssrl_student(none_is_noise=False),
    )
    assert "teacher" not in ds[0]
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["student"].shape == (3, 3200)
    assert batch["label"].tolist() == [0, 1, 2] and batch["index"].tolist() == [0, 1, 2]
    assert batch["p_clean"].tolist() == [1.0, 1.0, 1.0]


def test_state_updates_reach_new_worker_iterators(corpus):
    paths, _ = corpus
    ds = LabelledCropDataset(paths, np.zeros(6, dtype=np.int64), seed=0, student_s=0.1, teacher_s=None)
    loader = DataLoader(ds, batch_size=6, num_workers=2, persistent_workers=False)
    assert next(iter(loader))["label"].tolist() == [0] * 6
    ds.set_labels(np.array([5, 4, 3, 2, 1, 0]))
    ds.set_p_clean(np.full(6, 0.25))
    batch = next(iter(loader))
    assert batch["label"].tolist() == [5, 4, 3, 2, 1, 0]
    assert batch["p_clean"].tolist() == [0.25] * 6


def test_labelled_validation(corpus):
    paths, _ = corpus
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        LabelledCropDataset(paths, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        LabelledCropDataset(paths, np.zeros(6))
    ds = LabelledCropDataset(paths, np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match=">= 0"):
        ds.set_labels(np.array([0, 0, -1, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"\[0, 1\].*index 3"):
        ds.set_p_clean(np.array([0, 0, 0, 1.5, 0, 0]))
    with pytest.raises(ValueError, match="positive"):
        LabelledCropDataset(paths, np.zeros(6, dtype=int), student_s=0.0)


# --- EvalDataset and batching ----------------------------------------------------------------


def test_eval_dataset_whole_and_truncated(corpus):
    paths, _ = corpus
    utts = [f"u{i}" for i in range(6)]
    ds = EvalDataset(utts, paths)
    index, wave = ds[4]
    assert index == 4 and wave.shape == (round(1.2 * SAMPLE_RATE),)
    np.testing.assert_allclose(wave.numpy(), normalise_waveform(load_audio(paths[4])), rtol=1e-6)
    np.testing.assert_array_equal(ds.num_samples(progress=False), [round(d * SAMPLE_RATE) for d in DURATIONS])
    short = EvalDataset(utts, paths, max_seconds=0.5)
    assert short[4][1].shape == (8000,) and short[0][1].shape == (4800,)
    np.testing.assert_allclose(short[4][1].numpy(), normalise_waveform(load_audio(paths[4])[:8000]), rtol=1e-6)
    assert short.num_samples(progress=False).max() == 8000
    with pytest.raises(ValueError, match="5 utterance ids but 6 paths"):
        EvalDataset(utts[:5], paths)


def test_length_bucketed_batches_known_answer():
    lengths = [5, 10, 3, 10, 7, 1, 8]
    # Sorted longest first (ties by index): 1, 3, 6, 4, 0, 2, 5.
    assert length_bucketed_batches(lengths, max_batch_samples=20, max_batch_size=8) == [[1, 3], [6, 4], [0, 2, 5]]
    assert length_bucketed_batches(lengths, max_batch_samples=100, max_batch_size=3) == [[1, 3, 6], [4, 0, 2], [5]]
    # An item longer than the budget gets a batch of its own.
    assert length_bucketed_batches([50, 2, 2], max_batch_samples=10, max_batch_size=4) == [[0], [1, 2]]
    batches = length_bucketed_batches(np.random.default_rng(0).integers(1, 100, 50), 300, 16)
    assert sorted(i for b in batches for i in b) == list(range(50))


def test_collate_padded_known_answer():
    items = [(3, torch.tensor([1.0, 2.0])), (0, torch.tensor([5.0, 6.0, 7.0]))]
    indices, padded, lengths = collate_padded(items)
    assert indices.tolist() == [3, 0] and indices.dtype == torch.int64
    assert padded.tolist() == [[1.0, 2.0, 0.0], [5.0, 6.0, 7.0]]
    assert lengths.tolist() == [2, 3] and lengths.dtype == torch.int64


def test_eval_loader_with_buckets(corpus):
    paths, _ = corpus
    ds = EvalDataset([f"u{i}" for i in range(6)], paths)
    batches = length_bucketed_batches(ds.num_samples(progress=False), max_batch_samples=40000, max_batch_size=4)
    seen = []
    for indices, padded, lengths in DataLoader(ds, batch_sampler=batches, collate_fn=collate_padded):
        for row, i in enumerate(indices.tolist()):
            np.testing.assert_array_equal(padded[row, : lengths[row]].numpy(), ds[i][1].numpy())
            assert not padded[row, lengths[row] :].any()
            seen.append(i)
    assert sorted(seen) == list(range(6))


# --- EpochSampler ------------------------------------------------------------------------------


def test_two_ranks_of_half_batch_equal_one_rank_of_full_batch():
    full = EpochSampler(103, batch_size=8, seed=11)
    halves = [EpochSampler(103, batch_size=8, seed=11, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 3):
        for s in [full, *halves]:
            s.set_epoch(epoch)
        one = list(full)
        two = [list(h) for h in halves]
        assert len(one) == len(two[0]) == len(two[1]) == len(full) == 12
        for step, batch in enumerate(one):
            assert len(two[0][step]) == len(two[1][step]) == 4
            assert two[0][step] + two[1][step] == batch  # concatenated in rank order
        flat = [i for b in one for i in b]
        assert len(set(flat)) == 96 and set(flat) <= set(range(103))


def test_epochs_reshuffle_and_are_reproducible():
    s = EpochSampler(50, batch_size=10, seed=1)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert first != second
    s.set_epoch(0)
    assert list(s) == first == list(EpochSampler(50, batch_size=10, seed=1))
    assert list(EpochSampler(50, batch_size=10, seed=2)) != first


def test_mid_epoch_resume_skips_done_batches():
    s = EpochSampler(40, batch_size=4, seed=5, rank=1, world_size=2)
    s.set_epoch(2)
    whole = list(s)
    s.set_epoch(2, start_batch=6)
    assert list(s) == whole[6:] and len(s) == 10
    s.set_epoch(2, start_batch=10)
    assert list(s) == []
    with pytest.raises(ValueError, match="start_batch"):
        s.set_epoch(2, start_batch=11)


def test_keep_last_partial_batch():
    s = EpochSampler(10, batch_size=4, seed=0, drop_last=False)
    batches = list(s)
    assert len(s) == 3 and [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for b in batches for i in b) == list(range(10))
    # 9 items, 4 ranks: last global batch has 1 item, topped up so every rank gets one.
    ranks = [list(EpochSampler(9, 8, seed=0, rank=r, world_size=4, drop_last=False)) for r in range(4)]
    assert all(len(r) == 2 and len(r[1]) == 1 for r in ranks)


def test_sampler_validation():
    with pytest.raises(ValueError, match="multiple of world_size"):
        EpochSampler(100, batch_size=10, seed=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(100, batch_size=8, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="cannot fill"):
        EpochSampler(5, batch_size=8, seed=0)
