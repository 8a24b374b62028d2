"""How many bytes a token dataset takes: measured (`size_report`) and projected (`project_sizes`).

Plain functions, no Prefect, no model loaded: a tokenizer's rates come from its name
(`describe_tokenizer`), a codec's from its checkpoint's `config.json` or a preset.

Beside our own figure every report puts the layout of the post's code ("Neural audio codecs: how
to get audio into LLMs", Kyutai, 2025; `data/librilight/prepare.py` of kyutai-labs/nanoGPTaudio):
all tokens of a split concatenated into one `.bin` file, stored as the tokenizer's `dtype()` there:
**int32 (4 bytes) for its codec and for Mimi, but uint8 (1 byte) for mu-law**. That is why the
post's figures are 1 000 h of mu-law -> 53.6 GiB (57.6e9 samples x 1 B), 10 000 h of its 8-level
codec -> 134.1 GiB (36e9 tokens x 4 B) and 10 000 h of 32-level Mimi -> 53.6 GiB (14.4e9 tokens
x 4 B). We store the smallest unsigned type that holds the codebook (uint8 for 256 codes, uint16
for 1 024 or 2 048), so codec and Mimi datasets take half the post's bytes and mu-law the same,
plus Arrow's small per-segment overhead (offsets, ids), which a measured dataset accounts for.

"GiB" is 2**30 bytes throughout (the post's "GB").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codecflow.schemas.tokenizers import (
    MIMI_CODEBOOK_SIZE,
    MIMI_FRAME_RATE,
    MIMI_SAMPLE_RATE,
    MULAW_CODEBOOK_SIZE,
    MULAW_SAMPLE_RATE,
    parse_tokenizer_name,
)
from codecflow.tasks.core.errors import CodecflowError

__all__ = [
    "PCM16_BYTES_PER_SECOND",
    "PROJECTION_HOURS",
    "TokenizerFacts",
    "describe_tokenizer",
    "facts_from_spec",
    "format_size_report",
    "format_sizes",
    "project_sizes",
    "reference_token_bytes",
    "size_report",
    "smallest_token_bytes",
]

#: 16-bit PCM at Libri-Light's 16 kHz: the source audio every compression ratio divides.
PCM16_BYTES_PER_SECOND = 16_000 * 2

#: The dataset sizes `size_report` projects to: the post's 1 000 h and 10 000 h, and 60 000 h
#: (about all of Libri-Light).
PROJECTION_HOURS: tuple[float, ...] = (1_000.0, 10_000.0, 60_000.0)

_GIB = float(1 << 30)

_SPLITS = ("train", "val")  # schemas.tables.SPLITS, without importing pyarrow


@dataclass(frozen=True)
class TokenizerFacts:
    """What sizes a token stream: rates, levels, codebook and bytes per stored token."""

    name: str
    sample_rate: int
    frame_rate: float
    num_levels: int
    codebook_size: int
    token_bytes: int

    @property
    def tokens_per_second(self) -> float:
        return self.frame_rate * self.num_levels

    @property
    def token_bitrate_bps(self) -> float:
        """Information rate of the tokens: levels x log2(codebook) x frame rate."""
        return self.num_levels * math.log2(self.codebook_size) * self.frame_rate

    @property
    def reference_token_bytes(self) -> int:
        return reference_token_bytes(self.name)


def smallest_token_bytes(codebook_size: int) -> int:
    """Bytes of the smallest unsigned integer (1, 2 or 4 bytes) holding `[0, codebook_size)`."""
    if not 1 <= codebook_size <= 1 << 32:
        raise CodecflowError(f"codebook_size must be in 1..2**32, got {codebook_size}")
    return 1 if codebook_size <= 1 << 8 else 2 if codebook_size <= 1 << 16 else 4


def reference_token_bytes(name: str) -> int:
    """Bytes per token in the post's `.bin` layout: 1 (uint8) for mu-law, else 4 (int32)."""
    return 1 if parse_tokenizer_name(name).kind == "mulaw" else 4


