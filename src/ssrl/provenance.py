"""Provenance: which code, configuration, software and hardware made a run's files.

Three records (docs/internals.md, "Provenance"):

* ``results/<run>/provenance.json`` (:func:`start_record`, :func:`finish_record`): written by
  the workflow's ``onstart`` handler in the main Snakemake process when an invocation has jobs
  to run, completed by ``onsuccess`` / ``onerror``: git commit, uncommitted changes (flag and
  diff hash), the fully resolved config and its hash, the profile and the command, the reproduce
  command, software versions, hardware, start and end time, status; ``invocations`` keeps a
  short line per earlier invocation. An invocation with nothing to do leaves it as it is (it
  describes the invocation that last made files). It is no input of any rule: a new commit
  reruns nothing.
* ``results/<run>/provenance/config-<hash>.json``: every resolved config the run was invoked
  with, by hash, so that a file's config hash can be turned back into settings.
* the job stamp (:func:`job_stamp`): commit, dirty flag, diff hash and config hash of the
  invocation, handed to every job in the environment variable :data:`STAMP_ENV` (set by
  rules/provenance.smk), and written by the training jobs into ``<system>/train_record.json``
  beside the model file. An environment variable is no rerun trigger, a params value would be.

Only the standard library (plus ssrl.fileio): the main Snakemake process imports this module on
every start, and nothing here imports torch (versions are read from package metadata).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .fileio import read_json, write_json

STAMP_ENV = "SSRL_PROVENANCE"
"""Environment variable carrying the invocation's stamp (JSON) from Snakemake to its jobs."""

STAMP_KEYS = ("commit", "dirty", "diff_sha256", "config_hash")
"""Keys of a job stamp (:func:`make_stamp`); None where unknown (no git, run outside Snakemake)."""

PROVENANCE_FILE = "provenance.json"
CONFIG_STORE = "provenance"

PACKAGES = {
    "torch": "torch",
    "torchaudio": "torchaudio",
    "snakemake": "snakemake",
    "numpy": "numpy",
    "scikit-learn": "scikit-learn",
}
"""Recorded software: name in the record -> distribution name."""

_GIT_TIMEOUT_S = 20
_UNTRACKED_HASH_LIMIT = 1 << 20  # bytes: larger untracked files enter the diff hash by size only


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-12-02T14:05:09Z``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the text that :func:`config_hash` hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the resolved config's :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# code, software, hardware


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=_GIT_TIMEOUT_S
    ).stdout.decode(errors="replace")


def git_state(repo: str | os.PathLike) -> dict[str, Any]:
    """``commit`` (HEAD), ``dirty`` (tracked changes or untracked, non-ignored files) and
    ``diff_sha256`` (SHA-256 of ``git diff HEAD --binary`` plus each untracked file's path and
    content hash; null when clean) of the checkout holding ``repo``; all null, with ``error``,
    outside a git checkout or without git."""
    repo = Path(repo)
    try:
        commit = _git(repo, "rev-parse", "HEAD").strip()
        diff = subprocess.run(
            ["git", "-C", str(repo), "diff", "HEAD", "--binary"],
            check=True,
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
        ).stdout
        untracked = sorted(p for p in _git(repo, "ls-files", "--others", "--exclude-standard", "-z").split("\0") if p)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None, "diff_sha256": None, "error": f"git: {exc}"}
    top = Path(_git(repo, "rev-parse", "--show-toplevel").strip())
    digest = hashlib.sha256(diff)
    for rel in untracked:
        path = top / rel
        digest.update(b"\0untracked\0" + rel.encode())
        try:
            size = path.stat().st_size
            digest.update(
                hashlib.sha256(path.read_bytes()).digest() if size <= _UNTRACKED_HASH_LIMIT else f"size={size}".encode()
            )
        except OSError:
            continue
    dirty = bool(diff or untracked)
    return {"commit": commit, "dirty": dirty, "diff_sha256": digest.hexdigest() if dirty else None}


