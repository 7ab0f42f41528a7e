"""Masked-prediction pre-training of a tiny WavLM on training audio (the demo's WavLM front-end).

Without a real WavLM checkpoint the WavLM systems need a front-end whose hidden states
carry speaker information; a randomly initialised one carries almost none. This stage
gives it a short self-supervised pre-training in the manner of HuBERT's first
iteration, at toy size, on the training audio alone (no speaker labels):

1. **Unit targets** (:class:`UnitTargets`): MFCCs (``n_mfcc`` coefficients of a
   ``n_mels``-band log mel spectrogram, plus deltas and delta-deltas) computed on exactly
   the WavLM frames (window = the CNN's receptive field, 400 samples = 25 ms; hop = its
   stride, 320 samples = 20 ms; no centre padding), standardised per dimension over the
   training frames and L2-normalised, clustered by the project's k-means
   (:func:`ssrl.kmeans.kmeans`, which clusters L2-normalised rows) into ``n_units`` units;
   every frame's target is its nearest centre.
2. **Masking** (:func:`span_mask`): per crop of ``T`` frames, ``int(mask_prob * T /
   mask_length + u)`` (u uniform in [0, 1), at least one) distinct start frames, each
   masking ``mask_length`` frames (spans may overlap), as fairseq's static masks. The
   projected CNN features of masked frames are replaced by a learned mask embedding
   (:meth:`ssrl.models.wavlm.WavLM.forward`).
3. **Prediction** (:class:`MaskedPredictionModel`, :func:`masked_prediction_loss`): the
   last transformer layer (through the encoder's final layer norm for pre-LN models) ->
   a linear projection to ``n_units`` logits; cross-entropy on the masked frames, plus
   ``unmasked_weight`` times that on the unmasked ones (HuBERT uses the masked frames only;
   the demo weighs both, which trains the CNN on every frame's spectrum: bench/RESULTS.md,
   "Issue 13", gives the speaker-ID probe of each setting).

The tiny WavLM's CNN feature extractor is ``conv_layers`` (default the tiny configuration's
seven layers, :data:`ssrl.models.wavlm.TINY_CONFIG`); the checkpoint's ``cfg`` describes it
(``conv_feature_layers``), so the import rebuilds the same model.

Training runs on the shared trainer (:class:`WavLMPretrainStage`: checkpoints, resume,
TSV log, progress): clean random crops of ``crop_s`` seconds, peak-normalised and
pre-emphasised as every network input; AdamW, linear warm-up then cosine; gradient
norm clipped. The output is the WavLM (with its mask embedding) in Microsoft's official
``{"cfg", "model"}`` checkpoint format (:func:`ssrl.models.wavlm.official_checkpoint`),
which the WavLM systems import like ``WavLM-Large.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

from .. import SAMPLE_RATE
from ..data import EpochDataset, make_crop, normalise_waveform, seconds_to_samples
from ..fileio import save_torch
from ..kmeans import kmeans
from ..manifest import check_audio_exists, read_wav_scp
from ..models.wavlm import TINY_CONFIG, WavLM, check_conv_layers
from ..models.wavlm_checkpoint import load_wavlm, official_checkpoint
from ..progress import Progress
from . import schedules
from .config import check_bounds, config_from_dict
from .optim import decay_param_groups
from .stage import Stage, file_digest

LOG_MEL_FLOOR = 1e-6  # torchaudio MFCC(log_mels=True): log(mel + 1e-6)
STD_FLOOR = 1e-5  # per-dimension standard deviations of the MFCC frames are at least this


@dataclass
class PretrainConfig:
    """The ``wavlm.pretrain:`` config section (the demo's values are in config/config.yaml).

    epochs, batch_size (global crops per step), crop_s (seconds per crop; shorter utterances
    are tiled), lr (AdamW peak), lr_final (end of the cosine, a fraction of lr), warmup_epochs
    (linear warm-up from 0), weight_decay (weights only), clip_grad (global gradient norm),
    n_units (k-means units), n_mfcc / n_mels (MFCC coefficients / mel bands), kmeans_frames
    (frames sampled for k-means; 0: all), kmeans_iter (Lloyd iterations at most), mask_prob /
    mask_length (span masking, :func:`span_mask`), unmasked_weight (weight of the unmasked frames'
    cross-entropy, :func:`masked_prediction_loss`), conv_layers (the tiny WavLM's CNN feature
    extractor, ``[[channels, kernel, stride], ...]``; default ssrl.models.wavlm.TINY_CONFIG's), seed.
    """

    epochs: int = 4
    batch_size: int = 16
    crop_s: float = 2.0
    lr: float = 2e-3
    lr_final: float = 0.05
    warmup_epochs: int = 1
    weight_decay: float = 0.01
    clip_grad: float = 10.0
    n_units: int = 100
    n_mfcc: int = 13
    n_mels: int = 40
    kmeans_frames: int = 100000
    kmeans_iter: int = 50
    mask_prob: float = 0.8
    mask_length: int = 10
    unmasked_weight: float = 0.0
    conv_layers: list = field(
        default_factory=lambda: [list(layer) for layer in TINY_CONFIG["extractor_conv_layer_config"]]
    )
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "wavlm.pretrain") -> PretrainConfig:
        """Validate and build; errors name ``where.key``."""
        cfg = config_from_dict(cls, d, where)
        check_bounds(
            cfg,
            where,
            at_least_one=("epochs", "batch_size", "n_units", "n_mfcc", "n_mels", "kmeans_iter", "mask_length"),
            non_negative=("warmup_epochs", "kmeans_frames", "seed", "weight_decay", "mask_prob", "unmasked_weight"),
            positive=("crop_s", "lr", "lr_final", "clip_grad"),
        )
        if cfg.warmup_epochs > cfg.epochs:
            raise ValueError(f"{where}.warmup_epochs ({cfg.warmup_epochs}) exceeds epochs ({cfg.epochs})")
        cfg.conv_layers = check_conv_layers(cfg.conv_layers, f"{where}.conv_layers")
        if cfg.n_mfcc > cfg.n_mels:
            raise ValueError(f"{where}.n_mfcc ({cfg.n_mfcc}) exceeds n_mels ({cfg.n_mels})")
        return cfg


# ------------------------------------------------------------------------- targets


def frame_geometry(conv_layers: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(receptive field, stride) in samples of a CNN given as ``[[channels, kernel, stride], ...]``:
    output frame ``t`` sees samples ``[t * stride, t * stride + field)``. WavLM: (400, 320)."""
    field, stride = 1, 1
    for _, kernel, step in conv_layers:
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


class UnitTargets:
    """Frame-level k-means units of MFCC features on a WavLM's frame grid.

    ``features(wave (S,)) -> (T, 3 n_mfcc)``: MFCCs + deltas + delta-deltas of the frames
    ``[t * hop, t * hop + window)``, ``T = (S - window) // hop + 1``. :meth:`fit` learns the
    standardisation and the k-means centres from a list of such matrices; ``units(wave)
    -> (T,)`` int64 nearest centres of the standardised, L2-normalised features (as k-means
    assigned them).
    """

    def __init__(self, window: int, hop: int, n_mfcc: int = 13, n_mels: int = 40):
        self.window, self.hop = int(window), int(hop)
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE,
            n_mfcc=n_mfcc,
            log_mels=True,
            melkwargs={
                "n_fft": self.window,
                "win_length": self.window,
                "hop_length": self.hop,
                "n_mels": n_mels,
                "center": False,
                "window_fn": torch.hann_window,
            },
        )
        self.mean: torch.Tensor | None = None  # (3 n_mfcc,)
        self.std: torch.Tensor | None = None  # (3 n_mfcc,)
        self.centers: torch.Tensor | None = None  # (n_units, 3 n_mfcc)

    def num_frames(self, num_samples: int) -> int:
        return (num_samples - self.window) // self.hop + 1

    @torch.no_grad()
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """(S,) float32 waveform -> (T, 3 n_mfcc) float32; S must hold at least one window."""
        if wave.dim() != 1 or wave.shape[0] < self.window:
            raise ValueError(
                f"UnitTargets: expected a waveform (samples,) of at least {self.window} samples, "
                f"got shape {tuple(wave.shape)}"
            )
        c = self.mfcc(wave.float())  # (n_mfcc, T)
        d1 = torchaudio.functional.compute_deltas(c)
        d2 = torchaudio.functional.compute_deltas(d1)
        return torch.cat([c, d1, d2]).T.contiguous()

    def fit(
        self, frames: Sequence[torch.Tensor], n_units: int, seed: int = 0, max_iter: int = 50, max_frames: int = 0
    ) -> dict[str, float]:
        """Standardisation and k-means centres from feature matrices ``[(T_i, dim)]``: at most
        ``max_frames`` frames drawn without replacement (0: all). Returns fit statistics
        (frames, iterations, fraction of units left empty)."""
        x = torch.cat(list(frames)).numpy()
        if max_frames and len(x) > max_frames:
            x = x[np.sort(np.random.default_rng([seed, 17]).choice(len(x), max_frames, replace=False))]
        if len(x) < n_units:
            raise ValueError(f"UnitTargets: {len(x)} frames cannot make {n_units} units")
        mean = x.mean(0, dtype=np.float64)
        std = np.maximum(x.std(0, dtype=np.float64), STD_FLOOR)
        result = kmeans((x - mean) / std, n_units, seed=seed, max_iter=max_iter, progress=False)
        self.set_state(
            {
                "mean": torch.from_numpy(mean).float(),
                "std": torch.from_numpy(std).float(),
                "centers": torch.from_numpy(result.centers),
            }
        )
        used = np.bincount(result.labels, minlength=n_units) > 0
        return {"frames": float(len(x)), "kmeans_iter": float(result.n_iter), "empty_units": float(1 - used.mean())}

    @torch.no_grad()
    def units(self, wave: torch.Tensor) -> torch.Tensor:
        """(S,) waveform -> (T,) int64 unit of each frame (after :meth:`fit` or :meth:`set_state`)."""
        if self.centers is None:
            raise RuntimeError("UnitTargets: fit() or set_state() first")
        x = F.normalize((self.features(wave) - self.mean) / self.std, dim=1)  # (T, dim) unit rows
        return torch.cdist(x, self.centers).argmin(dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "centers": self.centers}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.mean, self.std, self.centers = state["mean"], state["std"], state["centers"]


def span_mask(num_frames: int, mask_prob: float, mask_length: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) bool mask of spans: ``n = int(mask_prob * T / mask_length + u)`` (u ~ U[0, 1)), at least
    one and at most ``T - L + 1``, distinct start frames drawn uniformly from ``[0, T - L]``, each
    masking ``L = min(mask_length, T)`` frames; spans may overlap, so at most ``n * L`` frames."""
    if num_frames < 1:
        raise ValueError(f"span_mask: num_frames must be >= 1, got {num_frames}")
    length = min(mask_length, num_frames)
    starts_possible = num_frames - length + 1
    n = int(mask_prob * num_frames / mask_length + rng.random())
    n = min(max(n, 1), starts_possible)
    mask = np.zeros(num_frames, dtype=bool)
    for start in rng.choice(starts_possible, size=n, replace=False):
        mask[start : start + length] = True
    return mask


class MaskedUnitDataset(EpochDataset):
    """Clean crops with unit targets and span masks.

    Item (a dict, default collate): ``wave`` (S,) float32 (a random ``crop_samples`` crop,
    tiled when the utterance is shorter, peak-normalised and pre-emphasised), ``units`` (T,)
    int64 (:meth:`UnitTargets.units` of that crop), ``mask`` (T,) bool (:func:`span_mask`);
    every draw from ``item_rng(seed, epoch, index)``.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: UnitTargets,
        crop_samples: int,
        mask_prob: float,
        mask_length: int,
        seed: int = 0,
    ):
        super().__init__(paths, seed)
        self.targets = targets
        self.crop_samples = int(crop_samples)
        self.num_frames = targets.num_frames(self.crop_samples)
        if self.num_frames < 1:
            raise ValueError(f"MaskedUnitDataset: a crop of {crop_samples} samples holds no frame")
        self.mask_prob, self.mask_length = float(mask_prob), int(mask_length)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        wave = torch.from_numpy(make_crop(self.load(index), self.crop_samples, rng))
        mask = span_mask(self.num_frames, self.mask_prob, self.mask_length, rng)
        return {"wave": wave, "units": self.targets.units(wave), "mask": torch.from_numpy(mask)}


