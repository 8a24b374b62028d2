"""Safe streaming extraction of tar archives (Python's tarfile `data` filter semantics, PEP 706).

`extract_tar_safely` reads an archive once, front to back, from a local path or from any readable
binary stream (an HTTP body included: a 3 TB Libri-Light tar is never stored), and writes its
members to a local folder or under any fsspec URL (`s3://bucket/prefix/...`). Unsafe members are
refused and listed with their reason (tarfile only reads and checks: the files are written here,
never through a link); the md5 of the bytes read is computed on the way and checked at the end;
nothing is left behind when the archive is corrupt, truncated or has the wrong md5. The marker
`.extracted.json`, written last, means the extraction completed and says of which archive (md5,
source URL): another archive is never extracted over it nor served from it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
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

__all__ = [
    "EXTRACTED_MARKER",
    "ExtractRecord",
    "ExtractionIdentityError",
    "check_reuse",
    "extract_tar_safely",
    "is_extracted",
]

_LOG = logging.getLogger(__name__)

#: Written last inside an extracted folder (or prefix): its presence means the extraction completed.
EXTRACTED_MARKER = ".extracted.json"

#: Read size from the archive and copy size per member: 1 MiB keeps Python's per-call overhead
#: small on multi-terabyte archives (tarfile's default is one 10 KiB record per read).
_CHUNK = 1 << 20

_SYMLINK_REMOTE = "symlink (not supported on object stores)"
_SYMLINK_LOCAL = "symlink (not extracted)"
_HARDLINK_LOCAL = "hard link (not extracted)"

#: Modes of what the local sink creates, passed to os.open/os.mkdir so the umask still applies.
_FILE_MODE = 0o644
_FOLDER_MODE = 0o755
#: A new file, never an existing one, never through a link (O_NOFOLLOW: the last component).
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ExtractionIdentityError(CodecflowError):
    """A destination holds a completed extraction of another archive (another md5 or source)."""


@dataclass(frozen=True)
class ExtractRecord:
    """An extracted archive: its root, what was written, the refused members, the archive's md5."""

    root: str  # the destination: a local absolute path, or the URL as given (no trailing "/")
    n_files: int  # regular files written (and, on an object store, copies for in-root hard links)
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


def _name_problem(name: str) -> str:
    """Why a member name is refused before any path rule, or "".

    tarfile decodes names that are not valid UTF-8 with `surrogateescape` (each bad byte becomes
    a lone surrogate), and a name may hold control characters (a newline, an escape sequence):
    neither is a Libri-Light name, and either would corrupt a listing, a log line or a terminal.
    """
    if any("\ud800" <= ch <= "\udfff" for ch in name):
        return "name is not valid UTF-8"
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in name):
        return "control character in name"
    return ""


def _refusal(member: tarfile.TarInfo, filter_root: str) -> tuple[tarfile.TarInfo | None, str]:
    """(safe member, "") to extract, or (None, reason) to refuse.

    Python's `data` filter (PEP 706, `tarfile.data_filter`) decides, with stricter rules first:
    a name that is not UTF-8 or holds a control character is refused, an absolute name is
    refused (the filter would strip the leading "/" and extract it), and so is any ".."
    component, even one that stays inside the root (Libri-Light's tars have none; such names are
    a sign of a crafted archive). `filter_root` is the local folder the filter resolves names
    against. The filter is a check only: no member is ever written by tarfile (see _LocalSink).
    """
    name = member.name
    problem = _name_problem(name)
    if problem:
        return None, problem
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

    def unsupported(self, member: tarfile.TarInfo) -> str: ...

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str: ...


