"""Libri-Light metadata, VAD segmentation, hour-targeted subsets, the speaker split, and the
segment manifest with its rejects table.

Plain functions over a storage root that is a local folder or any fsspec URL (`s3://...`):

    <root>/librilight/<archive>/<subset>/<speaker>/<book>/<file>.flac + .json   (extracted)
    <root>/segments/<speaker>/<book>/<segment_id>.flac     (only with segments_as="flac")
    <root>/manifest/rejects.parquet, summary.json, segments.parquet (written last: the commit)

The work fans out per book: `list_books` lists the files of each book with their sizes and
modification stamps (the cache key of its probe), `probe_book` reads each file's metadata and
checks its audio, `plan_segments` cuts by VAD with Libri-Light's `cut_by_vad.py` semantics,
selects a subset of N hours and splits speakers, and `write_manifest` commits the result. Bad
files never stop the flow: each lands in the rejects table with its reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    REJECTS_SCHEMA,
    SEGMENT_MANIFEST_SCHEMA,
    SPLITS,
)
from tasks.errors import CodecflowError
from tasks.storage import is_remote, join, open_atomic_write, url_to_fs

__all__ = [
    "LIBRILIGHT_RATE",
    "REFUSED_MEMBER",
    "BookListing",
    "BookProbe",
    "ManifestRecord",
    "ProbedFile",
    "Reject",
    "SegmentPlan",
    "build_segment_manifest",
    "clip_pieces",
    "cut_by_vad",
    "format_summary",
    "list_books",
    "plan_segments",
    "probe_book",
    "read_segment_audio",
    "refused_members_probe",
    "select_by_hours",
    "split_by_speaker",
    "write_manifest",
    "write_segment_flacs",
]

#: Libri-Light's audio is 16 kHz mono FLAC; anything else is accepted and flagged.
LIBRILIGHT_RATE = 16_000
#: Frames read at the end of each file to detect truncation cheaply: a FLAC header announces the
#: total length, and a truncated file fails to seek or read there (measured with libsndfile).
_TAIL_FRAMES = 4096


@dataclass(frozen=True)
class BookListing:
    """The files of one book folder: (name, size, modification stamp), sorted by name."""

    book: str  # folder relative to the storage root, POSIX separators
    entries: tuple[tuple[str, int, str], ...]


@dataclass(frozen=True)
class ProbedFile:
    """One accepted audio file with its metadata (VAD sorted and merged, as written: intervals past
    the end of the audio are clipped when the pieces are cut, `clip_pieces`)."""

    path: str  # relative to the storage root
    subset: str
    speaker: str
    book_id: str
    snr: float
    voice_activity: tuple[tuple[float, float], ...]
    sample_rate: int
    channels: int
    duration_s: float
    n_bytes: int


@dataclass(frozen=True)
class Reject:
    """A file that could not be used: `reason` is "<kind>: <detail>"."""

    path: str
    reason: str


@dataclass(frozen=True)
class BookProbe:
    """What probing one book found."""

    book: str
    files: tuple[ProbedFile, ...]
    rejects: tuple[Reject, ...]


@dataclass(frozen=True)
class SegmentPlan:
    """The manifest rows to write, the rejects, and the summary numbers."""

    rows: tuple[dict[str, Any], ...] = field(repr=False)
    rejects: tuple[Reject, ...]
    summary: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ManifestRecord:
    """A committed segment manifest and its headline numbers."""

    path: str
    rejects_path: str
    summary_path: str
    n_segments: int
    n_train: int
    n_val: int
    audio_hours: float  # sum of segment durations (VAD speech only, gaps dropped)
    n_speakers: int
    n_rejects: int


# --------------------------------------------------------------------------------------------
# Listing and probing
# --------------------------------------------------------------------------------------------


def _stamp(info: Mapping[str, Any]) -> str:
    """A modification stamp from an fsspec info dict: mtime locally, ETag or LastModified on S3."""
    for key in ("mtime", "ETag", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def list_books(root: str, archives: Sequence[str]) -> list[BookListing]:
    """Every folder holding `.flac` or `.json` files under `<root>/librilight/<archive>`.

    Hidden files (the extraction marker, temporaries) and other file types (attribution `.txt`)
    are not part of the corpus and are not listed.
    """
    fs, base = url_to_fs(root)
    books: dict[str, list[tuple[str, int, str]]] = {}
    for archive in archives:
        folder = posixpath.join(base, "librilight", archive)
        if not fs.exists(folder):
            raise CodecflowError(
                f"extracted archive not found: {join(root, 'librilight', archive)}"
            )
        for path, info in sorted(fs.find(folder, detail=True).items()):
            name = posixpath.basename(path)
            if name.startswith(".") or not name.endswith((".flac", ".json")):
                continue
            book = posixpath.relpath(posixpath.dirname(path), base)
            books.setdefault(book, []).append((name, int(info.get("size") or 0), _stamp(info)))
    return [BookListing(book, tuple(sorted(entries))) for book, entries in sorted(books.items())]


def _subset_of(book: str) -> str:
    # librilight/<archive>/<subset>/<speaker>/<book>: Libri-Light's tars hold `<subset>/...`.
    parts = book.split("/")
    return parts[2] if len(parts) > 2 else parts[-1]


class _InvalidVoiceActivity(ValueError):
    """A file's VAD cannot be trusted (it would duplicate or invent audio): reject the file."""


