"""Test sets and trial lists: VoxCeleb1 from its official lists (:func:`prepare_voxceleb1_test`), a generic
corpus' training and test sets from trial lists or held-out speakers (:func:`prepare_generic_sets`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..fileio import write_json
from ..manifest import Trials, check_trials_cover, read_list, write_trials, write_utt2spk, write_wav_scp
from ..progress import Progress
from .convert import merge_shards, write_set
from .records import (
    CONVERT_SUFFIXES,
    DIRECT_SUFFIXES,
    PathLike,
    PrepareError,
    check_path_field,
    examples,
    utt_id_from_relpath,
)
from .scan import require_dir, sorted_subdirs

# --------------------------------------------------------------------------- trial lists


def read_path_trials(path: PathLike) -> tuple[Trials, dict[str, str]]:
    """Read a VoxCeleb-style list ``1|0 spk/video/seg.wav spk/video/seg.wav``.

    Returns the trials with utterance ids (:func:`utt_id_from_relpath`) and
    ``{utt: relative path as written}``. Raises PrepareError (``path:line:``)
    for a wrong field count or flag, or one id written as two different paths.
    """
    labels, enroll, test = [], [], []
    rel_of: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PrepareError(f"{path}: cannot read trial list ({err})") from err
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise PrepareError(f"{path}:{lineno}: expected '1|0 enroll_path test_path', got {line.strip()!r}")
        ids = []
        for rel in fields[1:]:
            try:
                utt = utt_id_from_relpath(rel)
            except PrepareError as err:
                raise PrepareError(f"{path}:{lineno}: {err}") from None
            if rel_of.setdefault(utt, rel) != rel:
                raise PrepareError(f"{path}:{lineno}: {rel!r} and {rel_of[utt]!r} give the same utterance id {utt!r}")
            ids.append(utt)
        labels.append(int(fields[0]))
        enroll.append(ids[0])
        test.append(ids[1])
    if not labels:
        raise PrepareError(f"{path}: empty trial list")
    return Trials.from_lists(labels, enroll, test), rel_of


def prepare_voxceleb1_test(
    root: PathLike,
    lists: Mapping[str, PathLike],
    wav_scp: PathLike,
    utt2spk: PathLike,
    trial_paths: Mapping[str, PathLike],
) -> dict:
    """VoxCeleb1 test set: convert each trial list ``name -> path`` to ``1|0 enroll test``
    ids at ``trial_paths[name]``; ``wav.scp`` lists every utterance any list names
    (``<root>/wav/<rel>``, used directly), ``utt2spk`` the speaker from the id.

    Raises PrepareError naming the list, the number of utterances without a file
    and the first ones, before writing anything.
    """
    root = Path(os.path.abspath(root))
    wav_dir = require_dir(require_dir(root, "VoxCeleb1 root") / "wav", "VoxCeleb1 wav")
    if set(lists) != set(trial_paths):
        raise ValueError(f"trial lists {sorted(lists)} and outputs {sorted(trial_paths)} differ")
    parsed = {name: read_path_trials(path) for name, path in lists.items()}
    paths: dict[str, str] = {}
    for _, rel_of in parsed.values():
        for utt, rel in rel_of.items():
            paths.setdefault(utt, str(wav_dir / rel))
    progress = Progress(len(paths), "check VoxCeleb1 files", unit="file", every_s=30)
    exists = {}
    for utt, p in paths.items():
        exists[utt] = os.path.isfile(p)
        progress.update(1)
    for name, (_, rel_of) in parsed.items():
        missing = [paths[u] for u in rel_of if not exists[u]]
        if missing:
            raise PrepareError(
                f"{lists[name]}: {len(missing)} of {len(rel_of)} utterances named by this trial "
                f"list have no audio file under {wav_dir}; first missing: {examples(missing)}"
            )
    for name, (trials, _) in parsed.items():
        write_trials(trial_paths[name], trials)
    ordered = sorted(paths)
    write_wav_scp(wav_scp, {u: check_path_field(paths[u]) for u in ordered})
    write_utt2spk(utt2spk, {u: u.split("-", 1)[0] for u in ordered})
    return {
        "utterances": len(paths),
        "speakers": len({u.split("-", 1)[0] for u in paths}),
        "trials": {
            name: {"trials": len(t), "target": int(t.labels.sum()), "nontarget": int(len(t) - t.labels.sum())}
            for name, (t, _) in parsed.items()
        },
    }


def _pick_pairs(
    counts: np.ndarray, base: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` distinct pairs ``(a, base[a] + j)``, ``0 <= j < counts[a]``, uniformly without replacement."""
    cum = np.cumsum(counts)
    flat = np.sort(rng.choice(int(cum[-1]), size=k, replace=False))
    a = np.searchsorted(cum, flat, side="right")
    return a, base[a] + flat - (cum[a] - counts[a])