def _torch_build() -> dict[str, Any]:
    """CUDA / HIP version torch was built for, read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return {}
    text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    out = {}
    for key in ("cuda", "hip"):
        m = re.search(rf"^{key}(?::[^=]*)?=\s*'([^']*)'", text, re.MULTILINE)
        out[key] = m.group(1) if m else None
    return out


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def software_versions(executor: str | None = None) -> dict[str, Any]:
    """Python and the :data:`PACKAGES` versions (null when not installed), torch's CUDA/HIP build,
    the cuDNN wheel (nvidia-cudnn-*; the library torch loads on a GPU) and the executor plugin
    (``executor``: Snakemake's executor name; local ones are built into Snakemake)."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name, dist in PACKAGES.items():
        out[name] = _version(dist)
    build = _torch_build()
    out["torch_cuda"] = build.get("cuda")
    out["torch_hip"] = build.get("hip")
    cudnn = sorted(
        (d.metadata["Name"], d.version)
        for d in md.distributions()
        if (d.metadata["Name"] or "").lower().startswith("nvidia-cudnn")
    )
    out["cudnn"] = f"{cudnn[0][0]} {cudnn[0][1]}" if cudnn else None
    if executor is not None:
        plugin = _version(f"snakemake-executor-plugin-{executor}")
        out["executor"] = {
            "name": executor,
            "version": plugin if plugin is not None else f"built into snakemake {out['snakemake']}",
        }
    return out


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo; else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as ``nvidia-smi`` lists them (name, driver, memory); [] without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        text = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) == 3]


def hardware() -> dict[str, Any]:
    """Host name, OS, CPU model, logical CPUs (``cpu_count``) and those this process may use,
    memory (GiB), and the GPUs (:func:`gpus`) of the machine running the main Snakemake process.
    Jobs on other machines (SLURM) record their own device in train_record.json."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    found = gpus()
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": _memory_gib(),
        "gpu_count": len(found),
        "gpus": found,
    }


def hardware_line(hw: Mapping[str, Any]) -> str:
    """One line: ``Intel Xeon ..., 2 CPUs (2 usable), 8.0 GiB; GPUs: 2 x NVIDIA H100 (driver 550.54)``."""
    text = f"{hw.get('cpu_model')}, {hw.get('cpu_count')} CPUs ({hw.get('cpus_usable')} usable)"
    if hw.get("memory_gib") is not None:
        text += f", {hw['memory_gib']} GiB"
    found = hw.get("gpus") or []
    if found:
        names = sorted({g["name"] for g in found})
        text += f"; GPUs: {len(found)} x {' / '.join(names)} (driver {found[0]['driver']})"
    else:
        text += "; no GPU"
    return text


# ---------------------------------------------------------------------------------------
# the invocation


def profile_from_argv(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The ``--profile`` given on the command line (last one wins), else ``$SNAKEMAKE_PROFILE``."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--profile" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--profile="):
            found = arg.split("=", 1)[1]
    return found or environ.get("SNAKEMAKE_PROFILE") or None


def reproduce_command(
    profile: str | None,
    configfiles: Iterable[str | os.PathLike],
    config_args: Sequence[str],
    workdir: str | os.PathLike,
) -> str:
    """``snakemake [--profile P] --cores all [--configfile F ...] [--config K=V ...]``: paths inside
    ``workdir`` relative to it, others absolute."""

    def rel(path: str | os.PathLike) -> str:
        p = Path(path).absolute()
        try:
            return str(p.relative_to(Path(workdir).absolute()))
        except ValueError:
            return str(p)

    cmd = ["snakemake"]
    if profile:
        cmd += ["--profile", profile]
    cmd += ["--cores", "all"]
    files = [rel(f) for f in configfiles]
    if files:
        cmd += ["--configfile", *files]
    if config_args:
        cmd += ["--config", *config_args]
    return shlex.join(cmd)


def make_stamp(repo: str | os.PathLike, config: Mapping[str, Any]) -> dict[str, Any]:
    """The job stamp (:data:`STAMP_KEYS`) of an invocation of the workflow in ``repo`` with ``config``."""
    git = git_state(repo)
    return {
        "commit": git["commit"],
        "dirty": git["dirty"],
        "diff_sha256": git["diff_sha256"],
        "config_hash": config_hash(config),
    }


def job_stamp(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The stamp that Snakemake handed to this job (:data:`STAMP_ENV`), or every key null when
    the script runs outside the workflow."""
    text = (os.environ if environ is None else environ).get(STAMP_ENV)
    if not text:
        return dict.fromkeys(STAMP_KEYS)
    try:
        stamp = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"${STAMP_ENV}: not valid JSON: {text[:80]!r}") from None
    return {key: stamp.get(key) for key in STAMP_KEYS}


