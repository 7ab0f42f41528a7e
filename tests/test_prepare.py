"""Real-corpus preparation (ssrl.prepare + rules/data.smk) on fabricated VoxCeleb/MUSAN/generic trees."""

from __future__ import annotations

import json
import os
import runpy
from itertools import combinations
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, run_snakemake, write_config

from ssrl.fileio import read_json
from ssrl.manifest import ManifestError, read_list, read_trials, read_utt2spk, read_wav_scp
from ssrl.prepare import (
    PrepareError,
    SourceFile,
    assign_shards,
    augment_sources,
    check_disk_space,
    convert_shard,
    estimate_conversion_bytes,
    prepare_generic_sets,
    prepare_voxceleb1_test,
    prepare_voxceleb_train,
    read_path_trials,
    read_shard_list,
    sample_trials,
    scan_corpus,
    scan_generic,
    scan_voxceleb2,
    split_speakers,
    utt_id_from_relpath,
    write_augment_lists,
    write_shard_list,
)

SR = 16000
# speaker -> video -> number of segments. A YouTube id may start with "-".
VOX2 = {
    "id00012": {"21Uxsk56VDQ": 2, "-5jDfr5BsE4": 1},
    "id00015": {"0fijmz4vTVU": 2},
    "id00020": {"2gtsl9Ma8uM": 1, "x6uYqmx31kE": 1},
}
VOX2_IDS = sorted(f"{s}-{v}-{i:05d}" for s, vids in VOX2.items() for v, n in vids.items() for i in range(1, n + 1))