# --------------------------------------------------------------------------- model


class MaskedPredictionModel(nn.Module):
    """WavLM + mask embedding + unit projection: ``(wave (B, S), mask (B, T)) -> logits (B, T, n_units)``.

    The mask embedding (D,) replaces the masked frames' projected CNN features; the last
    transformer layer's output (through the encoder's final layer norm when the model is
    pre-LN, as WavLM Large) goes through a linear projection to the unit logits.
    """

    def __init__(self, wavlm: WavLM, n_units: int):
        super().__init__()
        self.wavlm = wavlm
        self.mask_embedding = nn.Parameter(torch.empty(wavlm.dim).uniform_())
        self.final_norm = wavlm.config["encoder_layer_norm_first"]
        if self.final_norm:
            wavlm.encoder.transformer.layer_norm.requires_grad_(True)
        self.projection = nn.Linear(wavlm.dim, n_units)

    def forward(self, wave: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.wavlm(wave, mask=mask, mask_embedding=self.mask_embedding)  # (L, B, T, D)
        x = hidden[-1]
        if self.final_norm:
            x = self.wavlm.encoder.transformer.layer_norm(x)
        return self.projection(x)


def masked_prediction_loss(
    logits: torch.Tensor, units: torch.Tensor, mask: torch.Tensor, unmasked_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``logits`` (B, T, K) against ``units`` (B, T): the mean over the frames where
    ``mask`` (B, T) is True, plus ``unmasked_weight`` times the mean over the other frames (HuBERT's
    weighting of the two terms; 0: masked frames only, none unmasked: no second term) -> (loss,
    accuracy of the argmax on the masked frames, a fraction)."""
    if not mask.any():
        raise ValueError("masked_prediction_loss: no frame is masked")
    picked, target = logits[mask], units[mask]  # (M, K), (M,)
    loss = F.cross_entropy(picked.float(), target)
    if unmasked_weight > 0.0 and not mask.all():
        loss = loss + unmasked_weight * F.cross_entropy(logits[~mask].float(), units[~mask])
    accuracy = (picked.detach().argmax(dim=1) == target).float().mean()
    return loss, accuracy


# --------------------------------------------------------------------------- stage


class WavLMPretrainStage(Stage):
    """Masked-prediction pre-training (module docstring) on the shared trainer.

    ``hparams``: ``{"pretrain": {...} (PretrainConfig), "num_layers": L (transformer layers
    of the tiny WavLM, ssrl.models.wavlm.TINY_CONFIG), "train": ...}``; ``train_scp``: the
    training wav.scp. Logged per step: loss, ``masked_accuracy`` (argmax = target unit on
    the masked frames), ``masked_fraction``. Writes the official-format WavLM checkpoint.
    """

    name = "wavlm_pretrain"
    step_metrics = ("masked_accuracy", "masked_fraction")

    def __init__(self, hparams: Mapping[str, Any], train_scp: str | Path):
        if "pretrain" not in hparams or "num_layers" not in hparams:
            raise ValueError("WavLM pre-training hparams: need the 'pretrain' section and 'num_layers'")
        self.hparams = dict(hparams)
        self.cfg = PretrainConfig.from_dict(hparams["pretrain"])
        self.num_layers = int(hparams["num_layers"])
        self.epochs, self.batch_size, self.seed = self.cfg.epochs, self.cfg.batch_size, self.cfg.seed
        self.train_scp = Path(train_scp)

    def build(self) -> None:
        cfg = self.cfg
        scp = read_wav_scp(self.train_scp)
        check_audio_exists(scp, self.train_scp)
        self.inputs_digest = file_digest(self.train_scp)
        if len(scp) < cfg.batch_size:
            raise ValueError(
                f"{self.train_scp}: {len(scp)} utterances cannot fill one batch of "
                f"wavlm.pretrain.batch_size={cfg.batch_size}"
            )
        wavlm = load_wavlm(None, self.num_layers, tiny=True, conv_layers=cfg.conv_layers)
        window, hop = frame_geometry(wavlm.config["extractor_conv_layer_config"])
        self.targets = UnitTargets(window, hop, cfg.n_mfcc, cfg.n_mels)
        crop = seconds_to_samples(cfg.crop_s)
        if self.targets.num_frames(crop) != wavlm.num_frames(crop):
            raise ValueError(
                f"wavlm.pretrain.crop_s={cfg.crop_s}: {self.targets.num_frames(crop)} MFCC frames "
                f"but {wavlm.num_frames(crop)} WavLM frames"
            )
        # The dataset first: its audio (held in memory when it fits) also feeds the unit fit.
        self.train_set = MaskedUnitDataset(
            list(scp.values()), self.targets, crop, cfg.mask_prob, cfg.mask_length, seed=cfg.seed
        )
        self._fit_units(self.train_set)
        self.student = MaskedPredictionModel(wavlm, cfg.n_units)

    def _fit_units(self, dataset: MaskedUnitDataset) -> None:
        """MFCC frames of every whole training utterance (as extraction reads them) -> k-means units."""
        frames = []
        meter = Progress(len(dataset), "MFCC frames", unit="files", every_s=30.0, enabled=self.env.is_main)
        for index in range(len(dataset)):
            wave = torch.from_numpy(normalise_waveform(dataset.load(index)))
            if wave.shape[0] >= self.targets.window:
                frames.append(self.targets.features(wave))
            meter.update()
        if not frames:
            raise ValueError(f"{self.train_scp}: no utterance holds one {self.targets.window}-sample frame")
        stats = self.targets.fit(
            frames,
            self.cfg.n_units,
            seed=self.cfg.seed,
            max_iter=self.cfg.kmeans_iter,
            max_frames=self.cfg.kmeans_frames,
        )
        meter.write(units=self.cfg.n_units, **stats)

    def configure_optimizer(self, student: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            decay_param_groups(student, self.cfg.weight_decay), lr=0.0, betas=(0.9, 0.98), eps=1e-6
        )

    def lr_schedule(self, steps_per_epoch: int) -> np.ndarray:
        return schedules.warmup_cosine(
            self.cfg.lr,
            self.cfg.lr * self.cfg.lr_final,
            self.epochs * steps_per_epoch,
            self.cfg.warmup_epochs * steps_per_epoch,
        )

    def train_step(self, student: nn.Module, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = student(batch["wave"], batch["mask"])  # (B, T, K)
        loss, accuracy = masked_prediction_loss(logits, batch["units"], batch["mask"], self.cfg.unmasked_weight)
        return loss, {"masked_accuracy": accuracy, "masked_fraction": batch["mask"].float().mean()}

    def after_backward(self, epoch: int, step: int) -> None:
        nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.clip_grad)

    def state_dict(self) -> dict[str, Any]:
        return {"targets": self.targets.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.targets.set_state(state["targets"])

    def write_model_file(self, path: Path) -> None:
        model = self.student
        save_torch(
            path,
            official_checkpoint(
                model.wavlm,
                model.mask_embedding,
                mask_prob=self.cfg.mask_prob,
                mask_length=self.cfg.mask_length,
                mask_selection="static",
            ),
        )
