"""The `AudioTokenizer` contract, shown on a tiny test double and checked on `MuLawTokenizer`.

Shape symbols: B batch, K levels, T samples, F frames.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from codecflow.models.mulaw import MuLawTokenizer
from codecflow.models.tokenizer import AudioTokenizer


class HalfFrameMeans(AudioTokenizer):
    """Test double: frames of 4 samples, K = 2 levels; level k codes the mean of the frame's
    k-th half, uniformly quantised to 16 values."""

    @property
    def sample_rate(self) -> int:
        return 8

    @property
    def frame_rate(self) -> float:
        return 2.0

    @property
    def num_levels(self) -> int:
        return 2

    @property
    def codebook_size(self) -> int:
        return 16

    def encode(self, wav: Tensor) -> Tensor:
        self.check_wav(wav)
        b, _, t = wav.shape
        f = -(-t // 4)
        wav = F.pad(wav, (0, f * 4 - t))  # [B, 1, F*4]
        halves = wav.view(b, f, 2, 2).mean(dim=-1)  # [B, F, K]
        codes = ((halves.clamp(-1, 1) + 1) / 2 * 15).round().long()  # [B, F, K]
        return codes.transpose(1, 2).contiguous()  # [B, K, F]

    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes)
        b, _, f = codes.shape
        values = codes.float() / 15 * 2 - 1  # [B, K, F]
        samples = values.transpose(1, 2).repeat_interleave(2, dim=-1)  # [B, F, 4]
        return samples.reshape(b, 1, f * 4)  # [B, 1, F*4]


def _check_contract(tok: AudioTokenizer, b: int, t: int) -> None:
    wav = torch.rand(b, 1, t) * 2 - 1  # [B, 1, T]
    codes = tok.encode(wav)
    f = math.ceil(t / tok.samples_per_frame)
    assert codes.shape == (b, tok.num_levels, f)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    out = tok.decode(codes)
    assert out.shape == (b, 1, f * tok.samples_per_frame)
    assert out.dtype == torch.float32


def test_double_satisfies_the_contract() -> None:
    tok = HalfFrameMeans()
    assert tok.samples_per_frame == 4
    _check_contract(tok, b=3, t=16)
    _check_contract(tok, b=1, t=10)  # a partial last frame is padded: F = ceil(10 / 4) = 3


def test_double_roundtrip_of_a_piecewise_constant_signal() -> None:
    tok = HalfFrameMeans()
    wav = torch.tensor([-1.0, -1.0, 1.0, 1.0, 1 / 15, 1 / 15, -1 / 15, -1 / 15])[None, None]
    codes = tok.encode(wav)
    assert codes.tolist() == [[[0, 8], [15, 7]]]
    assert torch.allclose(tok.decode(codes), wav, atol=1e-6)


def test_mulaw_satisfies_the_contract() -> None:
    tok = MuLawTokenizer()
    assert isinstance(tok, AudioTokenizer)
    _check_contract(tok, b=2, t=37)


def test_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        AudioTokenizer()  # type: ignore[abstract]

    class Incomplete(AudioTokenizer):
        @property
        def sample_rate(self) -> int:
            return 8

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_codes_with_the_wrong_number_of_levels_are_rejected() -> None:
    with pytest.raises(AssertionError, match=r"\(1, 1, 4\)"):
        HalfFrameMeans().decode(torch.zeros(1, 1, 4, dtype=torch.int64))
