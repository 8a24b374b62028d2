"""The post's RVQ codec: shapes, frame rate, quantizer dropout, presets, a short training run.

Shape symbols: B batch, K levels, T samples, F frames.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from codecflow.models.codec import (
    CODEC_PRESETS,
    CodecOutput,
    ConvDecoder,
    ConvEncoder,
    PostDecoder,
    PostEncoder,
    RVQCodec,
    build_rvq_codec,
    codec_config_dict,
)
from codecflow.models.losses import codec_loss
from codecflow.models.rvq import ResidualVectorQuantizer
from codecflow.schemas.post import POST_CODEC

SR = 16_000


def _tiny(seed: int = 0, **overrides: object) -> RVQCodec:
    torch.manual_seed(seed)
    return build_rvq_codec(**{**CODEC_PRESETS["tiny-8"], **overrides})


def _speech_like(b: int = 2, t: int = 4000, seed: int = 0) -> Tensor:
    """float `[B, 1, T]`: a harmonic "voice" with vibrato and syllable-rate envelope, plus
    breath noise; each example shifted in time."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / SR  # [T]
    f0 = 140 + 20 * torch.sin(2 * math.pi * 3 * time)  # [T], Hz
    phase = 2 * math.pi * torch.cumsum(f0 / SR, dim=0)  # [T]
    voice = sum(torch.sin(h * phase) / h for h in range(1, 8))
    assert isinstance(voice, Tensor)
    envelope = torch.sin(2 * math.pi * 4 * time).clamp_min(0).sqrt()  # [T], 4 syllables / s
    wav = 0.3 * envelope * voice / voice.abs().max() + 0.01 * torch.randn(t, generator=g)
    return torch.stack([torch.roll(wav, 500 * i) for i in range(b)])[:, None]  # [B, 1, T]


def test_encoder_and_decoder_shapes() -> None:
    enc = ConvEncoder(channels=8, latent_dim=4, n_blocks=3, res_depth=2)
    dec = ConvDecoder(channels=8, latent_dim=4, n_blocks=3, res_depth=2)
    assert enc.hop_length == dec.hop_length == 8
    z = enc(torch.zeros(2, 1, 64))
    assert z.shape == (2, 4, 8)
    assert dec(z).shape == (2, 1, 64)
    with pytest.raises(AssertionError, match="multiple of the hop"):
        enc(torch.zeros(2, 1, 60))


