"""Output folders a run owns: ownership markers, exclusive locks, and the sweep of our own
temporaries.

Every flow writes into an `out` it claims first (`claim_output`): a missing or empty folder gets
`.codecflow-owner.json` (its kind) before any other write; a folder of the same kind, or a
committed output written before markers existed, is accepted; anything else is refused with one
line naming it. `owned_output` claims the folder and holds its lock (`exclusive_lock`: `flock` on
a local file, removed at exit; a dead holder's lock is taken over) for as long as the run writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import (
    exists,
    is_remote,
    join,
    local_path,
    read_json,
    url_to_fs,
    write_json,
)

__all__ = [
    "OWNER_MARKER",
    "OwnerMarker",
    "claim_output",
    "exclusive_lock",
    "owned_output",
    "close_inherited_locks",
    "remove_stale_temporaries",
    "write_owner_marker",
]


@contextlib.contextmanager
def exclusive_lock(
    url: str | Path,
    what: str,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[int | None]:
    """Hold `<url>.lock` for the block, or refuse at once with a message naming the holder
    (`wait=True`, local files only: block until the holder is done, as processes sharing a
    cache entry do; `on_wait` is then told the holder, "evaluate, pid 12 on host since ...",
    before the wait begins, so that a run that waits says why).

    Yields the lock's file descriptor (None on an object store): a child process given it
    (`pass_fds`) holds the same flock, so the output stays locked while a child that outlives
    a killed launcher (torchrun) still writes.

    Local folders use an advisory `flock` on a file beside the folder: the kernel releases it
    when the holder dies, even by `kill -9`, so a crashed run never blocks the next one. The
    file is removed at the end of the block (success or failure). Object stores have no locks:
    a lock object is written (and deleted at the end). One left by a dead process of this
    machine is taken over; one from another machine must be deleted by hand, as the message says.
    """
    lock_url = str(url).rstrip("/") + ".lock"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
    if is_remote(url):
        if wait:
            raise ValueError(f"cannot wait for a lock on an object store: {url}")
        if exists(lock_url):
            other = read_json(lock_url)
        else:
            other = None
        if other is not None and not _holder_is_dead(other):
            raise CodecflowError(
                f"{url} is locked by another run ({_describe_holder(other)}); "
                f"delete {lock_url} if no run is active"
            )
        write_json(lock_url, holder)
        try:
            yield None
        finally:
            fs, path = url_to_fs(lock_url)
            fs.rm(path)
        return
    lock_path = Path(local_path(lock_url))
    fd = _flock(lock_path, url, wait, on_wait)
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield fd
    finally:
        # Unlinked while the flock is still held: a run that opened the old file before this
        # unlink sees, once it gets the flock, that its inode is no longer the path's, and
        # retries on a fresh file (`_flock`). Closing releases the flock.
        _HELD_LOCKS.discard(fd)
        lock_path.unlink(missing_ok=True)
        os.close(fd)


#: The descriptors of the locks this process holds (`exclusive_lock`), for its forked children.
_HELD_LOCKS: set[int] = set()


def close_inherited_locks() -> None:
    """In a forked child that does not write the output (a data-loader worker): close the lock
    descriptors inherited from the parent. A flock lasts while any descriptor of it is open, so
    a worker that outlives its killed parent for a few seconds (torch.utils.data's workers
    notice a dead parent within 5 s) would otherwise keep the run locked, and refuse a resume."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


def _flock(
    lock_path: Path,
    url: str | Path,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> int:
    """An fd of `lock_path` holding its exclusive flock, or a CodecflowError naming the holder
    (with `wait`, the flock is waited for instead, after telling `on_wait` who holds it).

    Retries when the file it locked was unlinked (and maybe recreated) by the previous holder
    between our open and our flock: a lock on an unlinked inode excludes nobody."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace").strip())
            if not wait:
                os.close(fd)
                raise CodecflowError(
                    f"{url} is being written by another run ({holder}); wait for it to finish"
                ) from None
            try:
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:  # interrupted while waiting (Ctrl-C): no fd left behind
                os.close(fd)
                raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _describe_holder(holder: str | dict[str, Any]) -> str:
    """'train-lm, pid 123 on host since 2026-12-01 20:45:02 UTC' from a lock's JSON."""
    if isinstance(holder, str):
        text = holder
        try:
            holder = json.loads(text)
        except ValueError:
            return text or "unknown holder"
    if not isinstance(holder, dict):
        return "unknown holder"
    since = holder.get("since")
    when = (
        time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(float(since)))
        if isinstance(since, int | float)
        else ""
    )
    return f"{holder.get('what')}, pid {holder.get('pid')} on {holder.get('host')}{when}"


