"""Cutting by voice activity, hour-targeted subsets and the speaker split.

`plan_segments` cuts each probed file by VAD with Libri-Light's `cut_by_vad.py` semantics,
selects a subset of N hours and splits speakers into train and validation.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codecflow.schemas.tables import (
    SPLITS,
)
from codecflow.tasks.acquire.probe import REFUSED_MEMBER, BookProbe, ProbedFile, Reject
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.manifest import LIBRILIGHT_RATE

__all__ = [
    "SegmentPlan",
    "clip_pieces",
    "cut_by_vad",
    "plan_segments",
    "select_by_hours",
    "split_by_speaker",
]


@dataclass(frozen=True)
class SegmentPlan:
    """The manifest rows to write, the rejects, and the summary numbers."""

    rows: tuple[dict[str, Any], ...] = field(repr=False)
    rejects: tuple[Reject, ...]
    summary: dict[str, Any] = field(repr=False)


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


def clip_pieces(
    pieces: Sequence[Sequence[tuple[float, float]]], duration_s: float
) -> list[tuple[int, list[tuple[float, float]]]]:
    """`cut_by_vad`'s pieces clipped to audio of `duration_s`, as cut_by_vad.py's slicing does.

    `cut_sequence` groups by the VAD's nominal lengths, then writes `np.hstack` of
    `data[int(start * sr):int(end * sr)]`, which numpy clips at the end of the file: a chunk that
    runs past the end keeps its samples up to the end, a chunk past it contributes nothing.
    Returns (index, chunks) for each piece that keeps a sample; the index is the piece's number in
    cut_by_vad.py's output names (`<stem>_<index:04>.wav`). A piece wholly past the end, which
    cut_by_vad.py writes as an empty .wav, is left out (its index is skipped).
    """
    kept: list[tuple[int, list[tuple[float, float]]]] = []
    for index, piece in enumerate(pieces):
        chunks = [(a, min(b, duration_s)) for a, b in piece if a < duration_s]
        chunks = [(a, b) for a, b in chunks if b > a]
        if chunks:
            kept.append((index, chunks))
    return kept


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


def _speech_hours(file: ProbedFile) -> float:
    """Hours of speech in the audio itself (VAD past the end of the file does not count)."""
    return sum(max(0.0, min(b, file.duration_s) - a) for a, b in file.voice_activity) / 3600.0


def select_by_hours(
    files: Sequence[ProbedFile], target_hours: float | None, seed: int
) -> list[ProbedFile]:
    """A deterministic subset of about `target_hours` of speech, spread across speakers.

    Speakers are visited round-robin in the order of sha256(f"{seed}:{speaker}"), each giving its
    next file (files ordered by sha256(f"{seed}:{path}")), until the target is reached; so a 1 000 h
    subset of Libri-Light holds a little of many voices rather than all of a few. The result
    does not depend on the input order. None selects everything.
    """
    if target_hours is None:
        return sorted(files, key=lambda f: f.path)

    def key(text: str) -> str:
        return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()

    by_speaker: dict[str, list[ProbedFile]] = {}
    for file in files:
        by_speaker.setdefault(file.speaker, []).append(file)
    queues = [
        sorted(by_speaker[s], key=lambda f: (key(f.path), f.path))
        for s in sorted(by_speaker, key=lambda s: (key(s), s))
    ]
    chosen: list[ProbedFile] = []
    hours = 0.0
    depth = 0
    goal = target_hours - 1e-9  # float sums: ten files of 0.1 h reach 1 h
    while hours < goal and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and hours < goal:
                chosen.append(queue[depth])
                hours += _speech_hours(queue[depth])
        depth += 1
    return sorted(chosen, key=lambda f: f.path)


def _plan_summary(
    accepted: Sequence[ProbedFile],
    rejects: Sequence[Reject],
    selected: Sequence[ProbedFile],
    rows: Sequence[Mapping[str, Any]],
    n_speakers: int,
) -> dict[str, Any]:
    """The numbers of a plan (summary.json, format_summary); the caller adds the settings."""
    reasons = Counter(r.reason.split(":", 1)[0] for r in rejects)
    summary: dict[str, Any] = {
        "files_seen": len(accepted) + len(rejects),
        "files_accepted": len(accepted),
        "files_rejected": len(rejects),
        "rejected_by_reason": dict(sorted(reasons.items())),
        # By name: a refused member is a sign of a damaged or crafted archive, worth reading.
        "refused_tar_members": [
            {"path": r.path, "reason": r.reason.split(": ", 1)[1]}
            for r in rejects
            if r.reason.startswith(f"{REFUSED_MEMBER}: ")
        ],
        "files_flagged_not_16k_mono": sum(
            f.sample_rate != LIBRILIGHT_RATE or f.channels != 1 for f in accepted
        ),
        "accepted_speech_hours": sum(_speech_hours(f) for f in accepted),
        "accepted_audio_bytes": sum(f.n_bytes for f in accepted),
        "files_selected": len(selected),
        "selected_audio_bytes": sum(f.n_bytes for f in selected),
        "speakers": n_speakers,
        "segments": len(rows),
    }
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        summary[split] = {
            "segments": len(split_rows),
            "hours": sum(r["duration_s"] for r in split_rows) / 3600,
            "speakers": len({r["speaker"] for r in split_rows}),
        }
    summary["hours"] = sum(r["duration_s"] for r in rows) / 3600
    return summary


def plan_segments(
    probes: Iterable[BookProbe],
    target_len_sec: float = 60.0,
    target_hours: float | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> SegmentPlan:
    """Cut the accepted files by VAD, select the hours, split speakers: the manifest to write.

    Segment ids are f"{speaker}_{file stem}_{index:04d}" (cut_by_vad.py names its outputs
    f"{stem}_{index}"; the speaker keeps ids unique where two readers share a file name). A file
    whose ids would repeat another's is rejected as a duplicate.
    """
    probes = list(probes)
    accepted: list[ProbedFile] = []
    rejects: list[Reject] = [r for p in probes for r in p.rejects]
    seen: dict[str, str] = {}
    for file in sorted((f for p in probes for f in p.files), key=lambda f: f.path):
        stem = posixpath.splitext(posixpath.basename(file.path))[0]
        prefix = f"{file.speaker}_{stem}"
        if prefix in seen:
            rejects.append(Reject(file.path, f"duplicate: same speaker and name as {seen[prefix]}"))
            continue
        seen[prefix] = file.path
        accepted.append(file)
    selected = select_by_hours(accepted, target_hours, seed)

    rows: list[dict[str, Any]] = []
    for file in selected:
        stem = posixpath.splitext(posixpath.basename(file.path))[0]
        pieces = cut_by_vad(file.voice_activity, target_len_sec)
        for index, chunks in clip_pieces(pieces, file.duration_s):
            rows.append(
                {
                    "segment_id": f"{file.speaker}_{stem}_{index:04d}",
                    "subset": file.subset,
                    "speaker": file.speaker,
                    "book_id": file.book_id,
                    "source_path": file.path,
                    "start_s": chunks[0][0],
                    "end_s": chunks[-1][1],
                    "duration_s": sum(end - start for start, end in chunks),
                    "sample_rate": file.sample_rate,
                    "channels": file.channels,
                    "snr": file.snr,
                    "chunks": [{"start_s": start, "end_s": end} for start, end in chunks],
                }
            )
    speaker_hours: dict[str, float] = {}
    for row in rows:
        speaker_hours[row["speaker"]] = (
            speaker_hours.get(row["speaker"], 0.0) + row["duration_s"] / 3600
        )
    splits = split_by_speaker(speaker_hours, val_fraction, seed)
    for row in rows:
        row["split"] = splits[row["speaker"]]
    rows.sort(key=lambda row: row["segment_id"])
    rejects.sort(key=lambda r: r.path)

    summary = _plan_summary(accepted, rejects, selected, rows, len(speaker_hours))
    summary.update({"target_hours": target_hours, "target_len_sec": target_len_sec, "seed": seed})
    return SegmentPlan(tuple(rows), tuple(rejects), summary)
