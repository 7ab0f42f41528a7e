"""ECAPA-TDNN speaker encoder (docs/method.md §3.1), exact under padding.

Features ``(batch, in_dim, frames)`` -> embeddings ``(batch, emb_dim)``.

Batches of utterances of different lengths are zero-padded to the longest one
and passed with ``lengths`` (frame counts). Every operation along time then
behaves as if each utterance were alone: instance normalisation, the SE means and
the attentive statistics use masked statistics over the valid frames, the
attention softmax ignores padded frames, and the "same" reflect padding of each
convolution reflects at the utterance's own end (per-item reflect indices are
gathered before a padding-free convolution). The result equals one-at-a-time
extraction up to float rounding. BatchNorm is exact in eval mode (running
statistics); in training mode its batch statistics include padded frames, so
training uses equal-length crops (``lengths=None``, the plain fast path).

Building blocks follow SpeechBrain's layout: TDNN block, Res2Net block,
squeeze-excitation, SE-Res2Net block, attentive statistics pooling.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

RES2NET_SCALE = 8
SE_CHANNELS = 128
ATTENTION_CHANNELS = 128
IN_NORM_EPS = 1e-5  # as torch.nn.InstanceNorm1d
STD_EPS = 1e-12  # variance floor before the square root in pooling


class FrameMask:
    """Valid-frame bookkeeping for a padded batch.

    ``lengths`` (batch,) int64 frame counts of a batch padded to ``frames``.
    ``valid`` is a (batch, 1, frames) bool mask; ``count`` the (batch, 1, 1) float
    number of valid frames; reflect-padding indices are built once per padding
    size and reused by every convolution of the forward pass.
    """

    def __init__(self, lengths: torch.Tensor, frames: int):
        self.lengths = lengths
        self.frames = frames
        positions = torch.arange(frames, device=lengths.device)
        self.valid = (positions[None, :] < lengths[:, None]).unsqueeze(1)
        self.count = lengths.to(torch.float32).view(-1, 1, 1)
        self._reflect: dict[int, torch.Tensor] = {}

    def reflect_index(self, pad: int) -> torch.Tensor:
        """(batch, 1, frames + 2 * pad) int64 source frame of each padded position.

        Position ``j`` (``-pad <= j < frames + pad``) reads frame ``-j`` before the
        start and ``2 (L - 1) - j`` past the utterance's own last frame ``L - 1``
        (torch ``reflect`` semantics). Positions that only feed outputs beyond
        ``L`` are clamped into range; their outputs are never used.
        """
        if pad not in self._reflect:
            j = torch.arange(-pad, self.frames + pad, device=self.lengths.device)[None, :]
            last = (self.lengths - 1)[:, None]
            idx = torch.where(j < 0, -j, j)
            idx = torch.where(idx > last, 2 * last - idx, idx)
            self._reflect[pad] = idx.clamp(min=0).minimum(last).unsqueeze(1)
        return self._reflect[pad]

    def zero_padding(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch, C, frames) with padded frames set to 0."""
        return torch.where(self.valid, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def mean_std(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over valid frames of ``x`` (batch, C, frames) -> two (batch, C, 1).

        ``weights`` (batch, C, frames) must be zero on padded frames and sum to 1
        over time; without weights every valid frame counts equally.
        """
        if weights is None:
            weights = self.valid.to(x.dtype) / self.count.to(x.dtype)
        x = self.zero_padding(x)
        mean = (weights * x).sum(dim=2, keepdim=True)
        var = (weights * (x - mean).pow(2)).sum(dim=2, keepdim=True)
        return mean, var.clamp(min=STD_EPS).sqrt()


def _mean_std(
    x: torch.Tensor, mask: FrameMask | None, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Weighted) mean and std over time of ``x`` (batch, C, frames) -> two (batch, C, 1)."""
    if mask is not None:
        return mask.mean_std(x, weights)
    if weights is None:
        mean = x.mean(dim=2, keepdim=True)
        var = (x - mean).pow(2).mean(dim=2, keepdim=True)
    else:
        mean = (weights * x).sum(dim=2, keepdim=True)
        var = (weights * (x - mean).pow(2)).sum(dim=2, keepdim=True)
    return mean, var.clamp(min=STD_EPS).sqrt()


class SameConv1d(nn.Conv1d):
    """Conv1d with "same" reflect padding (odd kernel, stride 1).

    With a :class:`FrameMask` the reflection happens at each utterance's own end.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        if kernel_size % 2 != 1:
            raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=True)
        self.pad = dilation * (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor, mask: FrameMask | None = None) -> torch.Tensor:
        if self.pad:
            if mask is None:
                x = F.pad(x, (self.pad, self.pad), mode="reflect")
            else:
                index = mask.reflect_index(self.pad).expand(x.shape[0], x.shape[1], -1)
                x = x.gather(2, index)
        return super().forward(x)


class TDNNBlock(nn.Module):
    """Conv1d ("same" reflect padding) -> ReLU -> BatchNorm: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.conv = SameConv1d(in_channels, out_channels, kernel_size, dilation)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, mask: FrameMask | None = None) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x, mask)))


