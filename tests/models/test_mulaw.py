"""mu-law companding and `MuLawTokenizer`.

Shape symbols: B batch, T samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codecflow.models.mulaw import (
    MuLawTokenizer,
    mulaw_decode,
    mulaw_decode_post,
    mulaw_encode,
    mulaw_encode_post,
)


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


# --------------------------------------------------------------------------------------------
# The post's quantiser (librosa mu_compress / mu_expand with quantize=True)
# --------------------------------------------------------------------------------------------


def _librosa_formula_tokens(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """librosa.mu_compress(x, mu, quantize=True) + 128 (nanoGPTaudio tokenizer.py), restated."""
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    edges = np.linspace(-1, 1, num=mu + 1, endpoint=True)
    return np.digitize(y, edges, right=True) - (mu + 1) // 2 + 128


def test_post_tokens_equal_the_librosa_formula() -> None:
    x = np.concatenate(
        [
            np.random.default_rng(0).uniform(-1, 1, 20_000),
            np.random.default_rng(1).normal(0, 0.05, 20_000).clip(-1, 1),  # speech-like levels
            np.array([-1.0, -0.5, 0.0, 1e-9, -1e-9, 0.5, 1.0]),
        ]
    )
    got = mulaw_encode_post(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, _librosa_formula_tokens(x))
    # Pinned points: -1 -> 0, silence -> 128, 1 -> 255 (the first edge at or above y).
    assert mulaw_encode_post(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def test_post_tokens_are_torchaudios_plus_one_on_about_half() -> None:
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, 50_000))
    diff = mulaw_encode_post(x) - mulaw_encode(x)
    assert set(diff.unique().tolist()) <= {0, 1}
    assert 0.4 < diff.double().mean().item() < 0.6


def test_post_decode_is_librosa_mu_expand_on_the_128_grid() -> None:
    q = torch.arange(256)
    y = (q.double() - 128) / 128  # librosa mu_expand(quantize=True): y * 2 / (1 + mu)
    want = torch.sign(y) / 255 * (256 ** y.abs() - 1)
    torch.testing.assert_close(mulaw_decode_post(q), want.float())
    assert mulaw_decode_post(torch.tensor([128])).item() == 0.0
    assert mulaw_decode_post(torch.tensor([0])).item() == -1.0


def test_tokenizer_picks_the_quantizer() -> None:
    wav = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (1, 1, 4000))).float()
    post = MuLawTokenizer(16_000, quantizer="post")
    default = MuLawTokenizer(16_000)
    assert torch.equal(post.encode(wav), mulaw_encode_post(wav))
    assert torch.equal(default.encode(wav), mulaw_encode(wav))
    assert not torch.equal(post.encode(wav), default.encode(wav))
    codes = post.encode(wav)
    assert torch.equal(post.decode(codes), mulaw_decode_post(codes))
    with pytest.raises(AssertionError, match="quantizer"):
        MuLawTokenizer(16_000, quantizer="librosa")