class _LocalSink:
    """Folders and regular files written by this module into a fresh local (temporary) folder.

    tarfile never writes here: its `data` filter checks names with os.path.realpath, which a
    chain of symlinks longer than PATH_MAX defeats on unpatched Pythons (CVE-2025-4517), and its
    extraction then writes a later member through the planted link. So no link is ever created
    (symlinks and hard links are refused; Libri-Light has none), every folder is made with
    os.mkdir and checked with os.lstat to be a real folder, and every file is opened with
    O_EXCL | O_NOFOLLOW: no write can follow a link, whatever tarfile's checks conclude. Modes
    are 0644 for files and 0755 for folders, less the umask; the archive's modes are ignored.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filter_root = os.fspath(root)
        self._folders: set[str] = {""}  # keys of the folders created (or found) and checked

    def unsupported(self, member: tarfile.TarInfo) -> str:
        if member.issym():
            return _SYMLINK_LOCAL
        if member.islnk():
            return _HARDLINK_LOCAL
        if not (member.isreg() or member.isdir()):
            return "unsupported member type"
        return ""

    def _folder(self, key: str) -> str:
        """Make the folder `key` and those above it; "" or why one of them is not a folder."""
        done = ""
        for part in key.split("/") if key else ():
            done = f"{done}/{part}" if done else part
            if done in self._folders:
                continue
            path = self.root / done
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, _FOLDER_MODE)
            if not stat.S_ISDIR(os.lstat(path).st_mode):  # a file of that name (never a link)
                return f"{done} is not a folder (not extracted)"
            self._folders.add(done)
        return ""

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
        try:
            return self._write(tar, member)
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:  # a crafted name, not a failing disk
                return "name too long (not extracted)"
            raise

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
        key = _key(member.name)
        if member.isdir():
            return self._folder(key)
        problem = self._folder(posixpath.dirname(key))
        if problem:
            return problem
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise CorruptArchiveError(f"no data for member {member.name}")
        try:
            fd = os.open(self.root / key, _CREATE_FLAGS, _FILE_MODE)
        except FileExistsError:
            return "duplicate name (not extracted)"  # a file or folder of this name came first
        with open(fd, "wb", closefd=True) as f:
            while chunk := source.read(_CHUNK):
                f.write(chunk)
            f.flush()
            # The archive's mtime, as tarfile sets it: a re-extraction keeps the listing's stamps,
            # so the probes stay cache hits.
            with contextlib.suppress(OverflowError, ValueError, OSError):
                os.utime(f.fileno(), (member.mtime, member.mtime))
        return ""


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

    def unsupported(self, member: tarfile.TarInfo) -> str:
        if member.issym():
            return _SYMLINK_REMOTE
        if member.islnk() and _key(member.linkname) not in self.files:
            # tarfile would look the target up among the members already read, which a stream
            # cannot seek back to; only link to a file that was written.
            return "hard link to a file that was not extracted"
        if not (member.isreg() or member.islnk() or member.isdir()):
            return "unsupported member type"
        return ""

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
        if member.isdir():
            return ""  # implied by the keys of the files below it
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
        return ""

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
            spy = _LastReadSpy(tar.fileobj)
            tar.fileobj = spy
            for member in tar:
                safe, reason = _refusal(member, sink.filter_root)
                if safe is not None:
                    reason = sink.unsupported(safe) or sink.write(tar, safe)
                if safe is None or reason:
                    refused.append((member.name, reason))
                    continue
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


#: What atomic_dir leaves beside `<name>` when killed: `.<name>.<8 random chars>.tmp` (mkdtemp's
#: alphabet) and `.<name>.old`. Only these exact names are ours to remove.
_TEMP_NAME = r"\.{name}\.(?:[a-z0-9_]{{8}}\.tmp|old)"


def _sweep_temporaries(dest: Path) -> list[Path]:
    """Remove the temporary folders a killed extraction of `dest` left beside it; those removed.

    Called at the start of an extraction, when the run owns its root (no other extraction of
    `dest` is running). Only folders named as atomic_dir names them go: a file, a link, or any
    other name (a user's `.small.notes.tmp`, a download's `.part`) is never touched.
    """
    pattern = re.compile(_TEMP_NAME.format(name=re.escape(dest.name)))
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
            _LOG.info("removed %s, left by an extraction that did not finish", entry.path)
            removed.append(Path(entry.path))
    return removed


def _check_md5(what: str, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected:
        raise ChecksumMismatchError(what, "md5", expected, actual)


def _marker_json(what: str, source: str | None, result: _Result) -> dict[str, Any]:
    return {
        "archive": what,
        "source": source,
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


def _identity_error(
    where: _Dest, marker: Mapping[str, Any], source: str | None, expected: str | None, what: str
) -> ExtractionIdentityError | None:
    """The error for an extraction of another archive at `where`, or None when it is this one.

    The md5 is the identity when one is expected (the same bytes from a mirror are the same
    archive); without one, the source URL recorded in the marker must be `source`.
    """
    recorded_md5 = str(marker.get("md5", marker.get("tar_md5", "")))
    recorded_source = marker.get("source")
    if expected is not None:
        if expected == recorded_md5:
            return None
    elif source is None or not isinstance(recorded_source, str) or recorded_source == source:
        return None
    old = recorded_source if isinstance(recorded_source, str) else marker.get("archive", "?")
    return ExtractionIdentityError(
        f"{where.root} holds an extraction of {old} (md5 {recorded_md5 or 'unknown'}), "
        f"not {source or what} (md5 {expected or 'not given'}): use another root"
    )


def check_reuse(dest: str | Path, source: str | None, expected_md5: str | None) -> None:
    """Raise ExtractionIdentityError when `dest` holds a completed extraction of another archive.

    "Another" means: `expected_md5` (when given) differs from the md5 the marker records, or (when
    no md5 is given) the marker records another source URL. Nothing there, or an unreadable
    marker (extracted again anyway), passes.
    """
    expected = expected_md5.strip().lower() if expected_md5 is not None else None
    if expected is not None and not _MD5_RE.fullmatch(expected):
        raise CodecflowError(f"expected md5 for {source} is not 32 hex digits: {expected_md5!r}")
    where = _resolve_dest(dest)
    marker = _read_marker(where)
    if marker is None:
        return
    try:
        _record_from_marker(where, marker)
    except (KeyError, TypeError, ValueError):
        return  # unreadable: extract_tar_safely extracts again, as for no marker
    error = _identity_error(where, marker, source, expected, source or "this archive")
    if error is not None:
        raise error


def _reusable(
    where: _Dest,
    path: Path | None,
    expected: str | None,
    source: str | None,
    what: str,
) -> ExtractRecord | None:
    """The record of the completed extraction at `where` when it is this archive's, else None.

    Raises ExtractionIdentityError when it is another archive's: that folder is never replaced.
    """
    marker = _read_marker(where)
    if marker is None:
        return None
    try:
        record = _record_from_marker(where, marker)
    except (KeyError, TypeError, ValueError):
        return None  # an unreadable marker: extract again
    error = _identity_error(where, marker, source, expected, what)
    if error is not None:
        raise error
    # The size check is cheap; hashing a 35 GB tar on every call would not be. A missing tar
    # (deleted to save space after extraction) does not invalidate the extraction.
    same_size = path is None or not path.exists() or path.stat().st_size == _marker_size(marker)
    return record if same_size else None


def extract_tar_safely(
    archive: Path | str | BinaryIO,
    dest: str | Path,
    *,
    expected_md5: str | None = None,
    description: str | None = None,
    source: str | None = None,
) -> ExtractRecord:
    """Extract a (possibly compressed) tar into `dest`, refusing unsafe members.

    `archive` is a local path or a readable binary stream, seekable or not: it is read once,
    front to back (tarfile's stream mode, `r|*`), and its md5 computed on the way. `dest` is a
    local folder or an fsspec URL (`s3://bucket/prefix/librilight`).

    Members are filtered with the semantics of Python's tarfile `data` filter (PEP 706) and
    stricter rules: names that are not UTF-8 or hold control characters, absolute paths, `..`
    components, links that leave the root, and device/fifo files are refused, skipped, and
    listed in `refused` with their reason. On a local `dest` every symlink and hard link is
    refused too and only folders and regular files are written (by this module, never through a
    link: see _LocalSink); on a remote one symlinks are refused and an in-root hard link is
    written as a copy of its (already written) target.

    A local `dest` is written as a temporary folder beside it, renamed to `dest` at the end; the
    temporaries a killed extraction of `dest` left are removed first. A remote one (object
    stores cannot rename) gets each member's object directly, and every object written by this
    call is deleted on failure. Either way the marker `.extracted.json` (source, md5, archive
    size, counts, refusals) is written last, and a call that finds it skips the work: always for
    a stream, for a path when the tar's size matches (or the tar was deleted). A marker of
    another archive (another md5 than `expected_md5`, or without one another `source`) raises
    ExtractionIdentityError and the folder is kept.

    `description` names the archive in errors (default: the path, or the stream's name);
    `source` (the URL it came from) is recorded in the marker.

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
    reused = _reusable(where, path, expected, source, what)
    if reused is not None:
        return reused
    if path is not None and not path.is_file():
        raise CodecflowError(f"archive not found: {path}")

    with _opened(path, stream) as raw:
        if where.local is not None:
            _sweep_temporaries(where.local)
            with atomic_dir(where.local) as tmp:
                result = _extract_members(raw, what, _LocalSink(tmp))
                _check_md5(what, expected, result.md5)
                atomic_write_json(tmp / EXTRACTED_MARKER, _marker_json(what, source, result))
        else:
            result = _extract_remote(raw, what, source, where, expected)
    return ExtractRecord(
        where.root, result.n_files, result.n_bytes, tuple(result.refused), result.md5
    )


def _extract_remote(
    raw: BinaryIO, what: str, source: str | None, where: _Dest, expected: str | None
) -> _Result:
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
            data = json.dumps(_marker_json(what, source, result), indent=2, sort_keys=True) + "\n"
            fs.pipe_file(where.marker_path, data.encode())
        except BaseException as err:
            failed = sink.remove_written()
            if failed:
                err.add_note(f"could not delete {len(failed)} objects under {where.root}")
            raise
    return result
