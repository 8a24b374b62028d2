"""The blog post's RVQ codec (`arch="post"`) and a Jukebox-style variant (`arch="jukebox"`).

Shape symbols: B batch, T samples, T' samples padded to a multiple of the hop, F frames, C conv
channels, D latent dim, K levels of the quantizer, K' levels used in one call.

The blog post "Neural audio codecs: how to get audio into LLMs" (Kyutai, 2025) trains an RVQ codec
on 16 kHz speech with the encoder and decoder of Jukebox's VQ-VAE (Dhariwal et al., 2020;
jukebox/vqvae/encdec.py, resnet.py): each encoder block is a stride-2 convolution (kernel 4,
padding 1) followed by a `Resnet1D` stack of dilated residual blocks (ReLU, kernel-3 conv with
dilation 3^i, ReLU, 1x1 conv, plus the skip), and a kernel-3 convolution maps to the latent; the
decoder mirrors it with stride-2 transposed convolutions and reversed dilations
(`vqvae_reverse_decoder_dilation`). Seven blocks downsample 2^7 = 128x: 32-dimensional latents at
16000 / 128 = 125 Hz, each quantized by K levels of 1024 codes.

`arch="post"` is the post's own codec exactly (kyutai-labs/nanoGPTaudio codec.py @ cbd36aa,
schemas/post.py `POST_CODEC`): every stage is a stride-2 convolution (kernel 4, padding 1)
followed by 4 residual blocks (ReLU, kernel-3 conv with dilation 3, 9, 27, 81, ReLU, kernel-3
conv, plus the skip); there is no latent or output convolution (the latents are the last stage's
32 channels, the decoder's last transposed convolution outputs the waveform), and each decoder
stage adds its residual on top of a block that already returns `x + ...` (`x = x + block(x)`,
i.e. 2x + f(x)). With channels 32, 7 stages and 4 blocks: 397 473 parameters (the codebooks are
buffers). Lengths: the reference's tokenizer truncates audio to whole 128-sample frames
(tokenizer.py `CodecTokenizer.encode`, commit 0d6e203) and its `Codec.forward` asserts a whole
number of frames; `RVQCodec` pads the partial last frame with zeros instead (the `AudioTokenizer`
contract F = ceil(T / hop), as Mimi): at most one extra frame, under 8 ms, per segment; for
lengths that are multiples of 128 the two agree (tests/models/test_codec.py).

`arch="jukebox"` (the classes `ResConv1DBlock`, `Resnet1D`, `ConvEncoder`, `ConvDecoder`, the
`rvq-<K>` and `tiny-8` presets) is kept for what it measured here (bench/codec_arch.py, the
project's 2-core CPU, shared, batch 8 x 1 s, 7 stages, channels 32, 8 x 1 024 codes): 176 609
parameters instead of 397 473 and a training step 4.8x to 13x faster (0.83-1.5 s against
7.3-11 s), which is what lets the test suite and the tiny twins train a codec in seconds; its
latent conv also allows a latent dimension other than the width. Its loss after equal steps was
not measured; the post's results are the post codec's, the default of train-codec.

Beyond the post, `RVQCodec` can train with quantizer dropout (SoundStream, Zeghidour et al., 2021,
section 3.3; Mimi uses it too): each training call quantizes with a random number of levels in
1..K, so one codec serves every bitrate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecflow.models.rvq import (
    CodebookRecipe,
    CommitmentRecipe,
    ResidualVectorQuantizer,
    RVQMetrics,
)
from codecflow.schemas.post import POST_CODEC

__all__ = [
    "CODEC_ARCHS",
    "PostResidualBlock",
    "PostEncoder",
    "PostDecoder",
    "ResConv1DBlock",
    "Resnet1D",
    "ConvEncoder",
    "ConvDecoder",
    "CodecOutput",
    "RVQCodec",
    "CODEC_PRESETS",
    "build_rvq_codec",
    "codec_config_dict",
]

# Jukebox's dilation_growth_rate for the VQ-VAE (jukebox/hparams.py); the post's 3 ** (1 + i)
# (nanoGPTaudio codec.py) grows by the same factor.
DILATION_GROWTH = 3
#: The codec architectures `build_rvq_codec` builds.
CODEC_ARCHS = ("post", "jukebox")


class PostResidualBlock(nn.Module):
    """x + conv3(relu(conv3_dilated(relu(x)))): nanoGPTaudio codec.py `ResidualBlock`."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, 1, padding=dilation, dilation=dilation),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, 1, padding=1),  # codec.py: kernel_size=3, padding=1
        )

    def forward(self, x: Tensor) -> Tensor:
        """float `[B, C, L]` -> float `[B, C, L]`."""
        return x + self.model(x)