def sample_trials(utt2spk: Mapping[str, str], n_target: int, n_nontarget: int, seed: int) -> Trials:
    """Draw distinct trials from a labelled set, uniformly without replacement.

    Target trials: unordered pairs of different utterances of one speaker;
    non-target: pairs from two speakers. Each pair appears once, its sides in
    random order; trials are sorted by (enroll, test). Both counts must be >= 1.
    Raises PrepareError when fewer distinct pairs exist than requested.
    """
    if n_target < 1 or n_nontarget < 1:
        raise ValueError(f"need at least one target and one non-target trial, got {n_target} and {n_nontarget}")
    utts = sorted(utt2spk, key=lambda u: (utt2spk[u], u))
    spk = np.asarray([utt2spk[u] for u in utts])
    n = len(utts)
    _, start, size = np.unique(spk, return_index=True, return_counts=True)
    end = np.repeat(start + size, size)
    pos = np.arange(n)
    rng = np.random.default_rng(seed)
    sides = []
    for label, counts, base, k in ((1, end - pos - 1, pos + 1, n_target), (0, n - end, end, n_nontarget)):
        available = int(counts.sum())
        if k > available:
            kind = "target" if label else "non-target"
            raise PrepareError(
                f"requested {k} {kind} trials but the {len(size)} test speakers "
                f"({n} utterances) give only {available} distinct {kind} pairs"
            )
        a, b = _pick_pairs(counts, base, k, rng)
        swap = rng.random(k) < 0.5
        sides.append((np.full(k, label), np.where(swap, b, a), np.where(swap, a, b)))
    labels = np.concatenate([s[0] for s in sides])
    names = np.asarray(utts)
    enroll, test = names[np.concatenate([s[1] for s in sides])], names[np.concatenate([s[2] for s in sides])]
    order = np.lexsort((test, enroll))
    return Trials.from_lists(labels[order], enroll[order], test[order])


