"""The storage seam: every path a flow writes is a local folder or an fsspec URL (`s3://...`).

Local writes go through a temporary name and an atomic rename (below); on object stores a
PUT is atomic already (an object appears whole at close or not at all), and the commit protocol
is to write the commit marker or manifest last. Credentials and endpoints come from the usual
environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...), never from
configs stored in plain text.

Atomic writes and content hashes: the building blocks of idempotent tasks.

Every file codecflow produces is written under a temporary name in the same folder, flushed and
fsynced, then renamed over its final name, so a reader (or a re-run after `kill -9`) sees either
the whole file or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

__all__ = [
    "CACHE_ENV",
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "cache_root",
    "default_mode",
    "exists",
    "fingerprint",
    "fsync_dir",
    "is_remote",
    "join",
    "local_path",
    "location",
    "open_atomic_write",
    "read_json",
    "read_parquet",
    "sha256",
    "sha256_file",
    "url_to_fs",
    "write_json",
    "write_parquet",
]

_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or folder")
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(child.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(child).encode())
    return digest.hexdigest()


def _umask() -> int:
    """This process's umask, read without changing it (Linux: /proc; elsewhere set and reset)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_mode(is_dir: bool) -> int:
    """The mode `open`/`mkdir` would give: 0644 files and 0755 folders under umask 022.

    mkstemp and mkdtemp create 0600 and 0700 (private temporaries); once renamed they are
    outputs that other users of a shared machine (a Prefect worker, a colleague) must read.
    """
    return (0o777 if is_dir else 0o666) & ~_umask()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX: the folder entry itself must be synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an OSError raised without a file name (a `write` or `fsync` hitting ENOSPC) the
    name of the output being written: "no space left on device" alone names nothing."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, default_mode(is_dir=False))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _naming(path):
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success rename it to `path`.

    An existing `path` is replaced only once the new folder is complete. On an exception the
    temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, default_mode(is_dir=True))
    try:
        with _naming(path):
            yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


#: The environment variable that moves codecflow's machine-local cache (shards of remote
#: datasets, tars downloaded for a remote root) to a fast local disk, or a shared one.
CACHE_ENV = "CODECFLOW_CACHE"


def cache_root() -> Path:
    """`$CODECFLOW_CACHE`, else `$XDG_CACHE_HOME/codecflow`, else `~/.cache/codecflow`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "codecflow"


def is_remote(url: str | Path) -> bool:
    """True for URLs of another file system than the local one (`s3://`, `memory://`, ...)."""
    text = str(url)
    return "://" in text and not text.startswith("file://")


def local_path(url: str | Path) -> str:
    text = str(url)
    return text[len("file://") :] if text.startswith("file://") else text


def location(url: str | Path) -> str | Path:
    """A local path as a `Path` (`file://` dropped), a URL as the string it is: `Path("s3://b/x")`
    would be `s3:/b/x`, another place."""
    return str(url) if is_remote(url) else Path(local_path(url))


def join(root: str | Path, *parts: str) -> str:
    """`root` joined with POSIX parts: a URL stays a URL, a local path stays a path."""
    if is_remote(root):
        return posixpath.join(str(root).rstrip("/"), *parts)
    return os.path.join(local_path(root), *parts)


def url_to_fs(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of `url` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(
        str(url) if is_remote(url) else os.path.abspath(local_path(url))
    )
    return fs, path


def exists(url: str | Path) -> bool:
    if not is_remote(url):
        return Path(local_path(url)).exists()
    fs, path = url_to_fs(url)
    return bool(fs.exists(path))


@contextlib.contextmanager
def open_atomic_write(url: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write `url`; it appears complete at the end of the block, or not at all."""
    if is_remote(url):
        fs, path = url_to_fs(url)
        # One PUT at close: an object store shows the whole object or none of it. Not `with`:
        # fsspec's __exit__ closes, i.e. uploads, even on an exception (a half object).
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            f.discard()  # s3fs: aborts a multipart upload already started, drops the buffer
            if isinstance(f, fsspec.spec.AbstractBufferedFile):
                f.closed = True  # nothing flushed later, at garbage collection
            raise
        f.close()
        return
    with atomic_file(Path(local_path(url))) as tmp, open(tmp, "wb") as f:
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


def read_parquet(
    url: str | Path,
    columns: list[str] | None = None,
    prune: tuple[str, list[str]] | None = None,
) -> Any:
    """A Parquet file at `url` as a pyarrow Table (`columns` only, when given). With `prune` =
    (column, values), only the row groups whose min/max statistics of that string column may
    hold one of `values` (a plan sorted by shard keeps a group's rows in few row groups): the
    caller keeps the rows it wants.

    Through `pq.ParquetFile`, not `pq.read_table` or `pyarrow.dataset`, and no compute kernel
    (`pc.is_in`, `Table.filter`, `Table.take`): those import pandas, 0.15 to 0.24 s of every
    fresh process that reads a manifest (measured on the 2-core VM).
    """
    import pyarrow.parquet as pq

    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f, pre_buffer=False)
        if prune is None:
            return parquet.read(columns=columns, use_threads=False)
        groups = _row_groups_with(parquet, *prune)
        return parquet.read_row_groups(groups, columns=columns, use_threads=False)


def _row_groups_with(parquet: Any, column: str, values: list[str]) -> list[int]:
    """The row groups of `parquet` whose min/max statistics of `column` may hold one of
    `values` (all of them where a group has no statistics)."""
    meta = parquet.metadata
    # The Parquet leaf column (nested columns have several leaves: not the Arrow field index).
    leaf = next(j for j in range(meta.num_columns) if meta.schema.column(j).path == column)
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(leaf).statistics
        if stats is None or not stats.has_min_max:
            groups.append(i)
        elif any(stats.min <= v <= stats.max for v in values):
            groups.append(i)
    return groups


def write_parquet(url: str | Path, table: Any) -> None:
    """Write a pyarrow Table as Parquet at `url`, atomically (a reader never sees half a file)."""
    import pyarrow.parquet as pq  # imported here: storage is imported by code that needs no Arrow

    with open_atomic_write(url) as f:
        pq.write_table(table, f)  # streamed: no second copy of a 3.6 M-row plan in memory