def _interval(i: int, item: Any) -> tuple[float, float]:
    """One VAD interval as (start, end) seconds; raises _InvalidVoiceActivity naming the fault."""
    shown = json.dumps(item)[:80]
    numbers = isinstance(item, list | tuple) and len(item) == 2
    if not numbers or any(isinstance(v, bool) or not isinstance(v, int | float) for v in item):
        raise _InvalidVoiceActivity(f"interval {i} is not a [start, end] pair of numbers: {shown}")
    try:
        start, end = float(item[0]), float(item[1])
    except OverflowError:  # an integer too large for a float
        start = end = math.inf
    if not (math.isfinite(start) and math.isfinite(end)):
        raise _InvalidVoiceActivity(f"interval {i} is not finite: {shown}")
    if end < start:
        raise _InvalidVoiceActivity(f"interval {i} ends before it starts: {shown}")
    if start < 0:
        # cut_by_vad.py would slice data[int(start * sr):...] from the end of the file.
        raise _InvalidVoiceActivity(f"interval {i} starts before 0: {shown}")
    return start, end


def _voice_activity(raw: Any) -> list[tuple[float, float]]:
    """The VAD intervals sorted by start, overlapping or touching ones merged.

    Unsorted or overlapping intervals would make a segment read the same audio twice (11 s of
    segment for 6 s of span); a NaN start would be clipped to 0. Such a file is rejected as a
    whole (_InvalidVoiceActivity) rather than repaired by guesswork: a NaN or infinite bound, a
    value that is not a number (the string "NaN" included), an interval that ends before it
    starts or starts before 0. Intervals past the end of the audio are kept: cut_by_vad.py
    groups them by their nominal lengths, and `clip_pieces` clips the pieces afterwards.
    """
    if not isinstance(raw, list):
        raise _InvalidVoiceActivity(f"voice_activity is {type(raw).__name__}, not a list")
    merged: list[tuple[float, float]] = []
    for start, end in sorted(_interval(i, item) for i, item in enumerate(raw)):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _parse_metadata(raw: bytes) -> tuple[str, str, float, list[tuple[float, float]]]:
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    speaker, book_meta = meta["speaker"], meta["book_meta"]
    book_id = book_meta["id"] if isinstance(book_meta, dict) else None
    if not isinstance(speaker, str | int) or not isinstance(book_id, str | int):
        raise ValueError("speaker and book_meta.id must be strings")
    voice_activity = _voice_activity(meta["voice_activity"])
    snr = float(meta["snr"]) if meta.get("snr") is not None else float("nan")
    return str(speaker), str(book_id), snr, voice_activity


