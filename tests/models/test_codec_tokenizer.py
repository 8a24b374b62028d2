"""`CodecTokenizer`: an `RVQCodec` with a chosen number of levels as an `AudioTokenizer`.

Shape symbols: B batch, K levels, T samples, F frames.
"""

from __future__ import annotations

import math

import pytest
import torch

from codecflow.models.codec import CODEC_PRESETS, RVQCodec, build_rvq_codec
from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.tokenizer import AudioTokenizer


def _codec() -> RVQCodec:
    torch.manual_seed(0)
    codec = build_rvq_codec(**CODEC_PRESETS["tiny-8"]).train()
    codec(torch.randn(2, 1, 4096) * 0.1)  # initialise the codebooks
    return codec.eval()


def test_properties() -> None:
    tok = CodecTokenizer(_codec(), num_levels=4)
    assert isinstance(tok, AudioTokenizer)
    assert tok.sample_rate == 16_000
    assert tok.frame_rate == 125.0
    assert tok.samples_per_frame == 128
    assert tok.num_levels == 4
    assert tok.codebook_size == 64
    assert CodecTokenizer(tok.codec).num_levels == 8  # all levels by default


@pytest.mark.parametrize("t", [128, 1000, 16_000])
def test_roundtrip_shapes_and_dtypes(t: int) -> None:
    tok = CodecTokenizer(_codec(), num_levels=8)
    wav = torch.rand(2, 1, t) * 2 - 1  # [B, 1, T]
    codes = tok.encode(wav)
    f = math.ceil(t / 128)
    assert codes.shape == (2, 8, f) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    out = tok.decode(codes)
    assert out.shape == (2, 1, f * 128) and out.dtype == torch.float32


def test_fewer_levels_give_fewer_rows() -> None:
    codec = _codec()
    wav = torch.rand(1, 1, 2000) * 2 - 1
    full = CodecTokenizer(codec, num_levels=8).encode(wav)
    for k in (1, 2, 4):
        tok = CodecTokenizer(codec, num_levels=k)
        codes = tok.encode(wav)
        assert codes.shape == (1, k, math.ceil(2000 / 128))
        assert torch.equal(codes, full[:, :k])  # RVQ levels are a prefix
        assert tok.decode(codes).shape == (1, 1, codes.shape[2] * 128)


def test_bad_levels_and_codes_are_refused() -> None:
    codec = _codec()
    with pytest.raises(AssertionError, match="num_levels"):
        CodecTokenizer(codec, num_levels=9)
    with pytest.raises(AssertionError, match="num_levels"):
        CodecTokenizer(codec, num_levels=0)
    tok = CodecTokenizer(codec, num_levels=2)
    with pytest.raises(AssertionError, match="K=2"):
        tok.decode(torch.zeros(1, 3, 4, dtype=torch.int64))
    with pytest.raises(AssertionError, match="mono"):
        tok.encode(torch.zeros(1, 2, 128))
