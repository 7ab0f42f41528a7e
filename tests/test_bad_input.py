"""Bad input at the pipeline level (issue 8, item 2): a script or a Snakemake job fed the bad
input fails fast with a message naming the file (line, key) and leaves no output that
Snakemake would take as complete. Unit-level checks live with the modules; the cases already
covered completely at the script or workflow level are referenced instead of repeated:

* trials naming unknown utterances, at scoring: tests/test_score.py::test_score_script_missing_utterances
  (names the trial file and the utterances, writes nothing; ``score.allow_missing`` drops and counts them);
* a labels file that does not cover the wav list: tests/test_ssrl_stage.py::
  test_train_ssrl_script_reports_bad_input (train_ssrl.py exits 1 naming the labels file, no model file);
  utt2spk not covering the embeddings: tests/test_kmeans.py::test_kmeans_script_names_bad_utterance;
* NaN in embeddings before clustering: tests/test_kmeans.py::test_kmeans_script_names_bad_utterance;
  non-finite embeddings are never written: tests/test_extract.py::test_extraction_failures_write_nothing;
* a config with an unknown key or a wrong type, through Snakemake: tests/test_workflow.py (here: every
  section of the schema, in-process);
* a missing or wrong WavLM checkpoint: Snakemake refuses to start (tests/test_wavlm_stages.py::
  test_missing_checkpoint_is_refused_at_start, test_non_wavlm_checkpoint_is_refused_at_start); the
  readers: tests/test_wavlm.py::test_corrupt_checkpoints_fail_clearly;
* not enough disk for the VoxCeleb2 conversion: tests/test_prepare.py::test_script_refuses_without_disk_space
  (scan writes no shard list, so no conversion job starts); corrupt and empty files met during conversion
  are listed and left out: tests/test_prepare.py::test_corrupt_files_are_listed_and_excluded;
* a non-finite loss inside the trainer: tests/test_train.py::test_nan_loss_stops_and_keeps_last_good_checkpoint
  (here: through Snakemake).
"""

from __future__ import annotations

import copy
import json
import re
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import REPO, run_snakemake, write_config
from scipy.signal import resample_poly

from ssrl.audio import resample
from ssrl.fileio import read_embeddings, write_embeddings
from ssrl.manifest import Trials, read_wav_scp, write_trials, write_wav_scp
from ssrl.models import build_speaker_model, save_model_file

RUN = Path("results") / "tiny"
SCRIPTS = REPO / "workflow" / "scripts"
TINY_ARCH = {"frontend": {"type": "mel", "n_mels": 40}, "encoder": {"channels": 16, "emb_dim": 8}}


def _script(name: str):
    return runpy.run_path(str(SCRIPTS / name))["main"]


def _dino_hparams(batch_size: int) -> str:
    """One epoch of one step over ``batch_size`` utterances: any bad file is read in step 1."""
    return json.dumps(
        {
            "dino": {
                "epochs": 1,
                "batch_size": batch_size,
                "warmup_epochs": 0,
                "global_crop_s": 0.5,
                "local_crop_s": 0.3,
                "n_local": 2,
                "init_bn_batches": 0,
                "val_every": 0,
                "head": {"n_prototypes": 16, "hidden": 16, "mid": 16, "bottleneck": 8},
            },
            "model": TINY_ARCH,
            "train": {"device": "cpu", "workers": 0, "ckpt_every_steps": 1, "log_every": 1, "deterministic": True},
        }
    )


def _train_dino(tmp_path: Path, scp: Path, *extra: str, batch_size: int | None = None) -> tuple[int, Path]:
    """train_dino.py in-process on ``scp`` (clean crops); returns (exit code, output folder)."""
    out = tmp_path / "dino"
    n = len(read_wav_scp(scp)) if batch_size is None else batch_size
    code = _script("train_dino.py")(
        [
            "--train-scp",
            str(scp),
            "--no-augment",
            "--ckpt-dir",
            str(out / "ckpt"),
            "--model-out",
            str(out / "model.pt"),
            "--log-out",
            str(out / "train_log.tsv"),
            "--hparams",
            _dino_hparams(n),
            *extra,
        ]
    )
    return code, out


def _train_list(tiny_corpus: Path, n: int) -> dict[str, str]:
    scp = read_wav_scp(tiny_corpus / "data" / "train" / "wav.scp")
    return dict(list(scp.items())[:n])


