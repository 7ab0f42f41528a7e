"""DINO (docs/method.md §4): loss and centre known answers, the stage's optimiser rules, an end-to-end script run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import REPO, TINY_CONFIG, deep_update

from ssrl.dino import DINOCenter, DINOModel, dino_loss, output_std
from ssrl.models import DINOHead, build_speaker_model, load_speaker_model, read_model_file
from ssrl.train import DistEnv, RuntimeConfig, Trainer, decay_param_groups
from ssrl.train.dino_stage import DINOConfig, DINOStage

SCRIPT = REPO / "workflow" / "scripts" / "train_dino.py"
_spec = importlib.util.spec_from_file_location("train_dino", SCRIPT)
train_dino = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_dino)
TINY_ARCH = {"frontend": {"type": "mel", "n_mels": 20}, "encoder": {"channels": 16, "emb_dim": 8}}
TINY_DINO = {
    "epochs": 2,
    "batch_size": 4,
    "lr": 0.05,
    "warmup_epochs": 1,
    "n_local": 2,
    "global_crop_s": 0.6,
    "local_crop_s": 0.4,
    "head": {"n_prototypes": 32, "hidden": 16, "mid": 16, "bottleneck": 8},
    "val_every": 1,
}
SCRIPT_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUNTIME = RuntimeConfig(device="cpu", workers=0, log_every=1, progress_every_s=1000.0, deterministic=True)


# Tiny models: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- loss and centre


def _brute_force_loss(s, t, c, ts=0.1, tt=0.04):
    """docs/method.md §4 literally: loop over the batch and every (teacher global i, student j != i) pair."""
    s, t, c = s.double().numpy(), t.double().numpy(), c.double().numpy()
    total, pairs = 0.0, 0
    for i in range(t.shape[1]):
        for j in range(s.shape[1]):
            if j == i:
                continue
            for b in range(s.shape[0]):
                p = np.exp((t[b, i] - c) / tt - np.max((t[b, i] - c) / tt))
                p /= p.sum()
                z = s[b, j] / ts
                log_q = z - (np.max(z) + np.log(np.exp(z - np.max(z)).sum()))
                total += -(p * log_q).sum()
            pairs += 1
    return total / (pairs * s.shape[0])


def test_dino_loss_hand_computed_example():
    # One item, K = 2, two global views and one local view; centre (0.04, 0).
    # Teacher view 0: logits (0.08, 0) - centre = (0.04, 0) -> /0.04 = (1, 0): p0 = (e, 1)/(e + 1).
    # Teacher view 1: logits (0.04, 0) - centre = (0, 0): p1 = (1/2, 1/2).
    # Student views: logits 0.1 * (0, 0), 0.1 * (ln 3, 0), 0.1 * (0, ln 3) -> q = (1/2, 1/2), (3/4, 1/4), (1/4, 3/4).
    t = torch.tensor([[[0.08, 0.0], [0.04, 0.0]]])
    s = torch.tensor([[[0.0, 0.0], [0.1 * math.log(3), 0.0], [0.0, 0.1 * math.log(3)]]])
    c = torch.tensor([0.04, 0.0])
    p0 = (math.e / (math.e + 1), 1 / (math.e + 1))
    q = [(0.5, 0.5), (0.75, 0.25), (0.25, 0.75)]

    def ce(p, qq):
        return -(p[0] * math.log(qq[0]) + p[1] * math.log(qq[1]))

    # Pairs: (0, 1), (0, 2), (1, 0), (1, 2): 4 pairs.
    want = (ce(p0, q[1]) + ce(p0, q[2]) + ce((0.5, 0.5), q[0]) + ce((0.5, 0.5), q[2])) / 4
    assert dino_loss(s, t, c).item() == pytest.approx(want, rel=1e-6)


def test_dino_loss_matches_brute_force_over_pairs():
    g = torch.Generator().manual_seed(0)
    s, t, c = torch.randn(3, 6, 5, generator=g), torch.randn(3, 2, 5, generator=g), torch.randn(5, generator=g)
    assert dino_loss(s, t, c).item() == pytest.approx(_brute_force_loss(s, t, c), rel=1e-5)
    # Temperatures are parameters; 10 pairs for 2 global + 4 local views.
    assert dino_loss(s, t, c, 0.2, 0.07).item() == pytest.approx(_brute_force_loss(s, t, c, 0.2, 0.07), rel=1e-5)
    # Uniform student and teacher: every pair costs log K.
    assert dino_loss(torch.zeros(2, 6, 7), torch.zeros(2, 2, 7), torch.zeros(7)).item() == pytest.approx(math.log(7))


def test_dino_loss_gradient_reaches_the_student_only():
    s = torch.randn(2, 4, 3, requires_grad=True)
    t = torch.randn(2, 2, 3, requires_grad=True)
    dino_loss(s, t, torch.zeros(3)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_dino_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        dino_loss(torch.zeros(2, 6, 5), torch.zeros(2, 2, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="center"):
        dino_loss(torch.zeros(2, 6, 5), torch.zeros(2, 2, 5), torch.zeros(4))


def test_center_update_known_answer():
    center = DINOCenter(2, momentum=0.9)
    center.update(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))  # batch mean over items and views: (2, 3)
    torch.testing.assert_close(center.value, torch.tensor([0.2, 0.3]))
    center.update(torch.zeros(5, 2))
    torch.testing.assert_close(center.value, torch.tensor([0.18, 0.27]))
    restored = DINOCenter(2)
    restored.load_state_dict(center.state_dict())
    torch.testing.assert_close(restored.value, center.value)


def test_output_std_is_zero_for_collapse_and_positive_otherwise():
    assert output_std(torch.ones(4, 2, 9)).item() == 0.0
    x = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])  # per-column std 1, 1
    assert output_std(x).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def noise_corpus(tmp_path_factory) -> Path:
    """Eight 0.8-1.5 s random-noise files in a wav.scp (enough to run the optimiser rules)."""
    root = tmp_path_factory.mktemp("noise_corpus")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(8):
        path = root / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (0.8 + 0.1 * i)))).astype(np.float32), 16000)
        lines.append(f"u{i} {path}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root


def test_global_and_local_views_are_separate_forward_passes():
    """Each group of views goes through encoder AND head alone (per-group BatchNorm statistics):
    the result equals running each group by itself in train mode, not one batch of all views."""
    torch.manual_seed(0)
    model = DINOModel(build_speaker_model(TINY_ARCH), DINOHead(8, n_prototypes=32, hidden=16, mid=16, bottleneck=8))
    model.train()
    global_views, local_views = torch.randn(3, 2, 8000), 0.3 * torch.randn(3, 4, 4000)
    emb, logits = model(global_views, local_views)
    assert emb.shape == (3, 6, 8) and logits.shape == (3, 6, 32)
    for group, views in ((global_views, slice(0, 2)), (local_views, slice(2, 6))):
        alone_emb, alone_logits = model(group)
        torch.testing.assert_close(emb[:, views], alone_emb)
        torch.testing.assert_close(logits[:, views], alone_logits)
    # The head on all six views at once (shared statistics) gives other logits.
    joint = model.head(emb.reshape(18, 8)).reshape(3, 6, 32)
    assert (joint - logits).abs().max() > 1e-3


def test_weight_decay_groups_of_the_dino_student():
    model = DINOModel(build_speaker_model(TINY_ARCH), DINOHead(8, n_prototypes=32, hidden=16, mid=16, bottleneck=8))
    decay, no_decay = decay_param_groups(model, 5e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "head.last_layer.parametrizations.weight.original1" in decay_names  # prototypes (v)
    assert "head.last_layer.parametrizations.weight.original0" not in decay_names | no_decay_names  # g = 1, frozen
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert "model.encoder.fc.bias" in no_decay_names and "model.encoder.pool_norm.weight" in no_decay_names
    assert "model.encoder.fc.weight" in decay_names and "head.mlp.0.weight" in decay_names


class _Recorder(DINOStage):
    """Records the prototype weights and the largest gradient norm after every epoch."""

    def build(self):
        super().build()
        self.snapshots = [self._prototypes()]
        self.max_grad_norm = 0.0

    def _prototypes(self):
        return self.student.head.last_layer.parametrizations.weight.original1.detach().clone()

    def after_backward(self, epoch, step):
        super().after_backward(epoch, step)
        norms = [p.grad.norm().item() for p in self.student.parameters() if p.grad is not None]
        self.max_grad_norm = max([self.max_grad_norm, *norms])

    def on_epoch_end(self, epoch):
        self.snapshots.append(self._prototypes())
        return super().on_epoch_end(epoch)


def test_prototypes_frozen_in_epoch_0_then_trained(noise_corpus, tmp_path):
    hp = {"dino": {**TINY_DINO, "lr": 10.0, "clip_grad": 0.01}, "model": TINY_ARCH}
    stage = _Recorder(hp, noise_corpus / "wav.scp", None)
    encoder_before = build_speaker_model(TINY_ARCH)
    Trainer(stage, RUNTIME, tmp_path / "ckpt").fit(tmp_path / "model.pt", tmp_path / "log.tsv")
    first, after_epoch0, after_epoch1 = stage.snapshots
    assert torch.equal(first, after_epoch0)  # no update at all during epoch 0
    assert not torch.equal(after_epoch0, after_epoch1)  # trained from epoch 1 on
    assert 0 < stage.max_grad_norm <= 0.01 * (1 + 1e-4)  # clipped per tensor
    # The teacher moved away from its initial copy of the student (EMA), and the centre was updated.
    obj = read_model_file(tmp_path / "model.pt")
    assert not torch.equal(obj["eval_state"]["encoder.fc.weight"], encoder_before.encoder.fc.weight)
    assert obj["extra"]["center"].abs().sum() > 0 and obj["head"]["type"] == "dino"


def test_init_bn_batches_calibrates_student_and_teacher(noise_corpus):
    stage = DINOStage({"dino": {**TINY_DINO, "init_bn_batches": 2}, "model": TINY_ARCH}, noise_corpus / "wav.scp", None)
    stage.env, stage.runtime = DistEnv(), RUNTIME
    torch.manual_seed(0)
    stage.build()
    bn = stage.student.model.encoder.pool_norm
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    stage.on_train_start()
    assert int(bn.num_batches_tracked) == 4 and bn.momentum == 0.1  # 2 batches x (global, local)
    assert bn.running_mean.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    for (name, t), s in zip(stage.teacher.state_dict().items(), stage.student.state_dict().values()):
        assert torch.equal(t, s), name  # the teacher starts as the calibrated student
    assert not stage.teacher.training and not any(p.requires_grad for p in stage.teacher.parameters())


def test_dino_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"dino: unknown key\(s\) \['epochz'\]"):
        DINOConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match=r"dino.head.n_prototypes: expected int"):
        DINOConfig.from_dict({"head": {"n_prototypes": "many"}})
    with pytest.raises(ValueError, match="warmup_epochs"):
        DINOConfig.from_dict({"epochs": 2, "warmup_epochs": 3})


# --------------------------------------------------------------------------- end to end


def _config_hparams(overrides: dict) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = deep_update(cfg, yaml.safe_load(TINY_CONFIG.read_text()))
    cfg = deep_update(cfg, overrides)
    return {
        "dino": cfg["dino"],
        "model": cfg["model"],
        "train": cfg["train"],
        "augment": {k: cfg["augment"][k] for k in ("snr_db", "babble_count")},
    }


@pytest.mark.slow
def test_train_dino_script_end_to_end(tiny_corpus, tmp_path, caplog):
    """The script with the tiny test settings on the tiny corpus: model file, log, resume no-op."""
    data = tiny_corpus / "data"
    hp = _config_hparams({})
    out = tmp_path / "dino"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--train-scp",
        str(data / "train" / "wav.scp"),
        "--augment-dir",
        str(data / "augment"),
        "--val-scp",
        str(data / "test" / "wav.scp"),
        "--val-trials",
        str(data / "trials" / "demo.txt"),
        "--ckpt-dir",
        str(out / "ckpt"),
        "--model-out",
        str(out / "model.pt"),
        "--log-out",
        str(out / "train_log.tsv"),
        "--hparams",
        json.dumps(hp),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=SCRIPT_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    model = load_speaker_model(out / "model.pt")
    assert model.emb_dim == hp["model"]["encoder"]["emb_dim"] and not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 16000)).shape == (2, model.emb_dim)
    rows = [line.split("\t") for line in (out / "train_log.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    epochs = [dict(zip(header, r)) for r in rows if r[0] == "epoch"]
    assert len(epochs) == hp["dino"]["epochs"]
    assert 0.0 <= float(epochs[-1]["val_eer"]) <= 1.0
    assert all(math.isfinite(float(e["loss"])) and float(e["teacher_std"]) > 0 for e in epochs)
    # A rerun (in-process this time) finds the final checkpoint and only rewrites the outputs.
    (out / "model.pt").unlink()
    with caplog.at_level("INFO", logger="ssrl.train"):
        assert train_dino.main(cmd[2:]) == 0
    assert "resuming from" in caplog.text and (out / "model.pt").exists()
    assert (out / "train_log.tsv").read_text().count("\nepoch\t") == hp["dino"]["epochs"]


def test_train_dino_script_reports_bad_input(tmp_path, capsys):
    scp = tmp_path / "wav.scp"
    scp.write_text("u1 /nonexistent/u1.wav\n")
    code = train_dino.main(
        [
            "--train-scp",
            str(scp),
            "--no-augment",
            "--ckpt-dir",
            str(tmp_path / "ckpt"),
            "--model-out",
            str(tmp_path / "m.pt"),
            "--log-out",
            str(tmp_path / "l.tsv"),
            "--hparams",
            json.dumps({"dino": {}, "model": TINY_ARCH, "train": {"device": "cpu"}}),
        ]
    )
    assert code == 1 and str(scp) in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