#: The file that makes a folder codecflow's: written first, before anything else in it.
OWNER_MARKER = ".codecflow-owner.json"

#: What `tasks.io` names its temporaries: `.<name>.` + tempfile's 8 random characters + `.tmp`.
_OWN_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@dataclass(frozen=True)
class OwnerMarker:
    """The ownership record of an output folder. Deliberately without time or pid: it is part
    of the folder's bytes, and two runs of the same inputs must leave identical folders."""

    kind: str
    format: int = 1


def claim_output(out: str | Path, kind: str, committed: Sequence[str] = ()) -> None:
    """Make `out` a codecflow `kind` folder, or refuse: a run writes only where it is the owner.

    Accepted: a missing or empty folder (the marker is written first, atomically), a folder
    with the marker of the same kind, or one holding a committed output of this kind written
    before markers existed (any of the `committed` glob patterns, relative to `out`; the marker
    is then added). Anything else is someone else's folder: a one-line CodecflowError.
    """
    fs, path = url_to_fs(out)
    if fs.isfile(path):
        raise CodecflowError(f"{out} is a file, not a folder")
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        names = []
    marker_url = join(out, OWNER_MARKER)
    # Our own marker's temporary left by a kill mid-claim does not make the folder someone's.
    others = [n for n in names if not n.startswith(f"{OWNER_MARKER}.") and n != OWNER_MARKER]
    if OWNER_MARKER in names:
        marker = _read_marker(marker_url)
        if marker is not None and marker.kind == kind:
            return
        what = f" (it is a codecflow {marker.kind})" if marker is not None else ""
        raise CodecflowError(f"{out} is not empty and is not a codecflow {kind}{what}")
    if others and not any(fs.glob(posixpath.join(path, pattern)) for pattern in committed):
        raise CodecflowError(f"{out} is not empty and is not a codecflow {kind}")
    write_owner_marker(out, kind)


def write_owner_marker(folder: str | Path, kind: str) -> None:
    """Write `folder`'s ownership marker (atomically; one PUT remotely), creating the folder.
    Also for a folder written whole under a temporary name that will replace a claimed one."""
    if not is_remote(folder):
        Path(local_path(folder)).mkdir(parents=True, exist_ok=True)
    write_json(join(folder, OWNER_MARKER), asdict(OwnerMarker(kind)))


def _read_marker(url: str) -> OwnerMarker | None:
    try:
        data = read_json(url)
        return OwnerMarker(kind=str(data["kind"]), format=int(data.get("format", 1)))
    except (ValueError, KeyError, TypeError):
        return None


def remove_stale_temporaries(out: str | Path) -> None:
    """Delete the temporaries a killed run left in `out` (and its own beside `out`, from
    `atomic_dir(out)`): only names of `tasks.io`'s exact pattern, so a file codecflow did not
    write is never touched. The caller owns `out` and holds its lock: no live writer owns them.
    Object stores have none: a PUT that did not finish never lands."""
    if is_remote(out):
        return
    root = Path(local_path(out))
    for folder, dirs, files in os.walk(root):
        for name in files:
            if _OWN_TEMPORARY.match(name):
                (Path(folder) / name).unlink(missing_ok=True)
        for name in [d for d in dirs if _OWN_TEMPORARY.match(d)]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            dirs.remove(name)
    beside = re.compile(rf"^\.{re.escape(root.name)}\.[a-z0-9_]{{8}}\.tmp$")
    if root.parent.is_dir():
        for entry in root.parent.iterdir():
            if beside.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


@contextlib.contextmanager
def owned_output(
    out: str | Path, kind: str, what: str, committed: Sequence[str] = ()
) -> Iterator[int | None]:
    """The start of every run that writes `out`: hold its lock, claim it (`claim_output`), and
    sweep our own stale temporaries; the lock is released (and its file removed) at the end.
    Yields the lock's file descriptor, as `exclusive_lock` does."""
    with exclusive_lock(out, what) as fd:
        claim_output(out, kind, committed)
        remove_stale_temporaries(out)
        yield fd


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