def test_dilations_grow_by_three() -> None:
    enc = ConvEncoder(channels=4, latent_dim=4, n_blocks=1, res_depth=3)
    dec = ConvDecoder(channels=4, latent_dim=4, n_blocks=1, res_depth=3)
    enc_dilations = [m.dilation[0] for m in enc.modules() if isinstance(m, torch.nn.Conv1d)]
    dec_dilations = [m.dilation[0] for m in dec.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [d for d in enc_dilations if d > 1] == [3, 9]
    assert [d for d in dec_dilations if d > 1] == [9, 3]  # reversed in the decoder


def test_forward_shapes_for_a_length_not_multiple_of_128() -> None:
    codec = _tiny().eval()
    wav = _speech_like(b=3, t=1000)
    out = codec(wav)
    assert isinstance(out, CodecOutput)
    assert out.reconstruction.shape == (3, 1, 1000)
    assert out.codes.shape == (3, 8, math.ceil(1000 / 128))
    assert out.codes.dtype == torch.int64
    assert out.num_levels == 8 and out.commitment_loss.ndim == 0
    assert len(out.metrics.per_level_entropy_bits) == 8


def test_frame_rate_is_125_hz() -> None:
    for name in ("tiny-8", "rvq-8", "post"):
        codec = build_rvq_codec(**CODEC_PRESETS[name])
        assert codec.hop_length == 128 and codec.frame_rate == 125.0
    codec = _tiny().eval()
    codes = codec.encode(torch.zeros(1, 1, SR))
    assert codes.shape == (1, 8, 125)  # one second


def test_encode_decode_shapes_and_code_range() -> None:
    codec = _tiny().train()
    wav = _speech_like(b=2, t=3000)
    codec(wav)  # initialise the codebooks from this batch
    codec.eval()
    codes = codec.encode(wav)
    f = math.ceil(3000 / 128)
    assert codes.shape == (2, 8, f) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    assert codes.is_contiguous()
    out = codec.decode(codes)
    assert out.shape == (2, 1, f * 128) and out.dtype == torch.float32
    # encode/decode agree with forward in eval mode (forward crops to T).
    fwd = codec(wav)
    assert torch.equal(fwd.codes, codes)
    assert torch.allclose(fwd.reconstruction, out[..., :3000], atol=1e-5)
    # Fewer levels: the first rows of the full codes.
    assert torch.equal(codec.encode(wav, num_levels=3), codes[:, :3])
    assert codec.decode(codes[:, :3]).shape == (2, 1, f * 128)


def test_encode_never_updates_the_codebooks() -> None:
    codec = _tiny().train()
    wav = _speech_like()
    codec(wav)
    before = codec.quantizer.codebooks.clone()
    codec.encode(wav)
    assert torch.equal(codec.quantizer.codebooks, before)


def test_quantizer_dropout_varies_levels_in_training_only() -> None:
    codec = _tiny(quantizer_dropout=True).train()
    wav = _speech_like(b=1, t=512)
    g = torch.Generator().manual_seed(0)
    used = []
    for _ in range(20):
        out = codec(wav, generator=g)
        assert out.codes.shape[1] == out.num_levels
        assert len(out.metrics.dead_code_fraction) == out.num_levels
        used.append(out.num_levels)
    assert len(set(used)) > 3 and min(used) >= 1 and max(used) <= 8
    # Reproducible with a seeded generator.
    g = torch.Generator().manual_seed(0)
    assert [codec(wav, generator=g).num_levels for _ in range(20)] == used
    # An explicit num_levels wins; eval mode uses all levels.
    assert codec(wav, num_levels=5).num_levels == 5
    codec.eval()
    assert {codec(wav).num_levels for _ in range(5)} == {8}
    # Without dropout, training uses all levels too.
    plain = _tiny().train()
    assert {plain(wav).num_levels for _ in range(5)} == {8}


def test_tiny_codec_loss_falls_in_30_adamw_steps() -> None:
    codec = _tiny().train()
    wav = _speech_like(b=2, t=4000)
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = codec(wav)
        loss = codec_loss(out.reconstruction, wav, out.commitment_loss)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(float(loss.total.detach()))
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"tiny-8 loss: first 3 steps {first:.3f}, last 3 steps {last:.3f}")
    assert last < 0.8 * first


def test_presets_and_parameter_counts() -> None:
    assert {"rvq-1", "rvq-2", "rvq-4", "rvq-8", "rvq-16", "tiny-8"} <= set(CODEC_PRESETS)
    counts = {}
    for name, config in CODEC_PRESETS.items():
        codec = build_rvq_codec(**config)
        n_params = sum(p.numel() for p in codec.parameters())
        n_buffers = sum(b.numel() for b in codec.buffers())
        counts[name] = n_params
        print(f"{name}: {n_params:,} parameters, {n_buffers:,} buffer values (codebooks)")
        if name.startswith("rvq-"):
            assert codec.num_levels == int(name.split("-")[1])
            assert codec.codebook_size == 1024 and codec.quantizer.dim == 32
            assert codec.encoder.n_blocks == 7
    # The rvq-* presets share the autoencoder; codebooks are buffers, not parameters.
    assert len({counts[f"rvq-{k}"] for k in (1, 2, 4, 8, 16)}) == 1
    assert 50_000 < counts["rvq-8"] < 2_000_000
    assert counts["tiny-8"] < counts["rvq-8"] / 4


