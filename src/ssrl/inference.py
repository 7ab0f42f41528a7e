"""Using a trained system: pair verification and ONNX export (embeddings of audio files: :mod:`ssrl.extract`).

The functions behind the ``ssrl`` command line (:mod:`ssrl.cli`); they also
work from Python.

* :func:`find_threshold` / :func:`verify_pair`: the score of one pair of files
  and a decision at the EER threshold stored in the system's
  ``metrics/<list>.json`` (written by the scoring stage), scored the way that
  threshold was measured (cosine, or AS-norm against the system's train-set
  embeddings).
* :func:`export_onnx`: ECAPA (log-mel) systems as an ONNX graph, checked
  against PyTorch with onnxruntime. The graph takes a *pre-processed* waveform
  ``(batch, samples)`` float32 at 16 kHz (peak-normalised, then pre-emphasised:
  :func:`ssrl.data.normalise_waveform`), every row a full utterance of the
  same length (no padding), and returns embeddings ``(batch, emb_dim)``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import SAMPLE_RATE, __version__
from .data import normalise_waveform
from .extract import embed_files, min_samples
from .features import MelFrontend, reflect_pad_ends
from .fileio import atomic_path, read_embeddings, read_json
from .manifest import Trials
from .models import SpeakerModel
from .score import score_trials

EXPORT_TOLERANCE = 1e-4
"""Largest absolute difference allowed between onnxruntime and PyTorch embeddings."""

DEFAULT_OPSET = 17
OPSETS = range(11, 21)
"""ONNX opsets offered: reflect padding exports cleanly from 11 on; 20 is the newest the TorchScript
exporter (used here, see :func:`export_onnx`) supports."""


class ThresholdError(ValueError):
    """No usable decision threshold (missing or malformed metrics file)."""


class ExportError(ValueError):
    """A system that cannot be exported, or an export that failed its onnxruntime check."""


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Threshold:
    """A decision threshold (accept when ``score >= value``) and where it came from.

    ``source``: the metrics file, or ``"--threshold"`` for a value given by hand;
    ``trials``, ``eer`` (a fraction): the trial list it was measured on;
    ``score_norm``: the scores it applies to (``"none"`` = cosine, ``"asnorm"``),
    with ``asnorm_top_n`` for AS-norm.
    """

    value: float
    source: str
    trials: str | None = None
    eer: float | None = None
    score_norm: str = "none"
    asnorm_top_n: int | None = None


def metrics_files(model_path: str | os.PathLike) -> dict[str, Path]:
    """Trial list name -> ``<model dir>/metrics/<list>.json`` for every metrics file of a system."""
    folder = Path(model_path).parent / "metrics"
    return {p.stem: p for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def find_threshold(model_path: str | os.PathLike, trials: str | None = None) -> Threshold:
    """The EER threshold stored by the scoring stage beside ``model_path``.

    Reads ``<model dir>/metrics/<trials>.json`` (key ``eer_threshold``); without
    ``trials`` the system must have exactly one metrics file. ThresholdError
    (naming the files and keys) when none exists, the choice is ambiguous or
    the file lacks a finite threshold.
    """
    found = metrics_files(model_path)
    folder = Path(model_path).parent / "metrics"
    if trials is not None:
        if trials not in found:
            have = f"available: {', '.join(found)}" if found else "the system has no metrics files"
            raise ThresholdError(
                f"{folder / (trials + '.json')}: no metrics for trial list {trials!r} ({have}); "
                f"score the system on it or give --threshold"
            )
        path = found[trials]
    elif not found:
        raise ThresholdError(
            f"{folder}: no metrics file (<list>.json written by the scoring stage) beside "
            f"{model_path}; score the system first or give a threshold with --threshold"
        )
    elif len(found) > 1:
        raise ThresholdError(
            f"{folder}: metrics for several trial lists ({', '.join(found)}); choose one with --trials"
        )
    else:
        path = next(iter(found.values()))
    try:
        metrics = read_json(path)
    except ValueError as err:
        raise ThresholdError(f"{path}: not valid JSON ({err})") from None
    value = metrics.get("eer_threshold") if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ThresholdError(f"{path}: key 'eer_threshold' must be a finite number, got {value!r}")
    norm = metrics.get("score_norm", "none")
    if norm not in ("none", "asnorm"):
        raise ThresholdError(f"{path}: key 'score_norm' must be 'none' or 'asnorm', got {norm!r}")
    top_n = metrics.get("asnorm_top_n")
    if norm == "asnorm" and (isinstance(top_n, bool) or not isinstance(top_n, int)):
        raise ThresholdError(f"{path}: score_norm is 'asnorm' but 'asnorm_top_n' is {top_n!r}, not an integer")
    eer = metrics.get("eer")
    return Threshold(
        value=float(value),
        source=os.fspath(path),
        trials=path.stem,
        eer=float(eer) if isinstance(eer, (int, float)) else None,
        score_norm=norm,
        asnorm_top_n=top_n if norm == "asnorm" else None,
    )


def cohort_path(model_path: str | os.PathLike) -> Path:
    """The AS-norm cohort of a system: its train-set embeddings ``<model dir>/emb/train.npz``."""
    return Path(model_path).parent / "emb" / "train.npz"


@dataclass(frozen=True)
class Verification:
    """Result of :func:`verify_pair`: ``score`` (cosine or AS-norm), the threshold used and
    the decision ``accept = score >= threshold.value``."""

    enroll: str
    test: str
    score: float
    threshold: Threshold
    accept: bool

    def as_dict(self) -> dict:
        t = self.threshold
        return {
            "enroll": self.enroll,
            "test": self.test,
            "score": self.score,
            "score_norm": t.score_norm,
            "threshold": t.value,
            "threshold_source": t.source,
            "trials": t.trials,
            "eer": t.eer,
            "decision": "accept" if self.accept else "reject",
            "accept": self.accept,
        }


def verify_pair(
    model: SpeakerModel,
    enroll: str | os.PathLike,
    test: str | os.PathLike,
    threshold: Threshold,
    device: str | torch.device = "cpu",
    cohort: np.ndarray | None = None,
    max_seconds: float | None = None,
) -> Verification:
    """Score two audio files with ``model`` and decide at ``threshold``.

    Both files go through :func:`embed_files`; the score is the cosine of the two
    embeddings (:func:`ssrl.score.score_trials`), AS-normalised against
    ``cohort`` (M, emb_dim) with ``threshold.asnorm_top_n`` when the threshold
    was measured on AS-norm scores (``cohort`` is then required).
    """
    if threshold.score_norm == "asnorm" and cohort is None:
        raise ValueError(f"{threshold.source}: the threshold is for AS-norm scores; a cohort is required")
    emb = embed_files(model, ["enroll", "test"], [enroll, test], device=device, max_seconds=max_seconds, progress=False)
    trial = Trials.from_lists([1], ["enroll"], ["test"])
    norm = {"cohort": cohort, "top_n": threshold.asnorm_top_n} if threshold.score_norm == "asnorm" else {}
    score = float(score_trials(["enroll", "test"], emb, trial, **norm).scores[0])
    return Verification(
        enroll=os.fspath(enroll),
        test=os.fspath(test),
        score=score,
        threshold=threshold,
        accept=score >= threshold.value,
    )


def load_cohort(model_path: str | os.PathLike, threshold: Threshold) -> np.ndarray | None:
    """The AS-norm cohort ``(M, emb_dim)`` a threshold needs (None for cosine thresholds);
    ThresholdError naming the file when it is missing."""
    if threshold.score_norm != "asnorm":
        return None
    path = cohort_path(model_path)
    if not path.is_file():
        raise ThresholdError(
            f"{path}: missing; {threshold.source} is an AS-norm threshold and needs the system's "
            f"train-set embeddings as cohort (or give --threshold for a cosine threshold)"
        )
    return read_embeddings(path)[1]


# --------------------------------------------------------------------------- ONNX export


class ConvMelFrontend(nn.Module):
    """:class:`MelFrontend` as a strided Conv1d (fixed DFT basis, window folded in) + mel matrix.

    Used only for ONNX export, where ``torch.stft`` (complex) does not export.
    ``(batch, samples)`` -> ``(batch, n_mels, frames)`` power mel, equal to the
    source front-end up to float rounding: the same reflect padding of each end,
    then frame ``t`` is the ``n_fft``-point DFT of padded samples ``[t * hop,
    t * hop + n_fft)`` times the zero-padded (centred) window, power = re² + im²,
    then the same mel filterbank.
    """

    def __init__(self, frontend: MelFrontend):
        super().__init__()
        spec, mel_scale = frontend.mel.spectrogram, frontend.mel.mel_scale
        if spec.power != 2.0 or spec.normalized or spec.center or spec.pad:
            raise ExportError("ConvMelFrontend supports power 2, no normalisation, no centre padding")
        n_fft, window = spec.n_fft, spec.window.detach().double().cpu()
        offset = (n_fft - window.shape[0]) // 2  # torch.stft centres a shorter window
        padded = torch.zeros(n_fft, dtype=torch.float64)
        padded[offset : offset + window.shape[0]] = window
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        angle = 2.0 * math.pi * ((k * n) % n_fft) / n_fft  # exact phase before the cosine
        basis = torch.cat([torch.cos(angle) * padded, -torch.sin(angle) * padded])  # (2F, n_fft)
        self.register_buffer("basis", basis.float().unsqueeze(1))  # (2F, 1, n_fft)
        self.register_buffer("mel_fb", mel_scale.fb.detach().float().cpu().T.contiguous())  # (n_mels, F)
        self.hop_length = spec.hop_length
        self.n_fft = n_fft
        self.pad = frontend.pad

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = reflect_pad_ends(wave, self.pad)
        spec = F.conv1d(wave.unsqueeze(1), self.basis, stride=self.hop_length)  # (B, 2F, T)
        real, imag = spec.chunk(2, dim=1)
        return torch.matmul(self.mel_fb, real * real + imag * imag)  # (B, n_mels, T)


class ExportableSpeakerModel(nn.Module):
    """A log-mel :class:`SpeakerModel` with :class:`ConvMelFrontend`: pre-processed waveforms
    ``(batch, samples)`` float32 (same length, no padding) -> embeddings ``(batch, emb_dim)``."""

    def __init__(self, model: SpeakerModel):
        super().__init__()
        if not isinstance(model.frontend, MelFrontend):
            raise ExportError(
                "ONNX export supports ECAPA systems with the log-mel front-end only, "
                f"not a {type(model.frontend).__name__} (WavLM) system"
            )
        self.frontend = ConvMelFrontend(model.frontend)
        self.encoder = model.encoder

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(wave))


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` checked: ``max_abs_diff`` over test inputs of
    ``shapes`` (batch, samples) between onnxruntime and the PyTorch model."""

    path: str
    opset: int
    max_abs_diff: float
    shapes: tuple[tuple[int, int], ...]


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs the onnx and onnxruntime packages ({err}); install them with "
            f"`pip install 'ssrl[export]'`"
        ) from None
    return onnx, onnxruntime


