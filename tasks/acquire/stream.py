"""One forward stream of a source without storing it (to extract a 3 TB archive as it arrives).

`open_source_stream` reads a local path, an http(s) URL or any fsspec URL; an http(s) stream
reconnects with a Range request when the connection drops (`download.RECONNECT_DELAYS_S`).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Generator, Iterator
from typing import Any, BinaryIO

import httpx

from codecflow.tasks.acquire.download import (
    RECONNECT_DELAYS_S,
    is_http,
    open_fsspec,
    parse_content_range,
)
from codecflow.tasks.core.errors import CodecflowError, SourceNotFoundError
from codecflow.tasks.core.progress import ProgressCallback

__all__ = [
    "open_source_stream",
]


class _ChunkReader(io.RawIOBase):
    """A readable, non-seekable raw stream over an iterator of byte chunks."""

    def __init__(self, chunks: Generator[bytes, None, None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._error is not None:
                # A generator that raised is finished: reading on would look like a clean end of
                # a truncated stream.
                raise self._error
            try:
                chunk = next(self._chunks, None)
            except BaseException as error:
                self._error = error
                raise
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        # Closing the generator runs its `finally`: the HTTP response or file is released.
        self._chunks.close()
        super().close()


def _send_http(source: str, client: httpx.Client, offset: int) -> httpx.Response:
    """Open a streamed GET of `source` from byte `offset`; the response, status checked.

    Raises SourceNotFoundError (404, 410), httpx.HTTPStatusError for a transient status (5xx,
    429: a retry may succeed), CodecflowError for any other unexpected answer.
    """
    # identity: the stream must be the file's bytes (the ones its md5 is about), and Range offsets
    # must count them, not those of a compressed transfer.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = client.build_request("GET", source, headers=headers)
    response = client.send(request, stream=True, follow_redirects=True)
    try:
        status = response.status_code
        if status in (404, 410):
            raise SourceNotFoundError(f"source not found: {source}")
        if status >= 500 or status == 429:
            response.raise_for_status()
        if offset and status == 206:
            first, _ = parse_content_range(response.headers.get("content-range"))
            if first != offset:
                raise CodecflowError(
                    f"cannot resume {source} at byte {offset}: the server sent a range "
                    f"starting at {first}"
                )
        elif status != 200:  # a 200 to a Range request is handled by the caller (skip bytes)
            raise CodecflowError(f"HTTP {status} for {source}")
    except BaseException:
        response.close()
        raise
    return response


def _http_chunks(
    source: str, client: httpx.Client, response: httpx.Response
) -> Generator[bytes, None, None]:
    """The body of `response`, continued with Range requests when the connection drops.

    A multi-day stream of a 3 TB archive would otherwise have to start again from byte 0. After
    `len(RECONNECT_DELAYS_S)` drops in a row without a byte received, the last error propagates.
    """
    current: httpx.Response | None = response
    done = 0  # bytes yielded
    skip = 0  # bytes to drop: a server that ignored our Range request sends from byte 0
    failures = 0
    try:
        while True:
            try:
                if current is None:
                    current = _send_http(source, client, done)
                    skip = done if current.status_code == 200 else 0
                # Unsized: every byte received counts, so a reconnect asks for exactly the rest.
                for chunk in current.iter_raw():
                    if skip:
                        dropped = min(skip, len(chunk))
                        skip -= dropped
                        chunk = chunk[dropped:]
                        if not chunk:
                            continue
                    done += len(chunk)
                    failures = 0
                    yield chunk
                return
            except (httpx.TransportError, httpx.HTTPStatusError):
                if failures >= len(RECONNECT_DELAYS_S):
                    raise
                if current is not None:
                    current.close()
                    current = None
                time.sleep(RECONNECT_DELAYS_S[failures])
                failures += 1
    finally:
        if current is not None:
            current.close()


def _file_chunks(src: Any, chunk_size: int) -> Generator[bytes, None, None]:
    """The bytes of an open binary file, in chunks; the file is closed at the end."""
    with src:
        while chunk := src.read(chunk_size):
            yield chunk


def _counted(
    chunks: Generator[bytes, None, None],
    total: int | None,
    progress: ProgressCallback,
    report_every: int,
) -> Generator[bytes, None, None]:
    """`chunks`, calling `progress` once `report_every` more bytes went through, and at the end."""
    done = reported = 0
    try:
        for chunk in chunks:
            done += len(chunk)
            if done - reported >= report_every:
                progress(done, total)
                reported = done
            yield chunk
        if done != reported:
            progress(done, total)
    finally:
        chunks.close()


@contextlib.contextmanager
def _open_source_stream(
    source: str,
    client: httpx.Client | None,
    chunk_size: int,
    progress: ProgressCallback | None,
) -> Iterator[BinaryIO]:
    with contextlib.ExitStack() as stack:
        if is_http(source):
            if client is None:
                client = stack.enter_context(
                    httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
                )
            # The first request is sent here, so that a missing source fails on entering.
            response = _send_http(source, client, 0)
            # A generator closed before its first step skips its `finally`: close explicitly.
            stack.callback(response.close)
            length = response.headers.get("content-length")
            total = int(length) if length is not None else None
            chunks = _http_chunks(source, client, response)
        else:
            src, total = open_fsspec(source)
            stack.callback(src.close)
            chunks = _file_chunks(src, chunk_size)
        if progress is not None:
            chunks = _counted(chunks, total, progress, chunk_size)
        raw = _ChunkReader(chunks)
        stack.callback(raw.close)  # also when the reader is never read to its end
        yield io.BufferedReader(raw, buffer_size=chunk_size)


def open_source_stream(
    source: str,
    *,
    client: httpx.Client | None = None,
    chunk_size: int = 1 << 20,
    progress: ProgressCallback | None = None,
) -> contextlib.AbstractContextManager[BinaryIO]:
    """A context manager over a readable, non-seekable binary stream of the whole `source`.

    `source` is what `fetch` takes: a local path, file://, http(s):// (read through `client`, or
    a client of its own, with `Accept-Encoding: identity`, so the stream holds the same bytes that
    `fetch` would store) or any fsspec URL. Nothing is written to disk: made to extract an archive
    as it arrives (`tarfile.open(fileobj=stream, mode="r|*")`). Every kind of source gives a
    non-seekable stream, so that code which works on a local file works on a URL too. A dropped
    http(s) connection is resumed with a Range request (bytes already read are not read again).

    Raises SourceNotFoundError on entering for a missing source (HTTP 404/410, no such file),
    CodecflowError for a folder or an unexpected HTTP status; transient errors (HTTP 5xx, 429,
    connection errors) propagate for a retrying wrapper. `progress` is called with (bytes read,
    total bytes or None) as the stream is consumed.
    """
    source = os.fspath(source)
    if chunk_size <= 0:
        raise CodecflowError(f"chunk_size must be positive, got {chunk_size}")
    return _open_source_stream(source, client, chunk_size, progress)
