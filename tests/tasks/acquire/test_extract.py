"""Tests of tasks.acquire.extract: safe streaming extraction with the tarfile `data` filter's rules."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import random
import re
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from codecflow.tasks.acquire.extract import extract_tar_safely
from codecflow.tasks.acquire.marker import (
    EXTRACTED_MARKER,
    ExtractionIdentityError,
    ExtractRecord,
    check_reuse,
    is_extracted,
)
from codecflow.tasks.core.errors import ChecksumMismatchError, CodecflowError, CorruptArchiveError

REPO = Path(__file__).resolve().parents[3]
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
    assert rec.root == str(dest) and rec.n_files == 9 and rec.refused == ()
    assert rec.md5 == TINY_MD5.read_text().split()[0]
    assert rec.n_bytes == sum((dest / f).stat().st_size for f in files if f != EXTRACTED_MARKER)

    marker = json.loads((dest / EXTRACTED_MARKER).read_text())
    assert marker["md5"] == TINY_MD5.read_text().split()[0]
    assert marker["archive_size"] == TINY_TAR.stat().st_size
    assert (marker["n_files"], marker["n_bytes"], marker["refused"]) == (9, rec.n_bytes, [])
    assert is_extracted(dest) and is_extracted(str(dest))
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


def _write_evil_tar(tar_path: Path) -> None:
    """A crafted tar: every kind of unsafe member, and a few safe ones."""
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


#: The refusals of the crafted tar, in archive order, on any destination.
EVIL_REFUSED = [
    ("/abs.txt", "absolute path"),
    ("../evil.txt", "'..' component"),
    ("ok/../../evil2.txt", "'..' component"),
    ("passwd", "link to an absolute path"),
    ("ok/up", "link outside the destination"),
    ("hard", "link outside the destination"),
    ("hard_abs", "link to an absolute path"),
    ("fifo", "special file (device or fifo)"),
    ("tty", "special file (device or fifo)"),
]

#: On a local destination every link is refused, in-root ones included: the sink never creates
#: one, so no later member can be written through it (see test_extract_cannot_escape_...).
EVIL_REFUSED_LOCAL = [
    *EVIL_REFUSED,
    ("ok/link", "symlink (not extracted)"),
    ("ok/hard", "hard link (not extracted)"),
]


def test_extract_refuses_unsafe_members(tmp_path: Path) -> None:
    tar_path = tmp_path / "evil.tar"
    _write_evil_tar(tar_path)
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
        "ok/link",
        "ok/hard",
    ]
    assert reasons["/abs.txt"] == "absolute path"
    assert reasons["../evil.txt"] == reasons["ok/../../evil2.txt"] == "'..' component"
    assert reasons["passwd"] == reasons["hard_abs"] == "link to an absolute path"
    assert reasons["ok/up"] == reasons["hard"] == "link outside the destination"
    assert reasons["fifo"] == reasons["tty"] == "special file (device or fifo)"
    assert reasons["ok/link"] == "symlink (not extracted)"
    assert reasons["ok/hard"] == "hard link (not extracted)"
    assert list(rec.refused) == EVIL_REFUSED_LOCAL

    # Nothing written outside dest, and only the safe members inside it.
    assert siblings(tmp_path) == before | {"dest"}
    assert (tmp_path / "outside.txt").read_text() == "outside"
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert written == [EXTRACTED_MARKER, "ok", "ok/a.txt", "ok/run.sh"]
    umask = os.umask(0)
    os.umask(umask)
    # The archive's modes (0o4777, 0o777) are not used: 0644 files, 0755 folders, less the umask.
    assert stat.S_IMODE((dest / "ok" / "run.sh").stat().st_mode) == 0o644 & ~umask
    assert stat.S_IMODE((dest / "ok").stat().st_mode) == 0o755 & ~umask
    assert rec.n_files == 2 and rec.n_bytes == 5 + 10
    marker = json.loads((dest / EXTRACTED_MARKER).read_text())
    assert [tuple(item) for item in marker["refused"]] == list(rec.refused)


def _write_realpath_overflow_tar(tar_path: Path, work: Path, outside: Path) -> list[str]:
    """The CVE-2025-4517 exploit (the shape of CPython's `test_realpath_limit_attack`).

    Sixteen nested folders `ddd...` each reached by a one-letter symlink (`a`, `a/b`...), sized so
    that `a/b/.../p` fits in PATH_MAX while its expansion plus a 254-character name does not: the
    symlink `a/.../p/lll...` -> `../` x 16 (the extraction folder itself) is never expanded by
    os.path.realpath (it gives up on ENAMETOOLONG and goes on lexically), so `escape` -> that
    link `/../../../<outside>` looks inside the root to the data filter while the kernel resolves it
    to `outside`, a sibling of the test's folder. A hard link through it and a file written
    through it follow. `work` is the folder the extraction's temporary folder is created in.
    Returns the names of the links, in archive order.
    """
    steps = "abcdefghijklmnop"
    # The temporary folder atomic_dir extracts into: `<work>/.<name>.<8 chars>.tmp`.
    extraction_dir_len = len(str(work)) + len("/.evil.12345678.tmp")
    max_path = os.pathconf(work, "PC_PATH_MAX")
    component = "d" * ((max_path - extraction_dir_len - 1) // (len(steps) + 1))
    links: list[str] = []
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        path = ""
        for step in steps:
            _add(tar, posixpath.join(path, component), tarfile.DIRTYPE, mode=0o777)
            links.append(posixpath.join(path, step))
            _add(tar, links[-1], tarfile.SYMTYPE, linkname=component)
            path = posixpath.join(path, component)
        linkpath = posixpath.join(*steps, "l" * 254)
        _add(tar, linkpath, tarfile.SYMTYPE, linkname=posixpath.join(*[".."] * len(steps)))
        escape = posixpath.join(linkpath, "..", "..", "..", outside.name)
        _add(tar, "escape", tarfile.SYMTYPE, linkname=escape)
        _add(tar, "flaglink", tarfile.LNKTYPE, linkname="escape/flag")
        _add(tar, "flaglink", data=b"overwrite")
        _add(tar, "escape/newfile", data=b"new")
    return [*links, linkpath, "escape", "flaglink"]


def test_extract_cannot_escape_through_a_realpath_overflow(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"  # a sibling folder of tmp_path
    outside.mkdir()
    (outside / "flag").write_text("untouched")
    work = tmp_path / "work"
    work.mkdir()
    tar_path = tmp_path / "evil.tar"
    links = _write_realpath_overflow_tar(tar_path, work, outside)

    rec = extract_tar_safely(tar_path, work / "evil")

    # Nothing outside the destination: the flag is intact and no new file appeared beside it.
    assert sorted(p.name for p in outside.iterdir()) == ["flag"]
    assert (outside / "flag").read_text() == "untouched"
    assert siblings(work) == {"evil"} and siblings(tmp_path) == {"evil.tar", "work"}
    # Every link is refused by name, with its reason (the chain's symlinks pass the data filter).
    assert list(rec.refused) == [
        *((name, "symlink (not extracted)") for name in links[:-1]),
        ("flaglink", "hard link (not extracted)"),
    ]
    marker = json.loads((work / "evil" / EXTRACTED_MARKER).read_text())
    assert [tuple(item) for item in marker["refused"]] == list(rec.refused)
    # The regular files were written inside, in real folders, with no link anywhere.
    dest = work / "evil"
    assert (dest / "flaglink").read_bytes() == b"overwrite"
    assert (dest / "escape" / "newfile").read_bytes() == b"new"
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert rec.n_files == 2 and rec.n_bytes == len(b"overwrite") + len(b"new")


def test_extract_refuses_bad_names_with_their_reason(
    tmp_path: Path,
) -> None:
    names = {
        "ok/new\nline.flac": "control character in name",
        "ok/tab\there.flac": "control character in name",
        "ok/esc\x1b[31m.flac": "control character in name",
        "ok/del\x7f.flac": "control character in name",
        "ok/latin1-\udce9t\udce9.flac": "name is not valid UTF-8",  # b"\xe9" bytes, not UTF-8
        f"ok/{'n' * 300}.flac": "name too long (not extracted)",  # NAME_MAX is 255
        "ok/fine-\u00e9t\u00e9.flac": "duplicate name (not extracted)",  # the first one stays
        "ok/fine-\u00e9t\u00e9.flac/x": "ok/fine-\u00e9t\u00e9.flac is not a folder (not extracted)",
    }
    tar_path = tmp_path / "names.tar"
    # GNU format writes names as raw bytes (surrogateescape turns the lone surrogates back into
    # the bytes \xe9), as a tar made on a Latin-1 system would hold them.
    with tarfile.open(
        tar_path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        _add(tar, "ok/fine-\u00e9t\u00e9.flac", data=b"fine")  # valid UTF-8 is extracted
        for name in names:
            _add(tar, name, data=b"refused")
    assert b"\xe9t\xe9.flac" in tar_path.read_bytes()  # the raw non-UTF-8 bytes are in the tar
    rec = extract_tar_safely(tar_path, tmp_path / "dest")
    assert list(rec.refused) == list(names.items())
    assert tree(tmp_path / "dest") == {"ok/fine-\u00e9t\u00e9.flac": b"fine"}
    marker = json.loads((tmp_path / "dest" / EXTRACTED_MARKER).read_text())
    assert [tuple(item) for item in marker["refused"]] == list(names.items())


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
# Streams and md5 verification
# --------------------------------------------------------------------------------------------


class NonSeekable:
    """A read-only stream that cannot seek or tell, like an HTTP response body."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return self._inner.read(size)

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")


def tree(root: Path) -> dict[str, bytes]:
    """Relative POSIX name -> bytes of every file under `root` (the marker left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != EXTRACTED_MARKER
    }


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
def test_extract_from_non_seekable_stream(tmp_path: Path, compressed: bool) -> None:
    data = TINY_TAR.read_bytes()
    if compressed:
        data = gzip.compress(data, mtime=0)
    archive = tmp_path / "tiny.tar"
    archive.write_bytes(data)

    from_path = extract_tar_safely(archive, tmp_path / "from_path")
    stream = NonSeekable(data)
    from_stream = extract_tar_safely(stream, tmp_path / "from_stream", description="tiny stream")

    assert stream.reads > 0 and stream.read() == b""  # read to its end
    assert tree(tmp_path / "from_stream") == tree(tmp_path / "from_path")
    assert len(tree(tmp_path / "from_path")) == 9
    assert from_stream.md5 == from_path.md5 == md5(data)
    assert (from_stream.n_files, from_stream.n_bytes, from_stream.refused) == (
        from_path.n_files,
        from_path.n_bytes,
        from_path.refused,
    )
    marker = json.loads((tmp_path / "from_stream" / EXTRACTED_MARKER).read_text())
    assert marker["archive"] == "tiny stream" and marker["archive_size"] == len(data)
    assert marker["md5"] == md5(data)


def test_extract_stream_skips_when_marker_present(tmp_path: Path) -> None:
    first = extract_tar_safely(TINY_TAR, tmp_path / "dest")
    stream = NonSeekable(TINY_TAR.read_bytes())
    assert extract_tar_safely(stream, tmp_path / "dest") == first
    assert stream.reads == 0  # not even opened: a 3 TB body is not downloaded again


def test_extract_checks_expected_md5(tmp_path: Path) -> None:
    expected = TINY_MD5.read_text().split()[0]
    rec = extract_tar_safely(TINY_TAR, tmp_path / "dest", expected_md5=f" {expected.upper()}\n")
    assert rec.md5 == expected and is_extracted(tmp_path / "dest")


@pytest.mark.parametrize("source", ["path", "stream"])
def test_extract_md5_mismatch_leaves_nothing(tmp_path: Path, source: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = TINY_TAR if source == "path" else NonSeekable(TINY_TAR.read_bytes())
    wrong = "0" * 32
    what = str(TINY_TAR) if source == "path" else "the small subset"
    with pytest.raises(ChecksumMismatchError, match=re.escape(f"md5 mismatch for {what}")) as err:
        extract_tar_safely(
            archive,  # type: ignore[arg-type]
            work / "librilight",
            expected_md5=wrong,
            description=None if source == "path" else what,
        )
    assert err.value.expected == wrong and err.value.actual == md5(TINY_TAR.read_bytes())
    assert list(work.iterdir()) == []  # no dest, no temporary folder, no marker
    assert not is_extracted(work / "librilight")


def test_extract_does_not_trust_a_marker_with_another_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    first = extract_tar_safely(TINY_TAR, dest, source="https://a.example/tiny.tar")
    before = tree(dest)
    # The marker records the tiny tar's md5; a caller expecting another archive is neither
    # served the old extraction nor allowed to replace it: one line naming both, nothing read.
    with monkeypatch.context() as m:
        m.setattr(tarfile, "open", _no_read)
        with pytest.raises(ExtractionIdentityError) as err:
            extract_tar_safely(TINY_TAR, dest, expected_md5="f" * 32, source="https://b/tiny.tar")
        with pytest.raises(ExtractionIdentityError, match="not https://b/tiny.tar .md5 not given"):
            extract_tar_safely(TINY_TAR, dest, source="https://b/tiny.tar")  # no md5: the URL
    assert str(err.value) == (
        f"{dest} holds an extraction of https://a.example/tiny.tar (md5 {first.md5}), "
        f"not https://b/tiny.tar (md5 {'f' * 32}): use another root"
    )
    assert tree(dest) == before and siblings(tmp_path) == {"dest"}
    assert extract_tar_safely(TINY_TAR, dest, expected_md5=first.md5) == first
    # The same bytes from another URL (a mirror) are the same archive when the md5 says so.
    assert (
        extract_tar_safely(TINY_TAR, dest, expected_md5=first.md5, source="s3://m/t.tar") == first
    )


def test_check_reuse_names_both_archives(tmp_path: Path) -> None:
    dest = tmp_path / "librilight" / "small"
    check_reuse(dest, "https://a/small.tar", "0" * 32)  # nothing there yet
    done = extract_tar_safely(TINY_TAR, dest, source="https://a/small.tar")
    check_reuse(dest, "https://a/small.tar", done.md5.upper())  # the same archive
    check_reuse(dest, "https://a/small.tar", None)
    check_reuse(dest, "s3://mirror/small.tar", done.md5)  # the same bytes from a mirror
    with pytest.raises(ExtractionIdentityError, match=re.escape(f"(md5 {done.md5}), not https")):
        check_reuse(dest, "https://a/small.tar", "0" * 32)
    with pytest.raises(ExtractionIdentityError, match="not https://b/small.tar .md5 not given.:"):
        check_reuse(dest, "https://b/small.tar", None)
    with pytest.raises(CodecflowError, match="is not 32 hex digits: 'abc'"):
        check_reuse(dest, "https://a/small.tar", "abc")
    (dest / EXTRACTED_MARKER).write_text("{not json")  # unreadable: extracted again, not refused
    check_reuse(dest, "https://b/small.tar", "0" * 32)


def _no_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("the archive was read")


def test_extract_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match=r"expected md5 for .*tiny.* is not 32 hex digits"):
        extract_tar_safely(TINY_TAR, tmp_path / "dest", expected_md5="abc")
    with pytest.raises(CodecflowError, match="readable binary stream, not int"):
        extract_tar_safely(42, tmp_path / "dest")  # type: ignore[arg-type]
    with pytest.raises(CodecflowError, match="unsupported destination nosuchproto://x"):
        extract_tar_safely(TINY_TAR, "nosuchproto://x")
    assert not (tmp_path / "dest").exists()


def test_record_md5_defaults_for_hand_built_records() -> None:
    assert ExtractRecord(".", 0, 0, ()).md5 == ""


# --------------------------------------------------------------------------------------------
# Remote destinations (moto's S3 server on 127.0.0.1)
# --------------------------------------------------------------------------------------------


def objects(url: str) -> dict[str, bytes]:
    """Key (relative to `url`) -> bytes of every object under `url`."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    base = base.rstrip("/")
    return {path[len(base) + 1 :]: fs.cat_file(path) for path in fs.find(base)}


def test_extract_to_s3(tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec
    import s3fs

    local = extract_tar_safely(TINY_TAR, tmp_path / "local")
    url = f"{s3_bucket}/x/librilight"
    fs, _ = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    # A leftover of an interrupted run (no marker): overwritten.
    stale = "small/198/sense_and_sensibility_209/198-209-0000.txt"
    fs.pipe_file(f"{url}/{stale}", b"stale")
    assert not is_extracted(url)

    rec = extract_tar_safely(TINY_TAR, url + "/")
    assert rec.root == url
    assert (rec.n_files, rec.n_bytes, rec.refused, rec.md5) == (
        local.n_files,
        local.n_bytes,
        local.refused,
        local.md5,
    )
    written = objects(url)
    marker = json.loads(written.pop(EXTRACTED_MARKER))
    assert written == tree(tmp_path / "local")
    assert marker == json.loads((tmp_path / "local" / EXTRACTED_MARKER).read_text())
    assert set(objects(s3_bucket)) == {
        f"x/librilight/{key}" for key in [*written, EXTRACTED_MARKER]
    }
    assert is_extracted(url)

    # A second call finds the marker: the tar is not read and nothing is written.
    before = fs.info(f"{url}/{EXTRACTED_MARKER}")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("read or wrote again")

    async def boom_async(*args: object, **kwargs: object) -> None:
        raise AssertionError("wrote again")

    monkeypatch.setattr(tarfile, "open", boom)
    monkeypatch.setattr(s3fs.S3FileSystem, "_open", boom)
    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", boom_async)
    monkeypatch.setattr(s3fs.S3FileSystem, "_rm_file", boom_async)
    assert extract_tar_safely(TINY_TAR, url) == rec
    after = fs.info(f"{url}/{EXTRACTED_MARKER}")
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])


