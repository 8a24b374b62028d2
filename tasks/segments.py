"""Libri-Light metadata, VAD segmentation, the speaker split and the segment manifest.

`build_segment_manifest` cuts files into segments with the semantics of Libri-Light's
`data_preparation/cut_by_vad.py`, splits speakers (never files) between train and val, and writes
the manifest atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from schemas.tables import MANIFEST_AUDIO_ROOT_KEY, SEGMENT_MANIFEST_SCHEMA
from tasks.errors import (
    CodecflowError,
)
from tasks.io import atomic_file

__all__ = [
    "ManifestRecord",
    "SourceFile",
    "build_segment_manifest",
    "cut_by_vad",
    "read_segment_audio",
    "scan_librilight",
    "split_by_speaker",
]


@dataclass(frozen=True)
class SourceFile:
    """One Libri-Light audio file with its metadata (the `<file>.json` beside the `<file>.flac`)."""

    path: str  # the FLAC, relative to the scanned root, POSIX separators
    speaker: str
    book_id: str
    snr: float
    voice_activity: tuple[tuple[float, float], ...]
    sample_rate: int
    duration_s: float


@dataclass(frozen=True)
class ManifestRecord:
    """A written segment manifest (Parquet, SEGMENT_MANIFEST_SCHEMA) and its headline numbers."""

    path: Path
    n_segments: int
    n_train: int
    n_val: int
    audio_hours: float  # sum of segment durations (VAD speech only, gaps dropped)
    n_speakers: int


# --------------------------------------------------------------------------------------------
# Segmentation, metadata, split
# --------------------------------------------------------------------------------------------


def cut_by_vad(
    voice_activity: Sequence[tuple[float, float]], target_len_sec: float
) -> list[list[tuple[float, float]]]:
    """Group consecutive VAD chunks into segments of about `target_len_sec` seconds of speech.

    Exactly Libri-Light's `data_preparation/cut_by_vad.py` (`cut_sequence`): chunks are
    accumulated; when adding the next one would make the total exceed the target (strictly) and
    the current segment is not empty, the segment is closed and a new one starts. A chunk longer
    than the target therefore stays whole, alone in its segment. Lengths count speech only: the
    gaps between chunks are dropped when the audio is read.
    """
    if not target_len_sec > 0:
        raise CodecflowError(f"target_len_sec must be positive, got {target_len_sec}")
    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    accumulated = 0.0
    for i, chunk in enumerate(voice_activity):
        start, end = float(chunk[0]), float(chunk[1])
        if end < start:
            raise CodecflowError(f"voice_activity chunk {i} ends before it starts: {chunk}")
        if accumulated + (end - start) > target_len_sec and accumulated > 0:
            segments.append(current)
            current = []
            accumulated = 0.0
        current.append((start, end))
        accumulated += end - start
    if current:
        segments.append(current)
    return segments


def _source_file(root: Path, json_path: Path, flac: Path) -> SourceFile:
    try:
        meta = json.loads(json_path.read_text())
        speaker = meta["speaker"]
        book_id = meta["book_meta"]["id"]
        snr = float(meta["snr"])
        voice_activity = tuple((float(a), float(b)) for a, b in meta["voice_activity"])
    except ValueError as err:  # JSONDecodeError, float("x"), wrong number of values
        raise CodecflowError(f"bad Libri-Light metadata {json_path}: {err}") from None
    except KeyError as err:
        raise CodecflowError(f"bad Libri-Light metadata {json_path}: missing key {err}") from None
    except TypeError as err:
        raise CodecflowError(f"bad Libri-Light metadata {json_path}: {err}") from None
    if not isinstance(speaker, str | int) or not isinstance(book_id, str | int):
        raise CodecflowError(f"bad Libri-Light metadata {json_path}: speaker/book id not a string")
    try:
        info = sf.info(os.fspath(flac))
    except RuntimeError as err:  # soundfile.LibsndfileError is a RuntimeError
        raise CodecflowError(f"unreadable audio {flac}: {err}") from None
    return SourceFile(
        path=flac.relative_to(root).as_posix(),
        speaker=str(speaker),
        book_id=str(book_id),
        snr=snr,
        voice_activity=voice_activity,
        sample_rate=int(info.samplerate),
        duration_s=info.frames / info.samplerate,
    )


def scan_librilight(root: Path) -> list[SourceFile]:
    """Every `<file>.flac` with its `<file>.json` under `root` (any subset folder), sorted by path.

    Malformed JSON or missing keys raise CodecflowError naming the JSON file.
    """
    root = Path(root)
    if not root.is_dir():
        raise CodecflowError(f"Libri-Light root is not a folder: {root}")
    files = []
    for json_path in sorted(root.rglob("*.json")):
        flac = json_path.with_suffix(".flac")
        if flac.is_file():
            files.append(_source_file(root, json_path, flac))
    return files


def split_by_speaker(
    speaker_hours: Mapping[str, float], val_fraction: float, seed: int
) -> dict[str, str]:
    """Assign each speaker to "train" or "val"; a speaker is never in both.

    The post's reference code splits 99/1 by file order, which puts files of the same speaker in
    both splits, so validation measures memorised voices. Here speakers are ordered by
    sha256(f"{seed}:{speaker}") (deterministic, independent of input order) and taken into val
    until val holds at least `val_fraction` of the hours; with two or more speakers each split
    gets at least one.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise CodecflowError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = sorted(
        speaker_hours, key=lambda s: (hashlib.sha256(f"{seed}:{s}".encode()).hexdigest(), s)
    )
    target = val_fraction * sum(speaker_hours.values())
    val: list[str] = []
    val_hours = 0.0
    if len(order) >= 2:
        for speaker in order:
            if val and val_hours >= target:
                break
            val.append(speaker)
            val_hours += speaker_hours[speaker]
        if len(val) == len(order):
            val.pop()  # keep one speaker for train
    chosen = set(val)
    return {s: ("val" if s in chosen else "train") for s in speaker_hours}


