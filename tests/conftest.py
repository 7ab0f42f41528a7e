"""Shared test helpers: run the workflow in a scratch directory with a tiny config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "config" / "tiny.yaml"
# How the tiny end-to-end run is executed: the tiny jobs are import-bound, so two one-thread jobs at
# a time beat one two-thread job. Reruns that must reproduce its weights bit for bit (same thread
# count) use the same arguments.
TINY_RUN_ARGS = ("--cores", "2", "--max-threads", "1")

sys.path.insert(0, str(REPO / "src"))


def deep_update(base: dict, overrides: dict) -> dict:
    """Recursively merge ``overrides`` into a copy of ``base``."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def randomise_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm1d of ``model`` non-trivial running statistics and affine parameters, so that
    eval-mode outputs are not special (torch imported here: most test files do not need it)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def write_config(path: Path, overrides: dict | None = None, base: Path | None = TINY_CONFIG) -> Path:
    """Write a config file: ``base`` (default: the tiny test config) updated with ``overrides``."""
    cfg = yaml.safe_load(base.read_text()) if base is not None and base.exists() else {}
    cfg = deep_update(cfg or {}, overrides or {})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | None = None,
    check: bool = True,
    timeout: float = 1200,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with ``workdir`` as working directory.

    Returns the completed process (stdout and stderr merged into ``stdout``).
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(args)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo corpus (the corpus.demo sizes of tests/config/tiny.yaml), made once per session.

    Returns the run directory: ``data/`` holds the manifests (train, test, trials/demo.txt,
    augment lists; absolute audio paths), ``corpus/`` the audio and baseline.json. Treat it
    as read-only: other tests share it.
    """
    from ssrl.demo import generate_corpus

    run_dir = tmp_path_factory.mktemp("tiny_corpus")
    sizes = yaml.safe_load(TINY_CONFIG.read_text())["corpus"]["demo"]
    generate_corpus(run_dir / "corpus", run_dir / "data", workers=1, **sizes)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole workflow (default target) on the tiny config, run once per session.

    Returns the work directory: outputs under ``results/tiny/``, the config as
    ``config.yaml``. Tests that inspect a stage's real outputs share this run instead of
    building their own; treat it as read-only.
    """
    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = write_config(workdir / "config.yaml")
    run_snakemake(workdir, *TINY_RUN_ARGS, configfile=cfg)
    return workdir


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module of tiny-model tests, restored afterwards: more threads
    only add synchronisation, and on a busy machine each op can wait for a descheduled thread.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
