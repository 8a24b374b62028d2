"""Tests of tasks.extract: safe streaming extraction with the tarfile `data` filter's rules."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import stat
import tarfile
from pathlib import Path

import pytest

from tasks.errors import (
    CodecflowError,
    CorruptArchiveError,
)
from tasks.extract import EXTRACTED_MARKER, extract_tar_safely

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