def _read_metadata(
    fs: Any, path: str, rel: str
) -> tuple[tuple[str, str, float, list[tuple[float, float]]] | None, Reject | None]:
    """(the parsed metadata of `rel`, None), or (None, the reject saying why it is unusable)."""
    try:
        return _parse_metadata(fs.cat(path)), None
    except _InvalidVoiceActivity as err:
        return None, Reject(rel, f"invalid voice activity: {err}")
    except (ValueError, KeyError, TypeError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        return None, Reject(rel, f"invalid metadata: {detail}")


class _TruncatedAudio(RuntimeError):
    """The audio ends before the length its header announces."""


def _flac_total_samples(head: bytes) -> int | None:
    """Total samples announced by a FLAC's STREAMINFO block, or None when `head` is not FLAC.

    Layout (https://xiph.org/flac/format.html): "fLaC", a 4-byte block header, then STREAMINFO:
    block sizes (2 x 16 bits), frame sizes (2 x 24 bits), then 64 bits holding sample rate (20),
    channels - 1 (3), bits per sample - 1 (5) and the total samples (36). libsndfile refuses to
    open a 0-sample FLAC at all, so "empty" must be read here to be told from "corrupt".
    """
    if len(head) < 26 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    return int.from_bytes(head[18:26], "big") & ((1 << 36) - 1)


def _probe_audio(f: Any) -> tuple[int, int, int]:
    """(sample rate, channels, frames) of an audio file; raises on unreadable or truncated audio."""
    with sf.SoundFile(f) as audio:
        rate, channels, frames = audio.samplerate, audio.channels, audio.frames
        if frames > 0:
            audio.seek(max(0, frames - _TAIL_FRAMES))
            tail = audio.read(min(frames, _TAIL_FRAMES), dtype="float32")
            if len(tail) != min(frames, _TAIL_FRAMES):
                raise _TruncatedAudio(
                    f"only {len(tail)} of the last {min(frames, _TAIL_FRAMES)} frames"
                )
    return rate, channels, frames


def probe_book(root: str, listing: BookListing) -> BookProbe:
    """Read each file's metadata and check its audio (VAD past the end stays, see clip_pieces).

    Rejected, with the reason: audio without metadata, metadata without audio, invalid JSON or
    missing keys, invalid voice activity (NaN or infinite bounds, non-numbers, an interval that
    ends before it starts; unsorted and overlapping intervals are sorted and merged), unreadable
    bytes (corrupt header, not audio), truncated audio, empty audio, and
    audio with no voice activity inside it. Accepted and flagged: any rate or channel count.
    """
    fs, base = url_to_fs(root)
    names = {name for name, _, _ in listing.entries}
    sizes = {name: size for name, size, _ in listing.entries}
    stems = sorted({posixpath.splitext(n)[0] for n in names})
    files: list[ProbedFile] = []
    rejects: list[Reject] = []
    for stem in stems:
        flac_rel = posixpath.join(listing.book, f"{stem}.flac")
        json_rel = posixpath.join(listing.book, f"{stem}.json")
        if f"{stem}.flac" not in names:
            rejects.append(Reject(json_rel, "missing audio: no .flac beside the .json"))
            continue
        if f"{stem}.json" not in names:
            rejects.append(Reject(flac_rel, "missing metadata: no .json beside the .flac"))
            continue
        metadata, reject = _read_metadata(fs, posixpath.join(base, json_rel), json_rel)
        if metadata is None:
            assert reject is not None
            rejects.append(reject)
            continue
        speaker, book_id, snr, vad = metadata
        try:
            with fs.open(posixpath.join(base, flac_rel), "rb") as f:
                head = f.read(42)
                f.seek(0)
                frames = _flac_total_samples(head) if head else 0
                if frames != 0:
                    rate, channels, frames = _probe_audio(f)
        except (RuntimeError, sf.SoundFileError) as err:  # LibsndfileError is a RuntimeError
            detail = getattr(err, "error_string", None) or str(err)
            # A failed seek near the end is how libsndfile reports a cut-off FLAC.
            truncated = isinstance(err, _TruncatedAudio) or "seek" in detail
            kind = "truncated audio" if truncated else "unreadable audio"
            rejects.append(Reject(flac_rel, f"{kind}: {detail}"))
            continue
        if frames == 0:
            rejects.append(Reject(flac_rel, "empty audio: 0 frames"))
            continue
        duration = frames / rate
        # VAD past the end of the file (seen in real Libri-Light metadata) stays as written:
        # cut_by_vad.py groups by the nominal lengths, then slicing clips (clip_pieces).
        if not any(min(b, duration) > a for a, b in vad):
            rejects.append(Reject(flac_rel, "no voice activity: no VAD interval inside the audio"))
            continue
        files.append(
            ProbedFile(
                path=flac_rel,
                subset=_subset_of(listing.book),
                speaker=speaker,
                book_id=book_id,
                snr=snr,
                voice_activity=tuple(vad),
                sample_rate=rate,
                channels=channels,
                duration_s=duration,
                n_bytes=sizes[f"{stem}.flac"],
            )
        )
    return BookProbe(listing.book, tuple(files), tuple(rejects))


#: The reason kind of a tar member the extraction refused (see refused_members_probe).
REFUSED_MEMBER = "refused tar member"
#: How many refused members the one-screen summary lists by name (all are in summary.json).
_SUMMARY_REFUSED_SHOWN = 10


def _printable(name: str) -> str:
    """A member name safe to print, log and store: control characters and the surrogates of
    non-UTF-8 bytes escaped as Python would write them (`new\\nline`, `caf\\udce9`)."""
    return name if name.isprintable() else repr(name)[1:-1]


def refused_members_probe(archive: str, refused: Iterable[tuple[str, str]]) -> BookProbe:
    """The tar members the extraction of `archive` refused, as the rejects of a pseudo-book.

    Passed to plan_segments with the probes, they are counted and listed like any other reject
    (rejects.parquet, summary.json, the printed summary) instead of only in the marker that
    list_books hides. `path` is where the member would have been (`librilight/<archive>/<name>`,
    the name escaped by _printable), `reason` is "refused tar member: <extraction's reason>".
    """
    rejects = tuple(
        Reject(
            f"librilight/{archive}/{_printable(name)}", f"{REFUSED_MEMBER}: {_printable(reason)}"
        )
        for name, reason in refused
    )
    return BookProbe(f"librilight/{archive}", (), rejects)


# --------------------------------------------------------------------------------------------
# Cutting, subsets, splits
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_segment_flacs(root: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Write each row's audio as its own FLAC (like cut_by_vad.py) under `<root>/segments/`.

    Returns the rows pointing at the new files (one chunk: the whole file). A file already there
    with the right length is kept, so a re-run writes only what is missing.
    """
    fs, base = url_to_fs(root)
    out: list[dict[str, Any]] = []
    for row in rows:
        rel = posixpath.join(
            "segments", row["speaker"], row["book_id"], f"{row['segment_id']}.flac"
        )
        audio = read_segment_audio(root, row, downmix=False)  # [T] or [T, C]
        target = posixpath.join(base, rel)
        if not _flac_has_frames(fs, target, len(audio)):
            buffer = io.BytesIO()
            sf.write(buffer, audio, int(row["sample_rate"]), format="FLAC", subtype="PCM_16")
            with open_atomic_write(join(root, rel)) as f:
                f.write(buffer.getvalue())
        duration = len(audio) / int(row["sample_rate"])
        out.append(
            {
                **row,
                "source_path": rel,
                "start_s": 0.0,
                "end_s": duration,
                "duration_s": duration,
                "chunks": [{"start_s": 0.0, "end_s": duration}],
            }
        )
    return out


def _flac_has_frames(fs: fsspec.AbstractFileSystem, path: str, frames: int) -> bool:
    if not fs.exists(path):
        return False
    try:
        with fs.open(path, "rb") as f:
            return bool(sf.info(f).frames == frames)
    except RuntimeError:
        return False


def write_manifest(
    root: str, manifest_dir: str, rows: Sequence[Mapping[str, Any]], plan: SegmentPlan
) -> ManifestRecord:
    """Write rejects.parquet and summary.json, then segments.parquet last (the commit)."""
    if not rows:
        raise CodecflowError(
            f"no usable Libri-Light files under {join(root, 'librilight')}: "
            f"{plan.summary['files_rejected']} rejected ({plan.summary['rejected_by_reason']})"
        )
    if is_remote(root) or is_remote(manifest_dir):
        audio_root = str(root)
    else:
        audio_root = posixpath.relpath(
            url_to_fs(root)[1], url_to_fs(manifest_dir)[1]
        )  # relative: the run folder can move
    rejects_path = join(manifest_dir, "rejects.parquet")
    summary_path = join(manifest_dir, "summary.json")
    manifest_path = join(manifest_dir, "segments.parquet")
    rejects = pa.Table.from_pylist(
        [{"path": r.path, "reason": r.reason} for r in plan.rejects], schema=REJECTS_SCHEMA
    )
    _write_parquet(rejects_path, rejects)
    summary = {**plan.summary, "manifest": manifest_path, "rejects": rejects_path}
    with open_atomic_write(summary_path) as f:
        f.write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: audio_root.encode()})
    _write_parquet(manifest_path, pa.Table.from_pylist(list(rows), schema=schema))
    n_val = sum(r["split"] == "val" for r in rows)
    return ManifestRecord(
        path=manifest_path,
        rejects_path=rejects_path,
        summary_path=summary_path,
        n_segments=len(rows),
        n_train=len(rows) - n_val,
        n_val=n_val,
        audio_hours=sum(r["duration_s"] for r in rows) / 3600.0,
        n_speakers=len({r["speaker"] for r in rows}),
        n_rejects=len(plan.rejects),
    )


def _write_parquet(url: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with open_atomic_write(url) as f:
        f.write(buffer.getvalue())


def build_segment_manifest(
    root: str,
    archives: Sequence[str],
    manifest_dir: str | None = None,
    *,
    target_len_sec: float = 60.0,
    target_hours: float | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    segments_as: str = "references",
) -> ManifestRecord:
    """List, probe, plan and write in one call (the flow runs the same steps fanned out)."""
    probes = [probe_book(root, listing) for listing in list_books(root, archives)]
    plan = plan_segments(probes, target_len_sec, target_hours, val_fraction, seed)
    rows: Sequence[Mapping[str, Any]] = plan.rows
    if segments_as == "flac":
        rows = write_segment_flacs(root, rows)
    return write_manifest(root, manifest_dir or join(root, "manifest"), rows, plan)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-screen summary every acquire run prints."""
    reasons = summary["rejected_by_reason"]
    lines = [
        f"files seen       {summary['files_seen']:>10,}",
        f"  accepted       {summary['files_accepted']:>10,}"
        f"   ({summary['files_flagged_not_16k_mono']} not 16 kHz mono: resampled on read)",
        f"  rejected       {summary['files_rejected']:>10,}",
        *(f"    {reason:<28} {count:>6,}" for reason, count in reasons.items()),
        f"speech hours     {summary['accepted_speech_hours']:>10.3f} accepted,"
        f" {summary['hours']:.3f} selected"
        + (f" (target {summary['target_hours']} h)" if summary["target_hours"] else ""),
        f"audio bytes      {summary['accepted_audio_bytes']:>10,} accepted,"
        f" {summary['selected_audio_bytes']:,} selected",
        f"segments         {summary['segments']:>10,} from {summary['speakers']} speakers"
        f" (<= {summary['target_len_sec']} s each)",
    ]
    for split in SPLITS:
        s = summary[split]
        lines.append(
            f"  {split:<14} {s['segments']:>10,} segments, {s['hours']:.3f} h,"
            f" {s['speakers']} speakers"
        )
    return "\n".join(lines + _refused_lines(summary.get("refused_tar_members", [])))


def _refused_lines(refused: Sequence[Mapping[str, str]]) -> list[str]:
    """The refused tar members, by name and reason (the first few; all are in summary.json)."""
    if not refused:
        return []
    lines = [f"refused tar members (not extracted, counted in rejected): {len(refused):,}"]
    for item in refused[:_SUMMARY_REFUSED_SHOWN]:
        path = item["path"]
        shown = path if len(path) <= 72 else f"{path[:34]}...{path[-35:]}"  # one line each
        lines.append(f"    {shown}  ({item['reason']})")
    if len(refused) > _SUMMARY_REFUSED_SHOWN:
        lines.append(f"    ... {len(refused) - _SUMMARY_REFUSED_SHOWN:,} more in summary.json")
    return lines


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_segment_audio(root: str, row: Mapping[str, Any], *, downmix: bool = True) -> np.ndarray:
    """The audio of one manifest row at the file's own rate: float32 `[T]` (down-mixed to mono),
    or `[T, C]` with `downmix=False`.

    Frame indices are int(start * sr) .. int(end * sr), as in Libri-Light's cut_by_vad.py; only
    the chunks are read (seek + read), never the whole file.
    """
    fs, base = url_to_fs(root)
    path = posixpath.join(base, row["source_path"])
    pieces: list[np.ndarray] = []
    try:
        with fs.open(path, "rb") as raw, sf.SoundFile(raw) as f:
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
                pieces.append(f.read(max(0, last - first), dtype="float32", always_2d=True))
    except (RuntimeError, FileNotFoundError) as err:  # LibsndfileError is a RuntimeError
        raise CodecflowError(f"unreadable audio {join(root, row['source_path'])}: {err}") from None
    audio = np.concatenate(pieces) if pieces else np.zeros((0, 1), dtype=np.float32)  # [T, C]
    if downmix:
        return audio.mean(axis=1).astype(np.float32)  # [T]
    return audio[:, 0] if audio.shape[1] == 1 else audio  # [T] or [T, C]