def test_config_dict_rebuilds_the_same_codec() -> None:
    codec = _tiny(quantizer_dropout=True, update_speed=0.05).train()
    codec(_speech_like())  # initialise the codebooks, so the state is not all defaults
    config = json.loads(json.dumps(codec_config_dict(codec)))  # survives config.json
    assert config["num_levels"] == 8 and config["quantizer_dropout"] is True
    assert config["update_speed"] == 0.05 and config["sample_rate"] == SR
    rebuilt = build_rvq_codec(**config)
    rebuilt.load_state_dict(codec.state_dict())
    assert codec_config_dict(rebuilt) == config
    codec.eval()
    rebuilt.eval()
    wav = _speech_like(seed=1)
    assert torch.equal(rebuilt.encode(wav), codec.encode(wav))
    for name in CODEC_PRESETS:
        built = build_rvq_codec(**CODEC_PRESETS[name])
        assert build_rvq_codec(**codec_config_dict(built)).state_dict().keys() == (
            built.state_dict().keys()
        )


def test_mismatched_parts_are_refused() -> None:
    enc = ConvEncoder(8, 16, 7, 1)
    with pytest.raises(AssertionError, match="hop"):
        RVQCodec(enc, ConvDecoder(8, 16, 6, 1), ResidualVectorQuantizer(16, 8, 2))
    with pytest.raises(AssertionError, match="latent dims"):
        RVQCodec(enc, ConvDecoder(8, 16, 7, 1), ResidualVectorQuantizer(8, 8, 2))


# --------------------------------------------------------------------------------------------
# The post's codec (nanoGPTaudio codec.py): structure, parameter count, lengths
# --------------------------------------------------------------------------------------------


def test_post_preset_has_the_reference_parameter_count() -> None:
    codec = build_rvq_codec(**CODEC_PRESETS["post"])
    # train_codec.py's defaults (channels 32, 7 blocks, 8 x 1 024 codes): 397 473 parameters.
    assert sum(p.numel() for p in codec.parameters()) == POST_CODEC.parameters == 397_473
    assert (codec.num_levels, codec.codebook_size, codec.hop_length) == (8, 1024, 128)
    assert codec_config_dict(codec)["arch"] == "post"


def test_post_structure_is_the_reference() -> None:
    enc, dec = PostEncoder(32, 7, 4), PostDecoder(32, 7, 4)
    for stages in (enc.res, dec.res):
        assert len(stages) == 7
        for stage in stages.children():
            blocks = list(stage.children())
            assert len(blocks) == 4
            dilated = [b.model[1] for b in blocks]
            second = [b.model[3] for b in blocks]
            assert [c.dilation[0] for c in dilated] == [3, 9, 27, 81]
            assert all(c.kernel_size == (3,) and c.padding == (1,) for c in second)
    # No latent or output conv: only the stride-2 (transposed) convs besides the blocks.
    assert [m.kernel_size for m in enc.down] == [(4,)] * 7
    assert [m.out_channels for m in dec.up] == [32] * 6 + [1]
    assert len(list(enc.children())) == len(list(dec.children())) == 2


def test_post_decoder_adds_the_residual_on_top_of_the_block() -> None:
    # codec.py DecoderBlock: x = x + block(x), the block returning x + f(x): 2 x + f(x).
    torch.manual_seed(0)
    dec = PostDecoder(4, 1, 1)
    block = next(dec.res[0].children())
    z = torch.randn(1, 4, 5)
    want = dec.up[0](z + block(z))
    torch.testing.assert_close(dec(z), want)
    torch.testing.assert_close(block(z), z + block.model(z))


def test_post_lengths_pad_where_the_reference_truncates() -> None:
    codec = build_rvq_codec(**{**CODEC_PRESETS["post"], "channels": 8, "latent_dim": 8}).eval()
    wav = _speech_like(b=1, t=1000)
    # The reference's tokenizer keeps 1000 // 128 = 7 frames; here the partial frame is padded.
    assert codec.encode(wav).shape == (1, 8, 8)
    whole = wav[..., : 1000 // 128 * 128]  # [1, 1, 896], what the reference encodes
    assert codec.encode(whole).shape == (1, 8, 7)
    out = codec(wav)
    assert out.reconstruction.shape == wav.shape  # cropped back to T
    with pytest.raises(AssertionError, match="must equal channels"):
        build_rvq_codec(**{**CODEC_PRESETS["post"], "latent_dim": 16})
