"""Real-corpus preparation: raw corpora -> the manifests every later stage reads.

Writes the "Files between stages" of docs/internals.md (``data/train``,
``data/test``, ``data/trials/<list>.txt``, ``data/augment/*.lst``) for

* **VoxCeleb**: VoxCeleb2 dev (``<vox2>/dev/aac/idNNNNN/<video>/<seg>.m4a``) is
  the training set, converted once to 16 kHz mono FLAC; VoxCeleb1
  (``<vox1>/wav/idNNNNN/<video>/<seg>.wav``) provides the test utterances named
  by the official trial lists (used as they are, no conversion).
* **a generic corpus**: ``<root>/<speaker>/**/*.{wav,flac,m4a}`` (CN-Celeb,
  LibriSpeech, a user's own data). ``.m4a`` is converted like VoxCeleb2,
  WAV/FLAC are used directly; the test set comes from explicit trial lists or
  from held-out speakers with sampled trials.
* **augmentation sources**: MUSAN ``noise``/``music``/``speech`` and
  RIRS_NOISES ``simulated_rirs`` (any audio format ssrl.audio reads), or a
  folder or list file per source, or none.

Training-set preparation runs in three steps so that a cluster converts in
parallel and the shard count is known when the DAG is built:

1. :func:`scan_corpus` lists every file, assigns speakers to a fixed number of
   shards (sorted speakers, round robin), checks the free disk space for the
   FLACs still to be written and writes one list per shard;
2. :func:`convert_shard` converts (or, for WAV/FLAC, checks) the files of one
   shard, skipping FLACs that are already complete, and records failures
   (corrupt files) instead of stopping, up to ``max_failures``;
3. :func:`prepare_voxceleb_train` / :func:`prepare_generic_sets` merge the
   shards into ``wav.scp``/``utt2spk`` (failed files excluded) and a summary.

Utterance ids are the path below the corpus (or speaker) folder without the
extension, ``/`` replaced by ``-``: ``id10270/x6uYqmx31kE/00001.wav`` ->
``id10270-x6uYqmx31kE-00001`` (docs/method.md §2).

Bad input raises :class:`PrepareError` (a ``ValueError``) whose message starts
with the offending path.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import SAMPLE_RATE
from .audio import PYAV_SUFFIXES, AudioError, audio_duration, audio_problems, load_audio, write_audio
from .fileio import atomic_open, read_json, write_json
from .manifest import Trials, check_trials_cover, read_list, write_list, write_trials, write_utt2spk, write_wav_scp
from .progress import Progress

PathLike = str | os.PathLike

CONVERT_SUFFIXES = frozenset({".m4a"})
"""Source formats converted to FLAC; the others are used directly."""

DIRECT_SUFFIXES = frozenset({".wav", ".flac"})
"""Source formats listed in wav.scp as they are."""

DEFAULT_SIZE_RATIO = 3.0
"""Expected FLAC bytes per source m4a byte, for the disk-space check.

