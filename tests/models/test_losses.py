"""Codec losses: the post's spectral loss against its formula, the l1-log one, SI-SDR, log-mel L1
and the combined objective.

Shape symbols: B batch, T samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from codecflow.models.losses import (
    SPECTRAL_LOSSES,
    STFT_SETTINGS,
    CodecLoss,
    codec_loss,
    mel_l1,
    multi_scale_spectral_loss,
    post_spectral_loss,
    si_sdr,
    spectral_loss,
)

SR = 16_000


def _tone(b: int = 2, t: int = 4000, seed: int = 0) -> Tensor:
    """float `[B, 1, T]`: a harmonic tone with a little noise, a different pitch per example."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / SR  # [T]
    rows = [
        0.3 * torch.sin(2 * math.pi * (150 + 40 * i) * time)
        + 0.1 * torch.sin(2 * math.pi * 2 * (150 + 40 * i) * time)
        + 0.01 * torch.randn(t, generator=g)
        for i in range(b)
    ]
    return torch.stack(rows)[:, None]  # [B, 1, T]


def test_stft_settings_are_the_posts() -> None:
    assert STFT_SETTINGS == ((2048, 240, 1200), (1024, 120, 600), (512, 50, 240))


def _formula_magnitudes(wav: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """float64 `[W, G]`: |STFT| as torchaudio's Spectrogram(power=1) defines it, from numpy
    alone: reflect-pad n_fft / 2 each side, a periodic Hann of `win` centred in n_fft, frames
    every `hop` samples, one-sided |DFT|."""
    padded = np.pad(wav, n_fft // 2, mode="reflect")
    n = np.arange(win)
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)
    frames = 1 + (len(padded) - n_fft) // hop
    rows = [padded[i * hop : i * hop + n_fft] * window for i in range(frames)]
    return np.abs(np.fft.rfft(np.stack(rows), axis=1))  # [W, G]


def _formula_loss(x: np.ndarray, y: np.ndarray) -> float:
    """The post's loss (codec.py MultiscaleSpectrogramLoss) on `[B, T]` float64 arrays."""
    per_scale = []
    for n_fft, hop, win in STFT_SETTINGS:
        diffs = [
            _formula_magnitudes(a, n_fft, hop, win) - _formula_magnitudes(b, n_fft, hop, win)
            for a, b in zip(x, y, strict=True)
        ]
        per_scale.append(math.sqrt(float(np.mean(np.square(np.stack(diffs))))))
    return float(np.mean(per_scale))


def test_the_post_spectral_loss_equals_its_formula_on_a_fixed_input() -> None:
    x = _tone()
    y = 0.8 * x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    expected = _formula_loss(x[:, 0].double().numpy(), y[:, 0].double().numpy())
    assert float(post_spectral_loss(x, y)) == pytest.approx(expected, rel=1e-5)
    assert float(spectral_loss(x, y, "post")) == float(post_spectral_loss(x, y))
    assert float(post_spectral_loss(y, x)) == pytest.approx(expected, rel=1e-5)  # symmetric
    assert SPECTRAL_LOSSES == ("post", "l1-log")


def test_the_post_spectral_loss_gradient_equals_its_formula_s() -> None:
    """d loss / d y at a few samples against central differences of the numpy formula."""
    x = _tone(b=1, t=3000)
    y = 0.7 * x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    y.requires_grad_(True)
    post_spectral_loss(x, y).backward()
    assert y.grad is not None
    xn, yn = x[:, 0].double().numpy(), y.detach()[:, 0].double().numpy()
    for i in (5, 1500, 2990):  # near the reflected edges and in the middle
        up, down = yn.copy(), yn.copy()
        up[0, i] += 1e-4
        down[0, i] -= 1e-4
        numeric = (_formula_loss(xn, up) - _formula_loss(xn, down)) / 2e-4
        assert float(y.grad[0, 0, i]) == pytest.approx(numeric, rel=2e-2, abs=1e-6)


def test_zero_for_identical_signals() -> None:
    x = _tone()
    assert float(post_spectral_loss(x, x.clone())) == 0.0
    assert float(multi_scale_spectral_loss(x, x.clone())) == 0.0
    assert float(mel_l1(x, x.clone(), SR)) == 0.0
    loss = codec_loss(x, x.clone(), torch.tensor(0.0))
    assert isinstance(loss, CodecLoss)
    assert float(loss.total) == 0.0 and float(loss.mse) == 0.0


def test_positive_for_different_signals_and_ordered_by_distortion() -> None:
    x = _tone()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    small, large = x + 0.01 * noise, x + 0.1 * noise
    for fn in (multi_scale_spectral_loss, lambda a, b: mel_l1(a, b, SR)):
        assert 0 < float(fn(small, x)) < float(fn(large, x))


def test_short_signals_work() -> None:
    x = _tone(t=300)  # shorter than every n_fft / 2
    y = _tone(t=300, seed=1) * 0.5
    assert float(multi_scale_spectral_loss(x, y)) > 0
    assert float(mel_l1(x, y, SR)) > 0


def test_si_sdr_of_a_scaled_copy_is_very_high_and_of_noise_is_low() -> None:
    x = _tone(b=3)
    sdr = si_sdr(0.5 * x, x)
    assert sdr.shape == (3,)
    assert bool((sdr > 60).all())
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    assert bool((si_sdr(noise, x) < -10).all())
    # Adding noise at -20 dB relative power gives about 20 dB.
    noisy = x + noise * x.std() * 0.1
    assert si_sdr(noisy, x).mean().item() == pytest.approx(20.0, abs=1.5)


def test_si_sdr_ignores_offsets_and_scale() -> None:
    x = _tone()
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(si_sdr(3.0 * y + 0.2, x), si_sdr(y, x), atol=1e-3)


def test_codec_loss_uses_the_posts_weights() -> None:
    x = _tone()
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    commitment = torch.tensor(0.7)
    loss = codec_loss(y, x, commitment)
    assert torch.allclose(loss.mse, ((y - x) ** 2).mean())
    assert torch.allclose(loss.spectral, post_spectral_loss(x, y))  # the post's by default
    assert torch.allclose(loss.total, loss.mse + loss.spectral + 0.02 * commitment)
    assert float(loss.commitment) == pytest.approx(0.7)
    old = codec_loss(y, x, commitment, spectral="l1-log")
    assert torch.allclose(old.spectral, multi_scale_spectral_loss(y, x))
    # The l1-log loss weighs the noise's quiet, high bins far more than the post's.
    assert float(old.spectral) > 3 * float(loss.spectral)


def test_the_post_spectral_loss_zero_pads_what_reflection_cannot() -> None:
    x = _tone(b=1, t=600)  # shorter than n_fft / 2 = 1024 of the first setting
    assert (
        math.isfinite(float(post_spectral_loss(x, 0.5 * x)))
        and float(post_spectral_loss(x, 0.5 * x)) > 0
    )


def test_gradients_flow_to_the_reconstruction() -> None:
    x = _tone()
    silent = torch.zeros_like(x)
    for target in (x, silent):
        y = (x * 0.5 + 0.01).requires_grad_(True)
        commitment = torch.tensor(0.3, requires_grad=True)
        loss = codec_loss(y, target, commitment)
        total = loss.total + mel_l1(y, target, SR) - si_sdr(y, x).mean()
        total.backward()
        assert y.grad is not None and commitment.grad is not None
        assert torch.isfinite(y.grad).all() and float(y.grad.abs().sum()) > 0
        assert float(commitment.grad) == pytest.approx(0.02)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(AssertionError, match="same shape"):
        multi_scale_spectral_loss(torch.zeros(1, 1, 100), torch.zeros(1, 1, 99))
    with pytest.raises(AssertionError, match="same shape"):
        post_spectral_loss(torch.zeros(1, 1, 100), torch.zeros(1, 1, 99))
    with pytest.raises(AssertionError, match="must be one of"):
        spectral_loss(torch.zeros(1, 1, 100), torch.zeros(1, 1, 100), "l2")  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match=r"\[B, 1, T\]"):
        si_sdr(torch.zeros(1, 100), torch.zeros(1, 100))