def tone(n: int, freq: float = 300.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def write_m4a(path: Path, x: np.ndarray, sr: int = SR) -> None:
    """AAC in an MP4 container, as VoxCeleb2 ships it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr)


def length_of(utt: str) -> int:
    """A distinct source length per utterance (0.3-0.6 s)."""
    return 4800 + 97 * (sum(map(ord, utt)) % 50)


def make_vox2(root: Path) -> Path:
    for spk, videos in VOX2.items():
        for video, n in videos.items():
            for i in range(1, n + 1):
                write_m4a(
                    root / "dev" / "aac" / spk / video / f"{i:05d}.m4a", tone(length_of(f"{spk}-{video}-{i:05d}"))
                )
    return root


def make_vox1(root: Path, utts: list[str]) -> Path:
    for utt in utts:
        spk, video, seg = utt.split("-")
        write_wav(root / "wav" / spk / video / f"{seg}.wav", tone(1600))
    return root


def make_augment(root: Path) -> tuple[Path, Path]:
    musan, rirs = root / "musan", root / "RIRS_NOISES"
    for kind, n in (("noise", 2), ("music", 1), ("speech", 3)):
        for i in range(n):
            write_wav(musan / kind / f"src{i}" / f"{kind}-{i:04d}.wav", tone(800))
    (musan / "README").write_text("not audio\n")
    for room in ("smallroom", "largeroom"):
        write_wav(rirs / "simulated_rirs" / room / "Room001" / "Room001-00001.wav", tone(400))
    return musan, rirs


@pytest.fixture
def vox2(tmp_path: Path) -> Path:
    return make_vox2(tmp_path / "voxceleb2")


def one_shard(tmp_path: Path, files: list[SourceFile]) -> Path:
    path = tmp_path / "shard.files.tsv"
    write_shard_list(path, files)
    return path


# --------------------------------------------------------------------------- ids and scanning


def test_utt_ids_from_paths():
    assert utt_id_from_relpath("id10270/x6uYqmx31kE/00001.wav") == "id10270-x6uYqmx31kE-00001"
    assert utt_id_from_relpath("id00012/-5jDfr5BsE4/00003.m4a") == "id00012--5jDfr5BsE4-00003"
    assert utt_id_from_relpath("103/1240/103-1240-0000.flac") == "103-1240-103-1240-0000"
    with pytest.raises(PrepareError, match="whitespace"):
        utt_id_from_relpath("spk/my file.wav")


def test_scan_voxceleb2(vox2, tmp_path):
    files = scan_voxceleb2(vox2, tmp_path / "flac")
    assert [f.utt for f in files] == VOX2_IDS
    f = next(f for f in files if f.utt == "id00012--5jDfr5BsE4-00001")
    assert f.speaker == "id00012"
    assert f.src == str(vox2 / "dev/aac/id00012/-5jDfr5BsE4/00001.m4a")
    assert f.dst == str(tmp_path / "flac/id00012/-5jDfr5BsE4/00001.flac")
    assert f.size == os.path.getsize(f.src) > 0


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(PrepareError, match=f"{tmp_path / 'nowhere'}: VoxCeleb2 root folder not found"):
        scan_voxceleb2(tmp_path / "nowhere", tmp_path / "flac")
    (tmp_path / "vox2").mkdir()
    with pytest.raises(PrepareError, match="dev/aac: VoxCeleb2 dev/aac folder not found"):
        scan_voxceleb2(tmp_path / "vox2", tmp_path / "flac")
    (tmp_path / "vox2/dev/aac/id00001/vid").mkdir(parents=True)
    with pytest.raises(PrepareError, match="no .m4a files found"):
        scan_voxceleb2(tmp_path / "vox2", tmp_path / "flac")
    with pytest.raises(PrepareError, match=f"{tmp_path / 'gen'}: corpus root folder not found"):
        scan_generic(tmp_path / "gen", None)


def test_shards_round_robin_over_sorted_speakers():
    files = [SourceFile(f"{s}-v-{i}", s, f"/{s}/{i}.m4a", None, 1) for s in "edcba" for i in range(2)]
    shards = assign_shards(files, 2)
    assert [sorted({f.speaker for f in s}) for s in shards] == [["a", "c", "e"], ["b", "d"]]
    assert [f.utt for f in shards[1]] == ["b-v-0", "b-v-1", "d-v-0", "d-v-1"]
    assert assign_shards(files[::-1], 2) == shards
    assert [len(s) for s in assign_shards(files, 7)] == [2, 2, 2, 2, 2, 0, 0]


def test_shard_list_round_trip(tmp_path):
    files = [SourceFile("a-1", "a", "/x/a/1.m4a", "/y/a/1.flac", 0), SourceFile("b-1", "b", "/x/b/1.wav", None, 0)]
    path = one_shard(tmp_path, files)
    assert read_shard_list(path) == files
    path.write_text("a-1\ta\t/x/a/1.m4a\n")
    with pytest.raises(PrepareError, match=r"shard.files.tsv:1: expected 4 tab-separated fields"):
        read_shard_list(path)


# --------------------------------------------------------------------------- conversion


def test_convert_writes_16k_mono_flac_and_skips_complete_ones(vox2, tmp_path):
    files = scan_voxceleb2(vox2, tmp_path / "flac")
    shard = one_shard(tmp_path, files)
    summary = convert_shard(shard, tmp_path / "usable.tsv", tmp_path / "s.json", max_failures=0)
    assert (summary["files"], summary["converted"], summary["skipped"], summary["failed"]) == (7, 7, 0, 0)
    assert read_json(tmp_path / "s.json") == summary
    total = 0
    for f in files:
        info = sf.info(f.dst)
        assert (info.samplerate, info.channels, info.format) == (SR, 1, "FLAC")
        # AAC adds 1024 priming samples and pads the last frame: at most 2048 more.
        assert 0 <= info.frames - length_of(f.utt) <= 2048
        total += info.frames
    usable = [line.split("\t") for line in (tmp_path / "usable.tsv").read_text().splitlines()]
    assert [u[0] for u in usable] == VOX2_IDS and all(u[2].endswith(".flac") for u in usable)
    assert summary["seconds"] == pytest.approx(total / SR, abs=1e-3)

    mtimes = {f.dst: os.stat(f.dst).st_mtime_ns for f in files}
    again = convert_shard(shard, tmp_path / "usable2.tsv", tmp_path / "s2.json", max_failures=0)
    assert (again["converted"], again["skipped"]) == (0, 7)
    assert {f.dst: os.stat(f.dst).st_mtime_ns for f in files} == mtimes
    assert (tmp_path / "usable2.tsv").read_text() == (tmp_path / "usable.tsv").read_text()

    # A damaged FLAC and one cut short are converted again; the others are kept.
    Path(files[0].dst).write_bytes(b"not a flac")
    x, _ = sf.read(files[1].dst, dtype="float32")
    sf.write(files[1].dst, x[: len(x) // 2], SR, format="FLAC")
    third = convert_shard(shard, tmp_path / "usable3.tsv", tmp_path / "s3.json", max_failures=0)
    assert (third["converted"], third["skipped"]) == (2, 5)
    assert sf.info(files[1].dst).frames == len(x)
    assert all(os.stat(f.dst).st_mtime_ns == mtimes[f.dst] for f in files[2:])


def test_corrupt_files_are_listed_and_excluded(vox2, tmp_path):
    bad = vox2 / "dev/aac/id00015/0fijmz4vTVU/00003.m4a"
    bad.write_bytes(os.urandom(3000))
    flac = tmp_path / "flac"
    files = scan_voxceleb2(vox2, flac)
    shards = assign_shards(files, 2)
    lists = [one_shard(tmp_path / f"s{i}", s) for i, s in enumerate(shards)]
    outs = [(tmp_path / f"{i}.usable.tsv", tmp_path / f"{i}.json") for i in range(2)]
    for shard, (records, summary) in zip(lists, outs):
        convert_shard(shard, records, summary, max_failures=1)
    failed = read_json(outs[1][1])  # id00015 is the second sorted speaker -> shard 1
    assert failed["failed"] == 1 and failed["usable"] == 2
    assert failed["failures"][0]["utt"] == "id00015-0fijmz4vTVU-00003"
    assert failed["failures"][0]["path"] == str(bad) and failed["failures"][0]["reason"].startswith(
        "cannot decode audio"
    )

    train = tmp_path / "data/train"
    summary = prepare_voxceleb_train(
        [o[0] for o in outs],
        [o[1] for o in outs],
        train / "wav.scp",
        train / "utt2spk",
        tmp_path / "summary.json",
        max_failures=1,
    )
    wav = read_wav_scp(train / "wav.scp")
    assert list(wav) == VOX2_IDS
    assert wav["id00012--5jDfr5BsE4-00001"] == str(flac / "id00012/-5jDfr5BsE4/00001.flac")
    assert read_utt2spk(train / "utt2spk") == {u: u[:7] for u in VOX2_IDS}
    assert (summary["files"], summary["usable"], summary["failed"], summary["excluded_from_wav_scp"]) == (8, 7, 1, 1)
    assert summary["train"]["speakers"] == 3 and summary["hours"] > 0
    assert read_json(tmp_path / "summary.json")["failures"] == failed["failures"]

    # The limit applies to the corpus: within a shard (stops at once) and after the merge.
    with pytest.raises(PrepareError, match=r"(?s)1 file\(s\) failed, more than max_failures=0.*00003.m4a: cannot"):
        convert_shard(lists[1], tmp_path / "x.tsv", tmp_path / "x.json", max_failures=0)
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(PrepareError, match=r"1 file\(s\) failed in 2 shards, more than max_failures=0"):
        prepare_voxceleb_train(
            [o[0] for o in outs],
            [o[1] for o in outs],
            tmp_path / "w",
            tmp_path / "u",
            tmp_path / "y.json",
            max_failures=0,
        )


# --------------------------------------------------------------------------- disk space


def test_disk_space_check(vox2, tmp_path):
    files = scan_voxceleb2(vox2, tmp_path / "flac")
    n, needed = estimate_conversion_bytes(files, size_ratio=2.5)
    assert n == 7 and needed == int(np.ceil(2.5 * sum(f.size for f in files)))
    seen = []
    free = check_disk_space(tmp_path / "flac" / "deeper", 100, 50, free_bytes=lambda p: seen.append(p) or 150)
    assert free == 150 and seen == [tmp_path]  # measured on the nearest existing folder
    with pytest.raises(PrepareError) as err:
        check_disk_space(tmp_path / "flac", 100, 50, free_bytes=lambda p: 149)
    assert str(err.value).startswith(f"{tmp_path / 'flac'}: not enough free disk space")
    assert "need about 100 bytes" in str(err.value) and "only 149 bytes" in str(err.value)

    shards = [tmp_path / "0.tsv", tmp_path / "1.tsv"]
    with pytest.raises(PrepareError, match="not enough free disk space"):
        scan_corpus(
            "voxceleb2", vox2, tmp_path / "flac", shards, tmp_path / "scan.json", free_bytes=lambda p: needed
        )  # the 3.0 default ratio needs more
    assert not any(p.exists() for p in [*shards, tmp_path / "scan.json"])
    summary = scan_corpus(
        "voxceleb2",
        vox2,
        tmp_path / "flac",
        shards,
        tmp_path / "scan.json",
        size_ratio=2.5,
        free_bytes=lambda p: needed,
    )
    assert summary["files_per_shard"] == [5, 2] and summary["pending_conversion"] == 7
    # Existing FLACs need no space; once all exist the free space is not consulted.
    convert_shard(shards[0], tmp_path / "r0.tsv", tmp_path / "r0.json", max_failures=0)
    assert estimate_conversion_bytes(files, size_ratio=1.0) == (2, sum(f.size for f in files if f.speaker == "id00015"))
    convert_shard(shards[1], tmp_path / "r1.tsv", tmp_path / "r1.json", max_failures=0)
    again = scan_corpus("voxceleb2", vox2, tmp_path / "flac", shards, tmp_path / "scan.json", free_bytes=lambda p: 0)
    assert (again["pending_conversion"], again["estimated_flac_bytes"], again["free_bytes"]) == (0, 0, None)


# --------------------------------------------------------------------------- VoxCeleb1 trials


def write_trial_list(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_voxceleb1_trials_and_test_set(tmp_path):
    vox1 = make_vox1(
        tmp_path / "vox1",
        [
            "id10270-x6uYqmx31kE-00001",
            "id10270-8jEAjG6SegY-00008",
            "id10300-ize_eiCFEg0-00003",
            "id10309-0cYFdtyWVds-00005",
        ],
    )
    o = write_trial_list(
        tmp_path / "veri_test2.txt",
        [
            "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
            "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
        ],
    )
    h = write_trial_list(
        tmp_path / "list_test_hard2.txt", ["0 id10309/0cYFdtyWVds/00005.wav id10300/ize_eiCFEg0/00003.wav"]
    )
    out = tmp_path / "data"
    summary = prepare_voxceleb1_test(
        vox1,
        {"vox1_o": o, "vox1_h": h},
        out / "test/wav.scp",
        out / "test/utt2spk",
        {"vox1_o": out / "trials/vox1_o.txt", "vox1_h": out / "trials/vox1_h.txt"},
    )
    assert (out / "trials/vox1_o.txt").read_text() == (
        "1 id10270-x6uYqmx31kE-00001 id10270-8jEAjG6SegY-00008\n0 id10270-x6uYqmx31kE-00001 id10300-ize_eiCFEg0-00003\n"
    )
    assert read_trials(out / "trials/vox1_h.txt").labels.tolist() == [0]
    wav = read_wav_scp(out / "test/wav.scp")
    assert len(wav) == 4 and wav["id10300-ize_eiCFEg0-00003"] == str(vox1 / "wav/id10300/ize_eiCFEg0/00003.wav")
    assert read_utt2spk(out / "test/utt2spk")["id10309-0cYFdtyWVds-00005"] == "id10309"
    assert summary["trials"]["vox1_o"] == {"trials": 2, "target": 1, "nontarget": 1}


def test_voxceleb1_missing_utterances_are_counted(tmp_path):
    vox1 = make_vox1(tmp_path / "vox1", ["id10270-x6uYqmx31kE-00001"])
    lst = write_trial_list(
        tmp_path / "veri_test2.txt",
        [
            "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
            "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
            "0 id10300/ize_eiCFEg0/00003.wav id10309/0cYFdtyWVds/00005.wav",
        ],
    )
    out = tmp_path / "data"
    with pytest.raises(PrepareError) as err:
        prepare_voxceleb1_test(vox1, {"vox1_o": lst}, out / "wav.scp", out / "utt2spk", {"vox1_o": out / "o.txt"})
    msg = str(err.value)
    assert msg.startswith(f"{lst}: 3 of 4 utterances named by this trial list have no audio file")
    assert str(vox1 / "wav/id10270/8jEAjG6SegY/00008.wav") in msg
    assert not out.exists()
    with pytest.raises(PrepareError, match=f"{tmp_path / 'none'}: VoxCeleb1 root folder not found"):
        prepare_voxceleb1_test(tmp_path / "none", {"vox1_o": lst}, out / "w", out / "u", {"vox1_o": out / "o"})


def test_trial_list_format_errors(tmp_path):
    lst = write_trial_list(tmp_path / "t.txt", ["1 a/b/1.wav a/b/2.wav", "", "2 a/b/1.wav c/d/3.wav"])
    with pytest.raises(PrepareError, match=r"t.txt:3: expected '1\|0 enroll_path test_path'"):
        read_path_trials(lst)
    write_trial_list(lst, ["1 a/b/1.wav a/b/2.wav", "0 a/b/1.wav"])
    with pytest.raises(PrepareError, match=r"t.txt:2: expected"):
        read_path_trials(lst)
    write_trial_list(lst, ["1 a/b/1.wav a/b/1.flac"])
    with pytest.raises(PrepareError, match=r"t.txt:1: 'a/b/1.flac' and 'a/b/1.wav' give the same utterance id"):
        read_path_trials(lst)
    write_trial_list(lst, [])
    with pytest.raises(PrepareError, match="t.txt: empty trial list"):
        read_path_trials(lst)


# --------------------------------------------------------------------------- augmentation lists


def test_augment_lists(tmp_path):
    musan, rirs = make_augment(tmp_path)
    outs = {k: tmp_path / "data/augment" / f"{k}.lst" for k in ("noise", "music", "babble", "rir")}
    assert write_augment_lists({"musan": musan, "rirs": rirs}, outs) == {"noise": 2, "music": 1, "babble": 3, "rir": 2}
    assert read_list(outs["babble"]) == [str(musan / f"speech/src{i}/speech-{i:04d}.wav") for i in range(3)]
    assert read_list(outs["rir"]) == [
        str(rirs / "simulated_rirs" / r / "Room001/Room001-00001.wav") for r in ("largeroom", "smallroom")
    ]
    # Any format the audio reader takes; a list file (paths relative to it) or a folder per source.
    sf.write(str(musan / "music" / "extra.flac"), tone(800), SR)
    (tmp_path / "rirs.lst").write_text("RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav\n")
    sources = {"musan": musan, "rir": tmp_path / "rirs.lst", "babble": musan / "noise"}
    assert write_augment_lists(sources, outs) == {"noise": 2, "music": 2, "babble": 2, "rir": 1}
    assert read_list(outs["music"])[0] == str(musan / "music" / "extra.flac")
    assert read_list(outs["rir"]) == [str(rirs / "simulated_rirs/smallroom/Room001/Room001-00001.wav")]
    # Off: every list empty.
    assert write_augment_lists(None, outs) == {"noise": 0, "music": 0, "babble": 0, "rir": 0}
    assert outs["noise"].read_text() == ""


def test_augment_missing_or_empty_folder(tmp_path):
    musan, rirs = make_augment(tmp_path)
    with pytest.raises(
        PrepareError, match=f"{tmp_path / 'x' / 'simulated_rirs'}: RIRS_NOISES folder 'simulated_rirs' not found"
    ):
        augment_sources({"musan": musan, "rirs": tmp_path / "x"})
    with pytest.raises(PrepareError, match=f"{tmp_path / 'y' / 'noise'}: MUSAN folder 'noise' not found"):
        augment_sources({"musan": tmp_path / "y", "rirs": rirs})
    with pytest.raises(PrepareError, match="rir.lst: give the RIRS_NOISES folder \\(rirs\\) or a folder or list"):
        augment_sources({"musan": musan})
    (tmp_path / "bad.lst").write_text("nowhere.wav\n")
    with pytest.raises(PrepareError, match="bad.lst: 1 of 1 listed files do not exist"):
        augment_sources({"musan": musan, "rirs": rirs, "noise": tmp_path / "bad.lst"})
    for f in (musan / "music").rglob("*.wav"):
        f.unlink()
    with pytest.raises(PrepareError, match=f"{musan / 'music'}: no audio files found \\(needed for music.lst"):
        augment_sources({"musan": musan, "rirs": rirs})


# --------------------------------------------------------------------------- generic corpus and trials


def make_generic(root: Path) -> Path:
    """4 speakers; WAV (8 kHz too), FLAC and nested m4a, plus files to ignore."""
    for spk in ("alice", "bob", "carol", "dave"):
        write_wav(root / spk / "s1" / "a.wav", tone(1600))
        write_wav(root / spk / "s1" / "b.wav", tone(800), sr=8000)
        sf.write(str(root / spk / "c.flac"), tone(1600), SR)
    write_m4a(root / "alice" / "vid" / "x" / "d.m4a", tone(4000))
    (root / "alice" / "notes.txt").write_text("ignored\n")
    (root / "readme.wav").write_bytes(b"")  # not inside a speaker folder: ignored
    return root


def test_generic_scan_and_conversion(tmp_path):
    root = make_generic(tmp_path / "corpus")
    files = scan_generic(root, tmp_path / "flac")
    assert len(files) == 13 and files[0].utt == "alice-c"
    m4a = next(f for f in files if f.dst is not None)
    assert (m4a.utt, m4a.speaker, m4a.dst) == ("alice-vid-x-d", "alice", str(tmp_path / "flac/alice/vid/x/d.flac"))
    assert {f.utt for f in files if f.speaker == "bob"} == {"bob-c", "bob-s1-a", "bob-s1-b"}
    summary = convert_shard(one_shard(tmp_path, files), tmp_path / "u.tsv", tmp_path / "s.json", max_failures=0)
    assert (summary["converted"], summary["direct"], summary["direct_sample_rates"]) == (1, 12, {"16000": 8, "8000": 4})
    assert summary["seconds"] == pytest.approx(8 * 0.1 + 4 * 0.1 + sf.info(m4a.dst).frames / SR)

    with pytest.raises(PrepareError, match=r"1 .m4a files need conversion to FLAC but no flac_dir"):
        scan_generic(root, None)
    sf.write(str(root / "bob" / "c.wav"), tone(100), SR)
    with pytest.raises(PrepareError, match=r"c.wav: utterance id 'bob-c' is also the id of .*bob/c.flac"):
        scan_generic(root, tmp_path / "flac")


def test_silent_near_silent_and_truncated_files(tmp_path):
    """A silent file is a failure (excluded, with the cause); a near-silent one and one shorter than its
    header says are kept with a warning, the truncated one with the length it really has."""
    root = make_generic(tmp_path / "corpus")
    write_wav(root / "bob" / "silent.wav", np.zeros(1600, dtype=np.float32))
    write_wav(root / "carol" / "quiet.wav", tone(1600, amp=1e-4))  # -83 dBFS RMS
    truncated = root / "dave" / "cut.wav"
    write_wav(truncated, tone(48000))  # 3 s
    truncated.write_bytes(truncated.read_bytes()[:5000])  # 44-byte header + 2,478 samples
    files = scan_generic(root, tmp_path / "flac")
    summary = convert_shard(one_shard(tmp_path, files), tmp_path / "u.tsv", tmp_path / "s.json", max_failures=1)
    assert summary["failures"] == [
        {"utt": "bob-silent", "path": str(root / "bob" / "silent.wav"), "reason": "silent: every sample is zero"}
    ]
    level = 20 * np.log10(np.sqrt(np.mean(sf.read(str(root / "carol" / "quiet.wav"))[0] ** 2)))
    assert summary["warnings"] == [
        {
            "utt": "carol-quiet",
            "path": str(root / "carol" / "quiet.wav"),
            "warning": f"near-silent: RMS level {level:.1f} dBFS (below -60 dBFS)",
        },
        {
            "utt": "dave-cut",
            "path": str(truncated),
            "warning": "shorter than its header says: 0.15 s of audio, the header states 3.00 s (truncated?)",
        },
    ]
    assert summary["warned"] == 2 and summary["usable"] == 15
    seconds = {
        line.split("\t")[0]: float(line.split("\t")[3]) for line in (tmp_path / "u.tsv").read_text().splitlines()
    }
    assert seconds["dave-cut"] == pytest.approx(2478 / SR, abs=1e-4) and "bob-silent" not in seconds
    with pytest.raises(PrepareError, match=r"(?s)more than max_failures=0.*silent.wav: silent: every sample is zero"):
        convert_shard(one_shard(tmp_path, files), tmp_path / "x.tsv", tmp_path / "x.json", max_failures=0)


def test_sample_trials_exhaustive_and_distinct():
    utt2spk = {f"{s}{i}": s for s, n in (("a", 3), ("b", 2), ("c", 1)) for i in range(n)}
    # All pairs: 3 + 1 target, 6*5/2 - 4 = 11 non-target.
    trials = sample_trials(utt2spk, 4, 11, seed=3)
    pairs = {frozenset(p): lab for lab, *p in zip(trials.labels.tolist(), trials.enroll, trials.test)}
    assert len(pairs) == 15 == len(trials)
    assert pairs == {frozenset(p): int(utt2spk[p[0]] == utt2spk[p[1]]) for p in combinations(utt2spk, 2)}
    some = sample_trials(utt2spk, 2, 5, seed=3)
    assert some.labels.tolist().count(1) == 2 and len({frozenset(p) for p in zip(some.enroll, some.test)}) == 7
    assert all((utt2spk[e] == utt2spk[t]) == bool(lab) for lab, e, t in zip(some.labels, some.enroll, some.test))
    assert sample_trials(utt2spk, 2, 5, seed=3).enroll.tolist() == some.enroll.tolist()
    with pytest.raises(PrepareError, match="requested 5 target trials but the 3 test speakers .* only 4 distinct"):
        sample_trials(utt2spk, 5, 1, seed=0)


def test_split_speakers():
    spk = [f"s{i:02d}" for i in range(20)]
    train, test = split_speakers(reversed(spk), 0.25, seed=1)
    assert len(test) == 5 and sorted(train + test) == spk and train == sorted(train)
    assert split_speakers(spk, 0.25, seed=1) == (train, test)
    assert len(split_speakers(spk, 3, seed=0)[1]) == 3
    with pytest.raises(PrepareError, match="cannot hold out 20 test speakers from 20"):
        split_speakers(spk, 20, seed=0)


def test_generic_sets_split_and_explicit_lists(tmp_path):
    root = make_generic(tmp_path / "corpus")
    files = scan_generic(root, tmp_path / "flac")
    shard = one_shard(tmp_path, files)
    convert_shard(shard, tmp_path / "u.tsv", tmp_path / "s.json", max_failures=0)
    rec, summ = [tmp_path / "u.tsv"], [tmp_path / "s.json"]

    split = {"name": "heldout", "test_speakers": 2, "target_trials": 4, "nontarget_trials": 9, "seed": 0}
    out = tmp_path / "split"
    summary = prepare_generic_sets(rec, summ, 0, out, out / "summary.json", split=split)
    test_spk = read_utt2spk(out / "test/utt2spk")
    train_spk = read_utt2spk(out / "train/utt2spk")
    assert len(set(test_spk.values())) == 2 and not set(test_spk.values()) & set(train_spk.values())
    assert len(test_spk) + len(train_spk) == 13
    trials = read_trials(out / "trials/heldout.txt")
    assert trials.labels.tolist().count(1) == 4 and len(trials) == 13
    assert set(trials.utterances) <= set(test_spk)
    assert summary["trials"]["heldout"] == {"trials": 13, "target": 4, "nontarget": 9}

    lst = write_trial_list(tmp_path / "list.txt", ["1 bob/s1/a.wav bob/c.flac", "0 bob/c.flac carol/s1/b.wav"])
    out = tmp_path / "explicit"
    summary = prepare_generic_sets(rec, summ, 0, out, out / "summary.json", trial_lists={"mine": lst})
    assert sorted(read_wav_scp(out / "test/wav.scp")) == ["bob-c", "bob-s1-a", "carol-s1-b"]
    assert set(read_utt2spk(out / "train/utt2spk").values()) == {"alice", "dave"}
    assert (out / "trials/mine.txt").read_text() == "1 bob-s1-a bob-c\n0 bob-c carol-s1-b\n"
    assert summary["test"]["utterances"] == 3

    write_trial_list(lst, ["1 bob/s1/a.wav bob/zzz.wav"])
    with pytest.raises(ManifestError, match=r"list.txt: 1 of 1 trials name utterances .* 'bob-zzz'"):
        prepare_generic_sets(rec, summ, 0, tmp_path / "bad", tmp_path / "bad.json", trial_lists={"mine": lst})


# --------------------------------------------------------------------------- Snakemake


def voxceleb_config(tmp_path: Path, workdir: Path, n_shards: int = 3, **conversion) -> Path:
    vox2 = make_vox2(tmp_path / "vox2")
    vox1 = make_vox1(
        tmp_path / "vox1", ["id10270-x6uYqmx31kE-00001", "id10270-8jEAjG6SegY-00008", "id10300-ize_eiCFEg0-00003"]
    )
    musan, rirs = make_augment(tmp_path)
    o = write_trial_list(
        tmp_path / "veri_test2.txt",
        [
            "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
            "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
        ],
    )
    return write_config(
        workdir / "voxceleb.yaml",
        {
            "corpus": {
                "kind": "voxceleb",
                "voxceleb": {
                    "vox2_root": str(vox2),
                    "vox1_root": str(vox1),
                    "trials": {"vox1_o": str(o), "vox1_e": None},
                    "musan": str(musan),
                    "rirs": str(rirs),
                    "conversion": {"flac_dir": str(tmp_path / "flac"), "n_shards": n_shards, **conversion},
                },
            }
        },
    )


PREPARE_TARGETS = [
    f"results/tiny/data/{p}"
    for p in (
        "train/wav.scp",
        "train/utt2spk",
        "test/wav.scp",
        "test/utt2spk",
        "trials/vox1_o.txt",
        "augment/noise.lst",
        "augment/music.lst",
        "augment/babble.lst",
        "augment/rir.lst",
    )
]


def test_snakemake_dry_run_voxceleb(tmp_path, workdir):
    cfg = voxceleb_config(tmp_path, workdir, n_shards=12)
    proc = run_snakemake(workdir, "-n", *PREPARE_TARGETS, configfile=cfg)
    for rule, count in (
        ("prepare_scan", 1),
        ("prepare_convert", 12),
        ("prepare_train", 1),
        ("prepare_voxceleb1", 1),
        ("prepare_augment", 1),
    ):
        assert any(line.split() == [rule, str(count)] for line in proc.stdout.splitlines()), (rule, proc.stdout)
    assert "results/tiny/prepare/shards/011.files.tsv" in proc.stdout


def test_snakemake_prepares_voxceleb(tmp_path, workdir):
    cfg = voxceleb_config(tmp_path, workdir, n_shards=2)
    run_snakemake(workdir, "--cores", "2", *PREPARE_TARGETS, configfile=cfg)
    data = workdir / "results/tiny/data"
    wav = read_wav_scp(data / "train/wav.scp")
    assert list(wav) == VOX2_IDS and all(Path(p).is_file() and p.endswith(".flac") for p in wav.values())
    assert sorted(read_wav_scp(data / "test/wav.scp")) == [
        "id10270-8jEAjG6SegY-00008",
        "id10270-x6uYqmx31kE-00001",
        "id10300-ize_eiCFEg0-00003",
    ]
    assert len(read_trials(data / "trials/vox1_o.txt")) == 2
    assert len(read_list(data / "augment/babble.lst")) == 3
    summary = read_json(workdir / "results/tiny/prepare/summary.json")
    assert (summary["usable"], summary["converted"], summary["failed"], summary["shards"]) == (7, 7, 0, 2)
    assert "shard 001: 2/2 usable" in (workdir / "results/tiny/logs/prepare_convert_001.log").read_text()


def test_script_refuses_without_disk_space(vox2, tmp_path):
    """The entry point turns disk_margin_gb into bytes and exits non-zero with the message."""
    script = runpy.run_path(str(REPO / "workflow/scripts/prepare_corpus.py"))
    hparams = {
        "kind": "voxceleb2",
        "root": str(vox2),
        "flac_dir": str(tmp_path / "flac"),
        "size_ratio": 3.0,
        "disk_margin_gb": 1e9,
    }
    with pytest.raises(SystemExit) as exit_:
        script["main"](
            [
                "scan",
                "--hparams",
                json.dumps(hparams),
                "--shards",
                str(tmp_path / "0.tsv"),
                "--summary",
                str(tmp_path / "scan.json"),
            ]
        )
    assert str(exit_.value).startswith(f"error: {tmp_path / 'flac'}: not enough free disk space")
    assert "safety margin of 1000000000000000000 bytes" in str(exit_.value)
    assert not (tmp_path / "0.tsv").exists()


# --------------------------------------------------------------------------- generic corpora through Snakemake


def _demo_tree(tiny_corpus: Path) -> Path:
    """The tiny demo corpus's audio: corpus/{train,test}/<speaker>/*.flac, musan/ and RIRS_NOISES/ (FLAC)."""
    return tiny_corpus / "corpus"


def _generic_config(workdir: Path, generic: dict) -> Path:
    return write_config(workdir / "generic.yaml", {"corpus": {"kind": "generic", "generic": generic}})


GENERIC_DATA = [
    f"results/tiny/data/{p}" for p in ("train/wav.scp", "test/wav.scp", "augment/noise.lst", "augment/rir.lst")
]


@pytest.mark.slow
def test_snakemake_generic_closed_set_with_flac_augmentation(tiny_corpus, tmp_path, workdir):
    """One folder per speaker, a trial list over two utterances of each speaker and holdout: utterances:
    training keeps the speakers' other utterances; the demo's FLAC MUSAN/RIR folders are accepted; the
    shard count follows the speaker folders (6)."""
    corpus = _demo_tree(tiny_corpus)
    speakers = sorted(p.name for p in (corpus / "train").iterdir())
    lines = [f"1 {s}/{s}-00001.flac {s}/{s}-00002.flac" for s in speakers]
    lines += [f"0 {a}/{a}-00001.flac {b}/{b}-00002.flac" for a, b in zip(speakers, speakers[1:])]
    trials = write_trial_list(tmp_path / "closed.txt", lines)
    cfg = _generic_config(
        workdir,
        {
            "root": str(corpus / "train"),
            "trials": {"closed": str(trials)},
            "holdout": "utterances",
            "musan": str(corpus / "musan"),
            "rirs": str(corpus / "RIRS_NOISES"),
        },
    )
    dry = run_snakemake(workdir, "-n", *GENERIC_DATA, configfile=cfg)
    assert any(line.split() == ["prepare_convert", str(len(speakers))] for line in dry.stdout.splitlines()), dry.stdout
    run_snakemake(workdir, "--cores", "2", *GENERIC_DATA, configfile=cfg)
    data = workdir / "results/tiny/data"
    train, test = read_utt2spk(data / "train/utt2spk"), read_utt2spk(data / "test/utt2spk")
    assert sorted(test) == sorted(f"{s}-{s}-0000{i}" for s in speakers for i in (1, 2))
    assert sorted(train) == sorted(f"{s}-{s}-0000{i}" for s in speakers for i in (3, 4))  # same speakers
    assert set(train.values()) == set(speakers)
    noise = read_list(data / "augment/noise.lst")
    assert noise and all(p.endswith(".flac") for p in noise)
    assert read_list(data / "augment/rir.lst")[0].startswith(str(corpus / "RIRS_NOISES" / "simulated_rirs"))
    assert read_json(workdir / "results/tiny/prepare/summary.json")["holdout"] == "utterances"


@pytest.mark.slow
def test_snakemake_generic_explicit_sets_no_augmentation_all_targets(tiny_corpus, tmp_path, workdir):
    """Two roots with an explicit test folder and a training list; split mode with every target pair;
    augment: none writes empty lists and the training jobs run with --no-augment."""
    corpus = _demo_tree(tiny_corpus)
    train_list = tmp_path / "train.lst"
    train_list.write_text("".join(f"{p.name}\n" for p in sorted((corpus / "train").iterdir())[:4]))  # 4 speakers
    cfg = _generic_config(
        workdir,
        {
            "root": [str(corpus / "train"), str(corpus / "test")],
            "train": str(train_list),
            "test": str(corpus / "test"),
            "augment": "none",
            "split": {"name": "all", "target_trials": "all", "nontarget_trials": 20},
        },
    )
    run_snakemake(workdir, "--cores", "2", *GENERIC_DATA, configfile=cfg)
    data = workdir / "results/tiny/data"
    test = read_utt2spk(data / "test/utt2spk")
    assert set(test.values()) == {p.name for p in (corpus / "test").iterdir()}
    assert len(set(read_utt2spk(data / "train/utt2spk").values())) == 4
    trials = read_trials(data / "trials/all.txt")
    n_spk = len(set(test.values()))
    assert trials.labels.sum() == n_spk * 4 * 3 // 2 and len(trials) == trials.labels.sum() + 20  # 4 utts each
    assert all((data / f"augment/{n}.lst").read_text() == "" for n in ("noise", "music", "babble", "rir"))
    dry = run_snakemake(workdir, "-n", "-p", "results/tiny/dino/model.pt", configfile=cfg)
    assert "--no-augment" in dry.stdout and "--augment-dir" not in dry.stdout
