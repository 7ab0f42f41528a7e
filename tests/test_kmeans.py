"""ssrl.kmeans: k-means (docs/method.md §6) and pseudo-label quality; the kmeans script and rule."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_snakemake, write_config

from ssrl.fileio import read_json, write_embeddings
from ssrl.kmeans import (
    cluster_means,
    cluster_quality,
    initial_centers,
    kmeans,
    normalise_rows,
    resolve_device,
)
from ssrl.kmeans_lloyd import lloyd_cpu, lloyd_torch
from ssrl.manifest import read_labels, write_utt2spk


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blobs(n_blobs, per_blob, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_blobs, dim))
    x = np.repeat(centers, per_blob, axis=0) + spread * rng.normal(size=(n_blobs * per_blob, dim))
    return x.astype(np.float32), np.repeat(np.arange(n_blobs), per_blob)


# --------------------------------------------------------------------------- quality


def test_quality_hand_example():
    # clusters: 0 = {a, a, b}, 1 = {b, b}, 2 = {c}
    q = cluster_quality([0, 0, 0, 1, 1, 2], ["a", "a", "b", "b", "b", "c"])
    assert q["accuracy"] == pytest.approx(5 / 6)  # 0->a (2), 1->b (2), 2->c (1)
    assert q["purity"] == pytest.approx((2 / 3 + 1 + 1) / 3)  # per-cluster mean, not size-weighted
    # NMI by hand: H(true) = H(pred) = H(1/2, 1/3, 1/6); MI from the joint counts
    h = -(0.5 * math.log(0.5) + 1 / 3 * math.log(1 / 3) + 1 / 6 * math.log(1 / 6))
    mi = 1 / 3 * math.log(2) + 1 / 6 * math.log(2 / 3) + 1 / 3 * math.log(2) + 1 / 6 * math.log(6)
    assert q["nmi"] == pytest.approx(mi / h)
    assert (q["n_clusters"], q["n_speakers"]) == (3, 3)


def test_quality_accuracy_is_one_to_one():
    # majority mapping would map both clusters to speaker a (accuracy 1); one-to-one gives 3/4
    q = cluster_quality([0, 0, 1, 1], ["a", "a", "a", "b"])
    assert q["accuracy"] == pytest.approx(3 / 4)
    assert q["purity"] == pytest.approx((1 + 1 / 2) / 2)
    # more clusters than speakers: unmatched clusters count as wrong; every cluster is pure
    q = cluster_quality([7, 3, 5, 9], ["a", "a", "b", "b"])
    assert q["accuracy"] == pytest.approx(0.5) and q["purity"] == 1.0
    assert q["nmi"] == pytest.approx(math.log(2) / ((math.log(2) + math.log(4)) / 2))
    assert q["n_clusters"] == 4
    # relabelled perfect clustering
    q = cluster_quality([5, 5, 2, 2, 9], ["x", "x", "y", "y", "z"])
    assert q == {"nmi": pytest.approx(1.0), "accuracy": 1.0, "purity": 1.0, "n_clusters": 3, "n_speakers": 3}
    with pytest.raises(ValueError, match="equal length"):
        cluster_quality([0, 1], ["a"])


# --------------------------------------------------------------------------- k-means


def reference_lloyd(x, k, seed, max_iter):
    """Plain numpy Lloyd with the documented init (k distinct rows from default_rng([seed, 0]))."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = x[np.sort(np.random.default_rng([seed, 0]).choice(len(x), size=k, replace=False))].astype(np.float64)
    labels = None
    for _ in range(max_iter):
        new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(axis=0)
    return labels, c


def test_kmeans_matches_reference_lloyd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    for max_iter in (3, 100):
        res = kmeans(x, 12, seed=7, max_iter=max_iter, progress=False)
        labels, centers = reference_lloyd(x.astype(np.float64), 12, 7, max_iter)
        np.testing.assert_array_equal(res.labels, labels)
        np.testing.assert_allclose(res.centers, centers, atol=1e-6)
        assert res.labels.dtype == np.int64 and res.centers.dtype == np.float32
    assert not kmeans(x, 12, seed=7, max_iter=3, progress=False).converged
    res = kmeans(x, 12, seed=7, max_iter=100, progress=False)
    assert res.converged and res.n_iter < 100
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert res.inertia == pytest.approx(((xn - res.centers[res.labels]) ** 2).sum(), rel=1e-5)


