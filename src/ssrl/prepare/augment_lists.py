"""The augmentation lists ``data/augment/{noise,music,babble,rir}.lst`` from MUSAN / RIRS_NOISES folders,
per-list folders or list files (:func:`write_augment_lists`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..audio import PYAV_SUFFIXES
from ..manifest import read_list, write_list
from .records import AUGMENT_FOLDERS, PathLike, PrepareError, examples

# --------------------------------------------------------------------------- augmentation


AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3"}) | frozenset(PYAV_SUFFIXES)
"""Augmentation files are any of these (what ssrl.audio reads: libsndfile formats, m4a/aac/mp4 by FFmpeg)."""


def _augment_files(name: str, source: Path) -> list[str]:
    """Sorted absolute audio paths of augmentation source ``name`` from a folder (searched
    recursively for :data:`AUDIO_SUFFIXES`) or a list file (one path per line, relative paths
    resolved against the list's folder; each must exist)."""
    if source.is_dir():
        files = sorted(
            str(p)
            for p in source.rglob("*")
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise PrepareError(
                f"{source}: no audio files found (needed for {name}.lst; looked for "
                f"{', '.join(sorted(AUDIO_SUFFIXES))})"
            )
        return files
    if not source.is_file():
        raise PrepareError(f"{source}: folder or list not found (needed for {name}.lst)")
    files = [str(source.parent / p) if not os.path.isabs(p) else p for p in read_list(source)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise PrepareError(f"{source}: {len(missing)} of {len(files)} listed files do not exist: {examples(missing)}")
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


def write_augment_lists(
    sources: Mapping[str, PathLike | None] | None, outputs: Mapping[str, PathLike]
) -> dict[str, int]:
    """Write ``outputs[name]`` for ``name`` in noise/music/babble/rir from ``sources``
    (:func:`augment_sources`; None: augmentation off, every list empty); returns file counts.
    Every source is checked before anything is written."""
    lists = augment_sources(sources) if sources is not None else {name: [] for name in AUGMENT_FOLDERS}
    if set(outputs) != set(lists):
        raise ValueError(f"outputs must be given for exactly {sorted(lists)}, got {sorted(outputs)}")
    for name, files in lists.items():
        write_list(outputs[name], files, allow_empty=sources is None)
    return {name: len(files) for name, files in lists.items()}