class Res2NetBlock(nn.Module):
    """Res2Net: split channels into ``scale`` groups; group 1 passes through, group i >= 2
    goes through its own TDNN block after adding group i-1's output (from group 3 on).
    (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = RES2NET_SCALE):
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Net channels ({channels}) must be divisible by the scale ({scale})")
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor, mask: FrameMask | None = None) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        outputs = [groups[0]]
        previous = None
        for group, block in zip(groups[1:], self.blocks):
            previous = block(group if previous is None else group + previous, mask)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: (masked) mean over time -> Conv1d(C, 128) -> ReLU -> Conv1d(128, C)
    -> sigmoid, multiplied onto the input. (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, bottleneck: int = SE_CHANNELS):
        super().__init__()
        self.squeeze = nn.Conv1d(channels, bottleneck, 1)
        self.excite = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor, mask: FrameMask | None = None) -> torch.Tensor:
        mean, _ = _mean_std(x, mask)  # (B, C, 1)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(mean))))
        return x * gate


class SERes2NetBlock(nn.Module):
    """TDNN(k=1) -> Res2Net(k, d) -> TDNN(k=1) -> SE, plus the residual. (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1)
        self.res2net = Res2NetBlock(channels, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(channels, channels, 1)
        self.se = SEBlock(channels)

    def forward(self, x: torch.Tensor, mask: FrameMask | None = None) -> torch.Tensor:
        y = self.tdnn1(x, mask)
        y = self.res2net(y, mask)
        y = self.tdnn2(y, mask)
        return self.se(y, mask) + x


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling with global context: (B, C, T) -> (B, 2C).

    Attention input = frames concatenated with the utterance mean and std
    (repeated over time); TDNN(3C -> 128) -> tanh -> Conv1d(128 -> C) -> softmax
    over (valid) time; output = weighted mean and weighted std.
    """

    def __init__(self, channels: int, attention_channels: int = ATTENTION_CHANNELS):
        super().__init__()
        self.tdnn = TDNNBlock(3 * channels, attention_channels, 1)
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: FrameMask | None = None) -> torch.Tensor:
        frames = x.shape[2]
        mean, std = _mean_std(x, mask)
        context = torch.cat([x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1)
        scores = self.conv(torch.tanh(self.tdnn(context, mask)))  # (B, C, T)
        if mask is not None:
            scores = scores.masked_fill(~mask.valid, float("-inf"))
        weights = torch.softmax(scores, dim=2)
        mean, std = _mean_std(x, mask, weights)
        return torch.cat([mean, std], dim=1).squeeze(2)


class ECAPATDNN(nn.Module):
    """ECAPA-TDNN: features (batch, in_dim, frames) [+ lengths (batch,) frames] -> (batch, emb_dim).

    Input handling (docs/method.md §2.2): ``log(x + 1e-6)`` if ``log_input``, then per-utterance
    instance normalisation over time for each band (no affine), detached if
    ``detach_norm``. Blocks: TDNN(k5) -> 3 SE-Res2Net blocks (k3; dilations 2, 3, 4)
    -> multi-layer aggregation (3 x channels) -> attentive statistics pooling ->
    BatchNorm -> Conv1d(6 x channels -> emb_dim). Paper size (channels 1024, emb
    512, 80-d input): 22,733,952 parameters.
    """

    KERNELS = (5, 3, 3, 3)
    DILATIONS = (1, 2, 3, 4)

    def __init__(
        self,
        in_dim: int = 80,
        channels: int = 1024,
        emb_dim: int = 512,
        log_input: bool = True,
        detach_norm: bool = True,
    ):
        super().__init__()
        if channels <= 0 or channels % RES2NET_SCALE:
            raise ValueError(f"ECAPA channels must be a positive multiple of {RES2NET_SCALE}, got {channels}")
        if in_dim <= 0 or emb_dim <= 0:
            raise ValueError(f"ECAPA in_dim and emb_dim must be positive, got {in_dim} and {emb_dim}")
        self.in_dim = in_dim
        self.channels = channels
        self.emb_dim = emb_dim
        self.log_input = log_input
        self.detach_norm = detach_norm
        self.block1 = TDNNBlock(in_dim, channels, self.KERNELS[0], self.DILATIONS[0])
        self.blocks = nn.ModuleList(
            SERes2NetBlock(channels, k, d) for k, d in zip(self.KERNELS[1:], self.DILATIONS[1:])
        )
        self.mfa = TDNNBlock(3 * channels, 3 * channels, 1)
        self.pool = AttentiveStatsPool(3 * channels)
        self.pool_norm = nn.BatchNorm1d(6 * channels)
        self.fc = nn.Conv1d(6 * channels, emb_dim, 1)

    @property
    def min_frames(self) -> int:
        """Shortest input (frames) the reflect padding allows."""
        return max(d * (k - 1) // 2 for k, d in zip(self.KERNELS, self.DILATIONS)) + 1

    def _normalise_input(self, x: torch.Tensor, mask: FrameMask | None) -> torch.Tensor:
        """log (optional) + per-utterance, per-band normalisation over time. (B, F, T) -> (B, F, T)."""
        if self.log_input:
            x = torch.log(x + 1e-6)
        if mask is None:
            mean = x.mean(dim=2, keepdim=True)
            var = (x - mean).pow(2).mean(dim=2, keepdim=True)
        else:
            x = mask.zero_padding(x)
            mean = x.sum(dim=2, keepdim=True) / mask.count
            var = mask.zero_padding((x - mean).pow(2)).sum(dim=2, keepdim=True) / mask.count
        x = (x - mean) / torch.sqrt(var + IN_NORM_EPS)
        if mask is not None:
            x = mask.zero_padding(x)
        return x.detach() if self.detach_norm else x

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if features.dim() != 3 or features.shape[1] != self.in_dim:
            raise ValueError(f"ECAPATDNN expects (batch, {self.in_dim}, frames), got {tuple(features.shape)}")
        frames = features.shape[2]
        mask = None
        if lengths is not None:
            lengths = lengths.to(device=features.device, dtype=torch.long)
            if lengths.shape != (features.shape[0],):
                raise ValueError(f"lengths shape {tuple(lengths.shape)} does not match batch {features.shape[0]}")
            shortest, longest = int(lengths.min()), int(lengths.max())
            if longest > frames:
                raise ValueError(f"a length ({longest}) exceeds the padded number of frames ({frames})")
            if shortest < frames:
                mask = FrameMask(lengths, frames)
            frames = shortest
        if frames < self.min_frames:
            raise ValueError(f"input of {frames} frames is shorter than the ECAPA minimum ({self.min_frames})")

        x = self._normalise_input(features.float(), mask)
        x = self.block1(x, mask)
        outputs = []
        for block in self.blocks:
            x = block(x, mask)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=1), mask)
        x = self.pool(x, mask)  # (B, 6C)
        x = self.pool_norm(x)
        return self.fc(x.unsqueeze(2)).squeeze(2)  # (B, emb_dim)
