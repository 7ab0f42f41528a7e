"""Atomic output helpers and progress lines."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from ssrl.fileio import atomic_open, read_embeddings, read_json, write_embeddings, write_json
from ssrl.progress import Progress, format_duration


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("new")
            raise RuntimeError
    assert target.read_text() == "old"


def test_outputs_get_umask_permissions(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"eer": 0.1})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
    assert read_json(target) == {"eer": 0.1}


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"eer": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_embeddings_round_trip(tmp_path):
    emb = np.arange(6, dtype=np.float64).reshape(3, 2)
    write_embeddings(tmp_path / "e.npz", ["a", "b", "c"], emb)
    utts, back = read_embeddings(tmp_path / "e.npz")
    assert utts == ["a", "b", "c"]
    assert back.dtype == np.float32 and np.array_equal(back, emb.astype(np.float32))
    with pytest.raises(ValueError, match="does not match"):
        write_embeddings(tmp_path / "bad.npz", ["a"], emb)


def test_progress_line_has_rate_and_eta():
    out = io.StringIO()
    p = Progress(total=10, desc="extract", unit="utt", every_s=1e9, stream=out)
    p.update(5, loss=0.5)
    assert out.getvalue() == ""  # not yet due
    p.update(5, loss=0.25)  # finished: always printed
    line = out.getvalue()
    assert line.startswith("extract: 10/10 (100.0%)") and "utt/s" in line and "loss=0.25" in line
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"