def target_pair_count(utt2spk: Mapping[str, str]) -> int:
    """Distinct target pairs (two utterances of one speaker) in a labelled set: sum of n(n-1)/2."""
    counts = np.unique(np.asarray(list(utt2spk.values())), return_counts=True)[1] if utt2spk else np.zeros(0)
    return int((counts * (counts - 1) // 2).sum())


def split_speakers(speakers: Iterable[str], test_speakers: int | float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, test)`` sorted speaker lists; ``test_speakers`` an integer count or a
    fraction in (0, 1) (rounded, at least 2), drawn with ``seed``. Both sides must be non-empty."""
    speakers = sorted(set(speakers))
    if isinstance(test_speakers, float) and not 0 < test_speakers < 1:
        raise PrepareError(f"test_speakers must be an integer count or a fraction in (0, 1), got {test_speakers}")
    n_test = max(2, round(test_speakers * len(speakers))) if isinstance(test_speakers, float) else int(test_speakers)
    if not 2 <= n_test < len(speakers):
        raise PrepareError(
            f"cannot hold out {n_test} test speakers from {len(speakers)} speakers "
            f"(need at least 2 test and 1 training speaker)"
        )
    chosen = set(np.random.default_rng(seed).permutation(len(speakers))[:n_test].tolist())
    test = [s for i, s in enumerate(speakers) if i in chosen]
    train = [s for i, s in enumerate(speakers) if i not in chosen]
    return train, test


def _id_prefix(rel: str) -> str:
    """The id prefix of a folder ``rel`` below a corpus root (``spk/session`` -> ``spk-session``)."""
    return rel.replace(os.sep, "/").strip("/").replace("/", "-")


def select_utterances(spec: PathLike, roots: Sequence[PathLike], utt2spk: Mapping[str, str]) -> set[str]:
    """The utterances of ``utt2spk`` that set ``spec`` names (``corpus.generic.train`` / ``test``):

    * a **folder** inside a corpus root: the utterances below it (a root itself: all of its
      speakers, e.g. LibriSpeech's test-clean given as one of the roots);
    * a **list file**: one entry per line, a path relative to a corpus root naming an audio file
      (``spk/session/a.wav``) or a folder (``spk``: every utterance of that speaker; CN-Celeb's
      dev.lst is such a list).

    Raises PrepareError naming ``spec`` (and the first entries that match nothing).
    """
    roots = [Path(os.path.abspath(r)) for r in roots]
    path = Path(os.path.abspath(spec))
    by_prefix: dict[str, list[str]] = {}
    for utt in utt2spk:
        parts = utt.split("-")
        for i in range(1, len(parts) + 1):
            by_prefix.setdefault("-".join(parts[:i]), []).append(utt)
    if path.is_dir():
        root = next((r for r in roots if path == r or r in path.parents), None)
        if root is None:
            raise PrepareError(
                f"{spec}: a set folder must be one of the corpus roots or inside one ({', '.join(map(str, roots))})"
            )
        if path == root:
            speakers = {e.name for e in sorted_subdirs(root)}
            chosen = {u for u, spk in utt2spk.items() if spk in speakers}
        else:
            chosen = set(by_prefix.get(_id_prefix(os.path.relpath(path, root)), []))
        if not chosen:
            raise PrepareError(f"{spec}: no usable utterance of the corpus lies in this folder")
        return chosen
    if not path.is_file():
        raise PrepareError(f"{spec}: set list or folder not found")
    chosen, unknown = set(), []
    for entry in read_list(path):
        suffix = Path(entry).suffix.lower()
        if suffix in CONVERT_SUFFIXES | DIRECT_SUFFIXES:
            utt = utt_id_from_relpath(entry)
            found = [utt] if utt in utt2spk else []
        else:
            found = by_prefix.get(_id_prefix(entry), [])
        if not found:
            unknown.append(entry)
        chosen.update(found)
    if unknown:
        raise PrepareError(
            f"{spec}: {len(unknown)} entries name no usable utterance of the corpus (paths "
            f"relative to a corpus root; failed files are excluded): {examples(unknown)}"
        )
    return chosen


HOLDOUT = ("speakers", "utterances")
"""What a test utterance removes from the training set: its speaker's every utterance (an
open-set protocol, VoxCeleb's) or only itself (closed set: other utterances of a test speaker
are trained on)."""


def prepare_generic_sets(
    records_paths: Sequence[PathLike],
    summary_paths: Sequence[PathLike],
    max_failures: int,
    out_dir: PathLike,
    summary_path: PathLike,
    trial_lists: Mapping[str, PathLike] | None = None,
    split: Mapping | None = None,
    holdout: str = "speakers",
    train_set: PathLike | None = None,
    test_set: PathLike | None = None,
    roots: Sequence[PathLike] = (),
) -> dict:
    """Step 3 for a generic corpus: merged shards -> train and test sets + trial lists.

    Trials come from exactly one of
    * ``trial_lists`` ``{name: path}``: VoxCeleb-style lists whose paths are
      relative to a corpus root;
    * ``split`` ``{"name", "test_speakers", "target_trials", "nontarget_trials", "seed"}``:
      ``data/trials/<name>.txt`` sampled (:func:`sample_trials`; ``target_trials: "all"``
      takes every target pair) from the test set.

    The test set is ``test_set`` (a folder or list, :func:`select_utterances` over ``roots``)
    when given, else the utterances the trial lists name, else (split) ``test_speakers``
    held-out speakers. The training set is ``train_set`` when given, else every utterance,
    less what ``holdout`` (:data:`HOLDOUT`) removes for the test set: ``speakers`` every
    utterance of a test speaker, ``utterances`` the test utterances only.

    Writes ``<out_dir>/{train,test}/{wav.scp,utt2spk}``, ``<out_dir>/trials/<name>.txt``
    and the summary JSON. Raises PrepareError for trials naming unknown or failed files,
    trials outside the test set, or an empty training set.
    """
    if (trial_lists is None) == (split is None):
        raise ValueError("give exactly one of trial_lists and split")
    if holdout not in HOLDOUT:
        raise ValueError(f"holdout must be one of {HOLDOUT}, got {holdout!r}")
    records, summary = merge_shards(records_paths, summary_paths, max_failures)
    by_utt = {r.utt: r for r in records}
    utt2spk = {r.utt: r.speaker for r in records}
    out_dir = Path(out_dir)
    trials: dict[str, Trials] = {}
    test_utts = select_utterances(test_set, roots, utt2spk) if test_set is not None else None
    if trial_lists is not None:
        for name, path in trial_lists.items():
            trials[name], _ = read_path_trials(path)
            check_trials_cover(trials[name], by_utt, path)
            if test_utts is not None:
                check_trials_cover(trials[name], test_utts, f"{path} (against the test set {test_set})")
        if test_utts is None:
            test_utts = {u for t in trials.values() for u in t.utterances}
    else:
        if test_utts is None:
            _, test_list = split_speakers(set(utt2spk.values()), split["test_speakers"], split["seed"])
            test_utts = {u for u, spk in utt2spk.items() if spk in set(test_list)}
        test_spk_of = {u: utt2spk[u] for u in test_utts}
        n_target = split["target_trials"]
        if n_target == "all":
            n_target = target_pair_count(test_spk_of)
        try:
            trials[split["name"]] = sample_trials(test_spk_of, n_target, split["nontarget_trials"], split["seed"])
        except PrepareError as err:
            raise PrepareError(
                f"{out_dir / 'trials' / split['name']}.txt: {err}; lower target_trials/"
                f"nontarget_trials or hold out more test_speakers"
            ) from None
    test = [r for r in records if r.utt in test_utts]
    test_spk = {r.speaker for r in test}
    candidates = select_utterances(train_set, roots, utt2spk) if train_set is not None else set(utt2spk)
    removed = test_utts if holdout == "utterances" else {u for u in candidates if utt2spk[u] in test_spk}
    train = [r for r in records if r.utt in candidates and r.utt not in removed]
    if not train:
        raise PrepareError(
            f"{out_dir}: no training utterances left after removing the test "
            f"{holdout} ({len(test_spk)} speakers, {len(test_utts)} utterances)"
        )
    summary["holdout"] = holdout
    summary["train"] = write_set(train, out_dir / "train" / "wav.scp", out_dir / "train" / "utt2spk")
    summary["test"] = write_set(test, out_dir / "test" / "wav.scp", out_dir / "test" / "utt2spk")
    summary["trials"] = {}
    for name, t in trials.items():
        write_trials(out_dir / "trials" / f"{name}.txt", t)
        summary["trials"][name] = {
            "trials": len(t),
            "target": int(t.labels.sum()),
            "nontarget": int(len(t) - t.labels.sum()),
        }
    write_json(summary_path, summary)
    return summary
