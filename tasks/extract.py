"""Safe streaming extraction of tar archives (Python's tarfile `data` filter semantics, PEP 706).

`extract_tar_safely` extracts into a temporary folder and renames it to `dest` only when the
archive was read to its end; refused members are listed with their reason.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

from tasks.errors import (
    CodecflowError,
    CorruptArchiveError,
)
from tasks.io import atomic_dir, atomic_write_json

__all__ = ["EXTRACTED_MARKER", "ExtractRecord", "extract_tar_safely"]

#: Written last inside an extracted folder: its presence means the extraction completed.
EXTRACTED_MARKER = ".extracted.json"

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractRecord:
    """An extracted archive: its root, what was written, and the members refused with why."""

    root: Path
    n_files: int  # non-directory members written (regular files and in-root links)
    n_bytes: int  # sum of the sizes of the regular files written
    refused: tuple[tuple[str, str], ...]  # (member name, reason), in archive order


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