def test_extract_unsafe_tar_to_s3(tmp_path: Path, s3_bucket: str) -> None:
    import fsspec

    tar_path = tmp_path / "evil.tar"
    _write_evil_tar(tar_path)
    fs, _ = fsspec.core.url_to_fs(s3_bucket, skip_instance_cache=True)
    fs.pipe_file(f"{s3_bucket}/x/outside.txt", b"outside")  # the escaping hard link's target

    rec = extract_tar_safely(tar_path, f"{s3_bucket}/x/dest")
    expected = [*EVIL_REFUSED]
    expected.insert(
        EVIL_REFUSED.index(("tty", "special file (device or fifo)")) + 1,
        ("ok/link", "symlink (not supported on object stores)"),
    )
    assert list(rec.refused) == expected
    stored = objects(s3_bucket)
    marker = json.loads(stored.pop(f"x/dest/{EXTRACTED_MARKER}"))
    # Nothing outside the prefix, the hard link a copy of its target's bytes.
    assert stored == {
        "x/outside.txt": b"outside",
        "x/dest/ok/a.txt": b"hello",
        "x/dest/ok/run.sh": b"#!/bin/sh\n",
        "x/dest/ok/hard": b"hello",
    }
    assert rec.n_files == 3 and rec.n_bytes == 5 + 10
    assert [tuple(item) for item in marker["refused"]] == expected


