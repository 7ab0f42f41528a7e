"""Kaldi-style manifests: read, write and cross-check (docs/method.md §2).

One record per line, fields separated by whitespace:

=============  ===============================  =====================================
file           record                           reader / writer
=============  ===============================  =====================================
``wav.scp``    ``utt path``                     :func:`read_wav_scp` / :func:`write_wav_scp`
``utt2spk``    ``utt speaker``                  :func:`read_utt2spk` / :func:`write_utt2spk`
trials         ``1|0 enroll_utt test_utt``      :func:`read_trials` / :func:`write_trials`
pseudo labels  ``utt label`` (integer >= 0)     :func:`read_labels` / :func:`write_labels`
plain list     ``path`` (the whole line)        :func:`read_list` / :func:`write_list`
=============  ===============================  =====================================

Readers fail fast with :class:`ManifestError` (``path:line: what is wrong``) on
a wrong field count, a bad integer, a duplicate id (both line numbers named) or
an empty file. Blank lines and surrounding whitespace are ignored; comments are
not supported. Audio paths are returned exactly as written: a relative path is
relative to the working directory of the process that opens the audio (for the
workflow, the Snakemake working directory, which is where ``results/`` lives).
Kaldi's piped ``wav.scp`` commands (``utt sox ... |``) are not supported: a path
must be a single field.

Writers go through :func:`ssrl.fileio.atomic_open` and refuse ids and paths
that the readers could not read back (empty, or containing whitespace).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_open

PathLike = str | os.PathLike

#: How many offending records a validator names before "...".
MAX_SHOWN = 5


class ManifestError(ValueError):
    """A malformed or inconsistent manifest; the message starts with ``path:line:`` or ``path:``."""


@dataclass(frozen=True)
class Trials:
    """A trial list: ``labels`` (n,) int8 (1 target, 0 non-target), ``enroll`` and ``test`` (n,) str."""

    labels: np.ndarray
    enroll: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.enroll) != n or len(self.test) != n:
            raise ValueError(f"Trials: lengths differ: labels {n}, enroll {len(self.enroll)}, test {len(self.test)}")

    @classmethod
    def from_lists(cls, labels: Sequence[int], enroll: Sequence[str], test: Sequence[str]) -> Trials:
        """Build from plain sequences (labels must be 0 or 1)."""
        lab = np.asarray(labels, dtype=np.int64)
        if lab.size and not np.isin(lab, (0, 1)).all():
            raise ValueError("Trials: labels must be 0 or 1")
        return cls(lab.astype(np.int8), np.asarray(enroll, dtype=str), np.asarray(test, dtype=str))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def utterances(self) -> list[str]:
        """Distinct utterance ids named by the trials, in order of first appearance."""
        return list(dict.fromkeys(np.stack([self.enroll, self.test], axis=1).ravel().tolist()))


# --------------------------------------------------------------------------- reading


def _records(path: PathLike, n_fields: int | None, what: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every non-blank line; check the field count.

    ``n_fields=None`` yields the whole stripped line as one field (plain lists).
    Raises ManifestError for an unreadable or record-less file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read {what}: {exc}") from exc
    found = False
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        found = True
        if n_fields is None:
            yield lineno, [stripped]
            continue
        fields = stripped.split()
        if len(fields) != n_fields:
            raise ManifestError(
                f"{path}:{lineno}: expected {n_fields} fields ({what}), got {len(fields)}: {stripped!r}"
            )
        yield lineno, fields
    if not found:
        raise ManifestError(f"{path}: empty {what} file (no records)")


def _read_pairs(path: PathLike, what: str) -> dict[str, tuple[int, str]]:
    """``key value`` records -> ``{key: (line, value)}``; duplicate keys are an error."""
    out: dict[str, tuple[int, str]] = {}
    for lineno, (key, value) in _records(path, 2, what):
        if key in out:
            raise ManifestError(f"{path}:{lineno}: duplicate utterance id {key!r} (first on line {out[key][0]})")
        out[key] = (lineno, value)
    return out


def read_wav_scp(path: PathLike) -> dict[str, str]:
    """``utt path`` lines -> ``{utt: audio path}`` in file order (paths as written)."""
    return {utt: value for utt, (_, value) in _read_pairs(path, "'utt path'").items()}


def read_utt2spk(path: PathLike) -> dict[str, str]:
    """``utt speaker`` lines -> ``{utt: speaker}`` in file order."""
    return {utt: value for utt, (_, value) in _read_pairs(path, "'utt speaker'").items()}


def read_labels(path: PathLike) -> dict[str, int]:
    """``utt label`` lines (label a non-negative integer) -> ``{utt: label}`` in file order."""
    out: dict[str, int] = {}
    for utt, (lineno, value) in _read_pairs(path, "'utt label'").items():
        try:
            label = int(value)
        except ValueError:
            raise ManifestError(f"{path}:{lineno}: label of {utt!r} is not an integer: {value!r}") from None
        if label < 0:
            raise ManifestError(f"{path}:{lineno}: label of {utt!r} is negative: {label}")
        out[utt] = label
    return out


def read_list(path: PathLike) -> list[str]:
    """One entry (e.g. an audio path) per non-blank line -> list in file order; duplicates are an error."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for lineno, (entry,) in _records(path, None, "list"):
        if entry in seen:
            raise ManifestError(f"{path}:{lineno}: duplicate entry {entry!r} (first on line {seen[entry]})")
        seen[entry] = lineno
        out.append(entry)
    return out


