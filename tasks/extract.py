"""Safe streaming extraction of tar archives (Python's tarfile `data` filter semantics, PEP 706).

`extract_tar_safely` reads an archive once, front to back, from a local path or from any readable
binary stream (an HTTP body included: a 3 TB Libri-Light tar is never stored), and writes its
members to a local folder or under any fsspec URL (`s3://bucket/prefix/...`). Unsafe members are
refused and listed with their reason; the md5 of the bytes read is computed on the way and
checked at the end; nothing is left behind when the archive is corrupt, truncated or has the wrong
md5. The marker `.extracted.json`, written last, means the extraction completed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import posixpath
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from tasks.errors import (
    ChecksumMismatchError,
    CodecflowError,
    CorruptArchiveError,
)
from tasks.io import atomic_dir, atomic_write_json

__all__ = ["EXTRACTED_MARKER", "ExtractRecord", "extract_tar_safely", "is_extracted"]

#: Written last inside an extracted folder (or prefix): its presence means the extraction completed.
EXTRACTED_MARKER = ".extracted.json"

#: Read size from the archive and copy size per member: 1 MiB keeps Python's per-call overhead
#: small on multi-terabyte archives (tarfile's default is one 10 KiB record per read).
_CHUNK = 1 << 20

_SYMLINK_REMOTE = "symlink (not supported on object stores)"


@dataclass(frozen=True)
class ExtractRecord:
    """An extracted archive: its root, what was written, the refused members, the archive's md5."""

    root: str  # the destination: a local absolute path, or the URL as given (no trailing "/")
    n_files: int  # non-directory members written (regular files and in-root links)
    n_bytes: int  # sum of the sizes of the regular files written
    refused: tuple[tuple[str, str], ...]  # (member name, reason), in archive order
    # A default, so that records built by hand (or unpickled from a cache written before this
    # field existed) stay valid; every record extract_tar_safely returns carries the real md5.
    md5: str = ""  # hex md5 of the archive's bytes as read (compressed bytes for a .tar.gz)


# --------------------------------------------------------------------------------------------
# The archive: hashed, counted, and read in large chunks
# --------------------------------------------------------------------------------------------


class _HashingReader:
    """A read-only file object that hashes (md5) and counts every byte read.

    It exposes `read` only, so tarfile's stream mode never tries to seek: a non-seekable source
    (an HTTP body) works like a file.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.md5 = hashlib.md5()
        self.n_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecflowError(f"archive stream returned {type(data).__name__}, not bytes")
        self.md5.update(data)
        self.n_bytes += len(data)
        return bytes(data)

    def drain(self) -> None:
        """Read (and hash) what follows the end-of-archive marker: the md5 covers every byte."""
        while self.read(_CHUNK):
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
        return cast(bytes, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _end_problem(block: bytes) -> str:
    """Why the block that ended the iteration is not an end-of-archive marker."""
    if not block:
        return "unexpected end of data (no end-of-archive marker)"
    if len(block) < tarfile.BLOCKSIZE:
        return "truncated header"
    return "invalid header"


# --------------------------------------------------------------------------------------------
# Which members are extracted (PEP 706 `data` filter, plus stricter rules)
# --------------------------------------------------------------------------------------------

# PEP 706 filter errors -> the short reason listed in ExtractRecord.refused.
_FILTER_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (tarfile.AbsolutePathError, "absolute path"),
    (tarfile.OutsideDestinationError, "path outside the destination"),
    (tarfile.SpecialFileError, "special file (device or fifo)"),
    (tarfile.AbsoluteLinkError, "link to an absolute path"),
    (tarfile.LinkOutsideDestinationError, "link outside the destination"),
)


def _refusal(
    member: tarfile.TarInfo, filter_root: str, has_file: Callable[[str], bool]
) -> tuple[tarfile.TarInfo | None, str]:
    """(safe member, "") to extract, or (None, reason) to refuse.

    Python's `data` filter (PEP 706, `tarfile.data_filter`) decides, with stricter rules first:
    an absolute name is refused (the filter would strip the leading "/" and extract it), and so
    is any ".." component, even one that stays inside the root (Libri-Light's tars have none;
    such names are a sign of a crafted archive). `filter_root` is the local folder the filter
    resolves names against; `has_file(linkname)` says whether a hard link's target was written.
    """
    name = member.name
    if name.startswith(("/", os.sep)) or os.path.isabs(name):
        return None, "absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return None, "'..' component"
    if parts == (EXTRACTED_MARKER,):
        return None, "reserved name"
    if not parts and not member.isdir():
        return None, "empty name"  # "." or "./" as a file: it would be the root itself
    try:
        safe = tarfile.data_filter(member, filter_root)
    except tarfile.FilterError as err:
        for kind, reason in _FILTER_REASONS:
            if isinstance(err, kind):
                return None, reason
        return None, str(err)
    if safe.islnk() and not has_file(safe.linkname):
        # tarfile would look the target up among the members already read, which a stream
        # cannot seek back to; only link to a file that was extracted.
        return None, "hard link to a file that was not extracted"
    return safe, ""


def _key(name: str) -> str:
    """A member name as a relative POSIX key: "./a//b" -> "a/b" (".." was refused before)."""
    key = posixpath.normpath(name) if name else "."
    return "" if key == "." else key


# --------------------------------------------------------------------------------------------
# Where members go: a local temporary folder, or objects under a URL
# --------------------------------------------------------------------------------------------


class _Sink(Protocol):
    filter_root: str

    def has_file(self, linkname: str) -> bool: ...

    def unsupported(self, member: tarfile.TarInfo) -> str: ...

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None: ...


class _LocalSink:
    """Members extracted by tarfile itself into a (temporary) local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filter_root = os.fspath(root)

    def has_file(self, linkname: str) -> bool:
        return (self.root / linkname).is_file()

    def unsupported(self, member: tarfile.TarInfo) -> str:
        return ""

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        # Already filtered: "fully_trusted" only stops tarfile from filtering again.
        tar.extract(member, self.filter_root, filter="fully_trusted")


