"""Step 1 of the training-set preparation: list a corpus, assign speakers to shards, check the disk space
(:func:`scan_corpus`)."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..fileio import atomic_open, write_json
from ..progress import Progress
from .records import (
    CONVERT_SUFFIXES,
    DEFAULT_SIZE_RATIO,
    DIRECT_SUFFIXES,
    PathLike,
    PrepareError,
    SourceFile,
    check_path_field,
    examples,
    utt_id_from_relpath,
)

# --------------------------------------------------------------------------- scanning


def require_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{path}: {what} folder not found")
    return path


def sorted_subdirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def scan_voxceleb2(root: PathLike, flac_dir: PathLike) -> list[SourceFile]:
    """List VoxCeleb2 dev: ``<root>/dev/aac/<spk>/<video>/<seg>.m4a``, sorted by id.

    ``dst`` mirrors the tree under ``flac_dir`` (``<flac_dir>/<spk>/<video>/<seg>.flac``).
    Paths are made absolute. Raises PrepareError for a missing root or no files.
    """
    root = Path(os.path.abspath(root))
    aac = require_dir(require_dir(root, "VoxCeleb2 root") / "dev" / "aac", "VoxCeleb2 dev/aac")
    flac_dir = Path(os.path.abspath(flac_dir))
    speakers = sorted_subdirs(aac)
    progress = Progress(len(speakers), "scan VoxCeleb2", unit="spk", every_s=30)
    files: list[SourceFile] = []
    for spk in speakers:
        for video in sorted_subdirs(Path(spk.path)):
            with os.scandir(video.path) as it:
                segs = sorted((e for e in it if e.is_file() and e.name.lower().endswith(".m4a")), key=lambda e: e.name)
            for seg in segs:
                rel = f"{spk.name}/{video.name}/{seg.name}"
                dst = flac_dir / spk.name / video.name / (Path(seg.name).stem + ".flac")
                files.append(
                    SourceFile(
                        utt_id_from_relpath(rel),
                        spk.name,
                        check_path_field(seg.path),
                        check_path_field(str(dst)),
                        seg.stat().st_size,
                    )
                )
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
    roots = [Path(os.path.abspath(require_dir(r, "corpus root"))) for r in corpus_roots(root)]
    flac = Path(os.path.abspath(flac_dir)) if flac_dir is not None else None
    speakers = [(r, spk) for r in roots for spk in sorted_subdirs(r)]
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
                raise PrepareError(
                    f"{src}: utterance id {utt!r} is also the id of {first_path[utt]} "
                    f"(same path apart from the extension); keep one of them"
                )
            first_path[utt] = src
            dst = None
            if Path(src).suffix.lower() in CONVERT_SUFFIXES:
                m4a.append(src)
                if flac is not None:
                    dst = check_path_field(str((flac / rel).with_suffix(".flac")))
            else:
                check_path_field(src)
            files.append(SourceFile(utt, spk.name, src, dst, os.stat(src).st_size))
        progress.update(1, files=len(files))
    where = ", ".join(map(str, roots))
    if not files:
        raise PrepareError(f"{where}: no .wav/.flac/.m4a files found (expected <speaker>/**/<file>)")
    if m4a and flac is None:
        raise PrepareError(
            f"{where}: {len(m4a)} .m4a files need conversion to FLAC but no flac_dir is "
            f"configured (corpus.generic.conversion.flac_dir); e.g. {examples(m4a, 3)}"
        )
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
                raise PrepareError(
                    f"{path}:{lineno}: expected 4 tab-separated fields (utt speaker src dst), got {len(fields)}"
                )
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


def check_disk_space(
    directory: PathLike, needed_bytes: int, margin_bytes: int = 0, free_bytes: Callable[[Path], int] | None = None
) -> int:
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
            f"free some space or point flac_dir to a larger disk"
        )
    return free


def scan_corpus(
    kind: str,
    root: PathLike | Sequence[PathLike],
    flac_dir: PathLike | None,
    shard_paths: Sequence[PathLike],
    summary_path: PathLike,
    size_ratio: float = DEFAULT_SIZE_RATIO,
    margin_bytes: int = 0,
    free_bytes: Callable[[Path], int] | None = None,
) -> dict:
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
        "kind": kind,
        "root": [str(r) for r in corpus_roots(root)] if kind == "generic" else os.path.abspath(root),
        "flac_dir": os.path.abspath(flac_dir) if flac_dir else None,
        "files": len(files),
        "speakers": len({f.speaker for f in files}),
        "to_convert": sum(f.dst is not None for f in files),
        "pending_conversion": n_pending,
        "source_bytes": sum(f.size for f in files),
        "estimated_flac_bytes": needed,
        "size_ratio": size_ratio,
        "free_bytes": free,
        "shards": len(shards),
        "files_per_shard": [len(s) for s in shards],
    }
    write_json(summary_path, summary)
    return summary
