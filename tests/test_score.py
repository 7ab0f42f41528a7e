"""ssrl.score: EER, minDCF, DET points, cosine scoring, AS-norm; the score script."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO, run_snakemake, write_config
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from ssrl.fileio import read_json, write_embeddings
from ssrl.manifest import ManifestError, Trials, write_trials
from ssrl.score import (
    compute_eer,
    compute_eer_ref,
    compute_eer_threshold,
    compute_min_dcf,
    det_curve,
    error_rates,
    score_trials,
)

# Hand example: targets 0.9 0.6 0.4, non-targets 0.5 0.3 0.2 0.1.
# Thresholds 0.4 -> (frr 0, far 1/4), 0.5 -> (1/3, 1/4): gap goes -1/4 -> +1/12, the crossing is
# 3/4 of the way: EER = 3/4 * 1/3 = 1/4 at threshold 0.4 + 3/4 * 0.1 = 0.475.
HAND_SCORES = [0.9, 0.6, 0.4, 0.5, 0.3, 0.2, 0.1]
HAND_LABELS = [1, 1, 1, 0, 0, 0, 0]


def sklearn_eer(scores, labels):
    """Independent EER: sklearn's ROC points, linear interpolation, root of fnr == fpr."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def test_eer_hand_examples():
    assert compute_eer_threshold(HAND_SCORES, HAND_LABELS) == pytest.approx((0.25, 0.475))
    # crossing exactly on an operating point: targets 0.8 0.7 0.3, non-targets 0.6 0.4 0.2 -> 1/3 at 0.6
    assert compute_eer_threshold([0.8, 0.7, 0.3, 0.6, 0.4, 0.2], [1, 1, 1, 0, 0, 0]) == pytest.approx((1 / 3, 0.6))


def test_eer_ref_hand_examples():
    """The reference's EER: (frr + far) / 2 at the operating point minimising |frr - far|, not interpolated."""
    # HAND: points (frr, far) at 0.4 (0, 1/4), 0.5 (1/3, 1/4), 0.6 (1/3, 0): |gap| smallest (1/12) at 0.5
    assert compute_eer_ref(HAND_SCORES, HAND_LABELS) == pytest.approx((1 / 3 + 1 / 4) / 2)  # 7/24; EER 1/4
    # non-targets 0.1 0.2 0.35, targets 0.3 0.4: at 0.3 (0, 1/3), at 0.35 (1/2, 1/3) -> (1/2 + 1/3) / 2
    scores, labels = [0.1, 0.2, 0.3, 0.35, 0.4], [0, 0, 1, 0, 1]
    assert compute_eer_ref(scores, labels) == pytest.approx(5 / 12)
    assert compute_eer(scores, labels) == pytest.approx(1 / 3)
    # a crossing on an operating point: both definitions agree
    assert compute_eer_ref([0.8, 0.7, 0.3, 0.6, 0.4, 0.2], [1, 1, 1, 0, 0, 0]) == pytest.approx(1 / 3)
    assert compute_eer_ref([0.3] * 6, [1, 0, 1, 0, 0, 1]) == pytest.approx(0.5)


def test_eer_ties_are_one_threshold():
    # Scores 0.5 (target), 0.5 (target), 0.5 (non-target), 0.1 (non-target). Points: t=0.1 (0, 1),
    # t=0.5 (0, 1/2), reject-all (1, 0): gap -1/2 -> 1, crossing at 1/3 -> EER 1/3. Splitting the tie
    # by sort order would instead give 0 (targets first) or 1/2 (non-target first).
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0])
    assert compute_eer(scores, labels) == pytest.approx(1 / 3)
    for perm in ([2, 0, 1, 3], [3, 2, 1, 0], [0, 2, 3, 1]):
        assert compute_eer(scores[perm], labels[perm]) == pytest.approx(1 / 3)


def test_eer_constant_and_separated_scores():
    assert compute_eer([0.3] * 6, [1, 0, 1, 0, 0, 1]) == pytest.approx(0.5)
    eer, thr = compute_eer_threshold([3.0, 4.0, 1.0, 2.0], [1, 1, 0, 0])
    assert eer == 0.0 and thr == 3.0  # lowest target score accepts all targets, no impostor
    assert compute_eer([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0]) == 1.0