@pytest.mark.parametrize("case", list(_truncations()))
def test_extract_corrupt_tar_to_s3(tmp_path: Path, s3_bucket: str, case: str) -> None:
    tar_path = tmp_path / "broken.tar"
    tar_path.write_bytes(_truncations()[case])
    url = f"{s3_bucket}/x/librilight"
    with pytest.raises(CorruptArchiveError, match=re.escape(f"corrupt archive {tar_path}")):
        extract_tar_safely(tar_path, url)
    assert objects(s3_bucket) == {}  # every object written before the failure deleted
    assert not is_extracted(url)


def test_extract_failure_on_s3_keeps_objects_it_did_not_write(
    tmp_path: Path, s3_bucket: str
) -> None:
    import fsspec

    url = f"{s3_bucket}/x/librilight"
    fs, _ = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    fs.pipe_file(f"{url}/notes.txt", b"someone else's")
    stream = NonSeekable(_truncations()["no-end-marker"])
    with pytest.raises(CorruptArchiveError, match="corrupt archive tiny body"):
        extract_tar_safely(stream, url, description="tiny body")
    assert objects(s3_bucket) == {"x/librilight/notes.txt": b"someone else's"}


def test_extract_md5_mismatch_on_s3_leaves_nothing(s3_bucket: str) -> None:
    url = f"{s3_bucket}/x/librilight"
    with pytest.raises(ChecksumMismatchError, match="md5 mismatch for the tiny body"):
        extract_tar_safely(
            NonSeekable(TINY_TAR.read_bytes()),
            url,
            expected_md5="0" * 32,
            description="the tiny body",
        )
    assert objects(s3_bucket) == {} and not is_extracted(url)


