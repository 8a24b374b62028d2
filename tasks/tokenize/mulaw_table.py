"""mu-law tokens of 16-bit PCM through a 65 536-entry lookup table, without torch.

Libri-Light is 16 kHz mono 16-bit FLAC, so every sample the mu-law tokenizer ever sees is one
of 65 536 values s / 32768. The table holds the token of each: encoding is one gather per
sample (`np.take`, about 30 ms per audio hour on one core of the project's 2-core machine) where
`models.mulaw.MuLawTokenizer` spends a clamp, a log1p, a division and a rounding in float32
(about 0.5 s per audio hour, measured by bench/tokenize_throughput.py), and the tokenize stage
needs neither the model nor torch (imported in 2.6-4.9 s on that machine under load) for it.

The entries are the exact values of the formulas of `models.mulaw` (in float64):

- `mu-law-256` (torchaudio's rounding): floor((y + 1) / 2 * mu + 0.5), clipped to [0, mu];
- `mu-law-256-post` (librosa's `mu_compress(quantize=True)` + 128, the post's tokens):
  the index of the first of `linspace(-1, 1, mu + 1)` at or above y (`np.digitize`, right=True);

with y = sign(x) ln(1 + mu |x|) / ln(1 + mu), x = s / 32768, mu = 255. On all 65 536 values they
equal the float32 tokens of `MuLawTokenizer` (and librosa's): tested
(tests/tasks/tokenize/test_mulaw_table.py), so a dataset tokenized through the table has the
bytes of one tokenized through the model, and `DATASET_FORMAT_VERSION` is unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from codecflow.schemas.tokenizers import (
    MULAW_CODEBOOK_SIZE,
    MULAW_SAMPLE_RATE,
    parse_tokenizer_name,
)

__all__ = [
    "PCM16_SCALE",
    "encode_pcm16",
    "is_mulaw",
    "mulaw_spec",
    "pcm16_table",
]

#: libsndfile's float32 reading of 16-bit PCM divides by 2**15 (`read_segment_pcm16`).
PCM16_SCALE = 32768.0

_MU = MULAW_CODEBOOK_SIZE - 1  # 255, the ITU-T G.711 value (models/mulaw.py)


def is_mulaw(name: str) -> bool:
    """True for the mu-law tokenizer names (`mu-law-256`, `mulaw`, `mu-law-256-post`)."""
    return parse_tokenizer_name(name).kind == "mulaw"


def mulaw_spec(name: str) -> dict[str, Any]:
    """`tasks.loaders.tokenizer_spec(name, load_tokenizer(name))` for a mu-law name, without
    building the model: the same keys, values and types (tested), so the same fingerprint."""
    assert is_mulaw(name), f"not a mu-law tokenizer name: {name!r}"
    return {
        "name": name,
        "sample_rate": MULAW_SAMPLE_RATE,
        "frame_rate": float(MULAW_SAMPLE_RATE),  # one frame per sample
        "num_levels": 1,
        "codebook_size": MULAW_CODEBOOK_SIZE,
        "samples_per_frame": 1,
        "token_dtype": "uint8",
    }


@functools.cache
def pcm16_table(name: str) -> np.ndarray:
    """uint8 `[65536]`: the token of every int16 sample, indexed by its bits as uint16
    (`pcm.view(np.uint16)`: 0..32767 for s >= 0, 32768..65535 for s < 0). Read-only."""
    post = parse_tokenizer_name(name).post_quantizer
    samples = np.arange(1 << 16, dtype=np.uint16).view(np.int16)  # [65536], in index order
    x = samples.astype(np.float64) / PCM16_SCALE  # [-1, 1)
    y = np.sign(x) * np.log1p(_MU * np.abs(x)) / np.log1p(_MU)
    if post:
        codes = np.digitize(y, np.linspace(-1.0, 1.0, _MU + 1), right=True)
    else:
        codes = np.floor((y + 1.0) / 2.0 * _MU + 0.5)
    table = np.clip(codes, 0, _MU).astype(np.uint8)
    table.flags.writeable = False
    return table


def encode_pcm16(pcm: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 codes `[1, T]` (K = 1 level) of int16 samples `[T]`, through `pcm16_table`."""
    assert pcm.dtype == np.int16 and pcm.ndim == 1, f"int16 [T] expected, got {pcm.dtype}"
    return np.take(table, pcm.view(np.uint16)).reshape(1, -1)
