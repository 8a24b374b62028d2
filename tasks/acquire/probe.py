"""Libri-Light's books: listing them and probing each file's metadata and audio.

`list_books` lists the files of each book with their sizes and modification stamps (the cache
key of its probe), `probe_book` reads each file's JSON (speaker, book, voice activity) and checks
its FLAC. Bad files never stop the flow: each becomes a `Reject` with its reason.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import soundfile as sf

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import join, url_to_fs

__all__ = [
    "BookListing",
    "BookProbe",
    "ProbedFile",
    "REFUSED_MEMBER",
    "Reject",
    "SUMMARY_REFUSED_SHOWN",
    "file_stamp",
    "list_books",
    "probe_book",
    "refused_members_probe",
]

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
    text: str | None = None  # its transcript, when the source has one (`layout: audio`)


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


def file_stamp(info: Mapping[str, Any]) -> str:
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
            books.setdefault(book, []).append((name, int(info.get("size") or 0), file_stamp(info)))
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
SUMMARY_REFUSED_SHOWN = 10


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
