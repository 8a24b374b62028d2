"""The local cache of remote token shards: each shard fetched once per machine, checked, mapped.

An object store cannot be memory-mapped, so `TokenReader` on a remote dataset (`s3://...`) maps
a local copy of each shard, kept at

    <cache>/shards/<first 16 hex of sha256(dataset URL)>/<shard name>.<first 16 hex of sha256>.arrow

where `<cache>` is `$CODECFLOW_CACHE`, else `$XDG_CACHE_HOME/codecflow`, else
`~/.cache/codecflow`. Each dataset folder also holds `source.json` (the dataset's URL), so that
a user can tell what to delete; nothing is ever evicted. Local datasets are mapped in place and
never copied.

A shard is downloaded under a temporary name while its sha256 is computed, compared with the
sha256 its commit marker recorded (as `dataset.json` lists it), and renamed into place only
when they agree: a mismatch is a `ChecksumMismatchError` naming the shard's URL, and leaves
nothing in the cache. The entry's name holds the expected sha256, so a dataset re-tokenized at
the same URL gets new entries. An entry found is checked again by the reader once per process
(`tasks.data.shard_check`): one damaged in place is dropped and fetched again, once.
Processes on one machine (torchrun's ranks) share the cache: the first
takes the entry's lock (`tasks.core.outputs.exclusive_lock`, waiting) and downloads, the others
wait for it and then find the entry. A download killed midway leaves only its temporary, which
the next holder of the lock removes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import ChecksumMismatchError, CodecflowError
from codecflow.tasks.core.faults import kill_point
from codecflow.tasks.data.records import ShardEntry
from codecflow.tasks.data.shard_check import mark_checked

__all__ = [
    "CachedShard",
    "dataset_cache_dir",
    "entry_path",
    "fetch_shard",
]


_CHUNK = 8 << 20  # bytes per read of a download


@dataclass(frozen=True)
class CachedShard:
    """A shard's local copy, and whether this call downloaded it (else it was there)."""

    path: Path
    downloaded: bool


def dataset_cache_dir(dataset: str) -> Path:
    """The cache folder of the remote dataset at `dataset` (its URL, a trailing / ignored)."""
    url = dataset.rstrip("/")
    return storage.cache_root() / "shards" / hashlib.sha256(url.encode()).hexdigest()[:16]


def entry_path(dataset: str, shard: ShardEntry) -> Path:
    """Where the cached copy of `shard` of the remote dataset `dataset` is (or will be)."""
    name = Path(shard.file).name.removesuffix(".arrow")
    return dataset_cache_dir(dataset) / f"{name}.{shard.sha256[:16]}.arrow"


def _is_cached(path: Path, shard: ShardEntry) -> bool:
    # Only a checked download is ever renamed to this name; the size catches a file truncated
    # by hand without rehashing gigabytes at every open.
    try:
        return path.stat().st_size == shard.bytes
    except FileNotFoundError:
        return False


def fetch_shard(dataset: str, shard: ShardEntry) -> CachedShard:
    """The local copy of `shard` of the remote dataset `dataset`: downloaded and checked
    against its sha256 unless it is cached already; waits for another process fetching it."""
    url = storage.join(dataset, shard.file)
    path = entry_path(dataset, shard)
    if _is_cached(path, shard):
        return CachedShard(path, downloaded=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.parent / "source.json"
    if not source.is_file():
        storage.atomic_write_json(source, {"dataset": dataset.rstrip("/")})
    with outputs.exclusive_lock(path, f"fetching {url}", wait=True):
        if _is_cached(path, shard):  # fetched by the process we waited for
            return CachedShard(path, downloaded=False)
        _remove_partial(path)
        _download(url, path, shard)
    mark_checked(path, shard)  # hashed as it streamed: not again when the reader opens it
    return CachedShard(path, downloaded=True)


def _remove_partial(path: Path) -> None:
    """Temporaries of `path` (`atomic_file`'s names) left by a killed download: the caller
    holds the entry's lock, so no live process is writing them."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    for entry in path.parent.iterdir():
        if pattern.match(entry.name):
            entry.unlink(missing_ok=True)


def _download(url: str, path: Path, shard: ShardEntry) -> None:
    """Copy `url` to `path` through a temporary, renamed only when its sha256 is `shard`'s."""
    fs, remote = storage.url_to_fs(url)
    digest = hashlib.sha256()
    try:
        with storage.atomic_file(path) as tmp, fs.open(remote, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                kill_point("shard-fetch")
            if digest.hexdigest() != shard.sha256:
                raise ChecksumMismatchError(
                    f"token shard {url} (its commit marker)", "sha256", shard.sha256,
                    digest.hexdigest(),
                )  # fmt: skip
    except FileNotFoundError:
        raise CodecflowError(f"token shard {url} listed in dataset.json is missing") from None
