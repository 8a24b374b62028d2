"""The storage seam: every path a flow writes is a local folder or an fsspec URL (`s3://...`).

Local writes go through a temporary name and an atomic rename (`tasks.io`); on object stores a
PUT is atomic already (an object appears whole at close or not at all), and the commit protocol
is to write the commit marker or manifest last. Credentials and endpoints come from the usual
environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...), never from
configs stored in plain text.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

from tasks.errors import CodecflowError
from tasks.io import atomic_file

__all__ = [
    "exists",
    "exclusive_lock",
    "is_remote",
    "join",
    "open_atomic_write",
    "read_json",
    "sha256",
    "url_to_fs",
    "write_json",
]


def is_remote(url: str | Path) -> bool:
    """True for URLs of another file system than the local one (`s3://`, `memory://`, ...)."""
    text = str(url)
    return "://" in text and not text.startswith("file://")


def _local(url: str | Path) -> str:
    text = str(url)
    return text[len("file://") :] if text.startswith("file://") else text


def join(root: str | Path, *parts: str) -> str:
    """`root` joined with POSIX parts: a URL stays a URL, a local path stays a path."""
    if is_remote(root):
        return posixpath.join(str(root).rstrip("/"), *parts)
    return os.path.join(_local(root), *parts)


def url_to_fs(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of `url` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(str(url) if is_remote(url) else os.path.abspath(_local(url)))
    return fs, path


def exists(url: str | Path) -> bool:
    if not is_remote(url):
        return Path(_local(url)).exists()
    fs, path = url_to_fs(url)
    return bool(fs.exists(path))


@contextlib.contextmanager
def open_atomic_write(url: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write `url`; it appears complete at the end of the block, or not at all."""
    if is_remote(url):
        fs, path = url_to_fs(url)
        # One PUT at close: an object store shows the whole object or none of it. On an
        # exception fsspec discards the buffered upload.
        with fs.open(path, "wb") as f:
            yield f
        return
    with atomic_file(Path(_local(url))) as tmp, open(tmp, "wb") as f:
        yield f


def read_json(url: str | Path) -> Any:
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def write_json(url: str | Path, obj: Any) -> None:
    """Indented, key-sorted JSON written atomically (local) or in one PUT (remote)."""
    with open_atomic_write(url) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256(url: str | Path) -> str:
    """Hex sha256 of a file's bytes, local or remote, read in 1 MiB chunks."""
    fs, path = url_to_fs(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(url: str | Path, what: str) -> Iterator[None]:
    """Hold `<url>.lock` for the block, or refuse at once with a message naming the holder.

    Local folders use an advisory `flock` on a file beside the folder: the kernel releases it
    when the holder dies, even by `kill -9`, so a crashed run never blocks the next one. Object
    stores have no locks: a lock object is written (and deleted at the end). One left by a dead
    process of this machine is taken over; one from another machine must be deleted by hand, as
    the message says.
    """
    lock_url = str(url).rstrip("/") + ".lock"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
    if is_remote(url):
        if exists(lock_url):
            other = read_json(lock_url)
        else:
            other = None
        if other is not None and not _holder_is_dead(other):
            raise CodecflowError(
                f"{url} is locked by another run ({other.get('what')}, pid {other.get('pid')} on "
                f"{other.get('host')}); delete {lock_url} if no run is active"
            )
        write_json(lock_url, holder)
        try:
            yield
        finally:
            fs, path = url_to_fs(lock_url)
            fs.rm(path)
        return
    lock_path = Path(_local(lock_url))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            raise CodecflowError(
                f"{url} is being written by another run ({other or 'unknown holder'}); "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder_is_dead(holder: dict[str, Any]) -> bool:
    """True when a lock's holder was a process of this machine that no longer runs."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError):
        return False
    return False
