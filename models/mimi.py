"""Kyutai's Mimi codec as an `AudioTokenizer`: 24 kHz audio, 12.5 frames per second, K <= 32 levels.

Shape symbols: B batch, K levels (codebooks per frame, `num_levels`), K_enc levels of moshi's encode
(`encode_depth`: K, or K + 1 without the semantic level), T samples, F frames.

Mimi (Défossez et al., 2024, "Moshi: a speech-text foundation model for real-time dialogue",
section 3.3) is a causal SEANet encoder/decoder with transformers, downsampled to 12.5 Hz and
quantised by a split residual vector quantizer, in the released checkpoint 32 levels of 2048 codes
each (`_quantizer_kwargs` in moshi/models/loaders.py). Level 0 is the semantic level, distilled
from WavLM; levels 1..31 are the acoustic residual levels. The blog post
"Neural audio codecs: how to get audio into LLMs" (Kyutai, 2025) trains LMs on its first K levels
(`mimi_<K>_rvq`) and also without the semantic level (`mimi_<K>_rvq_nosemantic`: levels 1..K of a
K+1-level encode, K tokens per frame, K <= 31; decoded with level 0 set to code 0).

The model itself is moshi's `MimiModel` (moshi/models/compression.py), built and loaded elsewhere
(`tasks.loaders.load_mimi`, which uses `moshi.models.loaders.get_mimi`); this module only wraps
it: no hub, no files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from codecflow.models.tokenizer import AudioTokenizer

if TYPE_CHECKING:  # moshi comes with the mimi extra; this module only wraps a built model
    from moshi.models.compression import MimiModel

__all__ = ["MimiTokenizer"]


class MimiTokenizer(AudioTokenizer):
    """A built `MimiModel` behind the `AudioTokenizer` interface, in eval mode.

    Args:
        model: moshi's Mimi, built (and loaded) by `moshi.models.loaders.get_mimi`. The wrapper
            puts it in eval mode and sets its number of active codebooks to `encode_depth`
            (moshi's `set_num_codebooks`), again before each encode, so that wrappers of different
            depths can share one model.
        num_levels: K in `mimi_<K>_rvq[_nosemantic]`, the levels the tokenizer keeps:
            levels 0..K-1 with the semantic level, levels 1..K without it.
        semantic: keep level 0 (the semantic level). With False, the encode runs K + 1 levels
            (`encode_depth`, at most `model.total_codebooks`, 32 for Mimi) and drops level 0, so
            K <= 31.
    """

    @property
    def causal(self) -> bool:
        # Mimi's encoder is streaming: causal convolutions and a causal transformer (Mimi paper).
        return True

    def __init__(self, model: MimiModel, num_levels: int, semantic: bool = True) -> None:
        super().__init__()
        total = int(model.total_codebooks)
        top = total if semantic else total - 1  # without level 0, levels 1..K need K + 1
        assert 1 <= num_levels <= top, (
            f"num_levels must be in [1, {top}] ({'with' if semantic else 'without'} the semantic "
            f"level), got {num_levels}"
        )
        assert int(model.channels) == 1, f"Mimi must be mono, got {model.channels} channels"
        self.model = model
        self.encode_depth = num_levels if semantic else num_levels + 1  # K_enc
        self.semantic = semantic
        model.set_num_codebooks(self.encode_depth)
        self.eval()  # a frozen tokenizer: eval mode for the wrapper and the model
        # frame_size is int(sample_rate / frame_rate): the same 1920 as our samples_per_frame.
        assert int(model.frame_size) == self.samples_per_frame, (
            f"Mimi frame_size {model.frame_size} != samples_per_frame {self.samples_per_frame}"
        )

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)  # 24000

    @property
    def frame_rate(self) -> float:
        return float(self.model.frame_rate)  # 12.5

    @property
    def num_levels(self) -> int:
        return self.encode_depth if self.semantic else self.encode_depth - 1  # K either way

    @property
    def codebook_size(self) -> int:
        return int(self.model.cardinality)  # 2048, moshi's `bins`

    def encode(self, wav: Tensor) -> Tensor:
        """Encode audio into Mimi codes.

        Args:
            wav: float32 `[B, 1, T]` at 24 kHz; a partial last frame is padded with zeros.

        Returns:
            int64 `[B, K, F]` codes in [0, 2048), `F = ceil(T / 1920)`, on the model's device
            (K = `num_levels`: levels 0..K-1, or levels 1..K of a K+1-level encode without
            the semantic level).
        """
        self.check_wav(wav)
        b, _, t = wav.shape
        spf = self.samples_per_frame
        f = -(-t // spf)
        param = next(self.model.parameters())
        if f == 0:
            return torch.zeros(b, self.num_levels, 0, dtype=torch.int64, device=param.device)
        if t % spf:
            wav = F.pad(wav, (0, f * spf - t))  # [B, 1, F * spf], whole frames (a copy)
        wav = wav.to(device=param.device, dtype=param.dtype)
        # Set again at each call: another wrapper of the same model may have changed it.
        self.model.set_num_codebooks(self.encode_depth)
        codes = _inference(self.model.encode, wav)  # [B, K_enc, F]
        assert codes.shape == (b, self.encode_depth, f), (
            f"Mimi encoded {tuple(wav.shape)} to {tuple(codes.shape)}, "
            f"expected {(b, self.encode_depth, f)}"
        )
        if not self.semantic:
            codes = codes[:, 1:].contiguous()  # [B, K, F]: levels 1..K, semantic level 0 dropped
        return codes.to(torch.int64)  # [B, K, F]

    def decode(self, codes: Tensor) -> Tensor:
        """Decode Mimi codes into audio.

        Args:
            codes: int64 `[B, K, F]` in [0, 2048). Without the semantic level, code 0 is put in
                level 0's place before decoding, as the post does.

        Returns:
            float32 `[B, 1, F * 1920]` at 24 kHz, on the model's device.
        """
        self.check_codes(codes)
        b, _, f = codes.shape
        spf = self.samples_per_frame
        param = next(self.model.parameters())
        if f == 0:
            return torch.zeros(b, 1, 0, dtype=torch.float32, device=param.device)
        codes = codes.to(param.device)
        if not self.semantic:
            # The post decodes "nosemantic" codes with the semantic level set to code 0.
            zeros = codes.new_zeros(b, 1, f)  # [B, 1, F]
            codes = torch.cat([zeros, codes], dim=1)  # [B, K + 1, F]
        wav = _inference(self.model.decode, codes)  # [B, 1, F * spf]
        assert wav.shape == (b, 1, f * spf), (
            f"Mimi decoded {tuple(codes.shape)} to {tuple(wav.shape)}, expected {(b, 1, f * spf)}"
        )
        return wav.to(torch.float32)


def _inference(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """`fn(x)` under `torch.inference_mode`, returned as a normal tensor.

    Outside inference mode, the result is cloned: an inference tensor cannot be updated in place
    or saved for backward there, which would surprise a caller of `encode`/`decode`.
    """
    if torch.is_inference_mode_enabled():
        return fn(x)
    with torch.inference_mode():
        y = fn(x)
    return y.clone()
