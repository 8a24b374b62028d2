"""Shards checked against their commit markers the first time a process opens them.

A shard's commit marker (and `dataset.json`, which lists the markers) records its size and
sha256. `check_shard` compares a file with them before the reader maps it: the size always (a
truncated or empty shard is one line naming it, never pyarrow's "Expected to be able to read"),
the sha256 once per process and file (keyed by path, size and modification time, so a shard
rewritten in place is hashed again). Forked DataLoader workers inherit what their parent
checked; a spawned worker checks again, once.

Why: a shard flipped in place (a bad disk, a stray editor, a damaged cache entry of the right
size) was read with exit status 0 and altered codes. What it costs is measured in
`bench/reader_speed.py` (sha256 runs at about 1 GB/s on one core here). For a large local
dataset on a trusted disk, `CODECFLOW_VERIFY_SHARDS=0` keeps the size check and skips the hash.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import sha256_file
from codecflow.tasks.data.records import ShardEntry

__all__ = ["VERIFY_ENV", "ShardDamagedError", "check_shard", "forget_checked", "mark_checked"]

#: "0" skips the sha256 of shards opened (their size is still checked).
VERIFY_ENV = "CODECFLOW_VERIFY_SHARDS"

_CHECKED: set[tuple[str, str, int, int]] = set()
_LOCK = threading.Lock()


class ShardDamagedError(CodecflowError):
    """A shard file is not the one its commit marker recorded (size or sha256)."""


def _key(path: Path, shard: ShardEntry, stat: os.stat_result) -> tuple[str, str, int, int]:
    return (str(path.absolute()), shard.sha256, stat.st_size, stat.st_mtime_ns)


def mark_checked(path: Path, shard: ShardEntry) -> None:
    """Record that `path` was hashed as `shard` already (a download checked as it streamed)."""
    with _LOCK:
        _CHECKED.add(_key(path, shard, path.stat()))


def forget_checked() -> None:
    """Forget what this process checked: the next open hashes again (benchmarks, tests)."""
    with _LOCK:
        _CHECKED.clear()


def check_shard(path: Path, shard: ShardEntry, name: str) -> None:
    """Raise ShardDamagedError (one line naming `name`) unless `path` has the size and, once
    per process, the sha256 that `shard`'s commit marker recorded."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CodecflowError(f"token shard {name} listed in dataset.json is missing") from None
    size = stat.st_size
    if size != shard.bytes:
        what = "empty" if size == 0 else "truncated or replaced"
        raise ShardDamagedError(
            f"token shard {name} is {size} bytes, its commit marker says {shard.bytes} ({what})"
        )
    key = _key(path, shard, stat)
    if key in _CHECKED or os.environ.get(VERIFY_ENV, "1").strip() == "0":
        return
    got = sha256_file(path)
    if got != shard.sha256:
        raise ShardDamagedError(
            f"token shard {name} does not match its commit marker: sha256 {got[:16]}..., "
            f"expected {shard.sha256[:16]}... (changed since it was written)"
        )
    with _LOCK:
        _CHECKED.add(key)