def _post_blocks(channels: int, depth: int) -> nn.ModuleList:
    # codec.py: dilation=3 ** (1 + i) for i in range(n_residual_blocks): 3, 9, 27, 81 for 4.
    return nn.ModuleList(
        PostResidualBlock(channels, DILATION_GROWTH ** (1 + i)) for i in range(depth)
    )


def _check_frames(wav: Tensor, hop_length: int) -> None:
    """An encoder's input: mono `[B, 1, T']`, T' a whole number of `hop_length` frames."""
    assert wav.ndim == 3 and wav.shape[1] == 1, (
        f"wav must be [B, 1, T], got shape {tuple(wav.shape)}"
    )
    assert wav.shape[2] % hop_length == 0, (
        f"length {wav.shape[2]} must be a multiple of the hop {hop_length}"
    )


class PostEncoder(nn.Module):
    """The post's encoder (codec.py `Encoder`): `n_blocks` x (stride-2 conv, `res_depth`
    residual blocks), no latent conv: the latent dimension is `channels`."""

    def __init__(self, channels: int, n_blocks: int, res_depth: int = 4) -> None:
        super().__init__()
        assert min(channels, n_blocks) >= 1 and res_depth >= 0, (
            f"bad sizes: channels {channels}, n_blocks {n_blocks}, res_depth {res_depth}"
        )
        self.channels = self.latent_dim = channels
        self.n_blocks, self.res_depth = n_blocks, res_depth
        self.down = nn.ModuleList(
            nn.Conv1d(1 if i == 0 else channels, channels, 4, 2, 1) for i in range(n_blocks)
        )
        self.res = nn.ModuleList(_post_blocks(channels, res_depth) for _ in range(n_blocks))

    @property
    def hop_length(self) -> int:
        """Samples per latent frame, 2^n_blocks."""
        return 2**self.n_blocks

    def forward(self, wav: Tensor) -> Tensor:
        """float `[B, 1, T']`, T' a multiple of `hop_length` -> float `[B, C, T' / hop]`."""
        _check_frames(wav, self.hop_length)
        x = wav
        for down, blocks in zip(self.down, self.res, strict=True):
            x = down(x)
            for block in blocks.children():
                x = block(x)  # codec.py EncoderBlock: x = block(x)
        return x  # [B, C, F]


class PostDecoder(nn.Module):
    """The post's decoder (codec.py `Decoder`): `n_blocks` x (`res_depth` residual blocks added
    on top, stride-2 transposed conv); the last transposed conv outputs the waveform."""

    def __init__(self, channels: int, n_blocks: int, res_depth: int = 4) -> None:
        super().__init__()
        assert min(channels, n_blocks) >= 1 and res_depth >= 0, (
            f"bad sizes: channels {channels}, n_blocks {n_blocks}, res_depth {res_depth}"
        )
        self.channels = self.latent_dim = channels
        self.n_blocks, self.res_depth = n_blocks, res_depth
        self.res = nn.ModuleList(_post_blocks(channels, res_depth) for _ in range(n_blocks))
        self.up = nn.ModuleList(
            nn.ConvTranspose1d(channels, 1 if i == n_blocks - 1 else channels, 4, 2, 1)
            for i in range(n_blocks)
        )

    @property
    def hop_length(self) -> int:
        """Samples per latent frame, 2^n_blocks."""
        return 2**self.n_blocks

    def forward(self, z: Tensor) -> Tensor:
        """float `[B, C, F]` -> float `[B, 1, F * hop]`."""
        assert z.ndim == 3 and z.shape[1] == self.channels, (
            f"z must be [B, C={self.channels}, F], got shape {tuple(z.shape)}"
        )
        x = z
        for blocks, up in zip(self.res, self.up, strict=True):
            for block in blocks.children():
                x = x + block(x)  # codec.py DecoderBlock: the block already returns x + f(x)
            x = up(x)
        return x  # [B, 1, F*hop]


