"""WavLM systems (docs/method.md §9) as workflow stages: step 1 -> step 2 -> step 2-ft on the tiny corpus.

One Snakemake run (module fixture) trains the three steps from a tiny WavLM checkpoint file
(torchaudio state dict, 2 layers, 64-d) and DINO-style k-means labels written into the work
directory (the DINO stage itself is not rerun: --allowed-rules), then extracts and scores step 2-ft.
The tests read its model files and logs: WavLM weights frozen in steps 1 and 2, trained in 2-ft;
quirk Q3 (the 2-ft teacher runs the student's WavLM) and its switch; the step 1 LR schedule; the
start-up refusal of a missing or non-WavLM checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_snakemake, write_config

from ssrl.manifest import read_utt2spk, read_wav_scp
from ssrl.models import read_model_file
from ssrl.models.wavlm_checkpoint import load_wavlm
from ssrl.train import RuntimeConfig, Trainer, ema_update
from ssrl.train.distributed import DistEnv
from ssrl.train.ssrl_stage import SSRLStage

STEPS = ("wavlm_step1", "wavlm_step2", "wavlm_ft")
TRAIN_RULES = ["wavlm_step1", "wavlm_step2", "wavlm_ft", "extract", "score"]
WAVLM_PREFIX = "frontend.wavlm."


def wavlm_state(state: dict) -> dict[str, torch.Tensor]:
    """The WavLM tensors of a SpeakerModel state dict, keyed as in the WavLM module."""
    return {k[len(WAVLM_PREFIX) :]: v for k, v in state.items() if k.startswith(WAVLM_PREFIX)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def wavlm_run(tiny_corpus, tmp_path_factory) -> dict:
    """The three steps + extraction + scoring of step 2-ft, in one Snakemake run."""
    work = tmp_path_factory.mktemp("wavlm_work")
    run_dir = work / "results" / "tiny"
    shutil.copytree(tiny_corpus / "data", run_dir / "data")  # absolute audio paths
    # DINO k-means labels (K = 8): speaker index with two speakers split, ids with gaps.
    utts = list(read_wav_scp(run_dir / "data" / "train" / "wav.scp"))
    spk = read_utt2spk(run_dir / "data" / "train" / "utt2spk")
    speakers = sorted(set(spk.values()))
    labels = [speakers.index(spk[u]) + (2 if speakers.index(spk[u]) < 2 and i % 2 else 0) for i, u in enumerate(utts)]
    kmeans = run_dir / "dino" / "kmeans_k8"
    kmeans.mkdir(parents=True)
    (kmeans / "labels.txt").write_text("".join(f"{u} {label}\n" for u, label in zip(utts, labels)))
    # The "pre-trained" WavLM: a tiny torchaudio-format state dict.
    torch.manual_seed(3)
    checkpoint = work / "wavlm_tiny.pt"
    torch.save(load_wavlm(None, 2, tiny=True).state_dict(), checkpoint)
    cfg = write_config(
        work / "config.yaml", {"wavlm": {"checkpoint": str(checkpoint), "tiny": False, "gradient_checkpointing": True}}
    )
    target = "results/tiny/wavlm_ft/metrics/demo.json"
    run_snakemake(work, "--cores", "2", "--allowed-rules", *TRAIN_RULES, "--", target, configfile=cfg)
    return {
        "work": work,
        "run": run_dir,
        "config": cfg,
        "checkpoint": checkpoint,
        "labels": labels,
        "models": {s: read_model_file(run_dir / s / "model.pt") for s in STEPS},
    }


def tsv_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


# --------------------------------------------------------------------------- the workflow run


def test_steps_chain_and_are_scored(wavlm_run):
    run, models = wavlm_run["run"], wavlm_run["models"]
    metrics = json.loads((run / "wavlm_ft" / "metrics" / "demo.json").read_text())
    assert 0.0 <= metrics["eer"] <= 1.0 and metrics["n_trials"] > 0
    # Extraction keeps the first extract.max_seconds_wavlm seconds of WavLM systems' audio.
    assert "first 100 s of each file" in (run / "logs" / "extract" / "wavlm_ft" / "test.log").read_text()
    step1, step2, ft = (models[s]["hparams"]["ssrl"] for s in STEPS)
    assert (step1["init"], step2["init"], ft["init"]) == ("scratch", "student", "full")
    assert not step1["teacher"] and step2.get("teacher", True) and ft.get("teacher", True)
    assert step1["schedule"] == "warmup_cosine" and not step1["label_update"] and not step1["nlm"]
    assert step1["augment_prob"] == 0.66 and step1["head_init"] == "random"
    assert step2["freeze_wavlm"] and not ft["freeze_wavlm"] and ft["gradient_checkpointing"]
    assert ft["lr_update_start"] == 0.05 and ft["fixed_epochs"] == 0
    # Step 1 trained on the DINO k-means labels (classes = the distinct ids), step 2 on step 1's.
    assert models["wavlm_step1"]["extra"]["classes"].tolist() == sorted(set(wavlm_run["labels"]))
    assert torch.equal(models["wavlm_step2"]["extra"]["classes"], models["wavlm_step1"]["extra"]["classes"])
    # Step 2 relabels and replaces in every epoch; 2-ft continues its label state: removed = not held.
    log2, log_ft = (tsv_rows(run / s / "label_log.tsv") for s in ("wavlm_step2", "wavlm_ft"))
    assert [(r["relabelled"], r["replaced"]) for r in log2 + log_ft] == [("1", "1")] * 3
    for s, log in (("wavlm_step2", log2), ("wavlm_ft", log_ft)):
        state = models[s]["extra"]["label_state"]
        held = np.bincount(state["labels"].numpy(), minlength=state["removed"].numel()).astype(bool)
        assert (state["removed"].numpy() == ~held).all() and int(log[-1]["live_classes"]) == held.sum()
    # Every WavLM system records the architecture; its front-end is a WavLM.
    for s in STEPS:
        assert models[s]["arch"]["frontend"]["type"] == "wavlm" and models[s]["arch"]["encoder"]["in_dim"] == 64


def test_wavlm_frozen_in_steps_1_and_2_and_trained_in_ft(wavlm_run):
    models = wavlm_run["models"]
    pretrained = torch.load(wavlm_run["checkpoint"], weights_only=True)
    pretrained = {k: v for k, v in pretrained.items() if k in wavlm_state(models["wavlm_step1"]["eval_state"])}
    for s in ("wavlm_step1", "wavlm_step2"):
        parts = [models[s]["student"]["model"], models[s]["eval_state"]]
        parts += [models[s]["teacher"]["model"]] if models[s]["teacher"] else []
        for part in parts:
            assert same(wavlm_state(part), pretrained), s
    tuned = wavlm_state(models["wavlm_ft"]["student"]["model"])
    changed = [k for k in tuned if not torch.equal(tuned[k], pretrained[k])]
    # (3 Adam steps at lr <= 4e-5: tensors with gradients far below Adam's eps move by less than
    # float32 resolution, so not every tensor changes)
    assert len(changed) >= 10 and any(k.startswith("feature_extractor.") for k in changed)
    # The back-end and layer weights did train in step 1.
    s1 = models["wavlm_step1"]["student"]["model"]
    assert not torch.equal(s1["frontend.layer_weights.weights"], torch.zeros(2))


def test_q3_ft_teacher_uses_the_students_wavlm(wavlm_run):
    ft = wavlm_run["models"]["wavlm_ft"]
    student, teacher = wavlm_state(ft["student"]["model"]), wavlm_state(ft["teacher"]["model"])
    assert same(student, teacher) and same(wavlm_state(ft["eval_state"]), student)
    # ... while the rest of the teacher is an EMA copy.
    key = "frontend.layer_weights.weights"
    assert not torch.equal(ft["student"]["model"][key], ft["teacher"]["model"][key])


def _ft_stage(wavlm_run, **overrides) -> SSRLStage:
    """The step 2-ft stage of the run's hyper-parameters (with ``overrides``), built on one CPU process."""
    run, ft = wavlm_run["run"], wavlm_run["models"]["wavlm_ft"]
    hp = {**ft["hparams"], "ssrl": {**ft["hparams"]["ssrl"], **overrides}}
    data = run / "data"
    stage = SSRLStage(
        hp,
        "wavlm_ft",
        data / "train" / "wav.scp",
        run / "wavlm_step2" / "model.pt",
        augment_lists={k: data / "augment" / f"{k}.lst" for k in ("noise", "music", "babble", "rir")},
    )
    torch.manual_seed(0)
    stage.env, stage.runtime = DistEnv(), RuntimeConfig(device="cpu", workers=0)
    stage.build()
    stage.on_epoch_start(0)
    return stage