@pytest.mark.parametrize("truncated", [False, True], ids=["complete", "truncated"])
def test_extract_big_member_to_s3_multipart(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, truncated: bool
) -> None:
    import fsspec
    import s3fs

    # 5 MiB blocks (S3's minimum part size): a 12 MiB member goes up as a multipart upload,
    # never held whole in memory; a failure mid-member aborts the upload.
    monkeypatch.setattr(s3fs.S3FileSystem, "default_block_size", 5 * 2**20)
    big = random.Random(7).randbytes(12 * 2**20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "big.bin", data=big)
    data = buf.getvalue()
    if truncated:
        data = data[: 11 * 2**20]
    url = f"{s3_bucket}/x/big"
    if truncated:
        with pytest.raises(CorruptArchiveError, match="corrupt archive big"):
            extract_tar_safely(NonSeekable(data), url, description="big")
        assert objects(s3_bucket) == {}
    else:
        rec = extract_tar_safely(NonSeekable(data), url, description="big")
        assert rec.n_bytes == len(big) and objects(url)["big.bin"] == big
    fs, bucket = fsspec.core.url_to_fs(s3_bucket, skip_instance_cache=True)
    assert fs.list_multipart_uploads(bucket) == []  # none left open (and billed)


# --------------------------------------------------------------------------------------------
# Temporaries of a killed extraction
# --------------------------------------------------------------------------------------------