def test_eer_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    for n_tar, n_non, shift in [(200, 1800, 1.0), (1000, 1000, 2.5), (37, 500, 0.3)]:
        labels = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
        scores = np.r_[rng.normal(shift, 1, n_tar), rng.normal(0, 1, n_non)]
        assert compute_eer(scores, labels) == pytest.approx(sklearn_eer(scores, labels), abs=1e-9)
    # with many ties (scores rounded to 1 decimal); sklearn also merges tied scores into one point
    scores = np.round(scores, 1)
    assert compute_eer(scores, labels) == pytest.approx(sklearn_eer(scores, labels), abs=1e-9)


def test_eer_threshold_is_an_operating_point_between_the_rates():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 3000)
    scores = rng.normal(labels * 1.5, 1.0)
    eer, thr = compute_eer_threshold(scores, labels)
    frr = np.mean(scores[labels == 1] < thr)
    far = np.mean(scores[labels == 0] >= thr)
    step = 1.0 / min((labels == 1).sum(), (labels == 0).sum())
    assert abs(frr - eer) <= step and abs(far - eer) <= step


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, 0.2], [1, 0, 1], "differ in length"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "both target and non-target"),
        ([0.1, np.nan, 0.3], [1, 0, 1], "non-finite score.*index 1"),
        ([0.1, 0.2, 0.3], [1, 2, 0], "labels must be 1 .* index 1"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
    ],
)
def test_invalid_input_is_rejected(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_eer(scores, labels)
    with pytest.raises(ValueError, match=match):
        compute_min_dcf(scores, labels, 0.01)


def brute_force_min_dcf(scores, labels, p, c_miss, c_fa):
    tar, non = scores[labels == 1], scores[labels == 0]
    best = np.inf
    for t in list(scores) + [np.inf]:
        best = min(best, c_miss * p * np.mean(tar < t) + c_fa * (1 - p) * np.mean(non >= t))
    return best / min(c_miss * p, c_fa * (1 - p))


def test_min_dcf_hand_example_and_brute_force():
    # p = 0.5: normalised DCF = frr + far; best at threshold 0.4: 0 + 1/4.
    assert compute_min_dcf(HAND_SCORES, HAND_LABELS, 0.5) == pytest.approx(0.25)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 600)
    scores = np.round(rng.normal(labels * 2.0, 1.0), 2)  # with ties
    for p, c_miss, c_fa in [(0.01, 1, 1), (0.05, 1, 1), (0.3, 2.0, 0.5), (0.9, 1, 10)]:
        assert compute_min_dcf(scores, labels, p, c_miss, c_fa) == pytest.approx(
            brute_force_min_dcf(scores, labels, p, c_miss, c_fa), rel=1e-12
        )
    # a useless system costs as much as the best trivial one
    assert compute_min_dcf([0.2] * 4, [1, 0, 1, 0], 0.01) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf(scores, labels, 1.0)


