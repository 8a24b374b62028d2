"""Resumable, md5-verified downloads from local paths, http(s) URLs and any fsspec URL.

`fetch` streams into `<dest>.part`, resumes it after a crash (HTTP Range requests, or seeking for
fsspec sources), and renames it to `dest` only once its md5 is right; bytes with a wrong md5 are
kept as `<dest>.md5-mismatch` for inspection. `tasks.acquire.stream.open_source_stream` reads a
source as one forward
stream without storing it (to extract a 3 TB archive as it arrives), reconnecting an http(s)
stream with a Range request when the connection drops.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import httpx

from codecflow.tasks.acquire.marker import MD5_RE
from codecflow.tasks.core.errors import ChecksumMismatchError, CodecflowError, SourceNotFoundError
from codecflow.tasks.core.progress import ProgressCallback
from codecflow.tasks.core.storage import fsync_dir

__all__ = [
    "FetchRecord",
    "MISMATCH_SUFFIX",
    "RECONNECT_DELAYS_S",
    "fetch",
    "is_http",
    "open_fsspec",
    "parse_content_range",
]

# Suffix of the file that keeps downloaded bytes whose md5 is wrong: `<dest>.md5-mismatch`.
MISMATCH_SUFFIX = ".md5-mismatch"

_HASH_CHUNK = 1 << 20

_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")

# Waits before each reconnect of a dropped http(s) stream; one more drop without progress fails.
RECONNECT_DELAYS_S = (0.0, 1.0, 4.0, 15.0, 60.0)


@dataclass(frozen=True)
class FetchRecord:
    """A downloaded file: where it is, its md5 and size, and how many bytes a resume reused."""

    path: Path
    md5: str
    n_bytes: int
    resumed_from: int  # bytes already on disk before this call (n_bytes when nothing was fetched)
    source: str


def _md5_of(path: Path, digest: Any | None = None) -> Any:
    """Feed a file's bytes into an md5 object (a new one when none is given) and return it."""
    digest = hashlib.md5() if digest is None else digest
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest


def is_http(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _write_stream(
    chunks: Iterator[bytes],
    part: Path,
    mode: str,
    digest: Any,
    done: int,
    total: int | None,
    progress: ProgressCallback | None,
    report_every: int = 1,
) -> None:
    """Append (or write) `chunks` to `part`, hashing as they go.

    If the stream breaks, what was received stays in `part` (the file is closed, hence flushed)
    so that the next call resumes from there. `progress` is called once `report_every` more bytes
    have arrived, and at the end.
    """
    reported = done
    with open(part, mode) as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None and done - reported >= report_every:
                progress(done, total)
                reported = done
        f.flush()
        os.fsync(f.fileno())
    if progress is not None and done != reported:
        progress(done, total)


def parse_content_range(value: str | None) -> tuple[int | None, int | None]:
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
    progress: ProgressCallback | None,
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
                _, total = parse_content_range(response.headers.get("content-range"))
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
                first, total = parse_content_range(response.headers.get("content-range"))
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
            # Unsized iter_raw(): bytes are written as they arrive. iter_raw(chunk_size) would
            # hold back a partial chunk, lost when the connection drops (up to 1 MiB to fetch
            # again; the whole body of a file smaller than that).
            chunks = response.iter_raw()
            _write_stream(chunks, part, mode, digest, offset, total, progress, chunk_size)
            return digest, offset
    raise CodecflowError(f"cannot resume {source}: inconsistent answers to a Range request")


def open_fsspec(source: str) -> tuple[Any, int | None]:
    """Open a local path, file:// or other fsspec URL for reading: (binary file, size or None).

    Raises SourceNotFoundError for a missing file, CodecflowError for a folder.
    """
    fs, path = fsspec.core.url_to_fs(source)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise SourceNotFoundError(f"source not found: {source}") from None
    if info.get("type") == "directory":
        raise CodecflowError(f"source is a folder, not a file: {source}")
    try:
        src = fs.open(path, "rb")
    except FileNotFoundError:
        raise SourceNotFoundError(f"source not found: {source}") from None
    return src, info.get("size")


def _fetch_fsspec(
    source: str,
    part: Path,
    chunk_size: int,
    progress: ProgressCallback | None,
) -> tuple[Any, int]:
    """Download a local path, file:// or other fsspec URL into `part`, resuming by seeking."""
    src, total = open_fsspec(source)
    with src:
        offset = part.stat().st_size if part.exists() else 0
        if total is not None and offset > total:
            offset = 0  # the part is longer than the source: it belongs to another file
        if offset:
            src.seek(offset)
            digest, mode = _md5_of(part), "ab"
        else:
            digest, mode = hashlib.md5(), "wb"
        chunks = iter(lambda: src.read(chunk_size), b"")
        _write_stream(chunks, part, mode, digest, offset, total, progress)
    return digest, offset


def _keep_mismatched(
    part: Path, dest: Path, source: str, expected: str, actual: str
) -> ChecksumMismatchError:
    """Move a part with a wrong md5 to `<dest>.md5-mismatch`; the error that says where it is.

    Keeping the bytes lets one tell a truncated or corrupted transfer (compare sizes, `tar -t`)
    from a wrong expected md5 without downloading again (35 GB to 3 TB for Libri-Light).
    """
    kept = dest.with_name(dest.name + MISMATCH_SUFFIX)
    os.replace(part, kept)  # replaces an older mismatch: only the latest attempt is of interest
    fsync_dir(dest.parent)
    error = ChecksumMismatchError(source, "md5", expected, actual)
    # The message starts as ChecksumMismatchError's own (the CLI and the reliability page quote it).
    error.args = (f"{error.args[0]}; the download is kept as {kept}",)
    return error


def fetch(
    source: str,
    dest: Path,
    expected_md5: str | None = None,
    *,
    client: httpx.Client | None = None,
    chunk_size: int = 1 << 20,
    progress: ProgressCallback | None = None,
) -> FetchRecord:
    """Download `source` (local path, file://, http(s)://, or any fsspec URL) to `dest`.

    Streams into `<dest>.part`, computing the md5 on the way, and resumes an existing part (HTTP
    `Range: bytes=N-`, or a seek for fsspec sources). The part is renamed to `dest` only when the
    md5 matches `expected_md5` (when given). An existing `dest` with the expected md5 (or any
    existing `dest` when no md5 is expected) is returned without downloading.

    Raises SourceNotFoundError for a missing source, ChecksumMismatchError for a wrong md5: the
    downloaded bytes are then moved to `<dest>.md5-mismatch` (replacing an older one) for
    inspection, so that neither `dest` nor the part remains and a re-run downloads afresh (a
    resume would only extend the wrong bytes). Transient errors (connection reset, timeouts, HTTP
    5xx) propagate and keep the part, so that a retry resumes it.
    """
    source = os.fspath(source)
    dest = Path(dest)
    if expected_md5 is not None:
        expected_md5 = expected_md5.strip().lower()
        if not MD5_RE.fullmatch(expected_md5):
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
    if is_http(source):
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
        raise _keep_mismatched(part, dest, source, expected_md5, md5)
    n_bytes = part.stat().st_size
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return FetchRecord(dest, md5, n_bytes, resumed_from, source)