def _codec_facts(name: str, checkpoint: str, num_levels: int | None) -> TokenizerFacts:
    from codecflow.tasks.loaders import (
        codec_preset,  # here: the loaders import torch, mu-law needs none
    )

    config_path = Path(checkpoint) / "config.json"
    preset = codec_preset(checkpoint)
    if preset is None:
        try:
            config = json.loads(config_path.read_text())
            codec = config["codec"]
            max_levels, codebook = int(codec["num_levels"]), int(codec["codebook_size"])
            n_blocks = int(codec.get("n_blocks", 7))
            rate = int(config.get("sample_rate", codec.get("sample_rate", 16_000)))
        except (ValueError, KeyError, TypeError) as exc:
            raise CodecflowError(
                f"codec config {config_path} is not a train-codec config.json "
                f"({type(exc).__name__}: {exc})"
            ) from None
    else:
        max_levels, codebook = int(preset["num_levels"]), int(preset["codebook_size"])
        n_blocks, rate = int(preset.get("n_blocks", 7)), int(preset.get("sample_rate", 16_000))
    if num_levels is not None and not 1 <= num_levels <= max_levels:
        raise CodecflowError(f"codec {checkpoint} has {max_levels} levels; asked for {num_levels}")
    return TokenizerFacts(
        name,
        rate,
        rate / 2**n_blocks,
        num_levels or max_levels,
        codebook,
        smallest_token_bytes(codebook),
    )


def describe_tokenizer(name: str) -> TokenizerFacts:
    """The rates of tokenizer `name` without loading it.

    A malformed name raises `schemas.tokenizers.TokenizerNameError` (one line; `user_error` makes
    it a CodecflowError), an unknown codec CodecflowError (`codec_preset`).
    `codec:<checkpoint>[@N]` reads `<checkpoint>/config.json` (written by train-codec) when it
    exists, else takes `<checkpoint>` as a preset of `models.codec.CODEC_PRESETS` (`codec:rvq-8`
    is the post's 8-level codec), as `tokenize` does.
    """
    parsed = parse_tokenizer_name(name)
    if parsed.kind == "mulaw":
        rate = MULAW_SAMPLE_RATE
        return TokenizerFacts(name, rate, float(rate), 1, MULAW_CODEBOOK_SIZE, 1)
    if parsed.kind == "codec":
        assert parsed.checkpoint is not None
        return _codec_facts(name, parsed.checkpoint, parsed.num_levels)
    assert parsed.num_levels is not None
    num_levels = parsed.num_levels  # K either way: levels 0..K-1, or 1..K without the semantic one
    return TokenizerFacts(
        name,
        MIMI_SAMPLE_RATE,
        MIMI_FRAME_RATE,
        num_levels,
        MIMI_CODEBOOK_SIZE,
        smallest_token_bytes(MIMI_CODEBOOK_SIZE),
    )


def facts_from_spec(spec: Mapping[str, Any]) -> TokenizerFacts:
    """The facts a token dataset's tokenizer spec records (`tasks.tokenizers.tokenizer_spec`)."""
    import numpy as np

    return TokenizerFacts(
        name=str(spec["name"]),
        sample_rate=int(spec["sample_rate"]),
        frame_rate=float(spec["frame_rate"]),
        num_levels=int(spec["num_levels"]),
        codebook_size=int(spec["codebook_size"]),
        token_bytes=int(np.dtype(spec["token_dtype"]).itemsize),
    )


