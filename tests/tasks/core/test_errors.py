"""The one error path: what is the user's doing, what is retried, and that errors survive pickling
(a Dask worker's error comes back to the flow through pickle)."""

from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path

import httpx
import pytest

from codecflow.tasks.core import errors
from codecflow.tasks.core.errors import (
    ChecksumMismatchError,
    CodecflowError,
    CorruptArchiveError,
    SourceNotFoundError,
    is_transient,
    is_transient_chain,
    user_error,
)
from codecflow.tasks.core.storage import atomic_dir, atomic_write_bytes


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/x.tar")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(status))


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("peer closed"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        TimeoutError("timed out"),
        _status_error(503),
        _status_error(429),
    ],
)
def test_network_errors_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device", "/data/x"),
        OSError(errno.EROFS, "Read-only file system", "/data/x"),
        PermissionError(errno.EACCES, "Permission denied", "/data/x"),
        CodecflowError("bad input"),
        ValueError("a bug"),
        _status_error(404),
    ],
)
def test_everything_else_is_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_wrapped_botocore_connection_error_is_transient() -> None:
    from botocore.exceptions import EndpointConnectionError

    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        except EndpointConnectionError as inner:
            raise OSError("s3fs wrapped it") from inner
    except OSError as outer:
        assert is_transient_chain(outer)


def test_storage_errors_become_one_line_naming_the_path() -> None:
    error = user_error(OSError(errno.ENOSPC, "No space left on device", "/mnt/full/shard.arrow"))
    assert str(error) == "no space left on device: /mnt/full/shard.arrow"
    error = user_error(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"))
    assert str(error) == "read-only file system: /mnt/ro/out"
    try:
        try:
            raise FileExistsError(errno.EEXIST, "File exists", "/runs/out")
        except FileExistsError as inner:
            raise RuntimeError("while making the folder") from inner
    except RuntimeError as outer:
        assert str(user_error(outer)) == "already exists: /runs/out"
    assert user_error(ValueError("a bug")) is None  # a traceback, for the developer


@pytest.mark.parametrize(
    "error",
    [
        CodecflowError("x"),
        SourceNotFoundError("source not found: s3://b/k"),
        ChecksumMismatchError("a.tar", "md5", "0" * 32, "f" * 32),
        CorruptArchiveError("corrupt archive a.tar: truncated header"),
        errors.InterruptedRunError("interrupted"),
    ],
)
def test_errors_survive_pickling(error: CodecflowError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)


def test_outputs_get_the_modes_of_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "manifest.parquet", b"x")
        with atomic_dir(tmp_path / "report") as tmp:
            (tmp / "index.html").write_text("<p>")
        assert stat.S_IMODE((tmp_path / "manifest.parquet").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o755
        os.umask(0o077)  # a private umask is the user's choice, and kept
        atomic_write_bytes(tmp_path / "private.json", b"{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
