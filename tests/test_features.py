"""ssrl.features.MelFrontend (docs/method.md §2.2): shapes, frame count, known answers against numpy and
torchaudio's own centred MelSpectrogram, per-utterance padding of a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from ssrl.features import MelFrontend, reflect_pad_ends


def numpy_mel(x: np.ndarray, n_fft: int = 512, win: int = 400, hop: int = 160, n_mels: int = 80) -> np.ndarray:
    """Reference: x reflect-padded by n_fft/2 at both ends, Hann(win, periodic) centred in n_fft,
    frames [t*hop, t*hop+n_fft) of the padded signal, |rfft|^2, HTK mel."""
    x = np.pad(x, n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    n_frames = (len(x) - n_fft) // hop + 1
    frames = np.stack([x[t * hop : t * hop + n_fft] for t in range(n_frames)]).astype(np.float64)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, n_fft/2+1)
    fbank = (
        torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, 8000.0, n_mels, 16000, norm=None, mel_scale="htk")
        .double()
        .numpy()
    )
    return (power @ fbank).T  # (n_mels, frames)


@pytest.fixture
def wave() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    return (0.5 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.randn(16000, generator=g)).unsqueeze(0)


def test_shape_and_num_frames(wave):
    fe = MelFrontend()
    out = fe(wave.repeat(3, 1))
    assert out.shape == (3, 80, 16000 // 160 + 1) == (3, 80, 101)
    assert fe.num_frames(16000) == 101 and fe.num_frames(32000) == 201 and fe.out_dim == 80
    assert fe.num_frames(256) == 0 and fe.num_frames(257) == 2 and fe.num_frames(319) == 2 and fe.num_frames(320) == 3
    np.testing.assert_array_equal(fe.num_frames(torch.tensor([256, 257, 320, 16000])), [0, 2, 3, 101])


def test_equals_torchaudio_centred_mel_spectrogram():
    """docs/method.md §2.2: torchaudio's MelSpectrogram with its default centre (reflect) padding; 2 s -> 201 frames."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 32000, generator=g)
    ref = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=160, f_min=0, f_max=8000, pad=0, n_mels=80
    )(x)
    out = MelFrontend()(x)
    assert out.shape == ref.shape == (1, 80, 201)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))


def test_known_answer_against_numpy_stft(wave):
    out = MelFrontend()(wave)[0].double().numpy()
    ref = numpy_mel(wave[0].numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_small_config_known_answer(wave):
    fe = MelFrontend(n_fft=256, win_length=200, hop_length=80, n_mels=24)
    x = wave[:, :4000]
    ref = numpy_mel(x[0].numpy(), n_fft=256, win=200, hop=80, n_mels=24)
    np.testing.assert_allclose(fe(x)[0].double().numpy(), ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_reflect_pad_ends_pads_each_row_at_its_own_length():
    x = torch.arange(1.0, 13.0).reshape(2, 6)
    out = reflect_pad_ends(x, 2, torch.tensor([6, 4]))
    assert out.tolist() == [[3, 2, 1, 2, 3, 4, 5, 6, 5, 4], [9, 8, 7, 8, 9, 10, 9, 8, 0, 0]]
    torch.testing.assert_close(reflect_pad_ends(x, 2), reflect_pad_ends(x, 2, torch.tensor([6, 6])))


def test_padded_batch_gives_each_utterance_its_own_frames(wave):
    fe = MelFrontend()
    short = wave[:, :9000]
    batch = torch.zeros(2, 16000)
    batch[0] = wave[0]
    batch[1, :9000] = short[0]
    out = fe(batch, torch.tensor([16000, 9000]))
    n = fe.num_frames(9000)
    assert out.shape[2] == fe.num_frames(16000)
    np.testing.assert_allclose(out[0].numpy(), fe(wave)[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1, :, :n].numpy(), fe(short)[0].numpy(), rtol=1e-5, atol=1e-6)
    # Without lengths the zeros after the short utterance would be reflected: its last frames differ.
    blind = fe(batch)
    assert not np.allclose(blind[1, :, n - 1].numpy(), out[1, :, n - 1].numpy(), rtol=1e-3)


def test_bad_input_shapes():
    fe = MelFrontend()
    with pytest.raises(ValueError, match="batch, samples"):
        fe(torch.zeros(16000))
    with pytest.raises(ValueError, match="256 samples is too short"):
        fe(torch.zeros(1, 256))
    with pytest.raises(ValueError, match="200 samples is too short"):
        fe(torch.zeros(2, 16000), torch.tensor([16000, 200]))