class ResConv1DBlock(nn.Module):
    """x + conv1x1(relu(conv3_dilated(relu(x)))), Jukebox's `ResConv1DBlock` (m_conv = 1)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, 1, padding=dilation, dilation=dilation),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """float `[B, C, L]` -> float `[B, C, L]` (any length L)."""
        return x + self.model(x)


class Resnet1D(nn.Module):
    """`depth` residual blocks with dilations 1, 3, 9, ... (Jukebox's `Resnet1D`); `reverse`
    runs them from the largest dilation down, as Jukebox's decoder."""

    def __init__(self, channels: int, depth: int, reverse: bool = False) -> None:
        super().__init__()
        blocks = [ResConv1DBlock(channels, DILATION_GROWTH**i) for i in range(depth)]
        if reverse:
            blocks = blocks[::-1]
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """float `[B, C, L]` -> float `[B, C, L]`."""
        return self.model(x)


class ConvEncoder(nn.Module):
    """Mono audio to latents: `n_blocks` x (stride-2 conv, Resnet1D), then a conv to D.

    Args:
        channels: C, the width of every block.
        latent_dim: D, the latent dimension.
        n_blocks: number of stride-2 blocks; the hop is 2^n_blocks samples.
        res_depth: residual blocks per Resnet1D (dilations 1, 3, ..., 3^(res_depth - 1)).
    """

    def __init__(self, channels: int, latent_dim: int, n_blocks: int, res_depth: int) -> None:
        super().__init__()
        assert min(channels, latent_dim, n_blocks) >= 1 and res_depth >= 0, (
            f"bad sizes: channels {channels}, latent_dim {latent_dim}, n_blocks {n_blocks}, "
            f"res_depth {res_depth}"
        )
        self.channels = channels
        self.latent_dim = latent_dim
        self.n_blocks = n_blocks
        self.res_depth = res_depth
        blocks: list[nn.Module] = []
        for i in range(n_blocks):
            # Kernel 4, stride 2, padding 1 halves an even length exactly (Jukebox filter_t =
            # 2 * stride, pad_t = stride // 2).
            blocks.append(nn.Conv1d(1 if i == 0 else channels, channels, 4, 2, 1))
            blocks.append(Resnet1D(channels, res_depth))
        blocks.append(nn.Conv1d(channels, latent_dim, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    @property
    def hop_length(self) -> int:
        """Samples per latent frame, 2^n_blocks."""
        return 2**self.n_blocks

    def forward(self, wav: Tensor) -> Tensor:
        """float `[B, 1, T']` with T' a multiple of `hop_length` -> float `[B, D, T' / hop]`."""
        _check_frames(wav, self.hop_length)
        return self.model(wav)  # [B, D, F]


class ConvDecoder(nn.Module):
    """Latents to mono audio, mirroring `ConvEncoder`: a conv from D, then `n_blocks` x
    (Resnet1D with reversed dilations, stride-2 transposed conv), then a conv to 1 channel.

    Args: as `ConvEncoder`.
    """

    def __init__(self, channels: int, latent_dim: int, n_blocks: int, res_depth: int) -> None:
        super().__init__()
        assert min(channels, latent_dim, n_blocks) >= 1 and res_depth >= 0, (
            f"bad sizes: channels {channels}, latent_dim {latent_dim}, n_blocks {n_blocks}, "
            f"res_depth {res_depth}"
        )
        self.channels = channels
        self.latent_dim = latent_dim
        self.n_blocks = n_blocks
        self.res_depth = res_depth
        blocks: list[nn.Module] = [nn.Conv1d(latent_dim, channels, 3, 1, 1)]
        for _ in range(n_blocks):
            blocks.append(Resnet1D(channels, res_depth, reverse=True))
            # (L - 1) * 2 - 2 * 1 + 4 = 2L: doubles the length exactly.
            blocks.append(nn.ConvTranspose1d(channels, channels, 4, 2, 1))
        blocks.append(nn.Conv1d(channels, 1, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    @property
    def hop_length(self) -> int:
        """Samples per latent frame, 2^n_blocks."""
        return 2**self.n_blocks

    def forward(self, z: Tensor) -> Tensor:
        """float `[B, D, F]` -> float `[B, 1, F * hop]`."""
        assert z.ndim == 3 and z.shape[1] == self.latent_dim, (
            f"z must be [B, D={self.latent_dim}, F], got shape {tuple(z.shape)}"
        )
        return self.model(z)  # [B, 1, F*hop]


@dataclass
class CodecOutput:
    """What `RVQCodec.forward` returns."""

    reconstruction: Tensor  # float [B, 1, T], cropped to the input's length
    codes: Tensor  # int64 [B, K', F]
    commitment_loss: Tensor  # scalar
    metrics: RVQMetrics
    num_levels: int  # K', the levels used (random in training with quantizer dropout)


class RVQCodec(nn.Module):
    """Encoder -> residual vector quantizer -> decoder, on mono audio.

    Args:
        encoder: a built `ConvEncoder`.
        decoder: a built `ConvDecoder` with the same hop and latent dim.
        quantizer: a built `ResidualVectorQuantizer` of dim D.
        sample_rate: of the audio (16 kHz in the post).
        quantizer_dropout: in training mode, quantize each call with a random number of levels
            in 1..K (unless `num_levels` is given).
    """

    def __init__(
        self,
        encoder: ConvEncoder | PostEncoder,
        decoder: ConvDecoder | PostDecoder,
        quantizer: ResidualVectorQuantizer,
        sample_rate: int = 16_000,
        quantizer_dropout: bool = False,
    ) -> None:
        super().__init__()
        assert encoder.hop_length == decoder.hop_length, (
            f"encoder hop {encoder.hop_length} != decoder hop {decoder.hop_length}"
        )
        assert encoder.latent_dim == decoder.latent_dim == quantizer.dim, (
            f"latent dims differ: encoder {encoder.latent_dim}, decoder {decoder.latent_dim}, "
            f"quantizer {quantizer.dim}"
        )
        assert sample_rate > 0, f"sample_rate must be positive, got {sample_rate}"
        self.encoder = encoder
        self.decoder = decoder
        self.quantizer = quantizer
        self.sample_rate = sample_rate
        self.quantizer_dropout = quantizer_dropout

    @property
    def hop_length(self) -> int:
        """Samples per frame (128 for 7 blocks)."""
        return self.encoder.hop_length

    @property
    def frame_rate(self) -> float:
        """Frames per second (125.0 at 16 kHz with 7 blocks)."""
        return self.sample_rate / self.hop_length

    @property
    def num_levels(self) -> int:
        """K, the quantizer's levels."""
        return self.quantizer.num_levels

    @property
    def codebook_size(self) -> int:
        """Codes per level."""
        return self.quantizer.codebook_size

    def _pad(self, wav: Tensor) -> Tensor:
        """float `[B, 1, T]` -> `[B, 1, T']`, right-padded with zeros to a multiple of the hop."""
        assert wav.ndim == 3 and wav.shape[1] == 1, (
            f"wav must be [B, 1, T] (mono), got shape {tuple(wav.shape)}"
        )
        assert wav.is_floating_point(), f"wav must be floating point, got {wav.dtype}"
        t = wav.shape[2]
        assert t >= 1, f"wav must hold at least one sample, got shape {tuple(wav.shape)}"
        return F.pad(wav, (0, -t % self.hop_length))  # [B, 1, T']

    def _latents(self, wav: Tensor) -> tuple[Tensor, int]:
        """float `[B, 1, T]` -> (float `[B*F, D]` latents, F)."""
        z = self.encoder(self._pad(wav))  # [B, D, F]
        b, d, f = z.shape
        return z.transpose(1, 2).reshape(b * f, d), f  # [B*F, D]

    def _decode_latents(self, flat: Tensor, b: int, f: int) -> Tensor:
        """float `[B*F, D]` -> float `[B, 1, F * hop]`."""
        z = flat.reshape(b, f, -1).transpose(1, 2)  # [B, D, F]
        return self.decoder(z)  # [B, 1, F*hop]

    def forward(
        self,
        wav: Tensor,
        num_levels: int | None = None,
        generator: torch.Generator | None = None,
    ) -> CodecOutput:
        """Encode, quantize (updating the codebooks in training mode) and decode.

        Args:
            wav: float `[B, 1, T]`; any T >= 1 (padded to a multiple of the hop, then cropped).
            num_levels: K', the levels to use. None: all K, or, in training mode with quantizer
                dropout, a uniform draw from 1..K (one per call, for the whole batch).
            generator: a CPU `torch.Generator` for that draw (the global one when None).

        Returns:
            `CodecOutput`: reconstruction `[B, 1, T]`, codes `[B, K', F]` with
            F = ceil(T / hop), the commitment loss, the quantizer's metrics and K'.
        """
        k = num_levels
        if k is None:
            if self.training and self.quantizer_dropout:
                # Drawn on the CPU: no device sync, reproducible with a seeded generator.
                k = int(torch.randint(1, self.num_levels + 1, (1,), generator=generator).item())
            else:
                k = self.num_levels
        b, t = wav.shape[0], wav.shape[-1]
        flat, f = self._latents(wav)  # [B*F, D]
        q = self.quantizer(flat, k)
        recon = self._decode_latents(q.quantized, b, f)[..., :t]  # [B, 1, T]
        codes = q.codes.reshape(b, f, k).transpose(1, 2).contiguous()  # [B, K', F]
        return CodecOutput(
            reconstruction=recon,
            codes=codes,
            commitment_loss=q.commitment_loss,
            metrics=q.metrics,
            num_levels=k,
        )

    def encode(self, wav: Tensor, num_levels: int | None = None) -> Tensor:
        """float `[B, 1, T]` -> int64 `[B, K', F]` codes of the first K' levels (all K by
        default), F = ceil(T / hop). Never updates the codebooks."""
        b = wav.shape[0]
        flat, f = self._latents(wav)  # [B*F, D]
        codes = self.quantizer.encode(flat, num_levels)  # [B*F, K']
        return codes.reshape(b, f, -1).transpose(1, 2).contiguous()  # [B, K', F]

    def decode(self, codes: Tensor) -> Tensor:
        """int64 `[B, K', F]` codes of the first K' levels -> float `[B, 1, F * hop]`."""
        assert codes.ndim == 3, f"codes must be [B, K', F], got shape {tuple(codes.shape)}"
        b, k, f = codes.shape
        flat = self.quantizer.decode(codes.transpose(1, 2).reshape(b * f, k))  # [B*F, D]
        return self._decode_latents(flat, b, f)  # [B, 1, F*hop]


def build_rvq_codec(
    num_levels: int,
    channels: int = 32,
    latent_dim: int = 32,
    n_blocks: int = 7,
    res_depth: int = 2,
    codebook_size: int = 1024,
    update_speed: float = 0.01,
    dead_code_threshold: float | None = None,
    quantizer_dropout: bool = False,
    sample_rate: int = 16_000,
    arch: str = "jukebox",
    codebooks: CodebookRecipe = "data",
    commitment: CommitmentRecipe = "mean",
) -> RVQCodec:
    """Build an `RVQCodec` from plain numbers (a preset or a checkpoint's config.json).

    `arch` is "post" (the post's codec.py; `latent_dim` must equal `channels`) or "jukebox" (the
    default, so that a config.json written before `arch` existed rebuilds its codec).
    `codebooks` and `commitment` are the quantizer's training recipes (models/rvq.py); their
    defaults are what a config.json written before they existed trained with. The dead-code
    threshold defaults to the recipe's: 0.1 for "post" (codec.py), 1.0 for "data" (Jukebox).
    `build_rvq_codec(**codec_config_dict(codec))` builds a codec of the same shape as `codec`.
    """
    assert arch in CODEC_ARCHS, f"arch must be one of {CODEC_ARCHS}, got {arch!r}"
    encoder: ConvEncoder | PostEncoder
    decoder: ConvDecoder | PostDecoder
    if arch == "post":
        assert latent_dim == channels, (
            f"the post's codec has no latent conv: latent_dim {latent_dim} must equal channels "
            f"{channels}"
        )
        encoder = PostEncoder(channels, n_blocks, res_depth)
        decoder = PostDecoder(channels, n_blocks, res_depth)
    else:
        encoder = ConvEncoder(channels, latent_dim, n_blocks, res_depth)
        decoder = ConvDecoder(channels, latent_dim, n_blocks, res_depth)
    return RVQCodec(
        encoder=encoder,
        decoder=decoder,
        quantizer=ResidualVectorQuantizer(
            dim=latent_dim,
            codebook_size=codebook_size,
            num_levels=num_levels,
            update_speed=update_speed,
            dead_code_threshold=_threshold(codebooks, dead_code_threshold),
            codebooks=codebooks,
            commitment=commitment,
        ),
        sample_rate=sample_rate,
        quantizer_dropout=quantizer_dropout,
    )


def _threshold(codebooks: CodebookRecipe, given: float | None) -> float:
    if given is not None:
        return given
    # codec.py restart_unused_codes: `value < 0.1`; Jukebox's revival_threshold 1.0.
    return POST_CODEC.restart_threshold if codebooks == "post" else 1.0


def codec_config_dict(codec: RVQCodec) -> dict[str, Any]:
    """The `build_rvq_codec` arguments that rebuild `codec`'s architecture (JSON-friendly)."""
    enc, dec, rvq = codec.encoder, codec.decoder, codec.quantizer
    assert (enc.channels, enc.n_blocks, enc.res_depth) == (
        dec.channels,
        dec.n_blocks,
        dec.res_depth,
    ), "encoder and decoder sizes differ: not a build_rvq_codec codec"
    return {
        "arch": "post" if isinstance(enc, PostEncoder) else "jukebox",
        "num_levels": rvq.num_levels,
        "channels": enc.channels,
        "latent_dim": enc.latent_dim,
        "n_blocks": enc.n_blocks,
        "res_depth": enc.res_depth,
        "codebook_size": rvq.codebook_size,
        "update_speed": rvq.update_speed,
        "dead_code_threshold": rvq.dead_code_threshold,
        "codebooks": rvq.codebook_recipe,
        "commitment": rvq.commitment_recipe,
        "quantizer_dropout": codec.quantizer_dropout,
        "sample_rate": codec.sample_rate,
    }


# "post": the post's codec exactly (schemas/post.py POST_CODEC: nanoGPTaudio train_codec.py and
# codec.py); "rvq-<K>": the Jukebox-like variant with the post's sizes (1024 codes per level, 7
# blocks, 32-dim latents at 125 Hz), one per number of levels; "tiny-8" for CPU tests. Each maps to
# `build_rvq_codec` keyword arguments.
CODEC_PRESETS: dict[str, dict[str, Any]] = {
    "post": {
        "arch": "post",
        "num_levels": POST_CODEC.num_levels,  # 8
        "channels": POST_CODEC.channels,  # 32
        "latent_dim": POST_CODEC.channels,  # no latent conv
        "n_blocks": POST_CODEC.n_blocks,  # 7
        "res_depth": POST_CODEC.res_blocks,  # 4
        "codebook_size": POST_CODEC.codebook_size,  # 1024
        "update_speed": POST_CODEC.update_speed,  # 0.01
        "codebooks": "post",  # kaiming-uniform init, one-code restarts under 0.1 (codec.py)
        "commitment": "post",  # summed over levels, level 0 to the encoder (codec.py)
    },
    **{
        f"rvq-{k}": {
            "num_levels": k,
            "channels": 32,
            "latent_dim": 32,
            "n_blocks": 7,
            "res_depth": 2,
            "codebook_size": 1024,
        }
        for k in (1, 2, 4, 8, 16)
    },
    "tiny-8": {
        "num_levels": 8,
        "channels": 16,
        "latent_dim": 16,
        "n_blocks": 7,
        "res_depth": 1,
        "codebook_size": 64,
    },
}
