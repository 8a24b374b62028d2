"""Tests of tasks.acquire.download: fetch from local paths, file:// and fsspec URLs, and a real HTTP
server on 127.0.0.1 (resume after a dropped connection, Range handling, md5 checks).
"""

from __future__ import annotations

import hashlib
import random
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import httpx
import pytest
from http_server import ServerState, serve

from codecflow.tasks.acquire import download
from codecflow.tasks.acquire.download import FetchRecord, fetch
from codecflow.tasks.acquire.stream import open_source_stream
from codecflow.tasks.core.errors import ChecksumMismatchError, CodecflowError, SourceNotFoundError

REPO = Path(__file__).resolve().parents[3]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
TINY_MD5 = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar.md5"

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


@pytest.fixture
def server() -> Iterator[ServerState]:
    with serve({"/data.bin": PAYLOAD}) as state:
        yield state


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def test_module_is_plain_python() -> None:
    source = Path(download.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+prefect\b", source, re.MULTILINE)
    assert set(download.__all__) <= set(dir(download))


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_fetch_local(tmp_path: Path, as_uri: bool) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    source = src.as_uri() if as_uri else str(src)
    dest = tmp_path / "out" / "dest.bin"
    seen: list[tuple[int, int | None]] = []
    rec = fetch(source, dest, PAYLOAD_MD5, chunk_size=65536, progress=lambda *a: seen.append(a))
    assert rec == FetchRecord(dest, PAYLOAD_MD5, len(PAYLOAD), 0, source)
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("dest.bin.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_fetch_local_resumes_part_by_seeking(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "dest.bin"
    dest.with_name("dest.bin.part").write_bytes(PAYLOAD[:123_456])
    rec = fetch(str(src), dest, PAYLOAD_MD5)
    assert rec.resumed_from == 123_456
    assert rec.md5 == PAYLOAD_MD5 and dest.read_bytes() == PAYLOAD


def test_fetch_existing_dest_is_not_downloaded_again(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    dest = tmp_path / "dest.bin"
    dest.write_bytes(PAYLOAD)
    rec = fetch(f"{server.base_url}/data.bin", dest, PAYLOAD_MD5, client=client)
    assert rec.resumed_from == rec.n_bytes == len(PAYLOAD)
    assert server.requests == []


def test_fetch_replaces_a_stale_dest(tmp_path: Path, server: ServerState) -> None:
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"stale")
    rec = fetch(f"{server.base_url}/data.bin", dest, PAYLOAD_MD5)  # creates its own client
    assert rec.md5 == PAYLOAD_MD5 and dest.read_bytes() == PAYLOAD


def test_fetch_http(tmp_path: Path, server: ServerState, client: httpx.Client) -> None:
    dest = tmp_path / "dest.bin"
    seen: list[tuple[int, int | None]] = []
    url = f"{server.base_url}/data.bin"
    rec = fetch(url, dest, PAYLOAD_MD5, client=client, progress=lambda *a: seen.append(a))
    assert rec == FetchRecord(dest, PAYLOAD_MD5, len(PAYLOAD), 0, url)
    assert server.requests == [("/data.bin", None)]
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_fetch_http_resumes_after_dropped_connection(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    dest = tmp_path / "dest.bin"
    part = tmp_path / "dest.bin.part"
    url = f"{server.base_url}/data.bin"
    server.drop_after = 100_000
    with pytest.raises(httpx.TransportError):  # transient: propagates for the retrying wrapper
        fetch(url, dest, PAYLOAD_MD5, client=client, chunk_size=8192)
    assert not dest.exists()
    # Kept for the resume: every byte that was sent, whatever the chunk size.
    kept = part.read_bytes()
    assert kept == PAYLOAD[:100_000]

    rec = fetch(url, dest, PAYLOAD_MD5, client=client, chunk_size=8192)
    assert server.requests[-1] == ("/data.bin", f"bytes={len(kept)}-")
    assert rec.resumed_from == len(kept)
    assert rec.md5 == PAYLOAD_MD5 and rec.n_bytes == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_fetch_http_keeps_a_partial_chunk_when_the_connection_drops(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    # The default chunk size (1 MiB) is larger than the whole file: what arrived is kept anyway.
    dest = tmp_path / "dest.bin"
    server.drop_after = 100_000
    url = f"{server.base_url}/data.bin"
    with pytest.raises(httpx.TransportError):
        fetch(url, dest, PAYLOAD_MD5, client=client)
    assert dest.with_name("dest.bin.part").read_bytes() == PAYLOAD[:100_000]
    seen: list[tuple[int, int | None]] = []
    rec = fetch(url, dest, PAYLOAD_MD5, client=client, progress=lambda *a: seen.append(a))
    assert server.requests[-1] == ("/data.bin", "bytes=100000-")
    assert rec.resumed_from == 100_000 and dest.read_bytes() == PAYLOAD
    assert seen == [(len(PAYLOAD), len(PAYLOAD))]  # one call per chunk_size bytes, and the end


def test_fetch_http_restarts_when_server_ignores_range(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    server.support_range = False
    dest = tmp_path / "dest.bin"
    dest.with_name("dest.bin.part").write_bytes(b"\0" * 5000)
    rec = fetch(f"{server.base_url}/data.bin", dest, PAYLOAD_MD5, client=client)
    assert server.requests == [("/data.bin", "bytes=5000-")]
    assert rec.resumed_from == 0 and rec.md5 == PAYLOAD_MD5


def test_fetch_http_complete_part_gets_416(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    dest = tmp_path / "dest.bin"
    dest.with_name("dest.bin.part").write_bytes(PAYLOAD)
    rec = fetch(f"{server.base_url}/data.bin", dest, PAYLOAD_MD5, client=client)
    assert server.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]
    assert rec.resumed_from == len(PAYLOAD) and rec.md5 == PAYLOAD_MD5
    assert dest.read_bytes() == PAYLOAD


def test_fetch_http_5xx_propagates_and_keeps_part(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    server.status = 503
    dest = tmp_path / "dest.bin"
    part = dest.with_name("dest.bin.part")
    part.write_bytes(PAYLOAD[:10])
    with pytest.raises(httpx.HTTPStatusError):
        fetch(f"{server.base_url}/data.bin", dest, client=client)
    assert part.read_bytes() == PAYLOAD[:10]


@pytest.mark.parametrize("kind", ["local", "http"])
def test_fetch_md5_mismatch(
    tmp_path: Path, server: ServerState, client: httpx.Client, kind: str
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    source = str(src) if kind == "local" else f"{server.base_url}/data.bin"
    dest = tmp_path / "out" / "dest.bin"
    wrong = "0" * 32
    with pytest.raises(ChecksumMismatchError) as info:
        fetch(source, dest, wrong, client=client)
    message = str(info.value)
    kept = dest.with_name("dest.bin.md5-mismatch")
    assert message == (
        f"md5 mismatch for {source}: expected {wrong}, actual {PAYLOAD_MD5}; "
        f"the download is kept as {kept}"
    )
    assert "\n" not in message
    # Neither dest nor dest.part: only the bytes kept for inspection.
    assert siblings(dest.parent) == {"dest.bin.md5-mismatch"}
    assert kept.read_bytes() == PAYLOAD


def test_fetch_md5_mismatch_replaces_an_older_one_and_reruns_afresh(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    url = f"{server.base_url}/data.bin"
    dest = tmp_path / "dest.bin"
    kept = tmp_path / "dest.bin.md5-mismatch"
    kept.write_bytes(b"an older mismatch")
    # A wrong part on disk: the resume completes it, the md5 is then wrong.
    dest.with_name("dest.bin.part").write_bytes(b"\xff" * 1000)
    with pytest.raises(ChecksumMismatchError, match=re.escape(f"kept as {kept}")):
        fetch(url, dest, PAYLOAD_MD5, client=client)
    assert kept.read_bytes() == b"\xff" * 1000 + PAYLOAD[1000:]
    assert siblings(tmp_path) == {"dest.bin.md5-mismatch"}
    # The re-run starts from byte 0 (no Range header) and succeeds.
    rec = fetch(url, dest, PAYLOAD_MD5, client=client)
    assert server.requests[-1] == ("/data.bin", None)
    assert rec.resumed_from == 0 and dest.read_bytes() == PAYLOAD


def test_fetch_404(tmp_path: Path, server: ServerState, client: httpx.Client) -> None:
    url = f"{server.base_url}/missing.bin"
    dest = tmp_path / "dest.bin"
    with pytest.raises(SourceNotFoundError, match=re.escape(url)):
        fetch(url, dest, client=client)
    assert siblings(tmp_path) == set()


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_fetch_missing_file(tmp_path: Path, as_uri: bool) -> None:
    missing = tmp_path / "nope.bin"
    source = missing.as_uri() if as_uri else str(missing)
    with pytest.raises(SourceNotFoundError, match=re.escape(source)):
        fetch(source, tmp_path / "out" / "dest.bin")
    assert not (tmp_path / "out" / "dest.bin.part").exists()


def test_fetch_other_fsspec_url(tmp_path: Path) -> None:
    # Any fsspec protocol goes through the same path as s3://; memory:// needs no network.
    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/data.bin", PAYLOAD)
    try:
        dest = tmp_path / "dest.bin"
        dest.with_name("dest.bin.part").write_bytes(PAYLOAD[:1000])
        rec = fetch("memory://bucket/data.bin", dest, PAYLOAD_MD5)
        assert rec.resumed_from == 1000 and dest.read_bytes() == PAYLOAD
        with pytest.raises(SourceNotFoundError, match="memory://bucket/nope.bin"):
            fetch("memory://bucket/nope.bin", tmp_path / "nope.bin")
    finally:
        memory.rm("/bucket", recursive=True)


def test_fetch_rejects_a_malformed_md5(tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match="not 32 hex digits"):
        fetch(str(tmp_path / "x"), tmp_path / "y", "abc")


# --------------------------------------------------------------------------------------------
# open_source_stream
# --------------------------------------------------------------------------------------------


def read_all(source: str, **kwargs: object) -> bytes:
    with open_source_stream(source, **kwargs) as stream:  # type: ignore[arg-type]
        assert stream.readable() and not stream.seekable()
        parts = []
        # Uneven reads: the stream must not depend on the reader's chunking.
        for size in (1, 7, 4096, 65_537):
            parts.append(stream.read(size))
        parts.append(stream.read())
        assert stream.read(10) == b""
        return b"".join(parts)


def test_open_source_stream_http(server: ServerState, client: httpx.Client) -> None:
    url = f"{server.base_url}/data.bin"
    assert read_all(url, client=client) == PAYLOAD
    assert read_all(url) == PAYLOAD  # with a client of its own
    assert server.requests == [("/data.bin", None)] * 2


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_open_source_stream_local(tmp_path: Path, as_uri: bool) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    assert read_all(src.as_uri() if as_uri else str(src)) == PAYLOAD


def test_open_source_stream_fsspec_url() -> None:
    memory = fsspec.filesystem("memory")
    memory.pipe("/stream-bucket/data.bin", PAYLOAD)
    try:
        assert read_all("memory://stream-bucket/data.bin", chunk_size=10_000) == PAYLOAD
        with pytest.raises(SourceNotFoundError, match="memory://stream-bucket/nope.bin"):
            open_source_stream("memory://stream-bucket/nope.bin").__enter__()
    finally:
        memory.rm("/stream-bucket", recursive=True)


def test_open_source_stream_404(server: ServerState, client: httpx.Client) -> None:
    url = f"{server.base_url}/missing.bin"
    with pytest.raises(SourceNotFoundError, match=re.escape(f"source not found: {url}")):
        with open_source_stream(url, client=client):
            pytest.fail("entered a stream of a missing source")


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_open_source_stream_missing_file(tmp_path: Path, as_uri: bool) -> None:
    missing = tmp_path / "nope.bin"
    source = missing.as_uri() if as_uri else str(missing)
    with pytest.raises(SourceNotFoundError, match=re.escape(source)):
        with open_source_stream(source):
            pytest.fail("entered a stream of a missing source")


def test_open_source_stream_folder_and_5xx(
    tmp_path: Path, server: ServerState, client: httpx.Client
) -> None:
    with pytest.raises(CodecflowError, match="source is a folder"):
        open_source_stream(str(tmp_path)).__enter__()
    server.status = 503
    with pytest.raises(httpx.HTTPStatusError):  # transient: for the retrying wrapper
        open_source_stream(f"{server.base_url}/data.bin", client=client).__enter__()


@pytest.mark.parametrize("support_range", [True, False], ids=["range", "no-range"])
def test_open_source_stream_reconnects_after_dropped_connection(
    server: ServerState, client: httpx.Client, support_range: bool
) -> None:
    server.drop_after = 100_000
    server.support_range = support_range
    seen: list[tuple[int, int | None]] = []
    url = f"{server.base_url}/data.bin"
    data = read_all(url, client=client, chunk_size=8192, progress=lambda *a: seen.append(a))
    assert data == PAYLOAD
    # The second request asks for the rest; a server that ignores it resends from byte 0, and
    # the bytes already read are dropped.
    [(_, first), (_, second)] = server.requests
    assert first is None
    assert second is not None and re.fullmatch(r"bytes=\d+-", second)
    assert second == "bytes=100000-"  # every byte received counts, whatever the chunk size
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_open_source_stream_extracts_a_tar_as_it_streams() -> None:
    with serve({"/tiny.tar": TINY_TAR.read_bytes()}) as state:
        url = f"{state.base_url}/tiny.tar"
        with open_source_stream(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            names = [member.name for member in tar]
    assert any(name.endswith(".flac") for name in names)
    assert state.requests == [("/tiny.tar", None)]


def test_open_source_stream_left_early_releases_the_connection(server: ServerState) -> None:
    url = f"{server.base_url}/data.bin"
    # One connection in the pool: a response left open would make the next request time out.
    limits = httpx.Limits(max_connections=1)
    with httpx.Client(timeout=httpx.Timeout(5.0, pool=0.5), limits=limits) as one:
        for _ in range(2):  # never read, then read partly
            with open_source_stream(url, client=one):
                pass
            with open_source_stream(url, client=one) as stream:
                assert stream.read(10) == PAYLOAD[:10]
        assert read_all(url, client=one) == PAYLOAD