def overlapping(n, dim, n_blobs, spread, seed):
    """Points around ``n_blobs`` random centres with noise of std ``spread`` (overlapping for spread ~1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim))
    return (centres[rng.integers(0, n_blobs, n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("n, dim, k, spread", [(2000, 16, 30, 1.0), (3000, 8, 120, 0.5), (1500, 32, 200, 2.0)])
def test_pruned_lloyd_gives_plain_lloyd_labels_every_iteration(n, dim, k, spread):
    """The pruned CPU Lloyd skips most distances yet yields, after every iteration, the labels of plain
    float64 Lloyd from the same initial centres (random continuous data: no exact ties)."""
    x = overlapping(n, dim, 40, spread, seed=n + k)
    xn = normalise_rows(x)
    full = kmeans(x, k, seed=3, max_iter=200, progress=False, device="cpu")
    assert full.converged and full.n_iter >= 5
    assert full.work < 0.7  # the bounds did prune
    for t in range(1, full.n_iter + 1):
        res = kmeans(x, k, seed=3, max_iter=t, progress=False, device="cpu")
        labels, _ = reference_lloyd(xn.astype(np.float64), k, 3, t)
        np.testing.assert_array_equal(res.labels, labels, err_msg=f"iteration {t}")


@pytest.mark.parametrize("n, dim, k, spread", [(2000, 16, 30, 1.0), (3000, 8, 120, 0.5), (1500, 32, 200, 2.0)])
def test_bf16_screen_gives_plain_lloyd_labels_every_iteration(n, dim, k, spread):
    """With the bfloat16 screen forced on (full assignments from a bfloat16 product, exact float32 distances
    only for the centers its error bounds leave), every iteration still yields plain float64 Lloyd's labels;
    the filter pass is skipped while many labels change (FULL_AFTER_MOVED) and runs after."""
    x = overlapping(n, dim, 40, spread, seed=n + k)
    xn = normalise_rows(x)
    full = kmeans(x, k, seed=3, max_iter=200, progress=False, device="cpu", screen=True)
    assert full.converged and full.n_iter >= 5
    assert full.work < 0.2  # float32 distances: about one per point in a full assignment
    for t in range(1, full.n_iter + 1):
        res = kmeans(x, k, seed=3, max_iter=t, progress=False, device="cpu", screen=True)
        labels, _ = reference_lloyd(xn.astype(np.float64), k, 3, t)
        np.testing.assert_array_equal(res.labels, labels, err_msg=f"iteration {t}")


@pytest.mark.parametrize("dim, k", [(7, 5), (64, 300), (512, 40)])
def test_bf16_product_error_bound(dim, k):
    """The bound that the screen relies on holds for torch's bfloat16 product on this machine: every product of
    a unit row with a center (a mean of unit rows, or a row itself) is within x_err * ||c|| + ||x~|| * c_err +
    2^-7 |dot| of the exact float64 dot product; and the rounding is torch's own (bit for bit)."""
    import torch

    from ssrl.kmeans_lloyd import Bf16Product

    rng = np.random.default_rng(dim)
    xn = normalise_rows(rng.standard_normal((3000, dim)).astype(np.float32) + rng.normal(0, 2, dim).astype(np.float32))
    centers = np.concatenate([xn[: k // 2], normalise_rows(rng.standard_normal((k - k // 2, dim))) * 0.7])
    centers = centers.astype(np.float32)
    prod = Bf16Product(xn)
    prod.set_centers(centers)
    assert torch.equal(prod.xq, torch.from_numpy(xn).to(torch.bfloat16))
    dots = prod.dots(slice(0, len(xn))).astype(np.float64)  # (k, n)
    exact = centers.astype(np.float64) @ xn.astype(np.float64).T
    bound = prod.x_err[None, :] * prod.c_norm[:, None] + prod.xq_norm[None, :] * prod.c_err[:, None]
    bound = bound + 0.0079 * np.abs(dots)
    assert np.all(np.abs(dots - exact) <= bound)
    assert np.abs(dots - exact).max() > 0  # the product is not exact: the test tests something


def test_has_amx_bf16_reads_the_cpu_flags(tmp_path):
    from ssrl.kmeans_lloyd import has_amx_bf16

    amx, avx = tmp_path / "amx", tmp_path / "avx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    avx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert has_amx_bf16(str(amx)) is True  # torch is installed here
    assert has_amx_bf16(str(avx)) is False
    assert has_amx_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("dense, screen", [(0.0, False), (1.0, False), (0.0, True)])
def test_pruned_lloyd_exact_on_each_path(monkeypatch, dense, screen):
    """Every re-assignment through one path only: the compiled per-point filters and distances (dense 1.0:
    no point is handed to BLAS) or the full assignment, BLAS product + compiled argmin pass or the bfloat16
    screen (dense 0.0: every point with a candidate left is), still yields plain float64 Lloyd's labels after
    every iteration. The filter pass runs at every update (FULL_AFTER_MOVED above 1: never skipped)."""
    import ssrl.kmeans_lloyd

    monkeypatch.setattr(ssrl.kmeans_lloyd, "DENSE_CENTERS", dense)
    monkeypatch.setattr(ssrl.kmeans_lloyd, "FULL_AFTER_MOVED", 2.0)
    x = overlapping(1200, 16, 30, 1.0, seed=11)
    xn = normalise_rows(x)
    full = kmeans(x, 60, seed=2, max_iter=200, progress=False, device="cpu", screen=screen)
    assert full.converged and full.n_iter >= 5
    assert dense == 0.0 or full.work < 0.7  # the compiled path pruned
    for t in range(1, full.n_iter + 1, 2):
        res = kmeans(x, 60, seed=2, max_iter=t, progress=False, device="cpu", screen=screen)
        labels, _ = reference_lloyd(xn.astype(np.float64), 60, 2, t)
        np.testing.assert_array_equal(res.labels, labels, err_msg=f"iteration {t}")


def test_torch_lloyd_equals_cpu_lloyd():
    """The torch path (CUDA in the pipeline; here on the CPU, in small chunks) gives the pruned CPU path's
    labels, iteration count and centers from the same initial centres."""
    xn = normalise_rows(overlapping(1500, 16, 20, 1.0, seed=5))
    c0 = initial_centers(xn, 40, seed=1, init=0)
    calls = []
    cpu = lloyd_cpu(xn, c0, 100, lambda changed, s: calls.append(changed))
    tor = lloyd_torch(xn, c0, 100, "cpu", lambda changed, s: None, chunk_rows=256)
    np.testing.assert_array_equal(tor[0], cpu[0])
    assert tor[2] == cpu[2] == len(calls) and tor[3] and cpu[3] and calls[-1] == 0
    np.testing.assert_allclose(tor[1], cpu[1], atol=1e-6)
    assert tor[4] == 1.0 and 0 < cpu[4] < 1.0
    # an empty cluster keeps its center on both paths: duplicated initial centres, one never wins
    xs = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)
    c_dup = xs[[0, 0, 5, 10]]
    a, b = lloyd_cpu(xs, c_dup, 10, lambda *_: None), lloyd_torch(xs, c_dup, 10, "cpu", lambda *_: None)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], c_dup)
    np.testing.assert_array_equal(b[1], c_dup)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        resolve_device("cuda:0")


