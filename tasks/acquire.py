"""Acquisition: download, safe extraction, VAD segmentation and the speaker split of Libri-Light.

Plain functions returning small frozen records (never tensors), so that they can be unit-tested
without Prefect and wrapped as Prefect tasks elsewhere. Every step is idempotent:

- `fetch` streams into `<dest>.part`, resumes it after a crash, and renames it to `dest` only once
  its md5 is right;
- `extract_tar_safely` extracts into a temporary folder with the semantics of Python's tarfile
  `data` filter (PEP 706) and renames it to `dest` only when the archive was read to its end;
- `build_segment_manifest` cuts files into segments with the semantics of Libri-Light's
  `data_preparation/cut_by_vad.py`, splits speakers (never files) between train and val, and
  writes the manifest atomically.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

import fsspec
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from schemas.tables import MANIFEST_AUDIO_ROOT_KEY, SEGMENT_MANIFEST_SCHEMA
from tasks.errors import (
    ChecksumMismatchError,
    CodecflowError,
    CorruptArchiveError,
    SourceNotFoundError,
)
from tasks.io import atomic_dir, atomic_file, atomic_write_json

__all__ = [
    "EXTRACTED_MARKER",
    "ExtractRecord",
    "FetchRecord",
    "ManifestRecord",
    "SourceFile",
    "build_segment_manifest",
    "cut_by_vad",
    "extract_tar_safely",
    "fetch",
    "read_segment_audio",
    "scan_librilight",
    "split_by_speaker",
]

#: Written last inside an extracted folder: its presence means the extraction completed.
EXTRACTED_MARKER = ".extracted.json"

_HASH_CHUNK = 1 << 20
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchRecord:
    """A downloaded file: where it is, its md5 and size, and how many bytes a resume reused."""

    path: Path
    md5: str
    n_bytes: int
    resumed_from: int  # bytes already on disk before this call (n_bytes when nothing was fetched)
    source: str


@dataclass(frozen=True)
class ExtractRecord:
    """An extracted archive: its root, what was written, and the members refused with why."""

    root: Path
    n_files: int  # non-directory members written (regular files and in-root links)
    n_bytes: int  # sum of the sizes of the regular files written
    refused: tuple[tuple[str, str], ...]  # (member name, reason), in archive order


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
# fetch
# --------------------------------------------------------------------------------------------


def _md5_of(path: Path, digest: Any | None = None) -> Any:
    """Feed a file's bytes into an md5 object (a new one when none is given) and return it."""
    digest = hashlib.md5() if digest is None else digest
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_http(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _write_stream(
    chunks: Iterator[bytes],
    part: Path,
    mode: str,
    digest: Any,
    done: int,
    total: int | None,
    progress: Callable[[int, int | None], None] | None,
) -> None:
    """Append (or write) `chunks` to `part`, hashing as they go.

    If the stream breaks, what was received stays in `part` (the file is closed, hence flushed)
    so that the next call resumes from there.
    """
    with open(part, mode) as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        f.flush()
        os.fsync(f.fileno())


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range` header; None where unknown."""
    match = _CONTENT_RANGE_RE.match((value or "").strip())
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _fetch_http(
    source: str,
    part: Path,
    client: httpx.Client,
    chunk_size: int,
    progress: Callable[[int, int | None], None] | None,
) -> tuple[Any, int]:
    """Download `source` into `part`, resuming it with a Range request; (md5 object, offset)."""
    # Two attempts: the second, from zero, only when the server's answer to our Range request
    # cannot be trusted (a 416 for a part that is not the whole file, a 206 at the wrong offset).
    for _ in range(2):
        offset = part.stat().st_size if part.exists() else 0
        # identity: byte offsets must count the bytes we store, not a compressed transfer.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with client.stream("GET", source, headers=headers, follow_redirects=True) as response:
            status = response.status_code
            if status in (404, 410):
                raise SourceNotFoundError(f"source not found: {source}")
            if status == 416 and offset:
                # Range Not Satisfiable: the part is already the whole file, or longer than it.
                _, total = _parse_content_range(response.headers.get("content-range"))
                if total is None or total == offset:
                    return _md5_of(part), offset
                part.unlink()
                continue
            if status >= 500 or status == 429:
                response.raise_for_status()  # transient: the task wrapper retries
            if status not in (200, 206):
                raise CodecflowError(f"HTTP {status} for {source}")
            length = response.headers.get("content-length")
            if status == 206 and offset:
                first, total = _parse_content_range(response.headers.get("content-range"))
                if first != offset:
                    part.unlink()
                    continue
                # Hash the bytes already on disk first, then keep hashing what arrives.
                digest = _md5_of(part)
                mode = "ab"
            else:
                # 200 to a Range request: the server ignores ranges, restart from zero.
                offset = 0
                total = int(length) if length is not None else None
                digest = hashlib.md5()
                mode = "wb"
            if total is None and length is not None:
                total = offset + int(length)
            chunks = response.iter_raw(chunk_size)
            _write_stream(chunks, part, mode, digest, offset, total, progress)
            return digest, offset
    raise CodecflowError(f"cannot resume {source}: inconsistent answers to a Range request")


def _fetch_fsspec(
    source: str,
    part: Path,
    chunk_size: int,
    progress: Callable[[int, int | None], None] | None,
) -> tuple[Any, int]:
    """Download a local path, file:// or other fsspec URL into `part`, resuming by seeking."""
    fs, path = fsspec.core.url_to_fs(source)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise SourceNotFoundError(f"source not found: {source}") from None
    if info.get("type") == "directory":
        raise CodecflowError(f"source is a folder, not a file: {source}")
    total = info.get("size")
    offset = part.stat().st_size if part.exists() else 0
    if total is not None and offset > total:
        offset = 0  # the part is longer than the source: it belongs to another file
    try:
        src = fs.open(path, "rb")
    except FileNotFoundError:
        raise SourceNotFoundError(f"source not found: {source}") from None
    with src:
        if offset:
            src.seek(offset)
            digest, mode = _md5_of(part), "ab"
        else:
            digest, mode = hashlib.md5(), "wb"
        chunks = iter(lambda: src.read(chunk_size), b"")
        _write_stream(chunks, part, mode, digest, offset, total, progress)
    return digest, offset


def fetch(
    source: str,
    dest: Path,
    expected_md5: str | None = None,
    *,
    client: httpx.Client | None = None,
    chunk_size: int = 1 << 20,
    progress: Callable[[int, int | None], None] | None = None,
) -> FetchRecord:
    """Download `source` (local path, file://, http(s)://, or any fsspec URL) to `dest`.

    Streams into `<dest>.part`, computing the md5 on the way, and resumes an existing part (HTTP
    `Range: bytes=N-`, or a seek for fsspec sources). The part is renamed to `dest` only when the
    md5 matches `expected_md5` (when given). An existing `dest` with the expected md5 (or any
    existing `dest` when no md5 is expected) is returned without downloading.

    Raises SourceNotFoundError for a missing source, ChecksumMismatchError (after deleting the
    part) for a wrong md5. Transient errors (connection reset, timeouts, HTTP 5xx) propagate and
    keep the part, so that a retry resumes it.
    """
    source = os.fspath(source)
    dest = Path(dest)
    if expected_md5 is not None:
        expected_md5 = expected_md5.strip().lower()
        if not _MD5_RE.match(expected_md5):
            raise CodecflowError(f"expected md5 for {source} is not 32 hex digits: {expected_md5}")
    if chunk_size <= 0:
        raise CodecflowError(f"chunk_size must be positive, got {chunk_size}")

    if dest.is_file():
        md5 = _md5_of(dest).hexdigest()
        if expected_md5 is None or md5 == expected_md5:
            size = dest.stat().st_size
            return FetchRecord(dest, md5, size, size, source)
        dest.unlink()  # a stale or damaged copy: download it again

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if _is_http(source):
        own_client = client is None
        if client is None:
            client = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        try:
            digest, resumed_from = _fetch_http(source, part, client, chunk_size, progress)
        finally:
            if own_client:
                client.close()
    else:
        digest, resumed_from = _fetch_fsspec(source, part, chunk_size, progress)

    md5 = digest.hexdigest()
    if expected_md5 is not None and md5 != expected_md5:
        part.unlink(missing_ok=True)  # a resume would only extend the wrong bytes
        raise ChecksumMismatchError(source, "md5", expected_md5, md5)
    n_bytes = part.stat().st_size
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return FetchRecord(dest, md5, n_bytes, resumed_from, source)


# --------------------------------------------------------------------------------------------
# extract_tar_safely
# --------------------------------------------------------------------------------------------


class _HashingReader:
    """A read-only file object that hashes (md5 and sha256) and counts every byte read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.n_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.md5.update(data)
        self.sha256.update(data)
        self.n_bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(_HASH_CHUNK):
            pass


class _LastReadSpy:
    """Wraps a TarFile's stream and remembers the last block that tarfile read from it.

    `TarFile.next()` ends the iteration silently when a header after the first one is missing,
    short or invalid (it only raises at offset 0), so a tar cut at a 512-byte boundary would look
    complete. The last read before the iteration ends is the header block that stopped it: a
    well-formed archive ends with a block of zeros (the end-of-archive marker).
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.last: bytes | None = None

    def read(self, *args: Any) -> bytes:
        data = self._inner.read(*args)
        self.last = data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _end_problem(block: bytes) -> str:
    """Why the block that ended the iteration is not an end-of-archive marker."""
    if not block:
        return "unexpected end of data (no end-of-archive marker)"
    if len(block) < tarfile.BLOCKSIZE:
        return "truncated header"
    return "invalid header"


# PEP 706 filter errors -> the short reason listed in ExtractRecord.refused.
_FILTER_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (tarfile.AbsolutePathError, "absolute path"),
    (tarfile.OutsideDestinationError, "path outside the destination"),
    (tarfile.SpecialFileError, "special file (device or fifo)"),
    (tarfile.AbsoluteLinkError, "link to an absolute path"),
    (tarfile.LinkOutsideDestinationError, "link outside the destination"),
)


def _refusal(member: tarfile.TarInfo, root: Path) -> tuple[tarfile.TarInfo | None, str]:
    """(safe member, "") to extract, or (None, reason) to refuse.

    Python's `data` filter (PEP 706, `tarfile.data_filter`) decides, with two stricter rules
    first: an absolute name is refused (the filter would strip the leading "/" and extract it),
    and so is any ".." component, even one that stays inside the root (Libri-Light's tars have
    none; such names are a sign of a crafted archive).
    """
    name = member.name
    if name.startswith(("/", os.sep)) or os.path.isabs(name):
        return None, "absolute path"
    if ".." in PurePosixPath(name).parts:
        return None, "'..' component"
    if PurePosixPath(name).parts == (EXTRACTED_MARKER,):
        return None, "reserved name"
    try:
        safe = tarfile.data_filter(member, os.fspath(root))
    except tarfile.FilterError as err:
        for kind, reason in _FILTER_REASONS:
            if isinstance(err, kind):
                return None, reason
        return None, str(err)
    if safe.islnk() and not (root / safe.linkname).is_file():
        # tarfile would look the target up among the members already read, which a stream
        # cannot seek back to; only link to a file that was extracted.
        return None, "hard link to a file that was not extracted"
    return safe, ""


def _read_marker(dest: Path) -> dict[str, Any] | None:
    marker = dest / EXTRACTED_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _record_from_marker(dest: Path, marker: Mapping[str, Any]) -> ExtractRecord:
    return ExtractRecord(
        root=dest,
        n_files=int(marker["n_files"]),
        n_bytes=int(marker["n_bytes"]),
        refused=tuple((str(name), str(reason)) for name, reason in marker["refused"]),
    )


def extract_tar_safely(tar_path: Path, dest: Path) -> ExtractRecord:
    """Extract a (possibly compressed) tar into `dest`, refusing unsafe members.

    Streaming (`mode="r|*"`, the archive is read once, front to back) into a temporary folder
    beside `dest` that is renamed to `dest` only when the whole archive was read. Members are
    filtered with the semantics of Python's tarfile `data` filter (PEP 706): absolute paths,
    `..` components, links (symbolic or hard) that leave the root, and device/fifo files are
    refused, skipped, and listed in `refused` with their reason; regular files and folders get
    safe modes and no ownership. The marker `.extracted.json` (tar md5/sha256, counts, refusals)
    is written last; when `dest` already holds one for a tar of the same size, nothing is done.

    Raises CorruptArchiveError for a truncated or corrupt archive, leaving neither `dest` nor
    the temporary folder.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    marker = _read_marker(dest)
    if marker is not None:
        # The size check is cheap; hashing a 35 GB tar on every call would not be. A missing tar
        # (deleted to save space after extraction) does not invalidate the extraction.
        if not tar_path.exists() or tar_path.stat().st_size == marker.get("tar_size"):
            try:
                return _record_from_marker(dest, marker)
            except (KeyError, TypeError, ValueError):
                pass  # an unreadable marker: extract again
    if not tar_path.is_file():
        raise CodecflowError(f"archive not found: {tar_path}")

    refused: list[tuple[str, str]] = []
    n_files = n_bytes = 0
    with atomic_dir(dest) as tmp, open(tar_path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|*") as tar:
                spy = _LastReadSpy(tar.fileobj)
                tar.fileobj = spy
                for member in tar:
                    safe, reason = _refusal(member, tmp)
                    if safe is None:
                        refused.append((member.name, reason))
                        continue
                    # Already filtered above: "fully_trusted" only stops tarfile filtering again.
                    tar.extract(safe, tmp, filter="fully_trusted")
                    if not safe.isdir():
                        n_files += 1
                    if safe.isreg():
                        n_bytes += safe.size
                if spy.last is not None and spy.last != bytes(tarfile.BLOCKSIZE):
                    raise tarfile.ReadError(_end_problem(spy.last))
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
            raise CorruptArchiveError(f"corrupt archive {tar_path}: {err}") from None
        atomic_write_json(
            tmp / EXTRACTED_MARKER,
            {
                "tar": tar_path.name,
                "tar_size": reader.n_bytes,
                "tar_md5": reader.md5.hexdigest(),
                "tar_sha256": reader.sha256.hexdigest(),
                "n_files": n_files,
                "n_bytes": n_bytes,
                "refused": [list(item) for item in refused],
            },
        )
    return ExtractRecord(dest, n_files, n_bytes, tuple(refused))


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