def _test_waves(shapes: Sequence[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    """Pre-processed random test inputs: noise with a slow amplitude envelope, peak-normalised
    and pre-emphasised like real extraction inputs."""
    rng = np.random.default_rng(seed)
    out = []
    for batch, samples in shapes:
        rows = []
        for _ in range(batch):
            envelope = 0.1 + np.abs(np.sin(np.linspace(0, rng.uniform(2, 8), samples)))
            rows.append(normalise_waveform((rng.standard_normal(samples) * envelope).astype(np.float32)))
        out.append(torch.from_numpy(np.stack(rows)))
    return out


@torch.no_grad()
def check_onnx(path: str | os.PathLike, model: SpeakerModel, waves: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference between onnxruntime (CPU) on the graph at ``path`` and
    ``model`` (PyTorch with its own torch.stft front-end, eval mode) over the ``(batch, samples)`` inputs ``waves``."""
    _, ort = _import_onnx()
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    device = next(model.parameters()).device
    worst = 0.0
    for wave in waves:
        got = session.run(None, {name: wave.numpy()})[0]
        want = model(wave.to(device)).cpu().numpy()
        if got.shape != want.shape:
            raise ExportError(
                f"{path}: onnxruntime output shape {got.shape} for input {tuple(wave.shape)}, "
                f"PyTorch gives {want.shape}"
            )
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_onnx(
    model: SpeakerModel,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    system: str | None = None,
    tolerance: float = EXPORT_TOLERANCE,
    check_shapes: Sequence[tuple[int, int]] = ((2, 2 * SAMPLE_RATE), (1, 3 * SAMPLE_RATE + 1237)),
) -> ExportReport:
    """Export a log-mel ECAPA ``model`` to ONNX at ``path`` and check it with onnxruntime.

    Graph: input ``wave`` (batch, samples) float32, pre-processed (peak
    normalisation then pre-emphasis, :func:`ssrl.data.normalise_waveform`), rows of
    equal length; output ``embedding`` (batch, emb_dim); batch and samples are
    dynamic. Model metadata records the system, sample rate, preprocessing and
    minimum length. The graph is traced on a (1, 2.5 s) input and compared with
    the PyTorch model on inputs of ``check_shapes`` (batch, samples); the file is
    written (atomically) only when the largest absolute difference is at most
    ``tolerance``, ExportError otherwise. ``model`` is moved to the CPU.
    """
    if opset not in OPSETS:
        raise ExportError(f"{path}: ONNX opset {opset} is not supported; choose {OPSETS[0]} to {OPSETS[-1]}")
    onnx, _ = _import_onnx()
    model = model.cpu().eval()
    exportable = ExportableSpeakerModel(model).cpu().eval()
    shortest = min_samples(model)
    example = _test_waves([(1, max(shortest, round(2.5 * SAMPLE_RATE)))], seed=1)[0]
    waves = _test_waves([(b, max(n, shortest)) for b, n in check_shapes], seed=2)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # The encoder's Python-side length checks are traced as constants; the onnxruntime
            # comparison on other shapes below is what guarantees the graph is shape-generic.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            # The TorchScript exporter is used on purpose (the torch.export-based one needs the
            # onnxscript package); its deprecation notices and the note that the reversed slices
            # of reflect padding are not constant-folded say nothing about this graph.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            try:
                torch.onnx.export(
                    exportable,
                    (example,),
                    os.fspath(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=["wave"],
                    output_names=["embedding"],
                    dynamic_axes={"wave": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
                )
            except (RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ExportError(f"{path}: torch.onnx.export failed at opset {opset}: {first}") from None
        graph = onnx.load(os.fspath(tmp))
        onnx.checker.check_model(graph)
        props = {
            "ssrl_version": __version__,
            "system": system or "",
            "sample_rate": str(SAMPLE_RATE),
            "emb_dim": str(model.emb_dim),
            "min_samples": str(shortest),
            "input": "wave (batch, samples) float32, 16 kHz mono, rows of equal length (no padding); each row "
            "peak-normalised (x / max|x|) then pre-emphasised (y[n] = x[n] - 0.97 x[n-1], y[0] = x[0])",
            "output": "embedding (batch, emb_dim) float32, not L2-normalised; score pairs by cosine similarity",
        }
        onnx.helper.set_model_props(graph, props)
        onnx.save(graph, os.fspath(tmp))
        diff = check_onnx(tmp, model, waves)
        if not diff <= tolerance:
            raise ExportError(
                f"{path}: onnxruntime and PyTorch embeddings differ by up to {diff:.3g} "
                f"(tolerance {tolerance:g}); the file was not written"
            )
    return ExportReport(
        path=os.fspath(path), opset=opset, max_abs_diff=diff, shapes=tuple(tuple(w.shape) for w in waves)
    )
