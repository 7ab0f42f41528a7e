"""Log-mel front-end of the ECAPA systems (docs/method.md §2.2).

The mel power spectrogram is computed here, on the training device; the log,
the per-utterance instance normalisation and the detach happen inside the
encoder (``ssrl.models.ecapa``), as in the reference model.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

from . import SAMPLE_RATE


def reflect_pad_ends(wave: torch.Tensor, pad: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Reflect-pad every utterance at its own two ends: ``(B, S)`` -> ``(B, S + 2 * pad)``.

    Row ``i`` becomes its first ``lengths[i]`` samples (all ``S`` when ``lengths`` is None)
    reflect-padded by ``pad`` at both ends (``torch.nn.functional.pad`` mode ``reflect``),
    followed by zeros. Needs every length > ``pad``.
    """
    if lengths is None:
        return F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    n = lengths.to(device=wave.device, dtype=torch.long)[:, None]  # (B, 1)
    pos = torch.arange(wave.shape[1] + 2 * pad, device=wave.device)[None, :] - pad  # (1, S + 2 pad)
    src = pos.abs()  # reflect at the start
    src = torch.where(src >= n, 2 * (n - 1) - src, src)  # reflect at the end
    out = wave.gather(1, src.clamp(0, wave.shape[1] - 1))
    return out.masked_fill(pos >= n + pad, 0.0)


class MelFrontend(nn.Module):
    """Waveform ``(batch, samples)`` [+ lengths ``(batch,)``] -> mel power spectrogram
    ``(batch, n_mels, frames)``.

    Hann window of ``win_length`` samples zero-padded to ``n_fft``, hop
    ``hop_length``, power 2, and torchaudio's default centring: each utterance is
    reflect-padded by ``n_fft // 2`` samples at both ends, so ``n`` samples give
    ``n // hop + 1`` frames (201 for 2 s) and the result equals
    ``torchaudio.transforms.MelSpectrogram(..., center=True, pad_mode="reflect")``.
    In a zero-padded batch, ``lengths`` (samples) makes each utterance padded at its
    own end, so its first :meth:`num_frames` frames are exactly those of the
    utterance alone.
    """

    def __init__(
        self,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        sample_rate: int = SAMPLE_RATE,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        # The centre padding is done by reflect_pad_ends (per utterance), not by torchaudio.
        # Its window and mel filterbank (the model file's buffers) are used by _mel_power, not its forward.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            window_fn=torch.hann_window,
            power=2.0,
            center=False,
            pad=0,
        )

    @property
    def out_dim(self) -> int:
        return self.n_mels

    @property
    def pad(self) -> int:
        """Samples of reflect padding at each end of an utterance."""
        return self.n_fft // 2

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced from ``num_samples`` samples: ``n // hop + 1``, or 0 when ``n`` is too
        short to be reflect-padded (``n <= n_fft // 2``); elementwise for a tensor of lengths."""
        if isinstance(num_samples, torch.Tensor):
            frames = torch.div(num_samples, self.hop_length, rounding_mode="floor") + 1
            return torch.where(num_samples > self.pad, frames, torch.zeros_like(frames))
        return num_samples // self.hop_length + 1 if num_samples > self.pad else 0

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"MelFrontend expects (batch, samples), got shape {tuple(wave.shape)}")
        shortest = wave.shape[1] if lengths is None else int(lengths.min())
        if shortest <= self.pad:
            raise ValueError(
                f"waveform of {shortest} samples is too short for one frame (needs more than "
                f"{self.pad} samples for the reflect padding)"
            )
        with torch.autocast(device_type=wave.device.type, enabled=False):
            return self._mel_power(reflect_pad_ends(wave.float(), self.pad, lengths))

    def _mel_power(self, padded: torch.Tensor) -> torch.Tensor:
        """``self.mel`` on the padded waveform ``(batch, samples)``, with the power taken as
        real^2 + imag^2 of the STFT (torchaudio takes ``abs()`` of the complex STFT and squares it:
        the same values to float rounding, 3-4x slower on CPU, about 6 % of an SSRL training step)."""
        spec = self.mel.spectrogram
        stft = torch.stft(
            padded,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window=spec.window,
            center=False,
            return_complex=True,
        )
        power = stft.real.square() + stft.imag.square()  # (batch, n_fft // 2 + 1, frames)
        return torch.matmul(power.transpose(1, 2), self.mel.mel_scale.fb).transpose(1, 2)