def _assert_no_outputs(out: Path) -> None:
    """Neither output exists, and no checkpoint either (the failure came before step 1 ended)."""
    assert not (out / "model.pt").exists() and not (out / "train_log.tsv").exists()
    assert not list(out.glob("ckpt/ckpt-*.pt")), sorted(out.rglob("*"))


# --------------------------------------------------------------------------- training input, by script


def test_duplicate_utterance_id_fails_before_training(tiny_corpus, tmp_path, capsys):
    utts = list(_train_list(tiny_corpus, 4).items())
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"{u} {p}\n" for u, p in utts + [(utts[1][0], utts[3][1])]))
    code, out = _train_dino(tmp_path, scp, batch_size=4)
    err = capsys.readouterr().err
    assert code == 1 and f"{scp}:5: duplicate utterance id '{utts[1][0]}' (first on line 2)" in err, err
    _assert_no_outputs(out)


def test_missing_validation_utterances_fail_before_training(tiny_corpus, tmp_path, capsys):
    data = tiny_corpus / "data"
    test = read_wav_scp(data / "test" / "wav.scp")
    a, b = list(test)[:2]
    trials = tmp_path / "trials.txt"
    write_trials(trials, Trials.from_lists([1, 0, 0], [a, a, "ghost-utt"], [b, "nobody-utt", b]))
    code, out = _train_dino(
        tmp_path,
        data / "train" / "wav.scp",
        "--val-scp",
        str(data / "test" / "wav.scp"),
        "--val-trials",
        str(trials),
        batch_size=8,
    )
    err = capsys.readouterr().err
    assert code == 1 and f"{trials}: 2 of 3 trials name utterances without audio" in err, err
    assert "'ghost-utt'" in err and "'nobody-utt'" in err
    _assert_no_outputs(out)


def _write_bad(path: Path, kind: str) -> None:
    if kind == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    elif kind == "corrupt":
        path.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    else:  # float WAV holding NaN samples
        x = np.zeros(8000, dtype=np.float32)
        x[100] = np.nan
        sf.write(path, x, 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    "kind, suffix, message",
    [
        ("empty", ".wav", "empty audio (zero samples)"),
        ("corrupt", ".flac", "cannot read audio"),
        ("nan", ".wav", "audio contains NaN or infinite samples"),
    ],
)
def test_unreadable_training_audio_stops_naming_the_file(tiny_corpus, tmp_path, capsys, kind, suffix, message):
    """The training list is only checked for existence up front (a header check of every file would
    cost minutes per (re)start at VoxCeleb scale; prepare decodes every file once and drops bad
    ones). A file that cannot be read stops training when it is read: exit 1, the file named, no
    output; checkpoints already written stay (here the file is in the first batch, so none)."""
    utts = _train_list(tiny_corpus, 3)
    bad = tmp_path / f"bad{suffix}"
    _write_bad(bad, kind)
    scp = tmp_path / "wav.scp"
    write_wav_scp(scp, {**utts, "bad-utt": str(bad)})
    code, out = _train_dino(tmp_path, scp)
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}: {message}" in err, err
    assert "Traceback" not in err
    _assert_no_outputs(out)


