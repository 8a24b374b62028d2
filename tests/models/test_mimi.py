"""`MimiTokenizer` on the real Mimi architecture with random weights (no download).

Shape symbols: B batch, C channels, K levels, T samples, F frames.

moshi's `get_mimi(None)` builds Mimi untrained: its codebooks are all zeros (every code is 0), so
the fixture fills them with small random vectors, of the scale of the untrained encoder's
latents, to get varied codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torchaudio
from moshi.models.compression import MimiModel
from moshi.models.loaders import get_mimi
from moshi.quantization.core_vq import EuclideanCodebook

from codecflow.models.mimi import MimiTokenizer
from codecflow.models.tokenizer import AudioTokenizer

K = 8
SPF = 1920  # samples per frame: 24000 Hz / 12.5 Hz


@pytest.fixture(scope="module")
def mimi() -> Iterator[MimiModel]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_mimi(None, device="cpu", num_codebooks=K)
        codebooks = [m for m in model.modules() if isinstance(m, EuclideanCodebook)]
        assert len(codebooks) == 32  # 1 semantic + 31 acoustic levels
        for codebook in codebooks:
            # embedding = embedding_sum / cluster_usage (moshi/quantization/core_vq.py).
            codebook.embedding_sum.copy_(torch.randn(codebook.embedding_sum.shape) * 0.01)
            codebook.cluster_usage.fill_(1.0)
            codebook._initialized.fill_(1.0)
            codebook.register_buffer("_embedding", None, persistent=False)  # drop the cache
    yield model


def _audio(b: int, t: int, rate: int = 24_000) -> torch.Tensor:
    """float32 [B, 1, T]: row 0 a chirp after a silence, row 1 noise growing louder."""
    time = torch.arange(t, dtype=torch.float32) / rate  # [T]
    chirp = 0.5 * torch.sin(2 * math.pi * (100 + 2000 * time) * time) * (time > 0.4)  # [T]
    noise = torch.randn(t, generator=torch.Generator().manual_seed(1)) * 0.3 * time  # [T]
    rows = [chirp, noise] * b
    return torch.stack(rows[:b])[:, None, :]  # [B, 1, T]


def test_properties(mimi: MimiModel) -> None:
    tok = MimiTokenizer(mimi, K)
    assert isinstance(tok, AudioTokenizer)
    assert (tok.sample_rate, tok.frame_rate, tok.codebook_size) == (24_000, 12.5, 2048)
    assert tok.samples_per_frame == SPF
    assert tok.num_levels == K
    assert tok.token_dtype is np.uint16
    assert not tok.training and not mimi.training
    nosem = MimiTokenizer(mimi, K, semantic=False)
    assert nosem.num_levels == K and nosem.encode_depth == K + 1  # levels 1..K (the post)


def test_encode_shape_dtype_range_and_variety(mimi: MimiModel) -> None:
    tok = MimiTokenizer(mimi, K)
    t = 36_100  # 1.5 s and a partial frame
    codes = tok.encode(_audio(2, t))
    f = math.ceil(t / SPF)
    assert codes.shape == (2, K, f)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048
    assert codes.unique().numel() > K  # not all equal, nor one code per level
    assert not codes.is_inference()  # usable outside inference mode, in place too
    # The padded partial frame is the zero padding of the whole frames.
    padded = torch.nn.functional.pad(_audio(2, t), (0, f * SPF - t))  # [B, 1, F * SPF]
    assert torch.equal(tok.encode(padded), codes)


@pytest.mark.parametrize("b", [1, 2])
def test_codes_equal_moshis_own_encode(mimi: MimiModel, b: int) -> None:
    # codecflow's wrapper adds nothing to the codes: they are moshi's `MimiModel.encode` of the
    # same audio (whole frames: moshi pads a partial one itself, with the same zeros).
    wav = _audio(b, 20 * SPF)  # [B, 1, T]
    with torch.inference_mode():
        mimi.set_num_codebooks(K)
        theirs = mimi.encode(wav)  # [B, K, F]
        mimi.set_num_codebooks(K + 1)
        theirs_deeper = mimi.encode(wav)  # [B, K + 1, F]
    assert theirs.unique().numel() > K  # varied codes: the comparison means something
    assert torch.equal(MimiTokenizer(mimi, K).encode(wav), theirs.to(torch.int64))
    nosem = MimiTokenizer(mimi, K, semantic=False).encode(wav)
    assert torch.equal(nosem, theirs_deeper[:, 1:].to(torch.int64))


def test_decode_shape(mimi: MimiModel) -> None:
    tok = MimiTokenizer(mimi, K)
    codes = tok.encode(_audio(2, 24_000))  # [B, K, F]
    wav = tok.decode(codes)
    assert wav.shape == (2, 1, codes.shape[-1] * SPF)
    assert wav.dtype == torch.float32
    assert torch.isfinite(wav).all()
    with pytest.raises(AssertionError, match=r"\(2, 7, 13\)"):
        tok.decode(codes[:, 1:])


def test_nosemantic_drops_level_zero_and_decodes_with_zeros(mimi: MimiModel) -> None:
    full = MimiTokenizer(mimi, K)
    nosem = MimiTokenizer(mimi, K, semantic=False)
    wav = _audio(2, 24_000)
    deeper = MimiTokenizer(mimi, K + 1)
    codes = nosem.encode(wav)
    assert codes.shape == (2, K, 13)  # mimi_8_rvq_nosemantic: 8 levels, 1..8
    # The tokenizers share one model: each encode sets the model's RVQ depth itself.
    assert torch.equal(codes, deeper.encode(wav)[:, 1:])
    assert torch.equal(codes[:, : K - 1], full.encode(wav)[:, 1:])
    out = nosem.decode(codes)
    assert out.shape == (2, 1, 13 * SPF)
    with_zeros = torch.cat([torch.zeros_like(codes[:, :1]), codes], dim=1)  # [B, K + 1, F]
    torch.testing.assert_close(out, deeper.decode(with_zeros))


def test_fewer_levels_are_a_prefix(mimi: MimiModel) -> None:
    wav = _audio(1, 12_000)
    codes4 = MimiTokenizer(mimi, 4).encode(wav)
    assert codes4.shape == (1, 4, 7)
    assert torch.equal(codes4, MimiTokenizer(mimi, K).encode(wav)[:, :4])


def test_encode_audio_resamples_and_downmixes(mimi: MimiModel) -> None:
    tok = MimiTokenizer(mimi, K)
    stereo = torch.cat([_audio(2, 16_000, rate=16_000)] * 2, dim=1)  # [B, 2, T] at 16 kHz
    stereo[:, 1] *= 0.5
    codes = tok.encode_audio(stereo, 16_000)
    assert codes.shape == (2, K, math.ceil(24_000 / SPF))
    mono = torchaudio.functional.resample(stereo.mean(dim=1, keepdim=True), 16_000, 24_000)
    assert torch.equal(codes, tok.encode(mono))
    # [T] and [B, T] inputs are one channel.
    assert torch.equal(tok.encode_audio(mono[0, 0], 24_000), codes[:1])
    assert torch.equal(tok.encode_audio(mono[:, 0], 24_000), codes)


def test_empty_audio_and_bad_levels(mimi: MimiModel) -> None:
    tok = MimiTokenizer(mimi, K)
    assert tok.encode(torch.zeros(2, 1, 0)).shape == (2, K, 0)
    assert tok.decode(torch.zeros(2, K, 0, dtype=torch.int64)).shape == (2, 1, 0)
    with pytest.raises(AssertionError, match="num_levels"):
        MimiTokenizer(mimi, 33)
    assert MimiTokenizer(mimi, 31, semantic=False).encode_depth == 32
    with pytest.raises(AssertionError, match=r"\[1, 31\] \(without the semantic"):
        MimiTokenizer(mimi, 32, semantic=False)