#: Characters other than ASCII " \t\n\v\f\r" that ``str.split()`` (the line reader) treats as whitespace;
#: a file containing one goes through the line reader. Complete (a test compares it with ``str.isspace``).
OTHER_SPACE = (
    "\x1c\x1d\x1e\x1f\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_OTHER_SPACE_ASCII = [c.encode("ascii") for c in OTHER_SPACE if c.isascii()]


def split_trials(data: bytes) -> tuple[np.ndarray, list[bytes], list[bytes]] | None:
    """Vectorised parse of the bytes of a well-formed trials file -> ``(labels, enroll, test)``, or None.

    ``labels`` (n,) int8; ``enroll`` and ``test`` the n ids of each side as UTF-8 bytes, in file order.
    Well-formed: valid UTF-8, every non-blank line (lines end at ``\\n``, ``\\r``, ``\\v`` or ``\\f``,
    as for ``str.splitlines``) exactly three fields separated by ASCII whitespace, flags 0 or 1, no
    other whitespace character. None for anything else, which :func:`read_trials`' line reader
    parses or rejects, naming the line; where both accept a file they give the same trials.
    """
    if data.isascii():
        if any(c in data for c in _OTHER_SPACE_ASCII):
            return None
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if any(c in text for c in OTHER_SPACE):
            return None
    tokens = data.split()  # splits at exactly the bytes of `space` below
    if not tokens or len(tokens) % 3:
        return None
    b = np.frombuffer(data, dtype=np.uint8)
    space = np.empty(len(b) + 1, dtype=bool)
    space[0] = True
    np.less_equal(b - np.uint8(9), 4, out=space[1:])  # \t \n \v \f \r (uint8 wraps below 9)
    space[1:] |= b == 32
    starts = np.flatnonzero(space[:-1] > space[1:])  # byte offset of each token
    # breaks[i]: a line ends between token i - 1 and token i; well-formed: exactly at i = 3, 6, ...
    breaks = np.zeros(len(tokens) + 1, dtype=bool)
    breaks[np.searchsorted(starts, np.flatnonzero(b - np.uint8(10) <= 3), side="right")] = True  # \n \v \f \r
    breaks[-1] = True
    per_line = breaks[1:].reshape(-1, 3)
    if per_line[:, :2].any() or not per_line[:, 2].all():
        return None
    flags = tokens[0::3]
    joined = b"".join(flags)
    if len(joined) != len(flags) or joined.strip(b"01"):
        return None
    return np.frombuffer(joined, dtype=np.int8) - np.int8(ord("0")), tokens[1::3], tokens[2::3]


def _str_array(ids: list[bytes]) -> np.ndarray:
    """UTF-8 ids -> (n,) str array, as wide as the longest id."""
    text = b"\n".join(ids).decode("utf-8").split("\n")
    return np.array(text, dtype=f"U{max(map(len, text))}")


def trials_from_split(parsed: tuple[np.ndarray, list[bytes], list[bytes]]) -> Trials:
    """:class:`Trials` of a :func:`split_trials` result."""
    labels, enroll, test = parsed
    return Trials(labels, _str_array(enroll), _str_array(test))


def read_trials(path: PathLike) -> Trials:
    """``1|0 enroll test`` lines -> :class:`Trials`. Repeated pairs are kept as written.

    Well-formed files are parsed by :func:`split_trials`; anything else goes
    through the line-by-line reader, whose ManifestError names the offending line.
    """
    try:
        with open(path, "rb") as fh:
            parsed = split_trials(fh.read())
    except OSError:
        parsed = None  # the line reader raises the error
    if parsed is not None:
        return trials_from_split(parsed)
    labels: list[int] = []
    enroll: list[str] = []
    test: list[str] = []
    for lineno, (flag, e, t) in _records(path, 3, "'1|0 enroll test'"):
        if flag not in ("0", "1"):
            raise ManifestError(f"{path}:{lineno}: target flag must be 1 or 0, got {flag!r}")
        labels.append(int(flag))
        enroll.append(e)
        test.append(t)
    return Trials.from_lists(labels, enroll, test)


# --------------------------------------------------------------------------- writing


def _check_field(path: PathLike, index: int, what: str, value: object) -> str:
    """``value`` as a single manifest field, or ManifestError naming record ``index`` (1-based)."""
    if not isinstance(value, str):
        raise ManifestError(f"{path}: record {index}: {what} must be a string, got {type(value).__name__}")
    if not value or value != "".join(value.split()):
        raise ManifestError(f"{path}: record {index}: {what} {value!r} is empty or contains whitespace")
    return value


def _write_lines(path: PathLike, lines: Iterable[str], what: str, allow_empty: bool = False) -> None:
    lines = list(lines)
    if not lines and not allow_empty:
        raise ManifestError(f"{path}: refusing to write an empty {what} file")
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def _write_pairs(path: PathLike, mapping: Mapping[str, str], key_what: str, value_what: str) -> None:
    _write_lines(
        path,
        (
            f"{_check_field(path, i, key_what, k)} {_check_field(path, i, value_what, v)}"
            for i, (k, v) in enumerate(mapping.items(), start=1)
        ),
        f"{key_what} {value_what}",
    )


def write_wav_scp(path: PathLike, mapping: Mapping[str, str | os.PathLike]) -> None:
    """Write ``{utt: audio path}`` as ``utt path`` lines (in mapping order), atomically."""
    _write_pairs(path, {k: os.fspath(v) for k, v in mapping.items()}, "utterance id", "audio path")


def write_utt2spk(path: PathLike, mapping: Mapping[str, str]) -> None:
    """Write ``{utt: speaker}`` as ``utt speaker`` lines, atomically."""
    _write_pairs(path, mapping, "utterance id", "speaker id")


def write_labels(path: PathLike, utts: Sequence[str], labels: Sequence[int] | np.ndarray) -> None:
    """Write ``utt label`` lines for ``utts`` (N,) and integer ``labels`` (N,) >= 0, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(utts):
        raise ManifestError(f"{path}: {len(utts)} utterances but labels of shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ManifestError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        bad = int(np.argmax(labels < 0))
        raise ManifestError(f"{path}: record {bad + 1}: label of {utts[bad]!r} is negative: {int(labels[bad])}")
    seen: dict[str, int] = {}
    for i, utt in enumerate(utts, start=1):
        if utt in seen:
            raise ManifestError(f"{path}: record {i}: duplicate utterance id {utt!r} (first at record {seen[utt]})")
        seen[utt] = i
    _write_lines(
        path,
        (
            f"{_check_field(path, i, 'utterance id', u)} {int(lab)}"
            for i, (u, lab) in enumerate(zip(utts, labels), start=1)
        ),
        "label",
    )


def write_list(path: PathLike, entries: Iterable[str | os.PathLike], allow_empty: bool = False) -> None:
    """Write one entry (e.g. an audio path) per line, atomically.

    An entry is a whole line, so inner spaces are allowed; leading/trailing
    whitespace, line breaks and empty entries are refused; so is an empty list
    unless ``allow_empty`` (an empty file: augmentation lists with augmentation off).
    """
    lines = []
    for i, entry in enumerate(entries, start=1):
        entry = os.fspath(entry)
        if not entry or entry != entry.strip() or len(entry.splitlines()) != 1:
            raise ManifestError(
                f"{path}: record {i}: entry {entry!r} is empty, has surrounding whitespace or a line break"
            )
        lines.append(entry)
    _write_lines(path, lines, "list", allow_empty)


def write_trials(path: PathLike, trials: Trials) -> None:
    """Write ``1|0 enroll test`` lines, atomically."""
    lines = []
    for i, (lab, e, t) in enumerate(zip(trials.labels.tolist(), trials.enroll.tolist(), trials.test.tolist()), start=1):
        if lab not in (0, 1):
            raise ManifestError(f"{path}: record {i}: target flag must be 1 or 0, got {lab!r}")
        lines.append(f"{lab} {_check_field(path, i, 'enroll id', e)} {_check_field(path, i, 'test id', t)}")
    _write_lines(path, lines, "trials")


# --------------------------------------------------------------------------- validation


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_SHOWN])
    return shown + (", ..." if len(items) > MAX_SHOWN else "")


def check_trials_cover(trials: Trials, utts: Iterable[str], path: PathLike) -> None:
    """Raise ManifestError if a trial in ``path`` names an utterance not in ``utts``.

    The message gives the number of affected trials, the number of unknown
    utterances and the first few of each (trial index is 1-based record order).
    """
    known = set(utts)
    missing_e = ~np.isin(trials.enroll, list(known))
    missing_t = ~np.isin(trials.test, list(known))
    bad = np.flatnonzero(missing_e | missing_t)
    if bad.size == 0:
        return
    unknown = list(dict.fromkeys(np.concatenate([trials.enroll[missing_e], trials.test[missing_t]]).tolist()))
    first = [f"trial {i + 1} ({trials.enroll[i]} {trials.test[i]})" for i in bad[:MAX_SHOWN]]
    raise ManifestError(
        f"{path}: {bad.size} of {len(trials)} trials name utterances without audio/embedding "
        f"({len(unknown)} unknown: {_examples([repr(u) for u in unknown])}); first: {_examples(first)}"
    )


def check_labels_cover(labels: Mapping[str, int], utts: Iterable[str], path: PathLike) -> None:
    """Raise ManifestError unless the labels in ``path`` cover exactly the utterances ``utts``.

    Reports both directions: utterances of the list without a label, and
    labelled utterances that are not in the list (counts and first few ids).
    """
    utts = list(utts)
    known = set(utts)
    missing = [u for u in utts if u not in labels]
    extra = [u for u in labels if u not in known]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of {len(utts)} utterances have no label ({_examples([repr(u) for u in missing])})"
        )
    if extra:
        problems.append(
            f"{len(extra)} labelled utterances are not in the utterance list ({_examples([repr(u) for u in extra])})"
        )
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))


def check_audio_exists(wav_scp: Mapping[str, str], path: PathLike) -> None:
    """Raise ManifestError if audio files named by ``wav_scp`` (read from ``path``) do not exist.

    Relative paths are checked against the current working directory, as they
    will be opened.
    """
    missing = [f"{utt!r} -> {p}" for utt, p in wav_scp.items() if not Path(p).is_file()]
    if missing:
        raise ManifestError(
            f"{path}: {len(missing)} of {len(wav_scp)} audio files do not exist "
            f"(relative paths are taken from {os.getcwd()}): {_examples(missing)}"
        )