def _abandon(f: Any) -> None:
    """Close a file opened for writing WITHOUT committing it.

    fsspec's buffered files commit on close() (so also on `with` exit after an error): s3fs
    would PUT the partial member, or complete its multipart upload. discard() aborts the upload;
    marking the file closed stops close()/__del__ from flushing it afterwards.
    """
    with contextlib.suppress(Exception):
        f.discard()
    if isinstance(f, AbstractBufferedFile):
        f.closed = True
    else:
        with contextlib.suppress(Exception):
            f.close()


class _RemoteSink:
    """Members written as objects under `base` on an fsspec filesystem (an object store).

    Object stores have no folders, no rename and no links: folders are implied by keys, each
    regular file is one object streamed in chunks (s3fs keeps at most one block in memory and
    sends a single PUT for a small file, a multipart upload for a large one), a hard link is a
    copy of an object already written, and symlinks are refused.
    """

    def __init__(self, fs: AbstractFileSystem, base: str, filter_root: str) -> None:
        self.fs = fs
        self.base = base
        # The data filter resolves names with os.path.realpath against a local folder; an empty
        # private one makes that resolution purely lexical, as keys are.
        self.filter_root = filter_root
        self.files: set[str] = set()  # keys written as files by this call (hard link targets)
        self.written: dict[str, None] = {}  # full paths written by this call, in order

    def path(self, key: str) -> str:
        return f"{self.base}/{key}"

    def has_file(self, linkname: str) -> bool:
        return _key(linkname) in self.files

    def unsupported(self, member: tarfile.TarInfo) -> str:
        if member.issym():
            return _SYMLINK_REMOTE
        if not (member.isreg() or member.islnk() or member.isdir()):
            return "unsupported member type"
        return ""

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.isdir():
            return  # implied by the keys of the files below it
        key = _key(member.name)
        path = self.path(key)
        # Listed before the first byte goes out: a failure mid-member still gets it deleted.
        self.written[path] = None
        if member.islnk():
            self.fs.cp_file(self.path(_key(member.linkname)), path)
        else:
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isreg() members always have data
                raise CorruptArchiveError(f"no data for member {member.name}")
            f = self.fs.open(path, "wb")
            try:
                while chunk := source.read(_CHUNK):
                    f.write(chunk)
            except BaseException:
                _abandon(f)
                raise
            f.close()
        self.files.add(key)

    def remove_written(self) -> list[str]:
        """Delete every object this call wrote; the paths that could not be deleted."""
        paths = list(self.written)
        if not paths:
            return []
        try:
            self.fs.rm(paths)  # s3fs: bulk DeleteObjects, 1000 keys a request
            return []
        except Exception:
            failed = []
            for path in paths:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass  # never committed (the member that failed)
                except Exception:
                    failed.append(path)
            return failed


# --------------------------------------------------------------------------------------------
# The destination: a local folder or an fsspec URL
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dest:
    root: str  # what ExtractRecord.root reports
    local: Path | None  # set for a local folder
    fs: AbstractFileSystem | None = None  # set for a remote URL, with base
    base: str = ""

    @property
    def marker_path(self) -> str:
        return f"{self.base}/{EXTRACTED_MARKER}"


