"""Reading a segment manifest (`segments.parquet`, written by the acquire stage) and its audio.

The manifest is the format between acquire and the stages that read audio (tokenize, the codec
trainer and its evaluation): its Arrow schema is `schemas.tables.SEGMENT_MANIFEST_SCHEMA`.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import soundfile as sf

from codecflow.schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    SEGMENT_MANIFEST_SCHEMA,
    TEXTS_NAME,
    TEXTS_SCHEMA,
)
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import (
    join,
    url_to_fs,
)

__all__ = [
    "Acquisition",
    "CODEC_RATE",
    "EXTRACTED_MARKER",
    "LIBRILIGHT_RATE",
    "archive_of",
    "read_acquisition",
    "load_split_audio",
    "read_manifest",
    "read_manifest_table",
    "read_segment_audio",
    "read_segment_pcm16",
    "read_texts",
]

#: Libri-Light's audio is 16 kHz mono FLAC; anything else is accepted and flagged.
LIBRILIGHT_RATE = 16_000

#: Written last by a completed extraction into `<root>/librilight/<archive>/` (acquire; a tar
#: member of that name is refused): the archive's name, source URL, md5, size and file count.
EXTRACTED_MARKER = ".extracted.json"


def _read_chunks(
    root: str, row: Mapping[str, Any], dtype: str, pcm16_mono: bool = False
) -> np.ndarray | None:
    """The chunks of one manifest row, `[T, C]` in `dtype` at the file's rate; None when
    `pcm16_mono` asks for a mono 16-bit PCM file and this is another kind.

    Frame indices are int(start * sr) .. int(end * sr), as in Libri-Light's cut_by_vad.py; only
    the chunks are read (seek + read), never the whole file.
    """
    # A local file by its path: libsndfile's own reads, not a Python file object's (its
    # callbacks, and fsspec's URL parsing per segment, were 8 % of a mu-law tokenization,
    # bench/tokenize_throughput.py).
    local = not storage.is_remote(root)
    if local:
        path = posixpath.join(storage.local_path(root), row["source_path"])
    else:
        fs, base = url_to_fs(root)
        path = posixpath.join(base, row["source_path"])
    pieces: list[np.ndarray] = []
    try:
        with (
            contextlib.nullcontext(path) if local else fs.open(path, "rb") as raw,
            sf.SoundFile(raw) as f,
        ):
            if pcm16_mono and (f.subtype != "PCM_16" or f.channels != 1):
                return None
            rate = f.samplerate
            for chunk in row["chunks"]:
                start, end = (
                    (chunk["start_s"], chunk["end_s"]) if isinstance(chunk, Mapping) else chunk
                )
                # numpy's clipping in cut_by_vad.py: nothing past the last frame. An end clipped to
                # the file's length (frames / rate, clip_pieces) reads up to the last frame.
                first = min(int(start * rate), f.frames)
                last = f.frames if end >= f.frames / rate else min(int(end * rate), f.frames)
                f.seek(first)
                pieces.append(f.read(max(0, last - first), dtype=dtype, always_2d=True))
    except (RuntimeError, FileNotFoundError) as err:  # LibsndfileError is a RuntimeError
        raise CodecflowError(f"unreadable audio {join(root, row['source_path'])}: {err}") from None
    if len(pieces) == 1:
        return pieces[0]  # [T, C]: a whole-file segment, no copy
    return np.concatenate(pieces) if pieces else np.zeros((0, 1), dtype=dtype)  # [T, C]


def read_segment_audio(root: str, row: Mapping[str, Any], *, downmix: bool = True) -> np.ndarray:
    """The audio of one manifest row at the file's own rate: float32 `[T]` (down-mixed to mono),
    or `[T, C]` with `downmix=False`."""
    audio = _read_chunks(root, row, "float32")
    assert audio is not None
    if downmix:
        return audio.mean(axis=1).astype(np.float32)  # [T]
    return audio[:, 0] if audio.shape[1] == 1 else audio  # [T] or [T, C]


def read_segment_pcm16(root: str, row: Mapping[str, Any]) -> np.ndarray | None:
    """The samples of one manifest row as int16 `[T]` when its file is mono 16-bit PCM
    (Libri-Light's FLAC), else None (read it with `read_segment_audio`).

    libsndfile's float32 read of 16-bit PCM is the int16 value / 32768 exactly (tested), so this
    is `read_segment_audio` before the division: half the bytes, no float conversion.
    """
    audio = _read_chunks(root, row, "int16", pcm16_mono=True)
    return None if audio is None else audio[:, 0]


def read_manifest_table(manifest: str) -> tuple[pa.Table, str]:
    """The manifest as an Arrow table and its audio root (a local path or URL)."""
    if not storage.exists(manifest):
        raise CodecflowError(f"segment manifest not found: {manifest}")
    try:
        # One thread, no pre-buffering: the lowest peak memory for a 3.6 M-row manifest.
        table = storage.read_parquet(manifest)
    except pa.ArrowInvalid as exc:
        raise CodecflowError(f"segment manifest {manifest} is not a Parquet file: {exc}") from exc
    if not table.schema.remove_metadata().equals(SEGMENT_MANIFEST_SCHEMA):
        raise CodecflowError(f"segment manifest {manifest} does not have the manifest schema")
    audio_root = (table.schema.metadata or {}).get(MANIFEST_AUDIO_ROOT_KEY, b".").decode()
    if not storage.is_remote(audio_root):
        # Relative to the manifest's folder, so that a run folder can be moved.
        audio_root = storage.join(posixpath.dirname(str(manifest)) or ".", audio_root)
    return table, audio_root


def read_texts(manifest: str) -> tuple[dict[str, str], str] | None:
    """The transcripts beside a manifest (`texts.parquet`, written by acquire's `layout: audio`)
    as segment id -> text, with the file's sha256; None when there is none or it is empty."""
    url = storage.join(posixpath.dirname(str(manifest)) or ".", TEXTS_NAME)
    if not storage.exists(url):
        return None
    table = storage.read_parquet(url)
    if not table.schema.remove_metadata().equals(TEXTS_SCHEMA):
        raise CodecflowError(f"transcripts {url} do not have the texts schema")
    if table.num_rows == 0:
        return None
    texts = dict(zip(table["segment_id"].to_pylist(), table["text"].to_pylist(), strict=True))
    return texts, storage.sha256(url)


def read_manifest(manifest: str) -> tuple[list[dict[str, Any]], str]:
    """The manifest's rows and its audio root (a local path or URL)."""
    table, audio_root = read_manifest_table(manifest)
    return table.to_pylist(), audio_root


#: The post's codec works on 16 kHz audio (Libri-Light's rate): 128x down-sampling gives 125 Hz.
CODEC_RATE = 16_000


def load_split_audio(
    manifest: str, split: str, max_segments: int | None = None, max_seconds: float | None = None
) -> list[tuple[str, np.ndarray]]:
    """(segment_id, mono float32 audio at 16 kHz) for the segments of one split, by id order."""
    import torch  # here: reading a manifest's audio needs no torch
    import torchaudio

    rows, audio_root = read_manifest(manifest)
    rows = sorted((r for r in rows if r["split"] == split), key=lambda r: r["segment_id"])
    if max_segments is not None:
        rows = rows[:max_segments]
    if not rows:
        raise CodecflowError(f"segment manifest {manifest} has no '{split}' segments")
    out = []
    for row in rows:
        audio = torch.from_numpy(read_segment_audio(audio_root, row))  # [T]
        if int(row["sample_rate"]) != CODEC_RATE:
            audio = torchaudio.functional.resample(audio, int(row["sample_rate"]), CODEC_RATE)
        if max_seconds is not None:
            audio = audio[: int(max_seconds * CODEC_RATE)]
        out.append((row["segment_id"], audio.numpy().astype(np.float32)))
    return out


@dataclass(frozen=True)
class Acquisition:
    """What acquire recorded of a manifest's audio, as later stages (the dataset card) tell it:
    `summary` is the manifest's `summary.json` (counts, segmentation settings; {} when absent),
    `archives` the `.extracted.json` of each archive its segments come from, by archive folder
    (None for one without a marker: extracted by hand)."""

    summary: dict[str, Any]
    archives: dict[str, dict[str, Any] | None]


def archive_of(source_path: str) -> str | None:
    """The archive folder a manifest row's `source_path` lies in (`librilight/<archive>/...`
    relative to the audio root), or None when it is not under one."""
    parts = source_path.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "librilight" else None


def _read_json_if_any(url: str) -> Any:
    try:
        return storage.read_json(url) if storage.exists(url) else None
    except (OSError, ValueError):
        return None  # unreadable: told as unknown, never fatal to a later stage


def read_acquisition(manifest: str, audio_root: str, archives: Iterable[str]) -> Acquisition:
    """The manifest's `summary.json` and the extraction markers of `archives` (folders under
    `<audio_root>/librilight/`, see `archive_of`)."""
    summary = _read_json_if_any(join(posixpath.dirname(str(manifest)) or ".", "summary.json"))
    markers = {
        name: _read_json_if_any(join(audio_root, "librilight", name, EXTRACTED_MARKER))
        for name in sorted(set(archives))
    }
    return Acquisition(summary if isinstance(summary, dict) else {}, markers)
