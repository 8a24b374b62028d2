"""The audio tokenizer interface: waveform in, integer codes out, and back.

Shape symbols: B batch, C channels, K levels (codebooks per frame), T samples, F frames.

The interface is a small subset of moshi's `CompressionModel` (moshi/models/compression.py):
`sample_rate`, `frame_rate`, the number of codebooks (`num_levels` here, moshi's
`num_codebooks`), the codebook size (moshi's `cardinality`) and `encode`/`decode` with the same
layouts, so that Mimi sits behind it with a thin wrapper (`models.mimi`).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from codecflow.models.extras import require

__all__ = ["AudioTokenizer"]


class AudioTokenizer(nn.Module, abc.ABC):
    """An audio codec that turns mono audio into K parallel streams of discrete codes.

    Contract: `encode` maps float32 `[B, 1, T]` to int64 `[B, K, F]` with values in
    `[0, codebook_size)` and `F = ceil(T / samples_per_frame)` (a partial last frame is padded,
    as Mimi does); `decode` maps int64 `[B, K, F]` to float32 `[B, 1, F * samples_per_frame]`.
    """

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Audio samples per second of the waveforms that `encode` takes and `decode` returns."""

    @property
    @abc.abstractmethod
    def frame_rate(self) -> float:
        """Frames (code vectors of K levels) per second."""

    @property
    @abc.abstractmethod
    def num_levels(self) -> int:
        """K, the number of codebooks per frame (residual levels for an RVQ codec)."""

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct codes per level; every code lies in `[0, codebook_size)`."""

    @property
    def causal(self) -> bool:
        """True when a frame's codes depend only on the audio up to that frame's end.

        Then a segment encoded in a zero-padded batch gets the same codes as encoded alone, and
        tokenization may batch segments of different lengths. Non-causal models (convolutions
        that look ahead) are encoded one segment at a time.
        """
        return False

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per frame, `sample_rate / frame_rate` (1920 for Mimi, 1 for mu-law)."""
        ratio = self.sample_rate / self.frame_rate
        n = round(ratio)
        # A fractional ratio would make F * samples_per_frame drift from the decoded length.
        assert n >= 1 and abs(ratio - n) < 1e-6, (
            f"sample_rate {self.sample_rate} / frame_rate {self.frame_rate} = {ratio} "
            "is not a whole number of samples per frame"
        )
        return n

    @property
    def token_dtype(self) -> type[np.unsignedinteger[Any]]:
        """The smallest unsigned numpy integer type that holds every code of `[0, codebook_size)`.

        `numpy.uint8` for mu-law's 256 codes, `numpy.uint16` for codebooks of 1024 or 2048 (Mimi),
        `numpy.uint32` beyond: what a token file stores the codes as.
        """
        size = self.codebook_size
        assert 1 <= size <= 1 << 32, f"codebook_size must be in [1, 2**32], got {size}"
        if size <= 1 << 8:
            return np.uint8
        if size <= 1 << 16:
            return np.uint16
        return np.uint32

    def encode_audio(self, wav: Tensor, sample_rate: int) -> Tensor:
        """Encode audio of any layout and rate: down-mix to mono, resample, then `encode`.

        Args:
            wav: floating `[B, C, T]` (C channels, averaged to mono), `[B, T]` or `[T]`, samples in
                [-1, 1] at `sample_rate`.
            sample_rate: samples per second of `wav`; resampled to `self.sample_rate` when it
                differs (`torchaudio.functional.resample`, windowed sinc).

        Returns:
            int64 `[B, K, F]` codes (B = 1 for a `[T]` input), `F = ceil(T' / samples_per_frame)`
            with T' the length after resampling.
        """
        assert wav.is_floating_point(), f"wav must be floating point, got {wav.dtype}"
        assert 1 <= wav.ndim <= 3, f"wav must be [B, C, T], [B, T] or [T], got {tuple(wav.shape)}"
        assert sample_rate > 0, f"sample_rate must be positive, got {sample_rate}"
        if wav.ndim == 1:
            wav = wav.view(1, 1, -1)  # [1, 1, T]
        elif wav.ndim == 2:
            wav = wav.unsqueeze(1)  # [B, 1, T]
        wav = wav.to(torch.float32).mean(dim=1, keepdim=True)  # [B, 1, T], mono
        if sample_rate != self.sample_rate:
            # torchaudio comes with the pipeline and mimi extras: imported when resampling.
            resample = require("torchaudio.functional", "resampling", "pipeline").resample
            wav = resample(wav, sample_rate, self.sample_rate)  # [B, 1, T']
        return self.encode(wav)  # [B, K, F]

    @abc.abstractmethod
    def encode(self, wav: Tensor) -> Tensor:
        """Encode audio into codes.

        Args:
            wav: float32 `[B, 1, T]`, samples in [-1, 1] at `sample_rate`.

        Returns:
            int64 `[B, K, F]` codes in `[0, codebook_size)`, `F = ceil(T / samples_per_frame)`.
        """

    @abc.abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Decode codes into audio.

        Args:
            codes: int64 `[B, K, F]` in `[0, codebook_size)`.

        Returns:
            float32 `[B, 1, F * samples_per_frame]` at `sample_rate`.
        """

    def check_wav(self, wav: Tensor) -> None:
        """Assert that `wav` is a floating `[B, 1, T]` waveform (a helper for `encode`)."""
        assert wav.ndim == 3 and wav.shape[1] == 1, (
            f"wav must be [B, 1, T] (mono), got shape {tuple(wav.shape)}"
        )
        assert wav.is_floating_point(), f"wav must be floating point, got {wav.dtype}"

    def check_codes(self, codes: Tensor) -> None:
        """Assert that `codes` is an int64 `[B, K, F]` tensor (a helper for `decode`)."""
        assert codes.ndim == 3 and codes.shape[1] == self.num_levels, (
            f"codes must be [B, K={self.num_levels}, F], got shape {tuple(codes.shape)}"
        )
        assert codes.dtype == torch.int64, f"codes must be int64, got {codes.dtype}"