def project_sizes(
    facts: TokenizerFacts, hours: float, overhead_bytes_per_hour: float = 0.0
) -> dict[str, Any]:
    """Frames, tokens and bytes of `hours` of audio, ours beside the post's layout.

    `bytes` = tokens x `token_bytes` + `overhead_bytes_per_hour` x hours (a measured dataset's
    Arrow overhead); `bytes_int32_reference` = tokens x 4, except mu-law, which the post stored
    as uint8 (tokens x 1). `compression_vs_pcm16` divides 16 kHz 16-bit PCM (32 000 B/s) by ours.
    """
    if not hours >= 0 or math.isinf(hours):
        raise CodecflowError(f"hours must be a finite number >= 0, got {hours}")
    seconds = hours * 3600.0
    frames = round(seconds * facts.frame_rate)
    tokens = frames * facts.num_levels
    n_bytes = round(tokens * facts.token_bytes + overhead_bytes_per_hour * hours)
    reference = tokens * facts.reference_token_bytes
    return {
        "tokenizer": facts.name,
        "hours": hours,
        "frame_rate": facts.frame_rate,
        "num_levels": facts.num_levels,
        "codebook_size": facts.codebook_size,
        "token_bytes": facts.token_bytes,
        "reference_token_bytes": facts.reference_token_bytes,
        "frames": frames,
        "tokens": tokens,
        "bytes": n_bytes,
        "bytes_int32_reference": reference,
        "gib": n_bytes / _GIB,
        "reference_gib": reference / _GIB,
        "ratio_vs_reference": n_bytes / reference if reference else 0.0,
        "token_bitrate_bps": facts.token_bitrate_bps,
        "tokens_per_second": facts.tokens_per_second,
        "compression_vs_pcm16": seconds * PCM16_BYTES_PER_SECOND / n_bytes if n_bytes else 0.0,
    }


