"""mu-law companding: the sample-level tokenizer, one 8-bit code per audio sample.

Shape symbols: B batch, K levels (1 here), T samples, F frames (F = T here).

mu = 255 is the ITU-T G.711 mu-law value, also used by WaveNet (van den Oord et al., 2016,
section 2.2) to quantise audio to 256 values. The blog post "Neural audio codecs: how to get audio
into LLMs" (Kyutai, 2025) uses mu-law 256 at 16 kHz as its sample-level baseline: at 16000 tokens
per second, its 2048-token context covers only 128 ms of audio, which is why codecs with low
frame rates (Mimi: 12.5 Hz) exist.

Two quantisers of the same companded value y = sign(x) ln(1 + mu |x|) / ln(1 + mu) in [-1, 1]:

- torchaudio's (`mulaw_encode`, the default `mu-law-256`): round (y + 1) / 2 * mu to the nearest
  integer, decode on the grid q / mu * 2 - 1 (both ends, -1 and 1, are codes). Its error is at most
  half a step of y, symmetric around 0.
- the post's (`mulaw_encode_post`, tokenizer `mu-law-256-post`): nanoGPTaudio's tokenizer.py
  (`MuLawTokenizer`, commit 0d6e203) stores `librosa.mu_compress(x, mu=255) + 128`, whose
  `quantize=True` takes `np.digitize(y, np.linspace(-1, 1, mu + 1), right=True) - (mu + 1) // 2`:
  the index of the first of the mu + 1 edges at or above y, i.e. ceil((y + 1) / 2 * mu) except on
  an edge, so its token is torchaudio's + 1 wherever the fraction of (y + 1) / 2 * mu is below
  one half (about half the samples). Its decode (`librosa.mu_expand`, `quantize=True`) reads y on
  the grid (q - 128) / 128, which is not the encode's grid: the round trip is biased (a sample
  comes back up to one step of y away). Its tokens equal a `.bin` of the post's pipeline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from codecflow.models.tokenizer import AudioTokenizer

__all__ = [
    "MULAW_QUANTIZERS",
    "mulaw_encode",
    "mulaw_decode",
    "mulaw_encode_post",
    "mulaw_decode_post",
    "MuLawTokenizer",
]

#: The quantisers `MuLawTokenizer` offers: torchaudio's rounding (default) and the post's librosa
#: `mu_compress(quantize=True)` / `mu_expand(quantize=True)`.
MULAW_QUANTIZERS = ("torchaudio", "post")


def mulaw_encode(x: Tensor, mu: int = 255) -> Tensor:
    """Compand and quantise audio samples to mu + 1 levels.

    y = sign(x) ln(1 + mu |x|) / ln(1 + mu), then y in [-1, 1] is mapped linearly to the integer
    codes 0..mu with rounding (as torchaudio's `mu_law_encoding`). Silence (x = 0) maps to the
    middle code (mu + 1) // 2.

    Args:
        x: floating tensor of any shape, samples nominally in [-1, 1]; values outside are clamped.
        mu: the companding parameter, mu + 1 codes.

    Returns:
        int64 tensor of the same shape as `x`, values in [0, mu].
    """
    assert x.is_floating_point(), f"mulaw_encode takes floating samples, got {x.dtype}"
    assert mu >= 1, f"mu must be >= 1, got {mu}"
    x = x.clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    # Round to the nearest of mu + 1 evenly spaced levels of y; the clamp absorbs float error.
    return ((y + 1.0) / 2.0 * mu + 0.5).floor().clamp(0, mu).to(torch.int64)


def mulaw_decode(q: Tensor, mu: int = 255) -> Tensor:
    """Invert `mulaw_encode`: codes back to samples (up to the quantisation error).

    Args:
        q: integer tensor of any shape, values in [0, mu].
        mu: the companding parameter used to encode.

    Returns:
        float32 tensor of the same shape as `q`, samples in [-1, 1].
    """
    assert not q.is_floating_point() and not q.is_complex(), (
        f"mulaw_decode takes integer codes, got {q.dtype}"
    )
    assert mu >= 1, f"mu must be >= 1, got {mu}"
    y = q.to(torch.float32) / mu * 2.0 - 1.0
    # Inverse companding: |x| = ((1 + mu)^|y| - 1) / mu.
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def _compand(x: Tensor, mu: int) -> Tensor:
    """y = sign(x) ln(1 + mu |x|) / ln(1 + mu), in x's float dtype (librosa computes in x's)."""
    x = x.clamp(-1.0, 1.0)
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def mulaw_encode_post(x: Tensor, mu: int = 255) -> Tensor:
    """The post's mu-law tokens: librosa's `mu_compress(x, mu, quantize=True) + (mu + 1) // 2`.

    librosa (core/audio.py `mu_compress`): `np.digitize(y, np.linspace(-1, 1, mu + 1),
    right=True) - (mu + 1) // 2`; nanoGPTaudio's tokenizer.py adds 128 back. `torch.bucketize`
    with `right=False` is `np.digitize` with `right=True` (boundaries[i - 1] < y <= boundaries[i]);
    y is compared in float64 against float64 edges, as numpy promotes.

    Args:
        x: floating tensor of any shape, samples in [-1, 1] (clamped; librosa raises instead).
        mu: the companding parameter, mu + 1 codes.

    Returns:
        int64 tensor of the same shape as `x`, values in [0, mu].
    """
    assert x.is_floating_point(), f"mulaw_encode_post takes floating samples, got {x.dtype}"
    assert mu >= 1, f"mu must be >= 1, got {mu}"
    y = _compand(x, mu).to(torch.float64)
    edges = torch.linspace(-1.0, 1.0, mu + 1, dtype=torch.float64, device=x.device)
    return torch.bucketize(y, edges, right=False).clamp(0, mu).to(torch.int64)


def mulaw_decode_post(q: Tensor, mu: int = 255) -> Tensor:
    """The post's decode: librosa's `mu_expand(q - (mu + 1) // 2, mu, quantize=True)`.

    librosa (`mu_expand`): y = (q - 128) * 2 / (1 + mu), i.e. (q - 128) / 128 for mu = 255, then
    x = sign(y) ((1 + mu)^|y| - 1) / mu.

    Returns:
        float32 tensor of the same shape as `q`, samples in [-1, 1).
    """
    assert not q.is_floating_point() and not q.is_complex(), (
        f"mulaw_decode_post takes integer codes, got {q.dtype}"
    )
    assert mu >= 1, f"mu must be >= 1, got {mu}"
    y = (q.to(torch.float64) - (mu + 1) // 2) * 2.0 / (1 + mu)
    x = torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu
    return x.to(torch.float32)


class MuLawTokenizer(AudioTokenizer):
    """mu-law companding as an `AudioTokenizer`: K = 1 level, one frame per sample.

    It has no parameters; it is a module only so that it shares the interface (and `.to()`,
    `.eval()`) of learned codecs. `quantizer` picks torchaudio's rounding ("torchaudio", the
    default, `mu-law-256`) or the post's librosa quantiser ("post", `mu-law-256-post`); see the
    module docstring for the difference.
    """

    @property
    def causal(self) -> bool:
        # One code per sample, from that sample alone.
        return True

    def __init__(
        self, sample_rate: int = 16_000, mu: int = 255, quantizer: str = "torchaudio"
    ) -> None:
        super().__init__()
        assert sample_rate > 0, f"sample_rate must be positive, got {sample_rate}"
        assert mu >= 1, f"mu must be >= 1, got {mu}"
        assert quantizer in MULAW_QUANTIZERS, (
            f"quantizer must be one of {MULAW_QUANTIZERS}, got {quantizer!r}"
        )
        self._sample_rate = sample_rate
        self.mu = mu
        self.quantizer = quantizer

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def frame_rate(self) -> float:
        # One code per sample: the frame rate is the sample rate.
        return float(self._sample_rate)

    @property
    def num_levels(self) -> int:
        return 1

    @property
    def codebook_size(self) -> int:
        return self.mu + 1

    def encode(self, wav: Tensor) -> Tensor:
        """Encode audio into mu-law codes.

        Args:
            wav: float32 `[B, 1, T]`, samples in [-1, 1] (clamped).

        Returns:
            int64 `[B, 1, T]` codes in [0, mu] (here K = 1 and F = T).
        """
        self.check_wav(wav)
        if self.quantizer == "post":
            return mulaw_encode_post(wav, self.mu)
        return mulaw_encode(wav, self.mu)

    def decode(self, codes: Tensor) -> Tensor:
        """Decode mu-law codes into audio.

        Args:
            codes: int64 `[B, 1, F]` in [0, mu].

        Returns:
            float32 `[B, 1, F]` samples in [-1, 1] (here T = F).
        """
        self.check_codes(codes)
        if self.quantizer == "post":
            return mulaw_decode_post(codes, self.mu)
        return mulaw_decode(codes, self.mu)
