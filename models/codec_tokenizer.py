"""An `RVQCodec` behind the `AudioTokenizer` interface, with a chosen number of levels.

Shape symbols: B batch, K levels used (`num_levels`, at most the codec's), T samples, F frames.

RVQ levels are ordered coarse to fine, so keeping the first K of a codec's levels gives a valid,
lower-bitrate tokenization (SoundStream, Zeghidour et al., 2021, section 3.3); the blog post
"Neural audio codecs: how to get audio into LLMs" (Kyutai, 2025) compares LMs trained on such
streams. At 16 kHz with a 128-sample hop the frame rate is 125 Hz.
"""

from __future__ import annotations

from torch import Tensor

from codecflow.models.codec import RVQCodec
from codecflow.models.tokenizer import AudioTokenizer

__all__ = ["CodecTokenizer"]


class CodecTokenizer(AudioTokenizer):
    """Tokenize with the first `num_levels` levels of `codec` (all of them by default).

    The codec is a submodule: `.to()`, `.eval()` and `state_dict` reach it.
    """

    def __init__(self, codec: RVQCodec, num_levels: int | None = None) -> None:
        super().__init__()
        k = codec.num_levels if num_levels is None else num_levels
        assert 1 <= k <= codec.num_levels, (
            f"num_levels must be in [1, {codec.num_levels}] for this codec, got {num_levels}"
        )
        self.codec = codec
        self._num_levels = k

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def num_levels(self) -> int:
        return self._num_levels

    @property
    def codebook_size(self) -> int:
        return self.codec.codebook_size

    def encode(self, wav: Tensor) -> Tensor:
        """Encode audio into codes.

        Args:
            wav: float `[B, 1, T]` at `sample_rate`.

        Returns:
            int64 `[B, K, F]` in `[0, codebook_size)`, F = ceil(T / samples_per_frame).
        """
        self.check_wav(wav)
        return self.codec.encode(wav, self._num_levels)  # [B, K, F]

    def decode(self, codes: Tensor) -> Tensor:
        """Decode codes into audio.

        Args:
            codes: int64 `[B, K, F]` in `[0, codebook_size)`.

        Returns:
            float32 `[B, 1, F * samples_per_frame]`.
        """
        self.check_codes(codes)
        return self.codec.decode(codes)  # [B, 1, F*hop]