def size_report(
    shards: Sequence[Mapping[str, Any]],
    spec: Mapping[str, Any],
    source_audio_bytes: int | None = None,
) -> dict[str, Any]:
    """Per split and total: what the shards hold and take, beside the post's layout.

    Shard dicts: name, split, rows, frames, tokens, bytes, audio_seconds (and optionally
    webdataset_bytes, reported as its own figure). Rates are measured: `token_bitrate_bps` is
    tokens x log2(codebook) per second of audio (frames padded at a segment's end count).
    `compression_vs_source_flac` (total only, when `source_audio_bytes` is given) divides the
    source FLAC bytes by ours. `total.projections` scales this dataset's bytes per audio hour,
    ours and the post's, to 1 000, 10 000 and 60 000 hours.
    """
    facts = facts_from_spec(spec)
    bits_per_token = math.log2(facts.codebook_size)
    has_webdataset = any("webdataset_bytes" in s for s in shards)

    def summarise(selected: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        seconds = float(sum(s["audio_seconds"] for s in selected))
        n_bytes = int(sum(s["bytes"] for s in selected))
        tokens = int(sum(s["tokens"] for s in selected))
        hours = seconds / 3600.0
        reference = tokens * facts.reference_token_bytes
        summary: dict[str, Any] = {
            "segments": int(sum(s["rows"] for s in selected)),
            "audio_hours": hours,
            "frames": int(sum(s["frames"] for s in selected)),
            "tokens": tokens,
            "bytes": n_bytes,
            "bytes_per_audio_hour": n_bytes / hours if hours else 0.0,
            "tokens_per_second": tokens / seconds if seconds else 0.0,
            "compression_vs_pcm16": seconds * PCM16_BYTES_PER_SECOND / n_bytes if n_bytes else 0.0,
            "token_bitrate_bps": tokens * bits_per_token / seconds if seconds else 0.0,
            "int32_reference_bytes": reference,
            "ratio_vs_int32_reference": n_bytes / reference if reference else 0.0,
        }
        if has_webdataset:
            summary["webdataset_bytes"] = int(sum(s.get("webdataset_bytes", 0) for s in selected))
        return summary

    report: dict[str, Any] = {"tokenizer": dict(spec)}
    for split in _SPLITS:
        report[split] = summarise([s for s in shards if s["split"] == split])
    total = summarise(list(shards))
    if source_audio_bytes is not None:
        total["source_audio_bytes"] = int(source_audio_bytes)
        total["compression_vs_source_flac"] = (
            source_audio_bytes / total["bytes"] if total["bytes"] else 0.0
        )
    hours = total["audio_hours"]
    reference_per_hour = total["int32_reference_bytes"] / hours if hours else 0.0
    total["projections"] = [
        {
            "hours": h,
            "bytes": round(total["bytes_per_audio_hour"] * h),
            "gib": total["bytes_per_audio_hour"] * h / _GIB,
            "int32_reference_bytes": round(reference_per_hour * h),
            "int32_reference_gib": reference_per_hour * h / _GIB,
        }
        for h in PROJECTION_HOURS
    ]
    report["total"] = total
    return report


def _human(n_bytes: float) -> str:
    """Binary units: 1536 -> '1.5 KiB'."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _dtype_name(token_bytes: int) -> str:
    return {1: "uint8", 2: "uint16", 4: "uint32"}.get(token_bytes, f"{token_bytes} B")


def format_size_report(report: Mapping[str, Any]) -> str:
    """The summary table a tokenize run prints: per split, total, the post's layout, projections."""
    facts = facts_from_spec(report["tokenizer"])
    reference_dtype = "uint8" if facts.reference_token_bytes == 1 else "int32"
    lines = [
        f"tokenizer {facts.name}: {facts.frame_rate:g} frames/s x {facts.num_levels} "
        f"level{'s' if facts.num_levels != 1 else ''}, "
        f"codebook {facts.codebook_size}, {_dtype_name(facts.token_bytes)} tokens "
        f"(post: {reference_dtype} in one .bin)",
        f"{'split':<6} {'segments':>8} {'hours':>9} {'tokens':>15} {'ours':>11} "
        f"{'post .bin':>11} {'ours/post':>9} {'vs pcm16':>9} {'kbit/s':>7}",
    ]
    for split in (*_SPLITS, "total"):
        s = report[split]
        lines.append(
            f"{split:<6} {s['segments']:>8,} {s['audio_hours']:>9.3f} {s['tokens']:>15,} "
            f"{_human(s['bytes']):>11} {_human(s['int32_reference_bytes']):>11} "
            f"{s['ratio_vs_int32_reference']:>9.2f} {s['compression_vs_pcm16']:>8.1f}x "
            f"{s['token_bitrate_bps'] / 1000:>7.2f}"
        )
    total = report["total"]
    if "webdataset_bytes" in total:
        lines.append(f"webdataset copy: {_human(total['webdataset_bytes'])}")
    if "compression_vs_source_flac" in total:
        lines.append(
            f"source FLAC: {_human(total['source_audio_bytes'])}, "
            f"{total['compression_vs_source_flac']:.1f}x our bytes"
        )
    lines.append(
        f"projected at {_human(total['bytes_per_audio_hour'])} per audio hour (ours) "
        "and the post's layout:"
    )
    for p in total.get("projections", []):
        lines.append(
            f"  {p['hours']:>8,.0f} h  ours {p['gib']:>9.1f} GiB   "
            f"post {p['int32_reference_gib']:>9.1f} GiB"
        )
    return "\n".join(lines)


def format_sizes(projection: Mapping[str, Any]) -> str:
    """`project_sizes`' result as a table, ours beside the post's layout (`codecflow sizes`)."""
    p = projection
    ours = _dtype_name(int(p["token_bytes"]))
    post = "uint8" if p["reference_token_bytes"] == 1 else "int32"
    rows = [
        f"tokenizer        {p['tokenizer']}",
        f"audio            {p['hours']:,g} h: {p['frame_rate']:g} frames/s x {p['num_levels']} "
        f"level{'s' if p['num_levels'] != 1 else ''}, codebook {p['codebook_size']}",
        f"tokens           {p['tokens']:,} ({p['tokens_per_second']:,g}/s, "
        f"{p['token_bitrate_bps'] / 1000:,.2f} kbit/s)",
        f"{'':<16} {'ours (' + ours + ')':>20} {'post .bin (' + post + ')':>22}",
        f"{'bytes':<16} {p['bytes']:>20,} {p['bytes_int32_reference']:>22,}",
        f"{'size':<16} {_human(p['bytes']):>20} {_human(p['bytes_int32_reference']):>22}",
        f"ours / post      {p['ratio_vs_reference']:.2f}",
        f"vs 16-bit PCM    {p['compression_vs_pcm16']:.1f}x smaller (16 kHz, 32 000 B/s)",
    ]
    return "\n".join(rows)