def _resampled_copies(tiny_corpus: Path, tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Two utterances stored as 8 kHz stereo and 48 kHz mono, and the 16 kHz mono float WAVs the
    loader must turn them into: channel mean, then ssrl.audio.resample."""
    (u1, p1), (u2, p2) = list(_train_list(tiny_corpus, 2).items())
    x1, x2 = sf.read(p1, dtype="float32")[0], sf.read(p2, dtype="float32")[0]
    stereo8k = resample_poly(x1, 1, 2).astype(np.float32)
    stereo8k = np.stack([stereo8k, 0.5 * stereo8k], axis=1)
    mono48k = resample_poly(x2, 3, 1).astype(np.float32)
    sf.write(tmp_path / "stereo8k.wav", stereo8k, 8000, subtype="FLOAT")
    sf.write(tmp_path / "mono48k.flac", mono48k / (1.01 * np.abs(mono48k).max()), 48000, subtype="PCM_24")
    mono48k_read = sf.read(tmp_path / "mono48k.flac", dtype="float32")[0]
    sf.write(tmp_path / "ref1.wav", resample(stereo8k.mean(axis=1), 8000), 16000, subtype="FLOAT")
    sf.write(tmp_path / "ref2.wav", resample(mono48k_read, 48000), 16000, subtype="FLOAT")
    odd = {f"{u1}-8k": str(tmp_path / "stereo8k.wav"), f"{u2}-48k": str(tmp_path / "mono48k.flac")}
    ref = {f"{u1}-ref": str(tmp_path / "ref1.wav"), f"{u2}-ref": str(tmp_path / "ref2.wav")}
    return odd, ref


def test_other_rates_and_stereo_are_converted_for_extraction_and_training(tiny_corpus, tmp_path):
    odd, ref = _resampled_copies(tiny_corpus, tmp_path)
    model = build_speaker_model(TINY_ARCH).eval()
    save_model_file(tmp_path / "model.pt", "sys1", model.arch, model.state_dict())
    write_wav_scp(tmp_path / "wav.scp", {**odd, **ref})
    hp = {"device": "cpu", "max_batch_seconds": 1.0, "max_batch_size": 1, "workers": 0, "max_seconds_wavlm": 100}
    _script("extract.py")(
        [
            "--model",
            str(tmp_path / "model.pt"),
            "--wav-scp",
            str(tmp_path / "wav.scp"),
            "--output",
            str(tmp_path / "emb.npz"),
            "--hparams",
            json.dumps(hp),
        ]
    )
    utts, emb = read_embeddings(tmp_path / "emb.npz")
    assert utts == list(odd) + list(ref) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb[:2], emb[2:], rtol=1e-4, atol=1e-5)
    # Training reads random crops straight from the files (seeking, then converting).
    write_wav_scp(tmp_path / "train.scp", {**_train_list(tiny_corpus, 2), **odd})
    code, out = _train_dino(tmp_path, tmp_path / "train.scp")
    assert code == 0 and (out / "model.pt").exists()


def test_nan_embeddings_are_refused_before_scoring(tmp_path):
    utts = ["a", "b", "c", "d"]
    emb = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    emb[2, 5] = np.nan
    write_embeddings(tmp_path / "test.npz", utts, emb)
    write_trials(tmp_path / "list.txt", Trials.from_lists([1, 0], ["a", "b"], ["c", "d"]))
    outs = {k: tmp_path / f"out.{k}" for k in ("scores", "det", "metrics")}
    hp = {"asnorm": False, "asnorm_top_n": 2, "allow_missing": False, "det_points": 10}
    with pytest.raises(
        SystemExit, match=re.escape(f"{tmp_path / 'test.npz'} x {tmp_path / 'list.txt'}: ") + r".*NaN/inf, first 'c'"
    ):
        _script("score.py")(
            [
                "--emb",
                str(tmp_path / "test.npz"),
                "--trials",
                str(tmp_path / "list.txt"),
                "--hparams",
                json.dumps(hp),
                *(a for k, p in outs.items() for a in (f"--{k}", str(p))),
            ]
        )
    assert not any(p.exists() for p in outs.values())


# --------------------------------------------------------------------------- config, every section

FREE_FORM = {("ablations",), ("tables", "compare")}
"""Config mappings whose keys are names chosen by the user (systems), not settings."""


def _config_nodes(node, path=()):
    """(path, value) of every mapping and every leaf of the default config; of the free-form maps
    (FREE_FORM) only the entries of ``ablations``, each a mapping of ssrl settings."""
    yield path, node
    if isinstance(node, dict) and path not in FREE_FORM:
        for key, value in node.items():
            yield from _config_nodes(value, (*path, key))
    elif path == ("ablations",):
        for key, value in node.items():
            yield (*path, key), value


def _validate(cfg: dict, schema: Path) -> str | None:
    from snakemake.utils import validate

    try:
        validate(cfg, str(schema))
    except Exception as exc:  # noqa: BLE001 - snakemake wraps jsonschema's error in a WorkflowError
        return str(exc)
    return None


def _set(cfg: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_every_config_section_rejects_unknown_keys_and_wrong_types(tmp_path):
    """Snakemake validates the config at start-up (Snakefile); a typo or a wrong type anywhere must
    stop it there, naming the key, before any job runs."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    schema = tmp_path / "schema.json"  # the same schema; JSON parses 10x faster than YAML
    schema.write_text(json.dumps(yaml.safe_load((REPO / "config" / "schema.yaml").read_text())))
    assert _validate(copy.deepcopy(base), schema) is None
    missed = []
    for path, value in _config_nodes(base):
        where = "".join(f"[{k!r}]" for k in path)
        if isinstance(value, dict) and path not in FREE_FORM:
            msg = _validate(_set(base, (*path, "bogus_key"), 1) if path else {**base, "bogus_key": 1}, schema)
            ok = msg is not None and "'bogus_key'" in msg and f"On instance{where}:" in msg
        elif path and path[:2] != ("tables", "compare"):
            wrong = "not-a-number" if isinstance(value, (bool, int, float, list)) else 12345
            msg = _validate(_set(base, path, wrong), schema)
            ok = msg is not None and f"On instance{where}:" in msg
        else:
            continue
        if not ok:
            missed.append(where)
    assert not missed, f"the schema accepts bad values at {missed}"


# --------------------------------------------------------------------------- through Snakemake


def _seeded_workdir(workdir: Path, tiny_corpus: Path, overrides: dict) -> Path:
    """Work dir holding the tiny corpus's manifests where rule demo_corpus puts them."""
    shutil.copytree(tiny_corpus / "data", workdir / RUN / "data")
    (workdir / RUN / "corpus").mkdir(parents=True)
    shutil.copy2(tiny_corpus / "corpus" / "baseline.json", workdir / RUN / "corpus" / "baseline.json")
    return write_config(workdir / "config.yaml", overrides)


@pytest.mark.slow
def test_job_with_missing_audio_fails_before_training_and_leaves_nothing(workdir, tiny_corpus):
    cfg = _seeded_workdir(workdir, tiny_corpus, {})
    scp = workdir / RUN / "data" / "train" / "wav.scp"
    lines = scp.read_text().splitlines()
    utt = lines[2].split()[0]
    lines[2] = f"{utt} {workdir / 'gone' / 'x.flac'}"
    scp.write_text("\n".join(lines) + "\n")
    proc = run_snakemake(workdir, "--cores", "2", str(RUN / "dino" / "model.pt"), configfile=cfg, check=False)
    assert proc.returncode != 0 and "Error in rule dino_train" in proc.stdout
    log = (workdir / RUN / "logs" / "dino_train.log").read_text()
    assert f"{RUN / 'data' / 'train' / 'wav.scp'}: 1 of {len(lines)} audio files do not exist" in log, log
    assert f"'{utt}' -> {workdir / 'gone' / 'x.flac'}" in log and "Traceback" not in log
    assert not (workdir / RUN / "dino").exists()  # no output, not even a checkpoint folder
    # A second attempt appends to the log (Snakemake deletes it first; rules/common.smk LOG_ATTEMPT):
    # both attempts' headers and messages, each attempt's exit status.
    run_snakemake(workdir, "--cores", "2", str(RUN / "dino" / "model.pt"), configfile=cfg, check=False)
    log = (workdir / RUN / "logs" / "dino_train.log").read_text()
    headers = [line for line in log.splitlines() if line.startswith("=== attempt")]
    assert [h.split(":")[0] for h in headers] == [
        "=== attempt 1",
        "=== attempt ended",
        "=== attempt 2",
        "=== attempt ended",
    ], log
    assert headers[1] == headers[3] == "=== attempt ended: exit 1"
    assert log.count("audio files do not exist") == 2


@pytest.mark.slow
def test_job_with_non_finite_loss_stops_keeping_the_last_good_checkpoint(workdir, tiny_corpus):
    """An absurd learning rate: step 1 is finite, step 2's loss is NaN. The job fails with the
    message, Snakemake deletes nothing it should keep and keeps no output."""
    cfg = _seeded_workdir(
        workdir,
        tiny_corpus,
        {"dino": {"lr": 1.0e30, "warmup_epochs": 0, "val_every": 0}, "train": {"ckpt_every_steps": 1}},
    )
    proc = run_snakemake(workdir, "--cores", "2", str(RUN / "dino" / "model.pt"), configfile=cfg, check=False)
    assert proc.returncode != 0 and "Error in rule dino_train" in proc.stdout
    log = (workdir / RUN / "logs" / "dino_train.log").read_text()
    ckpt = RUN / "dino" / "ckpt" / "ckpt-000000001.pt"
    assert "dino: non-finite loss at epoch 0, step 2 of 3 (global step 2): loss=nan" in log, log
    assert (
        f"{ckpt} is kept (the last checkpoint before it; its weights may already be diverging); "
        "no model file was written"
    ) in log
    dino = workdir / RUN / "dino"
    assert not (dino / "model.pt").exists() and not (dino / "train_log.tsv").exists()
    assert sorted(p.name for p in (dino / "ckpt").glob("ckpt-*.pt")) == [ckpt.name]
