"""One loader for every audio tokenizer family, by name.

`models/` holds pure torch modules; building them from a name (and later from checkpoints or the
hub) happens here, like moshi's `loaders.get_mimi`.
"""

from __future__ import annotations

from typing import Any

from models.mulaw import MuLawTokenizer
from models.tokenizer import AudioTokenizer
from tasks.errors import CodecflowError

__all__ = ["TOKENIZER_NAMES", "load_tokenizer", "tokenizer_spec"]

TOKENIZER_NAMES: tuple[str, ...] = ("mulaw",)


def load_tokenizer(name: str) -> AudioTokenizer:
    """Build the tokenizer called `name`, in eval mode, on the CPU."""
    if name == "mulaw":
        # mu-law 256 at 16 kHz, the post's sample-level baseline (Libri-Light is 16 kHz).
        return MuLawTokenizer(sample_rate=16_000).eval()
    raise CodecflowError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZER_NAMES)}")


def tokenizer_spec(name: str, tokenizer: AudioTokenizer) -> dict[str, Any]:
    """The facts about a tokenizer that a token dataset records and its readers rely on."""
    return {
        "name": name,
        "sample_rate": tokenizer.sample_rate,
        "frame_rate": tokenizer.frame_rate,
        "num_levels": tokenizer.num_levels,
        "codebook_size": tokenizer.codebook_size,
        "samples_per_frame": tokenizer.samples_per_frame,
    }
