"""ssrl.features.MelFrontend (SPEC 2.2): shapes, frame count, known answer against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from ssrl.features import MelFrontend


def numpy_mel(x: np.ndarray, n_fft: int = 512, win: int = 400, hop: int = 160, n_mels: int = 80) -> np.ndarray:
    """Reference: Hann(win, periodic) centred in n_fft, frames [t*hop, t*hop+n_fft), |rfft|^2, HTK mel."""
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    n_frames = (len(x) - n_fft) // hop + 1
    frames = np.stack([x[t * hop: t * hop + n_fft] for t in range(n_frames)]).astype(np.float64)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, n_fft/2+1)
    fbank = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, 8000.0, n_mels, 16000,
                                                  norm=None, mel_scale="htk").double().numpy()
    return (power @ fbank).T  # (n_mels, frames)


@pytest.fixture
def wave() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    return (0.5 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.randn(16000, generator=g)).unsqueeze(0)


def test_shape_and_num_frames(wave):
    fe = MelFrontend()
    out = fe(wave.repeat(3, 1))
    assert out.shape == (3, 80, (16000 - 512) // 160 + 1) == (3, 80, 97)
    assert fe.num_frames(16000) == 97 and fe.out_dim == 80
    assert fe.num_frames(512) == 1 and fe.num_frames(671) == 1 and fe.num_frames(672) == 2
    np.testing.assert_array_equal(fe.num_frames(torch.tensor([512, 672, 16000])), [1, 2, 97])


def test_known_answer_against_numpy_stft(wave):
    out = MelFrontend()(wave)[0].double().numpy()
    ref = numpy_mel(wave[0].numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_small_config_known_answer(wave):
    fe = MelFrontend(n_fft=256, win_length=200, hop_length=80, n_mels=24)
    x = wave[:, :4000]
    ref = numpy_mel(x[0].numpy(), n_fft=256, win=200, hop=80, n_mels=24)
    np.testing.assert_allclose(fe(x)[0].double().numpy(), ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_padded_batch_gives_each_utterance_its_own_frames(wave):
    fe = MelFrontend()
    short = wave[:, :9000]
    batch = torch.zeros(2, 16000)
    batch[0] = wave[0]
    batch[1, :9000] = short[0]
    out = fe(batch)
    n = fe.num_frames(9000)
    np.testing.assert_allclose(out[1, :, :n].numpy(), fe(short)[0].numpy(), rtol=1e-5, atol=1e-6)


def test_bad_input_shapes():
    fe = MelFrontend()
    with pytest.raises(ValueError, match="batch, samples"):
        fe(torch.zeros(16000))
    with pytest.raises(ValueError, match="shorter than one frame"):
        fe(torch.zeros(1, 511))
