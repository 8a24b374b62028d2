"""The real Mimi architecture (moshi's `get_mimi(None)`, random weights) with random codebooks:
untrained ones are degenerate (every code 0), random ones make batch and padding tests bite."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["random_codebook_mimi"]


def random_codebook_mimi(num_codebooks: int, seed: int = 0) -> Any:
    """A CPU Mimi of `num_codebooks` levels whose codebooks are random (seeded)."""
    from moshi.models.loaders import get_mimi
    from moshi.quantization.core_vq import EuclideanCodebook

    torch.manual_seed(seed)
    mimi = get_mimi(None, device="cpu", num_codebooks=num_codebooks)
    for codebook in (m for m in mimi.modules() if isinstance(m, EuclideanCodebook)):
        codebook.embedding_sum.copy_(torch.randn(codebook.embedding_sum.shape) * 0.01)
        codebook.cluster_usage.fill_(1.0)
        codebook._initialized.fill_(1.0)
        codebook.register_buffer("_embedding", None, persistent=False)
    return mimi
