"""Batch invariance of a tokenizer: do a segment's codes change when it is encoded inside a
batch of other lengths?

Users of codec tokenizers report that they do (DualCodec #3: ±1-2 tokens; sglang-omni #749: 41
of 300 codes changed by a same-length neighbour), and nobody measures it. For each segment this
compares its codes encoded alone (batch 1, no padding) with:

- `naive`: its codes inside one batch of all the segments, zero-padded to the longest, in the
  given order (what a plain batched encoder does);
- `as_tokenized`: its codes from `encode_segments` batched as `tokenize` batches on a GPU
  (causal tokenizers in batches of similar length, up to `GPU_BATCH_SECONDS` of padded audio;
  the others one at a time; on the CPU `tokenize` encodes every segment alone).

The share of codes that differ is reported for both; `as_tokenized` must be 0 for every
tokenizer: that is what makes a dataset's codes independent of how its segments were batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from codecflow.tasks.tokenize.shards import GPU_BATCH_SECONDS, encode_segments

__all__ = ["BatchInvariance", "batch_invariance"]


@dataclass(frozen=True)
class BatchInvariance:
    """What `batch_invariance` measured (shares are of all the segments' codes, K x F each)."""

    tokenizer: str
    segments: int
    codes: int
    naive_share: float  # codes that differ inside one zero-padded batch
    as_tokenized_share: float  # codes that differ as `tokenize` encodes them
    causal: bool


def _alone(audio: np.ndarray, tokenizer: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        wav = torch.from_numpy(audio)[None, None]  # [1, 1, T]
        return tokenizer.encode(wav).cpu().numpy()[0]  # [K, F]


def _naive(audios: Sequence[np.ndarray], tokenizer: Any) -> list[np.ndarray]:
    import torch

    spf = tokenizer.samples_per_frame
    frames = [max(1, -(-len(a) // spf)) for a in audios]
    wav = torch.zeros(len(audios), 1, max(frames) * spf)  # [B, 1, T]
    for row, audio in enumerate(audios):
        wav[row, 0, : len(audio)] = torch.from_numpy(audio)
    with torch.inference_mode():
        codes = tokenizer.encode(wav).cpu().numpy()  # [B, K, F]
    return [codes[row, :, : frames[row]] for row in range(len(audios))]  # [K, F_i] each


def batch_invariance(name: str, tokenizer: Any, audios: Sequence[np.ndarray]) -> BatchInvariance:
    """Measure `tokenizer` (called `name`) on mono float32 segments `[T_i]` of several lengths."""
    assert len(audios) >= 2, "batch invariance needs at least two segments"
    alone = [_alone(a, tokenizer) for a in audios]  # [K, F_i] each
    naive = _naive(audios, tokenizer)
    tokenized = encode_segments(audios, tokenizer, batch_seconds=GPU_BATCH_SECONDS)
    total = sum(c.size for c in alone)

    def differing(others: Sequence[np.ndarray]) -> int:
        return sum(int((a != b.astype(a.dtype)).sum()) for a, b in zip(alone, others, strict=True))

    return BatchInvariance(
        tokenizer=name,
        segments=len(audios),
        codes=total,
        naive_share=differing(naive) / total,
        as_tokenized_share=differing(tokenized) / total,
        causal=bool(tokenizer.causal),
    )