@pytest.mark.parametrize("shares", [True, False])
def test_q3_switch_shares_or_ema_copies_the_wavlm(wavlm_run, shares):
    st = _ft_stage(wavlm_run, teacher_shares_wavlm=shares, wavlm_lr_scale=0.5)
    s_wavlm, t_wavlm = st.student.model.frontend.wavlm, st.teacher.model.frontend.wavlm
    assert (t_wavlm is s_wavlm) == shares
    assert all(p.requires_grad for p in s_wavlm.used_parameters())
    opt = st.configure_optimizer(st.student)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["model", "wavlm"]
    assert groups["wavlm"]["lr_scale"] == 0.5 and "lr_scale" not in groups["model"]
    assert {id(p) for p in groups["wavlm"]["params"]} == {id(p) for p in s_wavlm.used_parameters()}
    assert groups["wavlm"]["weight_decay"] == groups["model"]["weight_decay"] == st.cfg.weight_decay
    before = {k: v.clone() for k, v in t_wavlm.state_dict().items()}
    for g in opt.param_groups:
        g["lr"] = 1e-2
    batch = torch.utils.data.default_collate([st.train_set[i] for i in range(4)])
    loss, _ = st.train_step(st.student, batch, epoch=0)
    loss.backward()
    opt.step()
    student_after = {k: v.detach().clone() for k, v in s_wavlm.state_dict().items()}
    ema_update(st.teacher, st.student, 0.75)
    key = "encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"
    if shares:  # the same tensors: the teacher sees the student's update, the EMA leaves them alone
        assert torch.equal(t_wavlm.state_dict()[key], student_after[key])
    else:  # an EMA copy: 0.75 * old teacher + 0.25 * new student
        torch.testing.assert_close(t_wavlm.state_dict()[key], 0.75 * before[key] + 0.25 * student_after[key])
        assert not torch.equal(t_wavlm.state_dict()[key], student_after[key])