def _resolve_dest(dest: str | os.PathLike[str]) -> _Dest:
    """A local folder for a path (or a file:// URL), else the fsspec filesystem of the URL."""
    text = os.fspath(dest)
    if not isinstance(dest, os.PathLike) and "://" in text:
        try:
            # A fresh client: a cached one may point at another endpoint (tests, moto).
            fs, base = fsspec.core.url_to_fs(text, skip_instance_cache=True)
        except (ImportError, ValueError) as err:
            raise CodecflowError(f"unsupported destination {text}: {err}") from None
        if not isinstance(fs, LocalFileSystem):
            base = base.rstrip("/")
            return _Dest(root=text.rstrip("/"), local=None, fs=fs, base=base)
        text = base
    if not text:
        raise CodecflowError("extraction destination is empty")
    local = Path(os.path.abspath(text))
    return _Dest(root=str(local), local=local)


def _read_marker(dest: _Dest) -> dict[str, Any] | None:
    """The marker's JSON; None when there is none or it is unreadable (extract again).

    A remote error other than "not found" (credentials, network) propagates: it does not mean
    "not extracted", and extracting again would overwrite a good prefix for nothing.
    """
    try:
        if dest.local is not None:
            raw = (dest.local / EXTRACTED_MARKER).read_bytes()
        else:
            assert dest.fs is not None
            raw = dest.fs.cat_file(dest.marker_path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError:
        if dest.local is not None:
            return None
        raise
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _marker_md5(marker: Mapping[str, Any]) -> str:
    # "tar_md5": markers written before md5 verification existed.
    return str(marker["md5"] if "md5" in marker else marker["tar_md5"])


def _marker_size(marker: Mapping[str, Any]) -> Any:
    return marker.get("archive_size", marker.get("tar_size"))


def _record_from_marker(dest: _Dest, marker: Mapping[str, Any]) -> ExtractRecord:
    return ExtractRecord(
        root=dest.root,
        n_files=int(marker["n_files"]),
        n_bytes=int(marker["n_bytes"]),
        refused=tuple((str(name), str(reason)) for name, reason in marker["refused"]),
        md5=_marker_md5(marker),
    )


def is_extracted(dest: str | Path) -> bool:
    """Whether `dest` (a local folder or an fsspec URL) holds a completed extraction's marker."""
    where = _resolve_dest(dest)
    if where.local is not None:
        return (where.local / EXTRACTED_MARKER).is_file()
    assert where.fs is not None
    return bool(where.fs.isfile(where.marker_path))


# --------------------------------------------------------------------------------------------
# extract_tar_safely
# --------------------------------------------------------------------------------------------

_MD5_RE = re.compile(r"[0-9a-f]{32}")


def _stream_name(stream: Any) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) and name else "<archive stream>"


@dataclass
class _Result:
    n_files: int
    n_bytes: int
    refused: list[tuple[str, str]]
    md5: str
    size: int


def _extract_members(raw: BinaryIO, what: str, sink: _Sink) -> _Result:
    """Stream every member of the archive `raw` into `sink`; counts, refusals and the md5.

    Raises CorruptArchiveError when the archive cannot be read to its end-of-archive marker.
    """
    reader = _HashingReader(raw)
    refused: list[tuple[str, str]] = []
    n_files = n_bytes = 0
    try:
        with tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|*", bufsize=_CHUNK) as tar:
            # Local extraction's copy size (an attribute since 3.8; typeshed does not list it).
            tar.copybufsize = _CHUNK  # type: ignore[attr-defined]
            spy = _LastReadSpy(tar.fileobj)
            tar.fileobj = spy
            for member in tar:
                safe, reason = _refusal(member, sink.filter_root, sink.has_file)
                if safe is not None:
                    reason = sink.unsupported(safe)
                if safe is None or reason:
                    refused.append((member.name, reason))
                    continue
                sink.write(tar, safe)
                if not safe.isdir():
                    n_files += 1
                if safe.isreg():
                    n_bytes += safe.size
            if spy.last is not None and spy.last != bytes(tarfile.BLOCKSIZE):
                raise tarfile.ReadError(_end_problem(spy.last))
        reader.drain()
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise CorruptArchiveError(f"corrupt archive {what}: {err}") from None
    return _Result(n_files, n_bytes, refused, reader.md5.hexdigest(), reader.n_bytes)