def build_segment_manifest(
    root: Path,
    out: Path,
    target_len_sec: float = 60.0,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ManifestRecord:
    """Scan `root`, cut every file by VAD, split speakers, and write the segment manifest.

    The Parquet file at `out` has exactly SEGMENT_MANIFEST_SCHEMA, one row per segment
    (segment_id = f"{file_stem}_{index:04d}", like cut_by_vad.py's output names), sorted by
    segment_id, and is written atomically.
    """
    root, out = Path(root), Path(out)
    files = scan_librilight(root)
    if not files:
        raise CodecflowError(f"no Libri-Light files (.flac with .json) under {root}")

    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for source in files:
        stem = PurePosixPath(source.path).stem
        if stem in seen:
            raise CodecflowError(
                f"duplicate file stem {stem!r}: {seen[stem]} and {source.path} "
                "(segment ids would collide)"
            )
        seen[stem] = source.path
        for index, chunks in enumerate(cut_by_vad(source.voice_activity, target_len_sec)):
            rows.append(
                {
                    "segment_id": f"{stem}_{index:04d}",
                    "source_path": source.path,
                    "speaker": source.speaker,
                    "book_id": source.book_id,
                    "sample_rate": source.sample_rate,
                    "start_s": chunks[0][0],
                    "end_s": chunks[-1][1],
                    "duration_s": sum(end - start for start, end in chunks),
                    "chunks": [{"start_s": start, "end_s": end} for start, end in chunks],
                    "snr": source.snr,
                }
            )

    speaker_hours: dict[str, float] = {source.speaker: 0.0 for source in files}
    for row in rows:
        speaker_hours[row["speaker"]] += row["duration_s"] / 3600.0
    splits = split_by_speaker(speaker_hours, val_fraction, seed)
    for row in rows:
        row["split"] = splits[row["speaker"]]
    rows.sort(key=lambda row: row["segment_id"])

    audio_root = os.path.relpath(Path(root).resolve(), Path(out).resolve().parent)
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: audio_root.encode()})
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_file(out) as tmp:
        pq.write_table(table, tmp)
    n_val = sum(row["split"] == "val" for row in rows)
    return ManifestRecord(
        path=out,
        n_segments=len(rows),
        n_train=len(rows) - n_val,
        n_val=n_val,
        audio_hours=sum(row["duration_s"] for row in rows) / 3600.0,
        n_speakers=len(speaker_hours),
    )


def read_segment_audio(root: Path, row: Mapping[str, Any]) -> np.ndarray:
    """The audio of one manifest row: its chunks read from the FLAC and concatenated, float32 [T].

    Frame indices are int(start * sr) .. int(end * sr), as in Libri-Light's cut_by_vad.py; only
    the chunks are read (seek + read), never the whole file.
    """
    path = Path(root) / row["source_path"]
    pieces: list[np.ndarray] = []
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            if f.channels != 1:
                raise CodecflowError(f"expected mono audio, got {f.channels} channels: {path}")
            sr = f.samplerate
            expected_sr = row.get("sample_rate")
            if expected_sr is not None and int(expected_sr) != sr:
                raise CodecflowError(
                    f"sample rate of {path} is {sr}, the manifest says {expected_sr}"
                )
            for chunk in row["chunks"]:
                if isinstance(chunk, Mapping):
                    start, end = chunk["start_s"], chunk["end_s"]
                else:
                    start, end = chunk
                first, last = int(start * sr), int(end * sr)
                f.seek(min(first, f.frames))
                pieces.append(f.read(max(0, last - first), dtype="float32", always_2d=False))
    except RuntimeError as err:  # soundfile.LibsndfileError is a RuntimeError
        raise CodecflowError(f"unreadable audio {path}: {err}") from None
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)