VoxCeleb2's AAC averages roughly 65 kb/s (the dev + test download is about
70 GB for ~2,440 h); 16-bit 16 kHz PCM is 256 kb/s and FLAC typically stores
speech in 55-65 % of that (~150 kb/s), a ratio of about 2.3. 3.0 leaves
headroom; the worst case (incompressible audio, FLAC ~ PCM) is about 4.
"""

LENGTH_TOLERANCE_S = 0.1
"""An existing FLAC counts as complete when its length is within this many
seconds of the duration the source's container states. AAC decodes in whole
1024-sample frames, so the two differ by less than one frame (64 ms at 16 kHz)."""

MAX_SHOWN = 10
"""How many offending files an error message lists before "...". """

AUGMENT_FOLDERS = {"noise": ("musan", "noise"), "music": ("musan", "music"),
                   "babble": ("musan", "speech"), "rir": ("rirs", "simulated_rirs")}
"""Augmentation list name -> (source root, sub-folder) (docs/method.md §2.1)."""


class PrepareError(ValueError):
    """A corpus that cannot be prepared; the message starts with the path concerned."""


@dataclass(frozen=True)
class SourceFile:
    """One utterance of a raw corpus: ``src`` the original file, ``dst`` the FLAC to
    write (``None`` when ``src`` is used directly)."""

    utt: str
    speaker: str
    src: str
    dst: str | None
    size: int


@dataclass(frozen=True)
class Record:
    """One usable utterance after conversion: audio ``path`` and length in ``seconds``."""

    utt: str
    speaker: str
    path: str
    seconds: float


# --------------------------------------------------------------------------- ids


def utt_id_from_relpath(relpath: str) -> str:
    """``spk/video/00001.wav`` -> ``spk-video-00001`` (extension dropped, ``/`` -> ``-``).

    Raises PrepareError for an empty id or one containing whitespace.
    """
    rel = relpath.replace(os.sep, "/").strip("/")
    stem, _ = os.path.splitext(rel)
    utt = stem.replace("/", "-")
    if not utt or utt != "".join(utt.split()):
        raise PrepareError(f"{relpath}: cannot make an utterance id from this path (empty or contains whitespace)")
    return utt


def _examples(items: Sequence[str], n: int = MAX_SHOWN) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _check_path_field(path: str) -> str:
    """Refuse paths that a whitespace-separated manifest cannot hold."""
    if path != "".join(path.split()):
        raise PrepareError(f"{path}: path contains whitespace, which wav.scp cannot hold; rename the file or folder")
    return path


# --------------------------------------------------------------------------- scanning


def _require_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{path}: {what} folder not found")
    return path


def _sorted_subdirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def scan_voxceleb2(root: PathLike, flac_dir: PathLike) -> list[SourceFile]:
    """List VoxCeleb2 dev: ``<root>/dev/aac/<spk>/<video>/<seg>.m4a``, sorted by id.

    ``dst`` mirrors the tree under ``flac_dir`` (``<flac_dir>/<spk>/<video>/<seg>.flac``).
    Paths are made absolute. Raises PrepareError for a missing root or no files.
    """
    root = Path(os.path.abspath(root))
    aac = _require_dir(_require_dir(root, "VoxCeleb2 root") / "dev" / "aac", "VoxCeleb2 dev/aac")
    flac_dir = Path(os.path.abspath(flac_dir))
    speakers = _sorted_subdirs(aac)
    progress = Progress(len(speakers), "scan VoxCeleb2", unit="spk", every_s=30)
    files: list[SourceFile] = []
    for spk in speakers:
        for video in _sorted_subdirs(Path(spk.path)):
            with os.scandir(video.path) as it:
                segs = sorted((e for e in it if e.is_file() and e.name.lower().endswith(".m4a")),
                              key=lambda e: e.name)
            for seg in segs:
                rel = f"{spk.name}/{video.name}/{seg.name}"
                dst = flac_dir / spk.name / video.name / (Path(seg.name).stem + ".flac")
                files.append(SourceFile(utt_id_from_relpath(rel), spk.name, _check_path_field(seg.path),
                                        _check_path_field(str(dst)), seg.stat().st_size))
        progress.update(1, files=len(files))
    if not files:
        raise PrepareError(f"{aac}: no .m4a files found (expected <speaker>/<video>/<segment>.m4a)")
    return sorted(files, key=lambda f: f.utt)


def corpus_roots(root: PathLike | Sequence[PathLike]) -> list[Path]:
    """The absolute corpus folder(s) of ``corpus.generic.root`` (one folder or a list)."""
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    return [Path(os.path.abspath(r)) for r in roots]


def scan_generic(root: PathLike | Sequence[PathLike], flac_dir: PathLike | None) -> list[SourceFile]:
    """List a generic corpus: ``<root>/<speaker>/**/*.{wav,flac,m4a}`` for each root folder
    (one or several, e.g. LibriSpeech's train-clean-100 and test-clean), sorted by id.

    Id: ``<speaker>-<path below the speaker folder, / -> ->`` without extension.
    ``.m4a`` files get ``dst`` under ``flac_dir`` (same path below the root, ``.flac``);
    WAV/FLAC have ``dst=None``. Hidden files/folders and other extensions are
    ignored. Raises PrepareError for a missing root, no audio, duplicate ids
    (e.g. ``a.wav`` beside ``a.flac``, or one speaker folder in two roots) or m4a
    files without ``flac_dir``.
    """
    roots = [Path(os.path.abspath(_require_dir(r, "corpus root"))) for r in corpus_roots(root)]
    flac = Path(os.path.abspath(flac_dir)) if flac_dir is not None else None
    speakers = [(r, spk) for r in roots for spk in _sorted_subdirs(r)]
    progress = Progress(len(speakers), "scan corpus", unit="spk", every_s=30)
    files: list[SourceFile] = []
    first_path: dict[str, str] = {}
    m4a: list[str] = []
    for root, spk in speakers:
        if spk.name != "".join(spk.name.split()):
            raise PrepareError(f"{spk.path}: speaker folder name contains whitespace")
        found = []
        for dirpath, dirnames, filenames in os.walk(spk.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                suffix = Path(name).suffix.lower()
                if name.startswith(".") or suffix not in CONVERT_SUFFIXES | DIRECT_SUFFIXES:
                    continue
                found.append(os.path.join(dirpath, name))
        for src in sorted(found):
            rel = os.path.relpath(src, root)
            utt = utt_id_from_relpath(rel)
            if utt in first_path:
                raise PrepareError(f"{src}: utterance id {utt!r} is also the id of {first_path[utt]} "
                                   f"(same path apart from the extension); keep one of them")
            first_path[utt] = src
            dst = None
            if Path(src).suffix.lower() in CONVERT_SUFFIXES:
                m4a.append(src)
                if flac is not None:
                    dst = _check_path_field(str((flac / rel).with_suffix(".flac")))
            else:
                _check_path_field(src)
            files.append(SourceFile(utt, spk.name, src, dst, os.stat(src).st_size))
        progress.update(1, files=len(files))
    where = ", ".join(map(str, roots))
    if not files:
        raise PrepareError(f"{where}: no .wav/.flac/.m4a files found (expected <speaker>/**/<file>)")
    if m4a and flac is None:
        raise PrepareError(f"{where}: {len(m4a)} .m4a files need conversion to FLAC but no flac_dir is "
                           f"configured (corpus.generic.conversion.flac_dir); e.g. {_examples(m4a, 3)}")
    return sorted(files, key=lambda f: f.utt)


# --------------------------------------------------------------------------- shards


def assign_shards(files: Sequence[SourceFile], n_shards: int) -> list[list[SourceFile]]:
    """Split files into ``n_shards`` lists by speaker: sorted speakers round robin.

    Deterministic (independent of the scan order); every speaker's files are in
    one shard, in id order. Shards may be empty when there are fewer speakers.
    """
    if n_shards < 1:
        raise ValueError(f"the number of shards must be >= 1, got {n_shards}")
    shard_of = {spk: i % n_shards for i, spk in enumerate(sorted({f.speaker for f in files}))}
    shards: list[list[SourceFile]] = [[] for _ in range(n_shards)]
    for f in sorted(files, key=lambda f: f.utt):
        shards[shard_of[f.speaker]].append(f)
    return shards


def write_shard_list(path: PathLike, files: Iterable[SourceFile]) -> None:
    """Write ``utt<TAB>speaker<TAB>src<TAB>dst`` lines (``dst`` ``-`` when used directly)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for f in files:
            fh.write(f"{f.utt}\t{f.speaker}\t{f.src}\t{f.dst or '-'}\n")


def read_shard_list(path: PathLike) -> list[SourceFile]:
    """Read a list written by :func:`write_shard_list` (``size`` is not stored: 0)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4:
                raise PrepareError(f"{path}:{lineno}: expected 4 tab-separated fields "
                                   f"(utt speaker src dst), got {len(fields)}")
            utt, spk, src, dst = fields
            out.append(SourceFile(utt, spk, src, None if dst == "-" else dst, 0))
    return out


# --------------------------------------------------------------------------- disk space


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def estimate_conversion_bytes(files: Iterable[SourceFile], size_ratio: float = DEFAULT_SIZE_RATIO) -> tuple[int, int]:
    """``(files still to convert, estimated FLAC bytes for them)``: source bytes x ``size_ratio``
    over files whose FLAC does not exist yet."""
    pending = [f.size for f in files if f.dst is not None and not os.path.exists(f.dst)]
    return len(pending), int(math.ceil(sum(pending) * size_ratio))


def check_disk_space(directory: PathLike, needed_bytes: int, margin_bytes: int = 0,
                     free_bytes: Callable[[Path], int] | None = None) -> int:
    """Refuse (PrepareError) unless ``needed_bytes + margin_bytes`` fit in ``directory``.

    The free space is measured on the nearest existing ancestor of ``directory``
    (``free_bytes(path)``, default ``shutil.disk_usage(path).free``). Returns
    the free bytes.
    """
    where = _existing_ancestor(Path(directory))
    free = int(free_bytes(where) if free_bytes is not None else shutil.disk_usage(where).free)
    if needed_bytes + margin_bytes > free:
        raise PrepareError(
            f"{directory}: not enough free disk space for the FLAC conversion: need about "
            f"{needed_bytes} bytes ({needed_bytes / 1e9:.1f} GB) plus a safety margin of {margin_bytes} bytes "
            f"({margin_bytes / 1e9:.1f} GB), but only {free} bytes ({free / 1e9:.1f} GB) are free on {where}; "
            f"free some space or point flac_dir to a larger disk")
    return free


def scan_corpus(kind: str, root: PathLike | Sequence[PathLike], flac_dir: PathLike | None, shard_paths: Sequence[PathLike],
                summary_path: PathLike, size_ratio: float = DEFAULT_SIZE_RATIO, margin_bytes: int = 0,
                free_bytes: Callable[[Path], int] | None = None) -> dict:
    """Step 1: scan ``root`` (``kind`` ``voxceleb2`` or ``generic``), check disk space,
    write ``len(shard_paths)`` shard lists and a JSON summary. Returns the summary.

    Nothing is written when the FLACs still to convert would not fit (see
    :func:`check_disk_space`).
    """
    if kind == "voxceleb2":
        if flac_dir is None:
            raise PrepareError(f"{root}: VoxCeleb2 needs a flac_dir to convert into")
        files = scan_voxceleb2(root, flac_dir)
    elif kind == "generic":
        files = scan_generic(root, flac_dir)
    else:
        raise ValueError(f"unknown corpus kind {kind!r} (expected 'voxceleb2' or 'generic')")
    n_pending, needed = estimate_conversion_bytes(files, size_ratio)
    free = None
    if n_pending:
        free = check_disk_space(flac_dir, needed, margin_bytes, free_bytes)
    shards = assign_shards(files, len(shard_paths))
    for path, shard in zip(shard_paths, shards):
        write_shard_list(path, shard)
    summary = {
        "kind": kind, "root": [str(r) for r in corpus_roots(root)] if kind == "generic" else os.path.abspath(root),
        "flac_dir": os.path.abspath(flac_dir) if flac_dir else None,
        "files": len(files), "speakers": len({f.speaker for f in files}),
        "to_convert": sum(f.dst is not None for f in files), "pending_conversion": n_pending,
        "source_bytes": sum(f.size for f in files), "estimated_flac_bytes": needed, "size_ratio": size_ratio,
        "free_bytes": free, "shards": len(shards), "files_per_shard": [len(s) for s in shards],
    }
    write_json(summary_path, summary)
    return summary


# --------------------------------------------------------------------------- conversion


def converted_length(src: PathLike, dst: PathLike, tolerance_s: float = LENGTH_TOLERANCE_S) -> int | None:
    """Samples in ``dst`` if it is a complete conversion of ``src``, else None.

    Complete: exists, not older than ``src``, a readable 16 kHz mono audio header
    with at least one sample, and a length within ``tolerance_s`` of the
    duration ``src``'s container states.
    """
    try:
        if os.stat(dst).st_mtime < os.stat(src).st_mtime:
            return None
        info = sf.info(str(dst))
        expected = audio_duration(src)
    except (OSError, RuntimeError, sf.SoundFileError, AudioError):
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames <= 0:
        return None
    if abs(info.frames / SAMPLE_RATE - expected) > tolerance_s:
        return None
    return int(info.frames)


def convert_file(src: PathLike, dst: PathLike) -> tuple[int, int, list[str]]:
    """Decode ``src`` (16 kHz mono, ``ssrl.audio.load_audio``) and write 16-bit FLAC ``dst``
    atomically. Returns ``(samples, clipped samples, problems)``; AAC can overshoot full scale
    slightly, such samples are clipped to [-1, 1]. Raises AudioError for bad input, also for
    silent audio (problems: near-silent, shorter than the container says)."""
    x = load_audio(src)
    problems = _usable_problems(src, x)
    clipped = int(np.count_nonzero(np.abs(x) > 1.0))
    if clipped:
        x = np.clip(x, -1.0, 1.0)
    write_audio(dst, x)
    return int(x.shape[0]), clipped, problems


def _direct_info(path: str) -> tuple[float, int, list[str]]:
    """``(seconds of audio, sample rate, problems)`` of a WAV/FLAC used directly, decoded whole
    (:func:`ssrl.audio.audio_problems`: a file shorter than its header says is used for what it
    holds); AudioError when unusable, also when silent."""
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(f"{path}: cannot read audio header ({err})") from err
    if info.frames <= 0:
        raise AudioError(f"{path}: empty audio (zero samples)")
    x = load_audio(path)
    return x.shape[0] / SAMPLE_RATE, int(info.samplerate), _usable_problems(path, x)


def _usable_problems(path: PathLike, x: np.ndarray) -> list[str]:
    """The audio_problems of a file about to be used; a silent one is refused (AudioError): it
    would only teach the model silence."""
    problems = audio_problems(path, x)
    if any(p.startswith("silent") for p in problems):
        raise AudioError(f"{path}: {problems[0]}")
    return problems


def _failure(f: SourceFile, err: Exception) -> dict:
    """A failure record; the reason without the leading ``path: `` of AudioError messages."""
    reason = str(err)
    return {"utt": f.utt, "path": f.src, "reason": reason.removeprefix(f"{f.src}: ")}


def _format_failures(failures: Sequence[dict]) -> str:
    return "\n".join(f"  {x['path']}: {x['reason']}" for x in failures[:MAX_SHOWN]) + (
        f"\n  ... and {len(failures) - MAX_SHOWN} more" if len(failures) > MAX_SHOWN else "")


def convert_shard(list_path: PathLike, records_path: PathLike, summary_path: PathLike,
                  max_failures: int, tolerance_s: float = LENGTH_TOLERANCE_S) -> dict:
    """Step 2: convert (m4a) or check (WAV/FLAC) the files of one shard list.

    Writes ``records_path`` (``utt<TAB>speaker<TAB>path<TAB>seconds`` for every
    usable file) and a JSON summary (counts, hours, failures with reasons, warnings:
    near-silent files and files shorter than their header says, kept).
    WAV/FLAC files are decoded whole for these checks; a silent file is a failure.
    An already complete FLAC (:func:`converted_length`) is not rewritten.
    A file that cannot be decoded is recorded as a failure and left out; when
    more than ``max_failures`` fail, PrepareError is raised at once (the
    corpus-wide limit cannot be met) and nothing is written.
    """
    files = read_shard_list(list_path)
    name = Path(list_path).name.split(".")[0]
    progress = Progress(len(files), f"shard {name}", unit="file", every_s=30)
    records: list[Record] = []
    failures: list[dict] = []
    warnings: list[dict] = []
    counts = {"converted": 0, "skipped": 0, "direct": 0, "clipped_files": 0}
    rates: dict[str, int] = {}
    for f in files:
        try:
            problems: list[str] = []
            if f.dst is None:
                seconds, rate, problems = _direct_info(f.src)
                rates[str(rate)] = rates.get(str(rate), 0) + 1
                records.append(Record(f.utt, f.speaker, f.src, seconds))
                counts["direct"] += 1
            elif (samples := converted_length(f.src, f.dst, tolerance_s)) is not None:
                records.append(Record(f.utt, f.speaker, f.dst, samples / SAMPLE_RATE))
                counts["skipped"] += 1
            else:
                samples, clipped, problems = convert_file(f.src, f.dst)
                records.append(Record(f.utt, f.speaker, f.dst, samples / SAMPLE_RATE))
                counts["converted"] += 1
                counts["clipped_files"] += int(clipped > 0)
            warnings += [{"utt": f.utt, "path": f.src, "warning": p} for p in problems]
        except AudioError as err:
            failures.append(_failure(f, err))
            if len(failures) > max_failures:
                raise PrepareError(f"{list_path}: {len(failures)} file(s) failed, more than max_failures="
                                   f"{max_failures}; stopping:\n{_format_failures(failures)}") from err
        progress.update(1, failed=len(failures))
    seconds = sum(r.seconds for r in records)
    with atomic_open(records_path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(f"{r.utt}\t{r.speaker}\t{r.path}\t{r.seconds:.4f}\n")
    summary = {"shard": name, "files": len(files), "usable": len(records), **counts,
               "direct_sample_rates": rates, "seconds": round(seconds, 3), "hours": round(seconds / 3600, 4),
               "failed": len(failures), "failures": failures, "warned": len(warnings), "warnings": warnings}
    write_json(summary_path, summary)
    return summary


def read_records(path: PathLike) -> list[Record]:
    """Read a shard's records file (see :func:`convert_shard`)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip("\n").split("\t")
            try:
                utt, spk, path_, seconds = fields
                out.append(Record(utt, spk, path_, float(seconds)))
            except ValueError:
                raise PrepareError(f"{path}:{lineno}: expected 'utt speaker path seconds' "
                                   f"(tab-separated), got {line.rstrip()!r}") from None
    return out


def merge_shards(records_paths: Sequence[PathLike], summary_paths: Sequence[PathLike],
                 max_failures: int) -> tuple[list[Record], dict]:
    """Step 3 (common part): join the shards -> (records sorted by id, summary dict).

    Raises PrepareError when the failures of all shards together exceed
    ``max_failures`` (listing them).
    """
    records = sorted((r for p in records_paths for r in read_records(p)), key=lambda r: r.utt)
    shards = [read_json(p) for p in summary_paths]
    failures = [x for s in shards for x in s["failures"]]
    if len(failures) > max_failures:
        raise PrepareError(f"{Path(summary_paths[0]).parent}: {len(failures)} file(s) failed in {len(shards)} shards, "
                           f"more than max_failures="
                           f"{max_failures}:\n{_format_failures(failures)}")
    seconds = sum(r.seconds for r in records)
    rates: dict[str, int] = {}
    for s in shards:
        for rate, n in s["direct_sample_rates"].items():
            rates[rate] = rates.get(rate, 0) + n
    summary = {
        "files": sum(s["files"] for s in shards), "usable": len(records),
        "converted": sum(s["converted"] for s in shards), "skipped_already_converted": sum(s["skipped"] for s in shards),
        "used_directly": sum(s["direct"] for s in shards), "direct_sample_rates": rates,
        "clipped_files": sum(s["clipped_files"] for s in shards),
        "speakers": len({r.speaker for r in records}), "hours": round(seconds / 3600, 4),
        "failed": len(failures), "excluded_from_wav_scp": len(failures), "failures": failures,
        "warned": sum(s.get("warned", 0) for s in shards), "warnings": [w for s in shards for w in s.get("warnings", [])],
        "shards": len(shards),
    }
    return records, summary


def _write_set(records: Iterable[Record], wav_scp: PathLike, utt2spk: PathLike) -> dict:
    records = list(records)
    write_wav_scp(wav_scp, {r.utt: r.path for r in records})
    write_utt2spk(utt2spk, {r.utt: r.speaker for r in records})
    return {"utterances": len(records), "speakers": len({r.speaker for r in records}),
            "hours": round(sum(r.seconds for r in records) / 3600, 4)}


def prepare_voxceleb_train(records_paths: Sequence[PathLike], summary_paths: Sequence[PathLike],
                           wav_scp: PathLike, utt2spk: PathLike, summary_path: PathLike,
                           max_failures: int) -> dict:
    """Step 3 for VoxCeleb2: merged shards -> ``data/train/{wav.scp,utt2spk}`` + summary JSON."""
    records, summary = merge_shards(records_paths, summary_paths, max_failures)
    summary["train"] = _write_set(records, wav_scp, utt2spk)
    write_json(summary_path, summary)
    return summary


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


def prepare_voxceleb1_test(root: PathLike, lists: Mapping[str, PathLike], wav_scp: PathLike, utt2spk: PathLike,
                           trial_paths: Mapping[str, PathLike]) -> dict:
    """VoxCeleb1 test set: convert each trial list ``name -> path`` to ``1|0 enroll test``
    ids at ``trial_paths[name]``; ``wav.scp`` lists every utterance any list names
    (``<root>/wav/<rel>``, used directly), ``utt2spk`` the speaker from the id.

    Raises PrepareError naming the list, the number of utterances without a file
    and the first ones, before writing anything.
    """
    root = Path(os.path.abspath(root))
    wav_dir = _require_dir(_require_dir(root, "VoxCeleb1 root") / "wav", "VoxCeleb1 wav")
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
            raise PrepareError(f"{lists[name]}: {len(missing)} of {len(rel_of)} utterances named by this trial "
                               f"list have no audio file under {wav_dir}; first missing: {_examples(missing)}")
    for name, (trials, _) in parsed.items():
        write_trials(trial_paths[name], trials)
    ordered = sorted(paths)
    write_wav_scp(wav_scp, {u: _check_path_field(paths[u]) for u in ordered})
    write_utt2spk(utt2spk, {u: u.split("-", 1)[0] for u in ordered})
    return {"utterances": len(paths), "speakers": len({u.split("-", 1)[0] for u in paths}),
            "trials": {name: {"trials": len(t), "target": int(t.labels.sum()),
                              "nontarget": int(len(t) - t.labels.sum())} for name, (t, _) in parsed.items()}}


def _pick_pairs(counts: np.ndarray, base: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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
            raise PrepareError(f"requested {k} {kind} trials but the {len(size)} test speakers "
                               f"({n} utterances) give only {available} distinct {kind} pairs")
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
        raise PrepareError(f"cannot hold out {n_test} test speakers from {len(speakers)} speakers "
                           f"(need at least 2 test and 1 training speaker)")
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
            raise PrepareError(f"{spec}: a set folder must be one of the corpus roots or inside one "
                               f"({', '.join(map(str, roots))})")
        if path == root:
            speakers = {e.name for e in _sorted_subdirs(root)}
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
        raise PrepareError(f"{spec}: {len(unknown)} entries name no usable utterance of the corpus (paths "
                           f"relative to a corpus root; failed files are excluded): {_examples(unknown)}")
    return chosen


HOLDOUT = ("speakers", "utterances")
"""What a test utterance removes from the training set: its speaker's every utterance (an
open-set protocol, VoxCeleb's) or only itself (closed set: other utterances of a test speaker
are trained on)."""


def prepare_generic_sets(records_paths: Sequence[PathLike], summary_paths: Sequence[PathLike], max_failures: int,
                         out_dir: PathLike, summary_path: PathLike, trial_lists: Mapping[str, PathLike] | None = None,
                         split: Mapping | None = None, holdout: str = "speakers", train_set: PathLike | None = None,
                         test_set: PathLike | None = None, roots: Sequence[PathLike] = ()) -> dict:
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
            raise PrepareError(f"{out_dir / 'trials' / split['name']}.txt: {err}; lower target_trials/"
                               f"nontarget_trials or hold out more test_speakers") from None
    test = [r for r in records if r.utt in test_utts]
    test_spk = {r.speaker for r in test}
    candidates = select_utterances(train_set, roots, utt2spk) if train_set is not None else set(utt2spk)
    removed = test_utts if holdout == "utterances" else {u for u in candidates if utt2spk[u] in test_spk}
    train = [r for r in records if r.utt in candidates and r.utt not in removed]
    if not train:
        raise PrepareError(f"{out_dir}: no training utterances left after removing the test "
                           f"{holdout} ({len(test_spk)} speakers, {len(test_utts)} utterances)")
    summary["holdout"] = holdout
    summary["train"] = _write_set(train, out_dir / "train" / "wav.scp", out_dir / "train" / "utt2spk")
    summary["test"] = _write_set(test, out_dir / "test" / "wav.scp", out_dir / "test" / "utt2spk")
    summary["trials"] = {}
    for name, t in trials.items():
        write_trials(out_dir / "trials" / f"{name}.txt", t)
        summary["trials"][name] = {"trials": len(t), "target": int(t.labels.sum()),
                                   "nontarget": int(len(t) - t.labels.sum())}
    write_json(summary_path, summary)
    return summary


# --------------------------------------------------------------------------- augmentation


AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3"}) | frozenset(PYAV_SUFFIXES)
"""Augmentation files are any of these (what ssrl.audio reads: libsndfile formats, m4a/aac/mp4 by FFmpeg)."""


def _augment_files(name: str, source: Path) -> list[str]:
    """Sorted absolute audio paths of augmentation source ``name`` from a folder (searched
    recursively for :data:`AUDIO_SUFFIXES`) or a list file (one path per line, relative paths
    resolved against the list's folder; each must exist)."""
    if source.is_dir():
        files = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                       and not p.name.startswith("."))
        if not files:
            raise PrepareError(f"{source}: no audio files found (needed for {name}.lst; looked for "
                               f"{', '.join(sorted(AUDIO_SUFFIXES))})")
        return files
    if not source.is_file():
        raise PrepareError(f"{source}: folder or list not found (needed for {name}.lst)")
    files = [str(source.parent / p) if not os.path.isabs(p) else p for p in read_list(source)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise PrepareError(f"{source}: {len(missing)} of {len(files)} listed files do not exist: {_examples(missing)}")
    if not files:
        raise PrepareError(f"{source}: empty list (needed for {name}.lst)")
    return [os.path.abspath(f) for f in files]


def augment_sources(sources: Mapping[str, PathLike | None]) -> dict[str, list[str]]:
    """``{noise, music, babble, rir}`` -> sorted absolute audio paths (docs/method.md §2.1).

    ``sources`` holds ``musan`` and ``rirs`` (the MUSAN and RIRS_NOISES folders: noise/,
    music/, speech/ and simulated_rirs/ below them) and/or one entry per list name (a folder or
    a list file, overriding the MUSAN/RIRS_NOISES default for that name). Raises PrepareError
    naming the folder or list that is missing or holds no audio.
    """
    out = {}
    for name, (root_key, sub) in AUGMENT_FOLDERS.items():
        given = sources.get(name)
        if given is None:
            root = sources.get(root_key)
            label = "MUSAN" if root_key == "musan" else "RIRS_NOISES"
            if root is None:
                raise PrepareError(f"{name}.lst: give the {label} folder ({root_key}) or a folder or list for {name}")
            folder = Path(os.path.abspath(root)) / sub
            if not folder.is_dir():
                raise PrepareError(f"{folder}: {label} folder '{sub}' not found (needed for {name}.lst)")
            given = folder
        out[name] = _augment_files(name, Path(os.path.abspath(given)))
    return out


def write_augment_lists(sources: Mapping[str, PathLike | None] | None, outputs: Mapping[str, PathLike]) -> dict[str, int]:
    """Write ``outputs[name]`` for ``name`` in noise/music/babble/rir from ``sources``
    (:func:`augment_sources`; None: augmentation off, every list empty); returns file counts.
    Every source is checked before anything is written."""
    lists = augment_sources(sources) if sources is not None else {name: [] for name in AUGMENT_FOLDERS}
    if set(outputs) != set(lists):
        raise ValueError(f"outputs must be given for exactly {sorted(lists)}, got {sorted(outputs)}")
    for name, files in lists.items():
        write_list(outputs[name], files, allow_empty=sources is None)
    return {name: len(files) for name, files in lists.items()}