def test_error_rates_and_det_curve():
    thr, frr, far = error_rates(HAND_SCORES, HAND_LABELS)
    np.testing.assert_allclose(thr[:-1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9])
    assert thr[-1] > 0.9
    np.testing.assert_allclose(frr, [0, 0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(far, [1, 3 / 4, 1 / 2, 1 / 4, 1 / 4, 0, 0, 0])
    far_d, frr_d = det_curve(HAND_SCORES, HAND_LABELS)
    np.testing.assert_allclose(far_d, far) and np.testing.assert_allclose(frr_d, frr)

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 20000)
    scores = rng.normal(labels * 3.0, 1.0)
    far_d, frr_d = det_curve(scores, labels, max_points=300)
    assert 250 <= len(far_d) <= 300
    assert (far_d[0], frr_d[0], far_d[-1], frr_d[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert np.all(np.diff(far_d) <= 0) and np.all(np.diff(frr_d) >= 0)
    # the subsampled points lie on the full curve, and the low-FAR tail keeps points
    _, frr_all, far_all = error_rates(scores, labels)
    assert set(zip(far_d, frr_d)) <= set(zip(far_all, frr_all))
    assert np.sum((far_d > 0) & (far_d < 1e-3)) >= 5


# --------------------------------------------------------------------------- scoring


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture
def small_set():
    utts = ["a", "b", "c", "d"]
    emb = np.array([[1, 0, 0], [3, 4, 0], [0, 0, 2], [1, 1, 1]], dtype=np.float32)
    trials = Trials.from_lists([1, 0, 0, 1], ["a", "b", "d", "c"], ["b", "c", "a", "c"])
    return utts, emb, trials


def test_cosine_scores_known_answer(small_set, tmp_path):
    utts, emb, trials = small_set
    expected = [0.6, 0.0, 1 / np.sqrt(3), 1.0]
    scores, labels = score_trials(utts, emb, trials)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, [1, 0, 0, 1])
    path = tmp_path / "trials.txt"
    write_trials(path, trials)
    res = score_trials(utts, emb, path)
    np.testing.assert_allclose(res.scores, expected, atol=1e-6)
    assert res.n_dropped == 0 and res.norm == "none"
    assert res.enroll.tolist() == ["a", "b", "d", "c"] and res.test.tolist() == ["b", "c", "a", "c"]


def test_cosine_scores_from_file_non_ascii_ids(tmp_path):
    """The file path (ids looked up as UTF-8 bytes) with non-ASCII ids, an embedding id holding a newline
    (never in a trials file) and CRLF lines: the known cosines and the ids as written."""
    utts = ["spk1/é", "b", "line\nbreak", "d"]
    emb = np.array([[1, 0, 0], [3, 4, 0], [0, 0, 2], [1, 1, 1]], dtype=np.float32)
    path = tmp_path / "trials.txt"
    path.write_bytes("1 spk1/é b\r\n0 d spk1/é\r\n".encode())
    res = score_trials(utts, emb, path)
    np.testing.assert_allclose(res.scores, [0.6, 1 / np.sqrt(3)], atol=1e-6)
    assert res.labels.tolist() == [1, 0] and res.enroll.tolist() == ["spk1/é", "d"]
    assert res.test.tolist() == ["b", "spk1/é"]


def test_missing_utterances(small_set, tmp_path):
    utts, emb, _ = small_set
    trials = Trials.from_lists([1, 0, 1, 0], ["a", "x", "b", "a"], ["b", "a", "y", "d"])
    path = tmp_path / "list.txt"
    write_trials(path, trials)
    with pytest.raises(ManifestError, match=r"list\.txt: 2 of 4 trials .*2 unknown: 'x', 'y'"):
        score_trials(utts, emb, path)
    res = score_trials(utts, emb, path, allow_missing=True)
    assert res.n_dropped == 2
    assert res.enroll.tolist() == ["a", "a"] and res.test.tolist() == ["b", "d"]
    np.testing.assert_allclose(res.scores, [0.6, 1 / np.sqrt(3)], atol=1e-6)
    np.testing.assert_array_equal(res.labels, [1, 0])
    with pytest.raises(ValueError, match="every trial"):
        score_trials(utts, emb, Trials.from_lists([1], ["x"], ["a"]), allow_missing=True)


def test_bad_embeddings_are_rejected(small_set):
    utts, emb, trials = small_set
    bad = emb.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/inf, first 'c'"):
        score_trials(utts, bad, trials)
    with pytest.raises(ValueError, match="duplicate utterance id 'a'"):
        score_trials(["a", "b", "a", "d"], emb, trials)
    with pytest.raises(ValueError, match="do not match 3 utterance ids"):
        score_trials(utts[:3], emb, trials)
    bad[2, 1] = 1e30  # finite, but its squared norm is not
    with pytest.raises(ValueError, match="squared norm of the embedding of 'c' overflows float32"):
        score_trials(utts, bad, trials)
    bad[2] = 0
    with pytest.raises(ValueError, match="embedding of 'c' is all zeros"):
        score_trials(utts, bad, trials)


def slow_asnorm(utts, emb, trials, cohort, top_n):
    """Reference AS-norm: one trial at a time, plain loops, float64."""
    table = {u: unit(e) for u, e in zip(utts, emb)}
    coh = [unit(c) for c in cohort]

    def stats(v):
        top = sorted((float(v @ c) for c in coh), reverse=True)[:top_n]
        return np.mean(top), np.std(top, ddof=1)

    out = []
    for e, t in zip(trials.enroll, trials.test):
        s = float(table[e] @ table[t])
        (me, se), (mt, st) = stats(table[e]), stats(table[t])
        out.append(0.5 * ((s - me) / se + (s - mt) / st))
    return np.array(out)


def test_asnorm_matches_slow_reference():
    rng = np.random.default_rng(4)
    utts = [f"u{i}" for i in range(30)]
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    cohort = rng.normal(size=(50, 8)).astype(np.float32)
    pairs = rng.integers(0, 30, size=(60, 2))
    trials = Trials.from_lists(rng.integers(0, 2, 60), [utts[i] for i in pairs[:, 0]], [utts[i] for i in pairs[:, 1]])
    for top_n in (5, 50, 400):  # 400 > cohort size: the whole cohort is used
        res = score_trials(utts, emb, trials, cohort=cohort, top_n=top_n)
        assert res.norm == "asnorm"
        np.testing.assert_allclose(
            res.scores, slow_asnorm(utts, emb, trials, cohort, top_n), rtol=1e-5, atol=1e-5
        )  # float32 cosines
    with pytest.raises(ValueError, match="top_n >= 2"):
        score_trials(utts, emb, trials, cohort=cohort, top_n=1)
    with pytest.raises(ValueError, match="does not match embedding dim 8"):
        score_trials(utts, emb, trials, cohort=cohort[:, :4])


def test_asnorm_cohort_chunks_agree():
    from ssrl.score import cohort_statistics

    rng = np.random.default_rng(5)
    x = rng.normal(size=(37, 16)).astype(np.float32)
    c = rng.normal(size=(90, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    whole = cohort_statistics(x, c, 10)
    tiny = cohort_statistics(x, c, 10, chunk_bytes=1)  # one row per chunk
    np.testing.assert_allclose(whole, tiny, rtol=1e-5)  # float32 matmul blocking differs


# --------------------------------------------------------------------------- script and rule


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_scoring_inputs(folder, n_spk=6, per_spk=4, dim=16, seed=6):
    """Test embeddings (speaker centre + noise), a trial list over them, and a cohort file."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_spk, dim))
    spk = np.repeat(np.arange(n_spk), per_spk)
    utts = [f"s{s}_u{i}" for i, s in enumerate(spk)]
    write_embeddings(folder / "test.npz", utts, centres[spk] + 0.8 * rng.normal(size=(len(utts), dim)))
    write_embeddings(folder / "train.npz", [f"c{i}" for i in range(40)], rng.normal(size=(40, dim)))
    pairs = [(i, j) for i in range(len(utts)) for j in range(i + 1, len(utts))]
    trials = Trials.from_lists(
        [int(spk[i] == spk[j]) for i, j in pairs], [utts[i] for i, _ in pairs], [utts[j] for _, j in pairs]
    )
    write_trials(folder / "list.txt", trials)
    return utts, trials


def test_score_script_outputs(tmp_path):
    utts, trials = make_scoring_inputs(tmp_path)
    out = tmp_path / "out"
    hp = {"asnorm": True, "asnorm_top_n": 10, "allow_missing": False, "det_points": 50}
    load_script("score").main(
        [
            "--emb",
            str(tmp_path / "test.npz"),
            "--trials",
            str(tmp_path / "list.txt"),
            "--cohort",
            str(tmp_path / "train.npz"),
            "--hparams",
            json.dumps(hp),
            "--scores",
            str(out / "list.tsv"),
            "--det",
            str(out / "list.det.tsv"),
            "--metrics",
            str(out / "list.json"),
        ]
    )
    rows = [line.split("\t") for line in (out / "list.tsv").read_text().splitlines()]
    assert rows[0] == ["enroll", "test", "label", "score"] and len(rows) == len(trials) + 1
    scores = np.array([float(r[3]) for r in rows[1:]])
    labels = np.array([int(r[2]) for r in rows[1:]])
    np.testing.assert_array_equal(labels, trials.labels)
    m = read_json(out / "list.json")
    assert m["trials"] == "list" and m["score_norm"] == "asnorm" and m["asnorm_top_n"] == 10
    assert (m["n_trials"], m["n_target"], m["n_dropped"]) == (len(trials), int(trials.labels.sum()), 0)
    assert m["n_nontarget"] == len(trials) - m["n_target"]
    assert m["eer"] == pytest.approx(compute_eer(scores, labels), abs=1e-4)  # TSV keeps 6 decimals
    assert m["eer_ref"] == pytest.approx(compute_eer_ref(scores, labels), abs=1e-4)
    assert m["min_dcf_0.05"] == pytest.approx(compute_min_dcf(scores, labels, 0.05), abs=1e-3)
    assert 0 <= m["min_dcf_0.01"] <= 1 and 0 < m["eer"] < 0.5
    # the threshold reproduces the EER operating point
    assert abs(np.mean(scores[labels == 1] < m["eer_threshold"]) - m["eer"]) <= 1 / labels.sum()
    det = np.loadtxt(out / "list.det.tsv", skiprows=1)
    assert det.shape[1] == 2 and len(det) <= 50 and tuple(det[0]) == (1.0, 0.0) and tuple(det[-1]) == (0.0, 1.0)


def test_score_script_missing_utterances(tmp_path):
    utts, trials = make_scoring_inputs(tmp_path)
    write_trials(
        tmp_path / "list.txt",
        Trials.from_lists(
            np.r_[trials.labels, [1, 0]],
            np.r_[trials.enroll, ["ghost", utts[0]]],
            np.r_[trials.test, [utts[1], "nobody"]],
        ),
    )
    hp = {"asnorm": False, "asnorm_top_n": 10, "allow_missing": False, "det_points": 50}
    args = [
        "--emb",
        str(tmp_path / "test.npz"),
        "--trials",
        str(tmp_path / "list.txt"),
        "--scores",
        str(tmp_path / "s.tsv"),
        "--det",
        str(tmp_path / "d.tsv"),
        "--metrics",
        str(tmp_path / "m.json"),
    ]
    with pytest.raises(SystemExit, match="2 of .* trials name utterances without .*'ghost', 'nobody'"):
        load_script("score").main(args + ["--hparams", json.dumps(hp)])
    assert not (tmp_path / "m.json").exists()
    load_script("score").main(args + ["--hparams", json.dumps({**hp, "allow_missing": True})])
    m = read_json(tmp_path / "m.json")
    assert m["n_dropped"] == 2 and m["n_trials"] == len(trials) and m["score_norm"] == "none"


@pytest.mark.slow
def test_score_rule(workdir):
    cfg = write_config(workdir / "config.yaml", {"score": {"asnorm": True, "asnorm_top_n": 5}})
    emb = workdir / "results" / "tiny" / "dino" / "emb"
    trials = workdir / "results" / "tiny" / "data" / "trials"
    emb.mkdir(parents=True)
    trials.mkdir(parents=True)
    make_scoring_inputs(emb)
    (emb / "list.txt").rename(trials / "demo.txt")
    run_snakemake(
        workdir,
        "--cores",
        "1",
        "--allowed-rules",
        "score",
        "--printshellcmds",
        "results/tiny/dino/metrics/demo.json",
        configfile=cfg,
    )
    m = read_json(workdir / "results" / "tiny" / "dino" / "metrics" / "demo.json")
    assert m["score_norm"] == "asnorm" and m["asnorm_top_n"] == 5
    assert (workdir / "results" / "tiny" / "dino" / "scores" / "demo.det.tsv").exists()
