"""Tests of tasks.acquire: fetch (local, file://, a real HTTP server on 127.0.0.1), safe tar
extraction, Libri-Light's cut_by_vad semantics, the speaker split and the segment manifest.

Fast and offline: the only network is a ThreadingHTTPServer on 127.0.0.1; the only corpus is the
committed `data/librilight-tiny/librilight-tiny.tar`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import stat
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import httpx
import pyarrow.parquet as pq
import pytest

from schemas.tables import SEGMENT_MANIFEST_SCHEMA, SPLITS
from tasks import acquire
from tasks.acquire import (
    EXTRACTED_MARKER,
    ExtractRecord,
    FetchRecord,
    build_segment_manifest,
    cut_by_vad,
    extract_tar_safely,
    fetch,
    read_segment_audio,
    scan_librilight,
    split_by_speaker,
)
from tasks.errors import (
    ChecksumMismatchError,
    CodecflowError,
    CorruptArchiveError,
    SourceNotFoundError,
)

REPO = Path(__file__).resolve().parents[2]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
TINY_MD5 = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar.md5"

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


# --------------------------------------------------------------------------------------------
# A real HTTP server on 127.0.0.1
# --------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    support_range: bool = True
    drop_after: int | None = None  # close the connection after this many body bytes (once)
    status: int | None = None  # answer every request with this status instead
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    base_url: str = ""


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            if state.status is not None:
                return self._empty(state.status)
            body = state.files.get(self.path)
            if body is None:
                return self._empty(404)
            start, status = 0, 200
            if range_header and state.support_range:
                match = re.fullmatch(r"bytes=(\d+)-", range_header)
                assert match, range_header
                start = int(match.group(1))
                if start >= len(body):
                    return self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                status = 206
            chunk = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if state.drop_after is not None and state.drop_after < len(chunk):
                # Simulate a connection reset mid-body: send part of it and hang up.
                self.wfile.write(chunk[: state.drop_after])
                self.wfile.flush()
                state.drop_after = None
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server() -> Iterator[ServerState]:
    state = ServerState(files={"/data.bin": PAYLOAD})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def test_module_is_plain_python() -> None:
    source = Path(acquire.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+prefect\b", source, re.MULTILINE)
    assert set(acquire.__all__) <= set(dir(acquire))


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
    # Kept for the resume: a prefix of what was sent (httpx holds back a last partial chunk).
    kept = part.read_bytes()
    assert 100_000 - 8192 < len(kept) <= 100_000 and PAYLOAD.startswith(kept)

    rec = fetch(url, dest, PAYLOAD_MD5, client=client, chunk_size=8192)
    assert server.requests[-1] == ("/data.bin", f"bytes={len(kept)}-")
    assert rec.resumed_from == len(kept)
    assert rec.md5 == PAYLOAD_MD5 and rec.n_bytes == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD and not part.exists()


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
    assert wrong in message and PAYLOAD_MD5 in message and source in message
    assert "\n" not in message
    assert siblings(dest.parent) == set()  # neither dest nor dest.part


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
# extract_tar_safely
# --------------------------------------------------------------------------------------------


def test_extract_tiny_corpus(tmp_path: Path) -> None:
    dest = tmp_path / "librilight"
    rec = extract_tar_safely(TINY_TAR, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    audio = [f for f in files if f.endswith(".flac")]
    assert len(audio) == 3
    for flac in audio:
        subset, speaker, book_dir, name = flac.split("/")
        assert subset == "small" and speaker.isdigit()
        stem = name.removesuffix(".flac")
        assert stem.startswith(f"{speaker}-")
        for ext in ("json", "txt"):
            assert f"small/{speaker}/{book_dir}/{stem}.{ext}" in files
    assert files.count(EXTRACTED_MARKER) == 1
    assert rec.root == dest and rec.n_files == 9 and rec.refused == ()
    assert rec.n_bytes == sum((dest / f).stat().st_size for f in files if f != EXTRACTED_MARKER)

    marker = json.loads((dest / EXTRACTED_MARKER).read_text())
    assert marker["tar_md5"] == TINY_MD5.read_text().split()[0]
    assert marker["tar_sha256"] == hashlib.sha256(TINY_TAR.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["librilight"]  # no temporary folder left


def test_extract_skips_when_marker_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "librilight"
    first = extract_tar_safely(TINY_TAR, dest)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(tarfile, "open", boom)
    assert extract_tar_safely(TINY_TAR, dest) == first


def test_extract_gzipped_tar(tmp_path: Path) -> None:
    tgz = tmp_path / "tiny.tar.gz"
    tgz.write_bytes(gzip.compress(TINY_TAR.read_bytes(), mtime=0))
    rec = extract_tar_safely(tgz, tmp_path / "out")
    assert rec.n_files == 9 and len(list((tmp_path / "out").rglob("*.flac"))) == 3


def _add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    data = b""
    if "data" in attrs:
        data = attrs.pop("data")  # type: ignore[assignment]
        info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_extract_refuses_unsafe_members(tmp_path: Path) -> None:
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "ok", tarfile.DIRTYPE, mode=0o777)
        _add(tar, "ok/a.txt", data=b"hello")
        _add(tar, "ok/run.sh", data=b"#!/bin/sh\n", mode=0o4777)
        _add(tar, "/abs.txt", data=b"absolute")
        _add(tar, "../evil.txt", data=b"evil")
        _add(tar, "ok/../../evil2.txt", data=b"evil")
        _add(tar, "passwd", tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "ok/up", tarfile.SYMTYPE, linkname="../../outside.txt")
        _add(tar, "hard", tarfile.LNKTYPE, linkname="../outside.txt")
        _add(tar, "hard_abs", tarfile.LNKTYPE, linkname="/etc/passwd")
        _add(tar, "fifo", tarfile.FIFOTYPE)
        _add(tar, "tty", tarfile.CHRTYPE, devmajor=5, devminor=0)
        _add(tar, "ok/link", tarfile.SYMTYPE, linkname="a.txt")  # inside: allowed
        _add(tar, "ok/hard", tarfile.LNKTYPE, linkname="ok/a.txt")  # inside: allowed
    with tarfile.open(tar_path) as tar:
        assert "/abs.txt" in tar.getnames()  # the crafted name really is absolute
    (tmp_path / "outside.txt").write_text("outside")
    before = siblings(tmp_path)

    dest = tmp_path / "dest"
    rec = extract_tar_safely(tar_path, dest)
    reasons = dict(rec.refused)
    assert [name for name, _ in rec.refused] == [
        "/abs.txt",
        "../evil.txt",
        "ok/../../evil2.txt",
        "passwd",
        "ok/up",
        "hard",
        "hard_abs",
        "fifo",
        "tty",
    ]
    assert reasons["/abs.txt"] == "absolute path"
    assert reasons["../evil.txt"] == reasons["ok/../../evil2.txt"] == "'..' component"
    assert reasons["passwd"] == reasons["hard_abs"] == "link to an absolute path"
    assert reasons["ok/up"] == reasons["hard"] == "link outside the destination"
    assert reasons["fifo"] == reasons["tty"] == "special file (device or fifo)"

    # Nothing written outside dest, and only the safe members inside it.
    assert siblings(tmp_path) == before | {"dest"}
    assert (tmp_path / "outside.txt").read_text() == "outside"
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert written == [EXTRACTED_MARKER, "ok", "ok/a.txt", "ok/hard", "ok/link", "ok/run.sh"]
    assert os.readlink(dest / "ok" / "link") == "a.txt"
    assert (dest / "ok" / "hard").read_bytes() == b"hello"
    mode = stat.S_IMODE((dest / "ok" / "run.sh").stat().st_mode)
    assert mode == 0o755  # setuid and group/other write stripped (the data filter's modes)
    assert rec.n_files == 4 and rec.n_bytes == 5 + 10
    marker = json.loads((dest / EXTRACTED_MARKER).read_text())
    assert [tuple(item) for item in marker["refused"]] == list(rec.refused)


def _member_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(header offset, data offset, size) of each member of an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def _truncations() -> dict[str, bytes]:
    data = TINY_TAR.read_bytes()
    members = _member_offsets(data)
    biggest = max(members, key=lambda m: m[2])
    last_header, last_data, last_size = members[-1]
    end_of_members = last_data + -(-last_size // 512) * 512
    garbage = bytearray(data)
    garbage[members[4][0] : members[4][0] + 512] = b"x" * 512
    return {
        "mid-file-data": data[: biggest[1] + biggest[2] // 2],
        "at-header-boundary": data[: members[5][0]],
        "no-end-marker": data[:end_of_members],
        "garbage-header": bytes(garbage),
        "mid-header": data[: last_header + 100],
    }


@pytest.mark.parametrize("case", list(_truncations()))
def test_extract_corrupt_tar(tmp_path: Path, case: str) -> None:
    tar_path = tmp_path / "broken.tar"
    tar_path.write_bytes(_truncations()[case])
    dest = tmp_path / "dest"
    with pytest.raises(CorruptArchiveError, match=re.escape(f"corrupt archive {tar_path}")):
        extract_tar_safely(tar_path, dest)
    assert siblings(tmp_path) == {"broken.tar"}  # no dest, no temporary folder


def test_extract_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match="nope.tar"):
        extract_tar_safely(tmp_path / "nope.tar", tmp_path / "dest")


# --------------------------------------------------------------------------------------------
# cut_by_vad
# --------------------------------------------------------------------------------------------


def test_cut_by_vad_accumulates() -> None:
    vad = [(0.0, 10.0), (11.0, 21.0), (22.0, 32.0), (33.0, 34.0)]
    assert cut_by_vad(vad, 25.0) == [[(0.0, 10.0), (11.0, 21.0)], [(22.0, 32.0), (33.0, 34.0)]]


def test_cut_by_vad_boundary_exactly_at_target_stays() -> None:
    # cut_by_vad.py closes a segment only when the total would *exceed* the target.
    assert cut_by_vad([(0.0, 10.0), (10.5, 20.5), (21.0, 21.5)], 20.0) == [
        [(0.0, 10.0), (10.5, 20.5)],
        [(21.0, 21.5)],
    ]


def test_cut_by_vad_long_chunk_alone() -> None:
    vad = [(0.0, 5.0), (6.0, 100.0), (101.0, 104.0)]
    assert cut_by_vad(vad, 30.0) == [[(0.0, 5.0)], [(6.0, 100.0)], [(101.0, 104.0)]]
    assert cut_by_vad([(0.0, 90.0), (91.0, 92.0)], 30.0) == [[(0.0, 90.0)], [(91.0, 92.0)]]


def test_cut_by_vad_empty_and_bad_input() -> None:
    assert cut_by_vad([], 60.0) == []
    with pytest.raises(CodecflowError, match="target_len_sec"):
        cut_by_vad([(0.0, 1.0)], 0.0)
    with pytest.raises(CodecflowError, match="chunk 1"):
        cut_by_vad([(0.0, 1.0), (3.0, 2.0)], 10.0)


# --------------------------------------------------------------------------------------------
# split_by_speaker
# --------------------------------------------------------------------------------------------


def test_split_by_speaker_is_deterministic_and_disjoint() -> None:
    rng = random.Random(0)
    hours = {f"spk{i}": rng.uniform(0.5, 5.0) for i in range(40)}
    split = split_by_speaker(hours, 0.1, seed=7)
    assert split == split_by_speaker(dict(reversed(list(hours.items()))), 0.1, seed=7)
    assert set(split) == set(hours) and set(split.values()) == set(SPLITS)
    val_hours = sum(h for s, h in hours.items() if split[s] == "val")
    assert val_hours >= 0.1 * sum(hours.values())
    assert val_hours < 0.1 * sum(hours.values()) + max(hours.values())  # stops once reached
    assert split != split_by_speaker(hours, 0.1, seed=8)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_split_by_speaker_two_speakers_one_each(fraction: float) -> None:
    split = split_by_speaker({"a": 1.0, "b": 1.0}, fraction, seed=0)
    assert sorted(split.values()) == ["train", "val"]


def test_split_by_speaker_small_inputs() -> None:
    assert split_by_speaker({}, 0.1, 0) == {}
    assert split_by_speaker({"only": 3.0}, 0.5, 0) == {"only": "train"}
    with pytest.raises(CodecflowError, match="val_fraction"):
        split_by_speaker({"a": 1.0}, 1.0, 0)


# --------------------------------------------------------------------------------------------
# scan_librilight, build_segment_manifest, read_segment_audio
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "librilight"
    extract_tar_safely(TINY_TAR, root)
    return root


def test_scan_librilight(tiny_root: Path) -> None:
    files = scan_librilight(tiny_root)
    assert [f.speaker for f in files] == ["198", "3436", "5703"]
    for f in files:
        meta = json.loads((tiny_root / f.path).with_suffix(".json").read_text())
        assert f.path.startswith(f"small/{f.speaker}/")
        assert f.book_id == meta["book_meta"]["id"] == f.path.split("/")[-1].split("-")[1]
        assert f.sample_rate == 16_000 and 10.0 < f.duration_s < 20.0
        assert f.voice_activity == tuple(tuple(c) for c in meta["voice_activity"])
        assert all(0 <= a < b <= f.duration_s for a, b in f.voice_activity)


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "bad Libri-Light metadata"), ('{"speaker": "1"}', "missing key 'book_meta'")],
)
def test_scan_librilight_bad_json(tmp_path: Path, tiny_root: Path, content: str, message: str):
    flac = next(tiny_root.rglob("*.flac"))
    folder = tmp_path / "small" / "1" / "book"
    folder.mkdir(parents=True)
    shutil.copy(flac, folder / "x.flac")
    (folder / "x.json").write_text(content)
    with pytest.raises(CodecflowError, match=re.escape(message)) as info:
        scan_librilight(tmp_path)
    assert str(folder / "x.json") in str(info.value)


@pytest.mark.parametrize("target", [5.0, 60.0])
def test_build_segment_manifest(tmp_path: Path, tiny_root: Path, target: float) -> None:
    out = tmp_path / "manifest.parquet"
    rec = build_segment_manifest(tiny_root, out, target_len_sec=target, val_fraction=0.3, seed=0)
    assert pq.read_schema(out).equals(SEGMENT_MANIFEST_SCHEMA, check_metadata=False)
    rows = pq.read_table(out).to_pylist()
    assert [r["segment_id"] for r in rows] == sorted(r["segment_id"] for r in rows)
    assert len({r["segment_id"] for r in rows}) == len(rows) == rec.n_segments

    expected_ids = []
    for f in scan_librilight(tiny_root):
        stem = Path(f.path).stem
        expected_ids += [
            f"{stem}_{i:04d}" for i in range(len(cut_by_vad(f.voice_activity, target)))
        ]
    assert sorted(expected_ids) == [r["segment_id"] for r in rows]
    if target == 60.0:
        assert rec.n_segments == 3  # each ~15 s file is one segment

    for r in rows:
        chunks = [(c["start_s"], c["end_s"]) for c in r["chunks"]]
        assert r["duration_s"] == pytest.approx(sum(b - a for a, b in chunks))
        assert (r["start_s"], r["end_s"]) == (chunks[0][0], chunks[-1][1])
        assert r["split"] in SPLITS and r["sample_rate"] == 16_000
        assert r["source_path"].startswith(f"small/{r['speaker']}/")
    train = {r["speaker"] for r in rows if r["split"] == "train"}
    val = {r["speaker"] for r in rows if r["split"] == "val"}
    assert train and val and not train & val
    assert rec.n_speakers == 3 and rec.n_train + rec.n_val == rec.n_segments
    assert rec.n_val == sum(r["split"] == "val" for r in rows)
    assert rec.audio_hours == pytest.approx(sum(r["duration_s"] for r in rows) / 3600)
    assert siblings(tmp_path) == {"manifest.parquet"}  # written atomically, no temp left


def test_build_segment_manifest_is_reproducible(tmp_path: Path, tiny_root: Path) -> None:
    a = build_segment_manifest(tiny_root, tmp_path / "a.parquet", 5.0)
    b = build_segment_manifest(tiny_root, tmp_path / "b.parquet", 5.0)
    assert pq.read_table(a.path).equals(pq.read_table(b.path))


def test_build_segment_manifest_empty_root(tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match=re.escape(str(tmp_path))):
        build_segment_manifest(tmp_path, tmp_path / "m.parquet")


def test_read_segment_audio(tmp_path: Path, tiny_root: Path) -> None:
    rec = build_segment_manifest(tiny_root, tmp_path / "m.parquet", target_len_sec=5.0)
    rows = pq.read_table(rec.path).to_pylist()
    for r in rows:
        audio = read_segment_audio(tiny_root, r)
        sr = r["sample_rate"]
        expected = sum(int(c["end_s"] * sr) - int(c["start_s"] * sr) for c in r["chunks"])
        assert audio.dtype.name == "float32" and audio.shape == (expected,)
        assert 0.0 < float(abs(audio).max()) <= 1.0
    # Chunks may also be given as (start, end) tuples; the audio is the chunk's frames.
    import soundfile as sf

    row = rows[0]
    full, sr = sf.read(tiny_root / row["source_path"], dtype="float32")
    start, end = row["chunks"][0]["start_s"], row["chunks"][0]["end_s"]
    one = read_segment_audio(tiny_root, {**row, "chunks": [(start, end)]})
    assert (one == full[int(start * sr) : int(end * sr)]).all()


def test_records_are_frozen() -> None:
    rec = ExtractRecord(Path("."), 0, 0, ())
    with pytest.raises(AttributeError):
        rec.n_files = 1  # type: ignore[misc]