def test_step1_has_no_teacher_and_exports_its_student(wavlm_run):
    step1 = wavlm_run["models"]["wavlm_step1"]
    assert step1["teacher"] is None
    student = step1["student"]["model"]
    assert student.keys() == step1["eval_state"].keys()
    assert all(torch.equal(step1["eval_state"][k], v) for k, v in student.items())


def test_step2_starts_student_and_teacher_from_step1_student(wavlm_run):
    run, step2 = wavlm_run["run"], wavlm_run["models"]["wavlm_step2"]
    stage = SSRLStage(
        step2["hparams"], "wavlm_step2", run / "data" / "train" / "wav.scp", run / "wavlm_step1" / "model.pt"
    )
    torch.manual_seed(0)
    stage.env, stage.runtime = DistEnv(), RuntimeConfig(device="cpu", workers=0)
    stage.build()
    saved = wavlm_run["models"]["wavlm_step1"]["student"]
    for part in (stage.student, stage.teacher):
        for sub, module in (("model", part.model), ("head", part.head)):
            got = module.state_dict()
            assert got.keys() == saved[sub].keys()
            assert all(torch.equal(got[k], v) for k, v in saved[sub].items()), sub


class ModeRecorder(SSRLStage):
    """Step 2-ft that records, at every forward of the (shared) student WavLM, who called it and
    whether the WavLM was in train mode."""

    def build(self):
        super().build()
        self.calls: list[tuple[str, bool]] = []
        self._caller = None
        for name, part in (("student", self.student.model), ("teacher", self.teacher.model)):
            part.register_forward_pre_hook(lambda module, args, name=name: setattr(self, "_caller", name))
        wavlm = self.student.model.frontend.wavlm
        wavlm.register_forward_pre_hook(lambda module, args: self.calls.append((self._caller, module.training)))


