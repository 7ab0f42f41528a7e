"""Log-mel front-end of the ECAPA systems (SPEC 2.2).

The mel power spectrogram is computed here, on the training device; the log,
the per-utterance instance normalisation and the detach happen inside the
encoder (``ssrl.models.ecapa``), as in the reference model.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from . import SAMPLE_RATE


class MelFrontend(nn.Module):
    """Waveform ``(batch, samples)`` -> mel power spectrogram ``(batch, n_mels, frames)``.

    Hann window of ``win_length`` samples zero-padded to ``n_fft``, hop
    ``hop_length``, power 2, no centre padding: frame ``t`` covers samples
    ``[t * hop, t * hop + n_fft)``, so a frame depends only on its own samples and
    a padded batch gives, for each utterance, exactly the frames of that
    utterance alone (see :meth:`num_frames`).
    """

    def __init__(self, n_fft: int = 512, win_length: int = 400, hop_length: int = 160, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float = 8000.0, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
            f_min=f_min, f_max=f_max, n_mels=n_mels, window_fn=torch.hann_window, power=2.0,
            center=False, pad=0,
        )

    @property
    def out_dim(self) -> int:
        return self.n_mels

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced from ``num_samples`` samples (elementwise for a tensor of lengths)."""
        if isinstance(num_samples, torch.Tensor):
            return torch.div(num_samples - self.n_fft, self.hop_length, rounding_mode="floor") + 1
        return (num_samples - self.n_fft) // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"MelFrontend expects (batch, samples), got shape {tuple(wave.shape)}")
        if wave.shape[1] < self.n_fft:
            raise ValueError(f"waveform of {wave.shape[1]} samples is shorter than one frame ({self.n_fft})")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            return self.mel(wave.float())
