"""Codec losses: multi-scale spectral, SI-SDR, log-mel L1 and the combined objective.

Shape symbols: B batch, T samples.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from codecflow.models.losses import (
    STFT_SETTINGS,
    CodecLoss,
    codec_loss,
    mel_l1,
    multi_scale_spectral_loss,
    si_sdr,
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


def test_zero_for_identical_signals() -> None:
    x = _tone()
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
    assert torch.allclose(loss.spectral, multi_scale_spectral_loss(y, x))
    assert torch.allclose(loss.total, loss.mse + loss.spectral + 0.02 * commitment)
    assert float(loss.commitment) == pytest.approx(0.7)


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
    with pytest.raises(AssertionError, match=r"\[B, 1, T\]"):
        si_sdr(torch.zeros(1, 100), torch.zeros(1, 100))
