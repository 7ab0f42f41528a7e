"""Steps 2 and 3: convert (or check) the files of one shard (:func:`convert_shard`) and merge the shards
into the VoxCeleb training set (:func:`prepare_voxceleb_train`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from .. import SAMPLE_RATE
from ..audio import AudioError, audio_duration, audio_problems, load_audio, write_audio
from ..fileio import atomic_open, read_json, write_json
from ..manifest import write_utt2spk, write_wav_scp
from ..progress import Progress
from .records import LENGTH_TOLERANCE_S, MAX_SHOWN, PathLike, PrepareError, Record, SourceFile
from .scan import read_shard_list

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
        f"\n  ... and {len(failures) - MAX_SHOWN} more" if len(failures) > MAX_SHOWN else ""
    )


def convert_shard(
    list_path: PathLike,
    records_path: PathLike,
    summary_path: PathLike,
    max_failures: int,
    tolerance_s: float = LENGTH_TOLERANCE_S,
) -> dict:
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
                raise PrepareError(
                    f"{list_path}: {len(failures)} file(s) failed, more than max_failures="
                    f"{max_failures}; stopping:\n{_format_failures(failures)}"
                ) from err
        progress.update(1, failed=len(failures))
    seconds = sum(r.seconds for r in records)
    with atomic_open(records_path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(f"{r.utt}\t{r.speaker}\t{r.path}\t{r.seconds:.4f}\n")
    summary = {
        "shard": name,
        "files": len(files),
        "usable": len(records),
        **counts,
        "direct_sample_rates": rates,
        "seconds": round(seconds, 3),
        "hours": round(seconds / 3600, 4),
        "failed": len(failures),
        "failures": failures,
        "warned": len(warnings),
        "warnings": warnings,
    }
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
                raise PrepareError(
                    f"{path}:{lineno}: expected 'utt speaker path seconds' (tab-separated), got {line.rstrip()!r}"
                ) from None
    return out


def merge_shards(
    records_paths: Sequence[PathLike], summary_paths: Sequence[PathLike], max_failures: int
) -> tuple[list[Record], dict]:
    """Step 3 (common part): join the shards -> (records sorted by id, summary dict).

    Raises PrepareError when the failures of all shards together exceed
    ``max_failures`` (listing them).
    """
    records = sorted((r for p in records_paths for r in read_records(p)), key=lambda r: r.utt)
    shards = [read_json(p) for p in summary_paths]
    failures = [x for s in shards for x in s["failures"]]
    if len(failures) > max_failures:
        raise PrepareError(
            f"{Path(summary_paths[0]).parent}: {len(failures)} file(s) failed in {len(shards)} shards, "
            f"more than max_failures="
            f"{max_failures}:\n{_format_failures(failures)}"
        )
    seconds = sum(r.seconds for r in records)
    rates: dict[str, int] = {}
    for s in shards:
        for rate, n in s["direct_sample_rates"].items():
            rates[rate] = rates.get(rate, 0) + n
    summary = {
        "files": sum(s["files"] for s in shards),
        "usable": len(records),
        "converted": sum(s["converted"] for s in shards),
        "skipped_already_converted": sum(s["skipped"] for s in shards),
        "used_directly": sum(s["direct"] for s in shards),
        "direct_sample_rates": rates,
        "clipped_files": sum(s["clipped_files"] for s in shards),
        "speakers": len({r.speaker for r in records}),
        "hours": round(seconds / 3600, 4),
        "failed": len(failures),
        "excluded_from_wav_scp": len(failures),
        "failures": failures,
        "warned": sum(s.get("warned", 0) for s in shards),
        "warnings": [w for s in shards for w in s.get("warnings", [])],
        "shards": len(shards),
    }
    return records, summary


def write_set(records: Iterable[Record], wav_scp: PathLike, utt2spk: PathLike) -> dict:
    records = list(records)
    write_wav_scp(wav_scp, {r.utt: r.path for r in records})
    write_utt2spk(utt2spk, {r.utt: r.speaker for r in records})
    return {
        "utterances": len(records),
        "speakers": len({r.speaker for r in records}),
        "hours": round(sum(r.seconds for r in records) / 3600, 4),
    }


def prepare_voxceleb_train(
    records_paths: Sequence[PathLike],
    summary_paths: Sequence[PathLike],
    wav_scp: PathLike,
    utt2spk: PathLike,
    summary_path: PathLike,
    max_failures: int,
) -> dict:
    """Step 3 for VoxCeleb2: merged shards -> ``data/train/{wav.scp,utt2spk}`` + summary JSON."""
    records, summary = merge_shards(records_paths, summary_paths, max_failures)
    summary["train"] = write_set(records, wav_scp, utt2spk)
    write_json(summary_path, summary)
    return summary
