"""Which tar members are extracted, and the readers extraction counts bytes with.

The refusal rules are Python's tarfile `data` filter (PEP 706), applied by reading only: absolute
names, `..`, links leaving the root, devices, names that are not UTF-8 or hold control characters.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
from pathlib import PurePosixPath
from typing import Any, BinaryIO, cast

from codecflow.tasks.acquire.marker import EXTRACTED_MARKER
from codecflow.tasks.core.errors import CodecflowError

__all__ = [
    "CHUNK",
    "CREATE_FLAGS",
    "FILE_MODE",
    "FOLDER_MODE",
    "HARDLINK_LOCAL",
    "HashingReader",
    "LastReadSpy",
    "SYMLINK_LOCAL",
    "SYMLINK_REMOTE",
    "end_problem",
    "member_key",
    "refusal",
]

#: Read size from the archive and copy size per member: 1 MiB keeps Python's per-call overhead
#: small on multi-terabyte archives (tarfile's default is one 10 KiB record per read).
CHUNK = 1 << 20

SYMLINK_REMOTE = "symlink (not supported on object stores)"

SYMLINK_LOCAL = "symlink (not extracted)"

HARDLINK_LOCAL = "hard link (not extracted)"

#: Modes of what the local sink creates, passed to os.open/os.mkdir so the umask still applies.
FILE_MODE = 0o644

FOLDER_MODE = 0o755

#: A new file, never an existing one, never through a link (O_NOFOLLOW: the last component).
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class HashingReader:
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
        while self.read(CHUNK):
            pass


class LastReadSpy:
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


def end_problem(block: bytes) -> str:
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


def refusal(member: tarfile.TarInfo, filter_root: str) -> tuple[tarfile.TarInfo | None, str]:
    """(safe member, "") to extract, or (None, reason) to refuse.

    Python's `data` filter (PEP 706, `tarfile.data_filter`) decides, with stricter rules first:
    a name that is not UTF-8 or holds a control character is refused, an absolute name is
    refused (the filter would strip the leading "/" and extract it), and so is any ".."
    component, even one that stays inside the root (Libri-Light's tars have none; such names are
    a sign of a crafted archive). `filter_root` is the local folder the filter resolves names
    against. The filter is a check only: no member is ever written by tarfile (see LocalSink).
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


def member_key(name: str) -> str:
    """A member name as a relative POSIX key: "./a//b" -> "a/b" (".." was refused before)."""
    key = posixpath.normpath(name) if name else "."
    return "" if key == "." else key