def kmeans_script_args(tmp_path) -> list[str]:
    """Arguments of workflow/scripts/kmeans.py on ``tmp_path/train.npz`` (K = 3), outputs in ``tmp_path``."""
    return [
        "--emb",
        str(tmp_path / "train.npz"),
        "--k",
        "3",
        "--hparams",
        json.dumps({"max_iter": 5, "seed": 0, "n_init": 1, "device": "auto"}),
        "--labels",
        str(tmp_path / "l.txt"),
        "--centers",
        str(tmp_path / "c.npy"),
        "--quality",
        str(tmp_path / "q.json"),
        "--plot",
        str(tmp_path / "p.png"),
    ]


def test_kmeans_and_score_scripts_start_without_torch(tmp_path):
    """The CPU path of the kmeans and scoring jobs never imports torch (python -X importtime)."""
    utts, x = make_train_set(tmp_path)
    (tmp_path / "trials.txt").write_text(f"1 {utts[0]} {utts[1]}\n0 {utts[0]} {utts[-1]}\n")
    scripts = REPO / "workflow" / "scripts"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    runs = {
        "kmeans": [str(scripts / "kmeans.py"), *kmeans_script_args(tmp_path)],
        "score": [
            str(scripts / "score.py"),
            "--emb",
            str(tmp_path / "train.npz"),
            "--trials",
            str(tmp_path / "trials.txt"),
            "--hparams",
            json.dumps({"asnorm": False, "asnorm_top_n": 5, "allow_missing": False, "det_points": 10}),
            "--scores",
            str(tmp_path / "s.tsv"),
            "--det",
            str(tmp_path / "d.tsv"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
    }
    for name, args in runs.items():
        proc = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        imported = {
            line.split("|")[-1].strip().split(".")[0]
            for line in proc.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "numpy" in imported and "torch" not in imported, name
    assert read_json(tmp_path / "q.json")["device"] == "cpu"
    assert "eer_ref" in read_json(tmp_path / "m.json")


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    x, truth = blobs(3, 40, 16, 0.05, seed=1)
    # random init puts all three seeds in different blobs with probability 2/9 per init;
    # the lowest-inertia init of 40 is the right partition.
    res = kmeans(x, 3, seed=0, n_init=40, progress=False)
    q = cluster_quality(res.labels, truth)
    assert q["accuracy"] == 1.0 and q["nmi"] == pytest.approx(1.0)
    again = kmeans(x, 3, seed=0, n_init=40, progress=False)
    np.testing.assert_array_equal(res.labels, again.labels)
    np.testing.assert_array_equal(res.centers, again.centers)
    # centers are the (not re-normalised) means of the normalised points
    xn = normalise_rows(x)
    for j in range(3):
        np.testing.assert_allclose(res.centers[j], xn[res.labels == j].mean(axis=0), atol=1e-6)
    assert np.all(np.linalg.norm(res.centers, axis=1) < 1.0)
    # k = n: every point its own cluster, zero inertia
    res = kmeans(x[:10], 10, progress=False)
    assert sorted(res.labels.tolist()) == list(range(10)) and res.inertia == pytest.approx(0.0, abs=1e-10)


def test_empty_clusters_keep_their_center():
    # 3 distinct directions, k = 5: at least two initial centers coincide and one of each such pair
    # never wins a point; it keeps its initial center (a copy of a data point).
    base = np.eye(4, dtype=np.float32)[:3]
    x = np.repeat(base, 10, axis=0)
    res = kmeans(x, 5, seed=0, progress=False)
    assert len(np.unique(res.labels)) == 3
    for j in range(3):
        assert len(np.unique(res.labels[j * 10 : (j + 1) * 10])) == 1
    for center in res.centers:
        assert np.isclose(np.abs(base - center).sum(axis=1), 0, atol=1e-6).any()
    # cluster_means directly
    prev = np.full((3, 2), 9.0, dtype=np.float32)
    means = cluster_means(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32), np.array([0, 0, 2]), prev)
    np.testing.assert_allclose(means, [[0.5, 0.5], [9, 9], [1, 1]])


def test_kmeans_rejects_bad_input():
    x = np.ones((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        kmeans(x, 6, progress=False)
    x[3, 1] = np.inf
    with pytest.raises(ValueError, match="first row 3"):
        kmeans(x, 2, progress=False)
    x[3] = 0
    with pytest.raises(ValueError, match="row 3 is all zeros"):
        kmeans(x, 2, progress=False)


# --------------------------------------------------------------------------- script and rule


def make_train_set(tmp_path, n_spk=4, per_spk=6, dim=8, seed=2):
    x, truth = blobs(n_spk, per_spk, dim, 0.05, seed)
    utts = [f"spk{s}-u{i}" for i, s in enumerate(truth)]
    write_embeddings(tmp_path / "train.npz", utts, x)
    write_utt2spk(tmp_path / "utt2spk", {u: f"spk{s}" for u, s in zip(utts, truth)})
    return utts, x


def test_kmeans_script_outputs(tmp_path):
    utts, x = make_train_set(tmp_path)
    out = tmp_path / "out"
    load_script("kmeans").main(
        [
            "--emb",
            str(tmp_path / "train.npz"),
            "--k",
            "5",
            "--utt2spk",
            str(tmp_path / "utt2spk"),
            "--hparams",
            json.dumps({"max_iter": 50, "seed": 0, "n_init": 4, "device": "cpu"}),
            "--labels",
            str(out / "labels.txt"),
            "--centers",
            str(out / "centers.npy"),
            "--quality",
            str(out / "quality.json"),
            "--plot",
            str(out / "sizes.png"),
        ]
    )
    labels = read_labels(out / "labels.txt")
    assert list(labels) == utts and set(labels.values()) <= set(range(5))
    centers = np.load(out / "centers.npy")
    assert centers.shape == (5, 8) and centers.dtype == np.float32
    q = read_json(out / "quality.json")
    assert q["k"] == 5 and q["n_utts"] == 24 and sum(q["sizes"]) == 24 and len(q["sizes"]) == 5
    assert q["n_clusters"] == 5 - q["n_empty"] and q["n_speakers"] == 4
    for key in ("nmi", "accuracy", "purity", "n_iter", "inertia", "seconds", "size_median"):
        assert key in q
    assert q["purity"] == 1.0  # 5 clusters over 4 tight blobs: none mixes two
    assert (out / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kmeans_script_names_bad_utterance(tmp_path):
    utts, x = make_train_set(tmp_path)
    x[7, 2] = np.nan
    write_embeddings(tmp_path / "train.npz", utts, x)
    args = kmeans_script_args(tmp_path)
    with pytest.raises(SystemExit, match=rf"train\.npz: 1 embedding\(s\) contain NaN/inf, first '{utts[7]}'"):
        load_script("kmeans").main(args)
    assert not (tmp_path / "l.txt").exists()
    x[7, 2] = 0.5
    write_embeddings(tmp_path / "train.npz", utts, x)
    write_utt2spk(tmp_path / "utt2spk", {u: "spk" for u in utts[1:]})
    with pytest.raises(SystemExit, match=rf"utt2spk: 1 of the 24 utterances in .* have no speaker, e.g. '{utts[0]}'"):
        load_script("kmeans").main(args + ["--utt2spk", str(tmp_path / "utt2spk")])


@pytest.mark.slow
def test_kmeans_rule(workdir):
    cfg = write_config(workdir / "config.yaml", {"kmeans": {"k": 5, "max_iter": 30, "seed": 0, "n_init": 2}})
    data = workdir / "results" / "tiny"
    (data / "dino" / "emb").mkdir(parents=True)
    (data / "data" / "train").mkdir(parents=True)
    make_train_set(workdir)
    (workdir / "train.npz").rename(data / "dino" / "emb" / "train.npz")
    (workdir / "utt2spk").rename(data / "data" / "train" / "utt2spk")
    # (--configfile takes several values: the options go before the target)
    run_snakemake(
        workdir,
        "--cores",
        "1",
        "--allowed-rules",
        "kmeans",
        "--printshellcmds",
        "results/tiny/dino/kmeans_k5/quality.json",
        configfile=cfg,
    )
    q = read_json(data / "dino" / "kmeans_k5" / "quality.json")
    assert (q["k"], q["n_init"], q["max_iter"]) == (5, 2, 30)
    assert (data / "dino" / "kmeans_k5" / "labels.txt").exists()
    assert (data / "logs" / "kmeans" / "dino_k5.log").exists()