_CHILD = "import sys; from codecflow.tasks.acquire.extract import extract_tar_safely as x; x(sys.stdin.buffer.raw, sys.argv[1])"


def _killed_extraction(dest: Path) -> Path:
    """Kill (SIGKILL) an extraction of the tiny tar into `dest` half-way; its temporary folder."""
    data = TINY_TAR.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(dest)], stdin=subprocess.PIPE, cwd=REPO
    )
    assert child.stdin is not None
    child.stdin.write(data[: len(data) // 2])
    child.stdin.flush()
    deadline = time.monotonic() + 120
    try:
        while not (
            leftovers := [
                p for p in dest.parent.glob(f".{dest.name}.*.tmp") if any(p.rglob("*.flac"))
            ]
        ):
            assert time.monotonic() < deadline and child.poll() is None, "no extraction started"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    (leftover,) = leftovers
    return leftover


def test_extract_sweeps_only_its_own_temporaries(tmp_path: Path) -> None:
    dest = tmp_path / "small"
    leftover = _killed_extraction(dest)
    assert not dest.exists() and re.fullmatch(r"\.small\.[a-z0-9_]{8}\.tmp", leftover.name)
    old = tmp_path / ".small.old"  # what a kill between atomic_dir's two renames leaves
    old.mkdir()
    (old / "x.flac").write_bytes(b"old")
    # Not ours, or not this destination's: kept, whatever they hold.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.flac").write_bytes(b"keep")
    kept = {
        ".small.notes.tmp": "folder",  # not 8 random characters
        ".small.abcdefghi.tmp": "folder",  # 9
        ".small.ABCD1234.tmp": "folder",  # not mkdtemp's alphabet
        ".small.abcd1234.tmp.bak": "folder",
        ".other.abcd1234.tmp": "folder",  # another destination's
        ".small.wxyz6789.tmp": "file",  # a file, not an extraction folder
        ".small.link_123.tmp": "link",  # a link (to a folder of the user's), not followed
        "small.tar.part": "file",  # a download being resumed
        ".small.tar.part": "file",
    }
    for name, kind in kept.items():
        if kind == "folder":
            (tmp_path / name).mkdir()
            (tmp_path / name / "mine.txt").write_text("user")
        elif kind == "file":
            (tmp_path / name).write_text("user")
        else:
            (tmp_path / name).symlink_to(outside)

    rec = extract_tar_safely(TINY_TAR, dest)

    assert rec.n_files == 9 and is_extracted(dest)
    assert siblings(tmp_path) == {"small", "outside", *kept}  # the leftover and .old are gone
    assert (outside / "keep.flac").read_bytes() == b"keep"
    for name, kind in kept.items():
        path = tmp_path / name
        assert (path / "mine.txt").read_text() if kind == "folder" else path.exists()
