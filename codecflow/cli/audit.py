"""`codecflow audit-tokenizer NAME`: the batch-invariance shares of a tokenizer on real audio
(`tasks.tokenize.audit`), on the user's files or the shipped prompt cut into five lengths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.tokenize.audit import BatchInvariance, batch_invariance

__all__ = ["audit_tokenizer", "format_audit"]

#: The shipped prompt (the post's poem, 4 s at 16 kHz), cut to these lengths: a batch of five.
PROMPT = "data/prompts/prompt_librilight_uk_4s.wav"
_CUTS_S = (0.9, 1.7, 2.45, 3.3, 4.0)


def _mono(path: str, rate: int) -> np.ndarray:
    import soundfile as sf
    import torch
    import torchaudio

    try:
        audio, source_rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise CodecflowError(f"audio {path} cannot be read: {err}") from None
    mono = audio.mean(axis=1)  # [T]
    if source_rate != rate:
        mono = torchaudio.functional.resample(torch.from_numpy(mono), source_rate, rate).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def audit_tokenizer(name: str, files: Sequence[str] = ()) -> BatchInvariance:
    """Load tokenizer `name` on the CPU and measure it on `files` (or the shipped prompt cut)."""
    from codecflow.schemas.resources import packaged_path
    from codecflow.tasks.loaders import load_tokenizer

    tokenizer = load_tokenizer(name)
    rate = tokenizer.sample_rate
    if files:
        audios = [_mono(f, rate) for f in files]
        if len(audios) < 2:
            raise CodecflowError("audit-tokenizer needs at least two audio files")
    else:
        prompt = _mono(packaged_path(PROMPT), rate)
        audios = [prompt[: int(s * rate)] for s in _CUTS_S]
    return batch_invariance(name, tokenizer, audios)


def format_audit(result: BatchInvariance) -> str:
    kind = "causal" if result.causal else "non-causal: tokenize encodes one segment at a time"
    return "\n".join(
        [
            f"tokenizer {result.tokenizer} ({kind}): {result.segments} segments, "
            f"{result.codes:,} codes",
            f"  inside one zero-padded batch: {100 * result.naive_share:.2f} % of codes differ "
            "from the segment encoded alone",
            f"  as tokenize encodes them:     {100 * result.as_tokenized_share:.2f} %",
        ]
    )