def test_ft_wavlm_modes_per_forward_and_constant_ema(wavlm_run, tmp_path, monkeypatch):
    """Step 2-ft through the trainer: the shared (quirk Q3) WavLM runs in train mode in every
    student forward and in eval mode in every teacher forward; the EMA decay is 0.9999 at every step;
    the student's WavLM carries the checkpoint's regularisation (a torchaudio state dict:
    torchaudio's wavlm_large defaults)."""
    run, ft = wavlm_run["run"], wavlm_run["models"]["wavlm_ft"]
    assert ft["arch"]["frontend"]["regularisation"]["encoder_layer_drop"] == pytest.approx(0.1)
    data = run / "data"
    stage = ModeRecorder(
        ft["hparams"],
        "wavlm_ft",
        data / "train" / "wav.scp",
        run / "wavlm_step2" / "model.pt",
        augment_lists={k: data / "augment" / f"{k}.lst" for k in ("noise", "music", "babble", "rir")},
    )
    decays = []

    def recording_ema_update(teacher, student, decay):
        decays.append(decay)
        ema_update(teacher, student, decay)

    monkeypatch.setattr("ssrl.train.loop.ema_update", recording_ema_update)
    runtime = RuntimeConfig(device="cpu", workers=0, log_every=1, progress_every_s=1000.0, bf16=False)
    Trainer(stage, runtime, tmp_path / "ckpt").fit(tmp_path / "model.pt", tmp_path / "train_log.tsv")
    assert stage.teacher.model.frontend.wavlm is stage.student.model.frontend.wavlm
    steps = stage.epochs * (len(stage.train_set) // stage.batch_size)
    assert decays == [0.9999] * steps and steps >= 3
    student = [training for caller, training in stage.calls if caller == "student"]
    teacher = [training for caller, training in stage.calls if caller == "teacher"]
    assert len(student) == len(teacher) == steps  # relabelling in every 2-ft step
    assert all(student) and not any(teacher)


def test_nothing_left_to_run(wavlm_run):
    dry = run_snakemake(
        wavlm_run["work"],
        "-n",
        "--allowed-rules",
        *TRAIN_RULES,
        "--",
        "results/tiny/wavlm_ft/metrics/demo.json",
        configfile=wavlm_run["config"],
    )
    assert "Nothing to be done" in dry.stdout


# --------------------------------------------------------------------------- schedule


def test_step1_lr_is_linear_warmup_then_cosine():
    """docs/method.md §9 step 1: linear 0 -> lr over the warm-up epochs, then cosine lr -> lr/100 (value at the end
    of step i of an n-step segment: final + (start - final) (1 + cos(pi i / n)) / 2)."""
    lr, spe, warm, total = 1e-3, 4, 2, 5
    hp = {
        "ssrl": {
            "init": "scratch",
            "head_init": "random",
            "label_update": False,
            "nlm": False,
            "fixed_epochs": total,
            "update_epochs": 0,
            "schedule": "warmup_cosine",
            "warmup_epochs": warm,
            "lr": lr,
            "lr_final": 0.01,
        },
        "arch": {},
    }
    got = SSRLStage(hp, "wavlm_step1", "train.scp", None, labels="labels.txt").lr_schedule(spe)
    n_warm, n_cos = warm * spe, (total - warm) * spe
    want = [lr * i / n_warm for i in range(1, n_warm + 1)]
    want += [lr / 100 + (lr - lr / 100) * (1 + math.cos(math.pi * i / n_cos)) / 2 for i in range(1, n_cos + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[n_warm - 1] == pytest.approx(lr) and got[-1] == pytest.approx(lr / 100)


def test_scratch_init_needs_arch_and_no_init_model():
    hp = {"ssrl": {"init": "scratch", "head_init": "random", "label_update": False, "nlm": False, "update_epochs": 0}}
    with pytest.raises(ValueError, match="needs the model architecture under 'arch'"):
        SSRLStage(hp, "wavlm_step1", "train.scp", None, labels="labels.txt")
    with pytest.raises(ValueError, match="takes no init model file"):
        SSRLStage({**hp, "arch": {}}, "wavlm_step1", "train.scp", "init.pt", labels="labels.txt")
    with pytest.raises(ValueError, match="use head_init: random"):
        SSRLStage(
            {"ssrl": {**hp["ssrl"], "head_init": "centers"}, "arch": {}},
            "wavlm_step1",
            "train.scp",
            None,
            labels="labels.txt",
        )


# --------------------------------------------------------------------------- start-up check


def _dry_run(workdir: Path, checkpoint: str):
    cfg = write_config(workdir / "config.yaml", {"wavlm": {"checkpoint": checkpoint, "tiny": False}})
    return run_snakemake(workdir, "-n", configfile=cfg, check=False)


def test_missing_checkpoint_is_refused_at_start(workdir):
    missing = workdir / "WavLM-Large.pt"
    proc = _dry_run(workdir, str(missing))
    assert proc.returncode != 0
    assert f"wavlm.checkpoint: {missing} not found" in proc.stdout


def test_non_wavlm_checkpoint_is_refused_at_start(workdir):
    other = workdir / "ecapa.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    proc = _dry_run(workdir, str(other))
    assert proc.returncode != 0 and f"wavlm.checkpoint: {other} is not a WavLM checkpoint" in proc.stdout