def config_path(run_dir: str | os.PathLike, chash: str) -> Path:
    """Where the resolved config with hash ``chash`` is kept."""
    return Path(run_dir) / CONFIG_STORE / f"config-{chash}.json"


def start_record(
    run_dir: str | os.PathLike,
    *,
    stamp: Mapping[str, Any],
    config: Mapping[str, Any],
    profile: str | None,
    argv: Sequence[str],
    reproduce: str,
    executor: str | None,
    workdir: str | os.PathLike,
) -> dict[str, Any]:
    """Write ``<run_dir>/provenance.json`` for an invocation starting now (status ``running``) and
    keep its config in the config store; earlier invocations stay as short lines in
    ``invocations``. Returns the record."""
    run_dir = Path(run_dir)
    path = run_dir / PROVENANCE_FILE
    try:
        previous = read_provenance(run_dir) if path.exists() else None
    except ValueError:  # a damaged record is replaced, not a reason to stop the run
        previous = None
    history = list(previous.get("invocations", [])) if previous else []
    if previous:
        history.append(
            {
                key: previous.get(key)
                for key in ("started", "finished", "status", "commit", "dirty", "config_hash", "command")
            }
        )
    if stamp["config_hash"] != config_hash(config):
        raise ValueError(f"{path}: the stamp's config hash {stamp['config_hash']} is not that of the config")
    stored = config_path(run_dir, stamp["config_hash"])
    if not stored.exists():
        write_json(stored, dict(config))
    record = {
        "run": config.get("run"),
        "started": now_iso(),
        "finished": None,
        "status": "running",
        **{key: stamp[key] for key in STAMP_KEYS},
        "profile": profile,
        "command": shlex.join(["snakemake", *argv[1:]]),
        "workdir": str(Path(workdir).absolute()),
        "reproduce": reproduce,
        "software": software_versions(executor),
        "hardware": hardware(),
        "config": dict(config),
        "invocations": history,
    }
    write_json(path, record)
    return record


def finish_record(run_dir: str | os.PathLike, status: str) -> None:
    """Mark the invocation in ``<run_dir>/provenance.json`` ended now with ``status``
    (``succeeded`` | ``failed``)."""
    path = Path(run_dir) / PROVENANCE_FILE
    record = read_provenance(run_dir)
    record.update(finished=now_iso(), status=status)
    write_json(path, record)


def read_provenance(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``<run_dir>/provenance.json``; a clear error when it is missing or not a JSON object."""
    path = Path(run_dir) / PROVENANCE_FILE
    try:
        record = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no provenance record (written when the workflow runs jobs)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return record


# ---------------------------------------------------------------------------------------
# config differences


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


MISSING = "(absent)"


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every key whose value differs, sorted by key;
    :data:`MISSING` stands for a key one side lacks."""
    fa, fb = flatten(a), flatten(b)
    return [
        (k, fa.get(k, MISSING), fb.get(k, MISSING))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, MISSING) != fb.get(k, MISSING)
    ]


def format_value(value: Any) -> str:
    """A config value as in YAML flow style (strings unquoted, null, true/false)."""
    return value if isinstance(value, str) else json.dumps(value)


def stored_config(run_dir: str | os.PathLike, chash: str) -> dict[str, Any] | None:
    """The resolved config with hash ``chash`` from the run's config store, or None if not kept."""
    path = config_path(run_dir, chash)
    return read_json(path) if path.exists() else None
