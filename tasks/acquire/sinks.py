"""Where extracted members are written: a local folder (no link is ever followed: `O_NOFOLLOW`,
`lstat`) or any fsspec URL (each member one PUT).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import Any, Protocol

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from codecflow.tasks.acquire.members import (
    CHUNK,
    CREATE_FLAGS,
    FILE_MODE,
    FOLDER_MODE,
    HARDLINK_LOCAL,
    SYMLINK_LOCAL,
    SYMLINK_REMOTE,
    member_key,
)
from codecflow.tasks.core.errors import CorruptArchiveError

__all__ = [
    "LocalSink",
    "RemoteSink",
    "Sink",
]


class Sink(Protocol):
    filter_root: str

    def unsupported(self, member: tarfile.TarInfo) -> str: ...

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str: ...


class LocalSink:
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
            return SYMLINK_LOCAL
        if member.islnk():
            return HARDLINK_LOCAL
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
                os.mkdir(path, FOLDER_MODE)
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
        key = member_key(member.name)
        if member.isdir():
            return self._folder(key)
        problem = self._folder(posixpath.dirname(key))
        if problem:
            return problem
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise CorruptArchiveError(f"no data for member {member.name}")
        try:
            fd = os.open(self.root / key, CREATE_FLAGS, FILE_MODE)
        except FileExistsError:
            return "duplicate name (not extracted)"  # a file or folder of this name came first
        with open(fd, "wb", closefd=True) as f:
            while chunk := source.read(CHUNK):
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


class RemoteSink:
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
            return SYMLINK_REMOTE
        if member.islnk() and member_key(member.linkname) not in self.files:
            # tarfile would look the target up among the members already read, which a stream
            # cannot seek back to; only link to a file that was written.
            return "hard link to a file that was not extracted"
        if not (member.isreg() or member.islnk() or member.isdir()):
            return "unsupported member type"
        return ""

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
        if member.isdir():
            return ""  # implied by the keys of the files below it
        key = member_key(member.name)
        path = self.path(key)
        # Listed before the first byte goes out: a failure mid-member still gets it deleted.
        self.written[path] = None
        if member.islnk():
            self.fs.cp_file(self.path(member_key(member.linkname)), path)
        else:
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isreg() members always have data
                raise CorruptArchiveError(f"no data for member {member.name}")
            f = self.fs.open(path, "wb")
            try:
                while chunk := source.read(CHUNK):
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
