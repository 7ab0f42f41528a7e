"""Shared by the preparation steps: the source-file and record types, ids, limits and errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

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

AUGMENT_FOLDERS = {
    "noise": ("musan", "noise"),
    "music": ("musan", "music"),
    "babble": ("musan", "speech"),
    "rir": ("rirs", "simulated_rirs"),
}
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


def examples(items: Sequence[str], n: int = MAX_SHOWN) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def check_path_field(path: str) -> str:
    """Refuse paths that a whitespace-separated manifest cannot hold."""
    if path != "".join(path.split()):
        raise PrepareError(f"{path}: path contains whitespace, which wav.scp cannot hold; rename the file or folder")
    return path
