"""ssrl.manifest: round trips, reader errors (file, line, value), writers' refusals, validators."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from ssrl.manifest import (
    MAX_SHOWN,
    OTHER_SPACE,
    ManifestError,
    Trials,
    check_audio_exists,
    check_labels_cover,
    check_trials_cover,
    read_labels,
    read_list,
    read_trials,
    read_utt2spk,
    read_wav_scp,
    split_trials,
    write_labels,
    write_list,
    write_trials,
    write_utt2spk,
    write_wav_scp,
)


def _write(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- round trips


def test_wav_scp_round_trip_keeps_order_and_paths(tmp_path):
    mapping = {"zeta-1": "rel/dir/z.flac", "alpha-2": "/abs/a.wav", "mid-3": "../up/m.flac"}
    write_wav_scp(tmp_path / "wav.scp", mapping)
    assert (tmp_path / "wav.scp").read_text() == "zeta-1 rel/dir/z.flac\nalpha-2 /abs/a.wav\nmid-3 ../up/m.flac\n"
    back = read_wav_scp(tmp_path / "wav.scp")
    assert back == mapping and list(back) == list(mapping)


def test_utt2spk_round_trip(tmp_path):
    mapping = {f"s{i % 3}-{i:05d}": f"s{i % 3}" for i in range(7)}
    write_utt2spk(tmp_path / "utt2spk", mapping)
    assert read_utt2spk(tmp_path / "utt2spk") == mapping


def test_labels_round_trip(tmp_path):
    utts = ["u3", "u1", "u2"]
    write_labels(tmp_path / "labels.txt", utts, np.array([7, 0, 7], dtype=np.int64))
    assert (tmp_path / "labels.txt").read_text() == "u3 7\nu1 0\nu2 7\n"
    assert read_labels(tmp_path / "labels.txt") == {"u3": 7, "u1": 0, "u2": 7}


def test_list_round_trip_allows_inner_spaces(tmp_path):
    entries = ["a/b.flac", "dir with space/c.wav", "d.flac"]
    write_list(tmp_path / "x.lst", entries)
    assert read_list(tmp_path / "x.lst") == entries


def test_trials_round_trip(tmp_path):
    trials = Trials.from_lists([1, 0, 0], ["a", "a", "b"], ["b", "c", "c"])
    write_trials(tmp_path / "trials.txt", trials)
    assert (tmp_path / "trials.txt").read_text() == "1 a b\n0 a c\n0 b c\n"
    back = read_trials(tmp_path / "trials.txt")
    assert len(back) == 3
    assert back.labels.dtype == np.int8 and back.labels.tolist() == [1, 0, 0]
    assert back.enroll.tolist() == ["a", "a", "b"] and back.test.tolist() == ["b", "c", "c"]
    assert back.utterances == ["a", "b", "c"]


def test_blank_lines_and_trailing_whitespace_are_tolerated(tmp_path):
    p = _write(tmp_path / "wav.scp", "\n  u1   a.flac  \n\n\tu2 b.flac\t\r\n\n")
    assert read_wav_scp(p) == {"u1": "a.flac", "u2": "b.flac"}


# ----------------------------------------------------------------------------- reader errors


def test_wrong_field_count_names_file_line_and_content(tmp_path):
    p = _write(tmp_path / "wav.scp", "u1 a.flac\n\nu2 b c.flac\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:3: expected 2 fields")) as exc:
        read_wav_scp(p)
    assert "got 3" in str(exc.value) and "'u2 b c.flac'" in str(exc.value)


def test_duplicate_id_names_both_lines(tmp_path):
    p = _write(tmp_path / "utt2spk", "u1 s1\nu2 s1\nu3 s2\nu2 s2\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:4: duplicate utterance id 'u2' (first on line 2)")):
        read_utt2spk(p)


def test_duplicate_list_entry_names_both_lines(tmp_path):
    p = _write(tmp_path / "noise.lst", "a.wav\nb.wav\na.wav\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:3: duplicate entry 'a.wav' (first on line 1)")):
        read_list(p)


@pytest.mark.parametrize("reader", [read_wav_scp, read_utt2spk, read_labels, read_list, read_trials])
def test_empty_file_is_an_error(tmp_path, reader):
    p = _write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}: empty")):
        reader(p)


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match=re.escape(f"{tmp_path / 'nope.scp'}: cannot read")):
        read_wav_scp(tmp_path / "nope.scp")


def test_non_integer_label(tmp_path):
    p = _write(tmp_path / "labels.txt", "u1 3\nu2 x7\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:2: label of 'u2' is not an integer: 'x7'")):
        read_labels(p)


def test_negative_label(tmp_path):
    p = _write(tmp_path / "labels.txt", "u1 3\n\nu2 -1\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:3: label of 'u2' is negative: -1")):
        read_labels(p)


@pytest.mark.parametrize("flag", ["2", "target", "-1", "1.0"])
def test_bad_target_flag(tmp_path, flag):
    p = _write(tmp_path / "trials.txt", f"1 a b\n{flag} a c\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:2: target flag must be 1 or 0, got '{flag}'")):
        read_trials(p)


def test_trials_vectorised_reader_agrees_with_line_reader(tmp_path):
    """The one-split parse of well-formed files gives what the line reader gives, with blank lines, tabs,
    CRLF endings, non-ASCII ids and no final newline; a 2-field line next to a 4-field one is still refused."""
    text = "\n1 a\tbé\r\n  \n0 ünïcode_utt_long_id c\n\n1\tc   a"
    back = read_trials(_write(tmp_path / "t.txt", text))
    assert back.labels.dtype == np.int8 and back.labels.tolist() == [1, 0, 1]
    assert back.enroll.tolist() == ["a", "ünïcode_utt_long_id", "c"] and back.test.tolist() == ["bé", "c", "a"]
    p = _write(tmp_path / "bad.txt", "1 a b\n0 a\n1 b c d\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:2: expected 3 fields")):
        read_trials(p)


def test_other_space_is_every_non_ascii_split_separator():
    """OTHER_SPACE is exactly what str.split() splits at besides ASCII " \\t\\n\\v\\f\\r"."""
    everything = {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    assert set(OTHER_SPACE) == everything - set(" \t\n\v\f\r")


def test_split_trials_known_answers():
    labels, enroll, test = split_trials("\n1 a\tbé\r\n  \n0 ü c\n\n1\tc   a".encode())
    assert labels.dtype == np.int8 and labels.tolist() == [1, 0, 1]
    assert enroll == [b"a", "ü".encode(), b"c"] and test == ["bé".encode(), b"c", b"a"]
    labels, enroll, test = split_trials(b"1 a b\x0c0 c d\x0b")  # \f and \v end lines, as for the line reader
    assert labels.tolist() == [1, 0] and enroll == [b"a", b"c"] and test == [b"b", b"d"]
    refused = [
        b"",  # no trials
        b"1 a b\n0 a\n1 b c d\n",  # 2 + 4 fields: the count is a multiple of 3, the lines are not
        b"1 a\rb\n",  # \r ends a line for the line reader
        b"1 a\x1cx b\n",  # str.split() splits at \x1c (ASCII) ...
        "1 a\u2003x b\n".encode(),  # ... and at non-ASCII spaces
        b"2 a b\n",
        b"10 a b\n",
        b"1 a \xff\n",  # not UTF-8
    ]
    for data in refused:
        assert split_trials(data) is None, data


def test_read_trials_falls_back_to_the_line_reader(tmp_path):
    """Files split_trials refuses still read as the line reader reads them (form feed and NEL end lines)."""
    back = read_trials(_write(tmp_path / "t.txt", "1 a b\f0 c d\x851 e f\n"))
    assert back.labels.tolist() == [1, 0, 1] and back.enroll.tolist() == ["a", "c", "e"]
    assert back.test.tolist() == ["b", "d", "f"]


def test_trials_wrong_field_count(tmp_path):
    p = _write(tmp_path / "trials.txt", "1 a b\n0 a\n")
    with pytest.raises(ManifestError, match=re.escape(f"{p}:2: expected 3 fields")):
        read_trials(p)


# ----------------------------------------------------------------------------- writer refusals


def test_writer_refuses_whitespace_in_ids_and_leaves_no_file(tmp_path):
    p = tmp_path / "wav.scp"
    with pytest.raises(ManifestError, match=re.escape(f"{p}: record 2: utterance id 'bad id'")):
        write_wav_scp(p, {"ok": "a.flac", "bad id": "b.flac"})
    with pytest.raises(ManifestError, match=re.escape(f"{p}: record 1: audio path 'a b.flac'")):
        write_wav_scp(p, {"ok": "a b.flac"})
    with pytest.raises(ManifestError, match="speaker id ''"):
        write_utt2spk(p, {"ok": ""})
    assert list(tmp_path.iterdir()) == []


def test_write_labels_checks(tmp_path):
    p = tmp_path / "labels.txt"
    with pytest.raises(ManifestError, match="2 utterances but labels of shape"):
        write_labels(p, ["a", "b"], [1, 2, 3])
    with pytest.raises(ManifestError, match="must be integers"):
        write_labels(p, ["a", "b"], [1.5, 2.0])
    with pytest.raises(ManifestError, match=re.escape("record 2: label of 'b' is negative: -4")):
        write_labels(p, ["a", "b"], [1, -4])
    with pytest.raises(ManifestError, match=re.escape("record 3: duplicate utterance id 'a' (first at record 1)")):
        write_labels(p, ["a", "b", "a"], [1, 2, 3])
    with pytest.raises(ManifestError, match=re.escape("record 1: test id 'x y'")):
        write_trials(p, Trials.from_lists([1], ["a"], ["x y"]))
    with pytest.raises(ManifestError, match="surrounding whitespace"):
        write_list(p, ["ok.wav", " lead.wav"])
    with pytest.raises(ManifestError, match="empty list"):
        write_list(p, [])
    assert not p.exists()


def test_trials_constructor_checks():
    with pytest.raises(ValueError, match="0 or 1"):
        Trials.from_lists([1, 2], ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="lengths differ"):
        Trials(np.zeros(2, np.int8), np.array(["a"]), np.array(["b", "c"]))


# ----------------------------------------------------------------------------- validators


def test_check_trials_cover_reports_counts_and_first_offenders():
    trials = Trials.from_lists([1, 0, 1, 0], ["a", "x", "b", "a"], ["b", "a", "y", "x"])
    check_trials_cover(trials, ["a", "b", "x", "y"], "t.txt")  # complete: no error
    with pytest.raises(ManifestError) as exc:
        check_trials_cover(trials, ["a", "b"], "t.txt")
    msg = str(exc.value)
    assert msg.startswith("t.txt: 3 of 4 trials name utterances")
    assert "2 unknown: 'x', 'y'" in msg
    assert "trial 2 (x a)" in msg and "trial 3 (b y)" in msg and "trial 4 (a x)" in msg


def test_check_trials_cover_truncates_long_lists():
    n = MAX_SHOWN + 4
    trials = Trials.from_lists([0] * n, [f"e{i}" for i in range(n)], ["known"] * n)
    with pytest.raises(ManifestError) as exc:
        check_trials_cover(trials, ["known"], "t.txt")
    msg = str(exc.value)
    assert f"{n} of {n} trials" in msg and f"{n} unknown" in msg
    assert f"'e{MAX_SHOWN - 1}'" in msg and f"'e{MAX_SHOWN}'" not in msg and "..." in msg


def test_check_labels_cover_both_directions():
    check_labels_cover({"a": 0, "b": 1}, ["b", "a"], "l.txt")
    with pytest.raises(ManifestError) as exc:
        check_labels_cover({"a": 0, "z": 1}, ["a", "b", "c"], "l.txt")
    msg = str(exc.value)
    assert msg.startswith("l.txt: 2 of 3 utterances have no label ('b', 'c')")
    assert "1 labelled utterances are not in the utterance list ('z')" in msg
    with pytest.raises(ManifestError, match=r"^l\.txt: 1 labelled utterances are not in the utterance list"):
        check_labels_cover({"a": 0, "q": 1}, ["a"], "l.txt")


def test_check_audio_exists(tmp_path, monkeypatch):
    (tmp_path / "here.flac").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    check_audio_exists({"u1": "here.flac", "u2": str(tmp_path / "here.flac")}, "wav.scp")
    with pytest.raises(ManifestError) as exc:
        check_audio_exists({"u1": "here.flac", "u2": "gone.flac", "u3": "sub/gone2.flac"}, "wav.scp")
    msg = str(exc.value)
    assert msg.startswith("wav.scp: 2 of 3 audio files do not exist")
    assert str(tmp_path) in msg and "'u2' -> gone.flac" in msg and "'u3' -> sub/gone2.flac" in msg