def _check_md5(what: str, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected:
        raise ChecksumMismatchError(what, "md5", expected, actual)


def _marker_json(what: str, result: _Result) -> dict[str, Any]:
    return {
        "archive": what,
        "archive_size": result.size,
        "md5": result.md5,
        "n_files": result.n_files,
        "n_bytes": result.n_bytes,
        "refused": [list(item) for item in result.refused],
    }


@contextlib.contextmanager
def _opened(path: Path | None, stream: BinaryIO | None) -> Iterator[BinaryIO]:
    """The archive's bytes: a path is opened (and closed) here; a stream stays the caller's."""
    if path is not None:
        with open(path, "rb") as f:
            yield f
    else:
        assert stream is not None
        yield stream


def extract_tar_safely(
    archive: Path | str | BinaryIO,
    dest: str | Path,
    *,
    expected_md5: str | None = None,
    description: str | None = None,
) -> ExtractRecord:
    """Extract a (possibly compressed) tar into `dest`, refusing unsafe members.

    `archive` is a local path or a readable binary stream, seekable or not: it is read once,
    front to back (tarfile's stream mode, `r|*`), and its md5 computed on the way. `dest` is a
    local folder or an fsspec URL (`s3://bucket/prefix/librilight`).

    Members are filtered with the semantics of Python's tarfile `data` filter (PEP 706):
    absolute paths, `..` components, links (symbolic or hard) that leave the root, and
    device/fifo files are refused, skipped, and listed in `refused` with their reason; regular
    files and folders get safe modes and no ownership. On a remote `dest` symlinks are refused
    too, and an in-root hard link is written as a copy of its (already written) target.

    A local `dest` is written as a temporary folder beside it, renamed to `dest` at the end. A
    remote one (object stores cannot rename) gets each member's object directly, and every
    object written by this call is deleted on failure. Either way the marker `.extracted.json`
    (md5, archive size, counts, refusals) is written last, and a call that finds it skips the
    work: always for a stream, for a path when the tar's size matches (or the tar was deleted),
    and never when `expected_md5` differs from the md5 it records.

    `description` names the archive in errors (default: the path, or the stream's name).

    Raises CorruptArchiveError for a truncated or corrupt archive and ChecksumMismatchError when
    the md5 differs from `expected_md5`, leaving nothing extracted and no marker.
    """
    path: Path | None = None
    stream: BinaryIO | None = None
    if isinstance(archive, str | os.PathLike):
        path = Path(archive)
    elif callable(getattr(archive, "read", None)):
        stream = archive
    else:
        raise CodecflowError(
            f"archive must be a path or a readable binary stream, not {type(archive).__name__}"
        )
    what = description or (str(path) if path is not None else _stream_name(stream))
    expected = None
    if expected_md5 is not None:
        expected = expected_md5.strip().lower()
        if not _MD5_RE.fullmatch(expected):
            raise CodecflowError(f"expected md5 for {what} is not 32 hex digits: {expected_md5!r}")

    where = _resolve_dest(dest)
    marker = _read_marker(where)
    if marker is not None:
        # The size check is cheap; hashing a 35 GB tar on every call would not be. A missing tar
        # (deleted to save space after extraction) does not invalidate the extraction.
        same_size = path is None or not path.exists() or path.stat().st_size == _marker_size(marker)
        try:
            record = _record_from_marker(where, marker)
        except (KeyError, TypeError, ValueError):
            record = None  # an unreadable marker: extract again
        if record is not None and same_size and expected in (None, record.md5):
            return record
    if path is not None and not path.is_file():
        raise CodecflowError(f"archive not found: {path}")

    with _opened(path, stream) as raw:
        if where.local is not None:
            with atomic_dir(where.local) as tmp:
                result = _extract_members(raw, what, _LocalSink(tmp))
                _check_md5(what, expected, result.md5)
                atomic_write_json(tmp / EXTRACTED_MARKER, _marker_json(what, result))
        else:
            result = _extract_remote(raw, what, where, expected)
    return ExtractRecord(
        where.root, result.n_files, result.n_bytes, tuple(result.refused), result.md5
    )


def _extract_remote(raw: BinaryIO, what: str, where: _Dest, expected: str | None) -> _Result:
    """Objects written straight under `where`, the marker last; all of them deleted on failure."""
    fs = where.fs
    assert fs is not None
    # A stale marker (another archive, an unreadable one) must go before the first write: a
    # failure below would otherwise leave a marker over a half-written prefix.
    if fs.exists(where.marker_path):
        fs.rm_file(where.marker_path)
    with tempfile.TemporaryDirectory(prefix="codecflow-extract-") as filter_root:
        sink = _RemoteSink(fs, where.base, filter_root)
        try:
            result = _extract_members(raw, what, sink)
            _check_md5(what, expected, result.md5)
            data = json.dumps(_marker_json(what, result), indent=2, sort_keys=True) + "\n"
            fs.pipe_file(where.marker_path, data.encode())
        except BaseException as err:
            failed = sink.remove_written()
            if failed:
                err.add_note(f"could not delete {len(failed)} objects under {where.root}")
            raise
    return result
