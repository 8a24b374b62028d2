"""mu-law companding and `MuLawTokenizer`.

Shape symbols: B batch, T samples.
"""

from __future__ import annotations

import math

import pytest
import torch

from models.mulaw import MuLawTokenizer, mulaw_decode, mulaw_encode


def _sine(b: int = 2, t: int = 1600, amplitude: float = 0.8) -> torch.Tensor:
    """float32 [B, 1, T], a 440 Hz sine at 16 kHz with a different phase per row."""
    n = torch.arange(t, dtype=torch.float32)  # [T]
    phase = torch.arange(b, dtype=torch.float32)[:, None]  # [B, 1]
    wav = amplitude * torch.sin(2 * math.pi * 440.0 * n / 16000.0 + phase)  # [B, T]
    return wav[:, None, :]  # [B, 1, T]


def test_tokens_are_int64_in_range_with_same_shape() -> None:
    tok = MuLawTokenizer()
    wav = _sine()
    codes = tok.encode(wav)
    assert codes.dtype == torch.int64
    assert codes.shape == wav.shape == (2, 1, 1600)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 255
    out = tok.decode(codes)
    assert out.dtype == torch.float32
    assert out.shape == (2, 1, 1600)


def test_roundtrip_error_is_within_the_mu_law_bound() -> None:
    wav = _sine()
    out = mulaw_decode(mulaw_encode(wav))
    err = (out - wav).abs()
    # The code grid is 2/255 apart in the companded domain y, so y moves by at most 1/255; with
    # 1 + 255|x| = 256^|y|, that moves x by at most (1 + 255|x|)(256^(1/255) - 1) / 255,
    # i.e. about 8.6e-5 + 2.2% of |x|.
    bound = (1 + 255 * wav.abs()) * (256 ** (1 / 255) - 1) / 255 + 1e-6
    assert bool((err <= bound).all()), float((err - bound).max())
    # 8-bit mu-law gives about 38 dB SNR on a loud sine; ask for 35.
    snr_db = 10 * torch.log10(wav.pow(2).mean() / (out - wav).pow(2).mean())
    assert float(snr_db) > 35.0


def test_endpoints_and_clamping() -> None:
    x = torch.tensor([-1.0, 1.0, -3.0, 2.5])
    assert mulaw_encode(x).tolist() == [0, 255, 0, 255]
    ends = mulaw_decode(torch.tensor([0, 255]))
    assert torch.allclose(ends, torch.tensor([-1.0, 1.0]), atol=1e-6)


def test_silence_maps_to_the_middle_code() -> None:
    codes = MuLawTokenizer().encode(torch.zeros(1, 1, 8))
    assert codes.tolist() == [[[128] * 8]]
    # ... and decodes to (almost) silence: the first step above zero is tiny in mu-law.
    assert float(mulaw_decode(codes).abs().max()) < 1e-4


def test_encode_is_monotonic() -> None:
    x = torch.linspace(-1.0, 1.0, 1_000_001)  # fine enough to reach code 127, x in (-9e-5, 0)
    codes = mulaw_encode(x)
    assert bool((codes[1:] >= codes[:-1]).all())
    assert set(codes.tolist()) == set(range(256))


def test_tokenizer_properties() -> None:
    tok = MuLawTokenizer(sample_rate=16_000)
    assert tok.sample_rate == 16_000
    assert tok.frame_rate == 16_000.0
    assert tok.num_levels == 1
    assert tok.codebook_size == 256
    assert tok.samples_per_frame == 1


def test_bad_ndim_raises_with_the_shape() -> None:
    tok = MuLawTokenizer()
    with pytest.raises(AssertionError, match=r"\(2, 1600\)"):
        tok.encode(torch.zeros(2, 1600))
    with pytest.raises(AssertionError, match=r"\(1, 2, 5\)"):
        tok.encode(torch.zeros(1, 2, 5))  # stereo
    with pytest.raises(AssertionError, match=r"\(5,\)"):
        tok.decode(torch.zeros(5, dtype=torch.int64))
