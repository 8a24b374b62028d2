"""mu-law companding: the sample-level tokenizer, one 8-bit code per audio sample.

Shape symbols: B batch, K levels (1 here), T samples, F frames (F = T here).

mu = 255 is the ITU-T G.711 mu-law value, also used by WaveNet (van den Oord et al., 2016,
section 2.2) to quantise audio to 256 values. The blog post "Neural audio codecs: how to get audio
into LLMs" (Kyutai, 2025) uses mu-law 256 at 16 kHz as its sample-level baseline: at 16000 tokens
per second, its 2048-token context covers only 128 ms of audio, which is why codecs with low
frame rates (Mimi: 12.5 Hz) exist.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.tokenizer import AudioTokenizer

__all__ = ["mulaw_encode", "mulaw_decode", "MuLawTokenizer"]


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


class MuLawTokenizer(AudioTokenizer):
    """mu-law companding as an `AudioTokenizer`: K = 1 level, one frame per sample.

    It has no parameters; it is a module only so that it shares the interface (and `.to()`,
    `.eval()`) of learned codecs.
    """

    @property
    def causal(self) -> bool:
        # One code per sample, from that sample alone.
        return True

    def __init__(self, sample_rate: int = 16_000, mu: int = 255) -> None:
        super().__init__()
        assert sample_rate > 0, f"sample_rate must be positive, got {sample_rate}"
        assert mu >= 1, f"mu must be >= 1, got {mu}"
        self._sample_rate = sample_rate
        self.mu = mu

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
        return mulaw_encode(wav, self.mu)

    def decode(self, codes: Tensor) -> Tensor:
        """Decode mu-law codes into audio.

        Args:
            codes: int64 `[B, 1, F]` in [0, mu].

        Returns:
            float32 `[B, 1, F]` samples in [-1, 1] (here T = F).
        """
        self.check_codes(codes)
        return mulaw_decode(codes, self.mu)
