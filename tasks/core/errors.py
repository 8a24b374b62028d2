"""The one exception family that codecflow raises on bad input, and the one error path.

The CLI prints any `CodecflowError` as a single line (`error: <message>`) and exits 2, so every
message must name the thing that is wrong (a file, a URL, a field) on its own.

Two classifications live here, beside the exceptions, so that every entry point (the CLI, the
Prefect task retries, a torchrun worker, a Dask worker's error coming back to the flow) agrees:

- `user_error(exc)`: the `CodecflowError` an exception means for the user, or None for a bug.
  File-system errors the user causes (a full disk, a read-only mount, a file where a folder
  should be, a permission) become one line naming the path.
- `is_transient(exc)`: the network errors a retry may cure, named one by one. Everything else
  (bad input, a full disk, a bug) fails at once: retrying ENOSPC three times only delays the
  message.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from codecflow.models.extras import MissingExtraError
from codecflow.schemas.tokenizers import TokenizerNameError

__all__ = [
    "ChecksumMismatchError",
    "CodecflowError",
    "CorruptArchiveError",
    "InterruptedRunError",
    "SourceNotFoundError",
    "is_transient",
    "is_transient_chain",
    "user_error",
]


class CodecflowError(Exception):
    """Bad input or a broken precondition; the message is one readable line."""


class SourceNotFoundError(CodecflowError):
    """A download source (file, URL, object) does not exist."""


class ChecksumMismatchError(CodecflowError):
    """A file's digest differs from the expected one."""

    def __init__(self, what: str, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"{algorithm} mismatch for {what}: expected {expected}, actual {actual}")
        self.expected = expected
        self.actual = actual
        self._parts = (what, algorithm, expected, actual)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled back from a Dask worker or a Prefect result: Exception's default would call
        # the class with the one-string `args`, which this signature refuses.
        return (type(self), self._parts)


class CorruptArchiveError(CodecflowError):
    """An archive cannot be read to its end."""


class InterruptedRunError(CodecflowError):
    """SIGINT or SIGTERM stopped the run; what was committed stays and a re-run resumes."""


# errno -> what the user reads. These are conditions of the user's storage, not of the code.
_OS_MESSAGES: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "name too long",
}


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _os_message(exc: OSError) -> str | None:
    reason = _OS_MESSAGES.get(exc.errno or -1)
    if reason is None:
        return None
    where = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' -> '.join(where)}" if where else f"{reason} ({exc.strerror or exc})"


def user_error(exc: BaseException) -> CodecflowError | None:
    """The one-line error `exc` means for the user, or None when it is not the user's doing.

    A `CodecflowError` anywhere in the chain wins, or a malformed tokenizer name (schemas/ raises
    `TokenizerNameError`, a ValueError: it may not import tasks/), or a missing extra
    (`MissingExtraError`: "Mimi needs the mimi extra: ..."); then an `OSError` of the
    user's storage (ENOSPC, EROFS, EACCES, ENOTDIR, ...), named by its path. A network error is
    not the user's input but still deserves one line once the retries are spent.
    """
    chain = _chain(exc)
    for item in chain:
        if isinstance(item, CodecflowError):
            return item
        if isinstance(item, TokenizerNameError | MissingExtraError):
            return CodecflowError(str(item))
    for item in chain:
        if isinstance(item, OSError) and not is_transient(item):
            message = _os_message(item)
            if message is not None:
                return CodecflowError(message)
    if any(is_transient(item) for item in chain):
        return CodecflowError(f"network error: {type(exc).__name__}: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Transient network errors by the (module prefix, class name) of any class in their MRO: the
# optional stacks (botocore and aiohttp under s3fs) are matched without importing them.
_TRANSIENT_NAMES: frozenset[tuple[str, str]] = frozenset(
    {
        ("botocore", "EndpointConnectionError"),
        ("botocore", "ConnectionClosedError"),
        ("botocore", "ReadTimeoutError"),
        ("botocore", "ConnectTimeoutError"),
        ("botocore", "ResponseStreamingError"),
        ("aiohttp", "ClientConnectionError"),
        ("aiohttp", "ServerTimeoutError"),
        ("aiohttp", "ClientPayloadError"),
        ("fsspec", "FSTimeoutError"),
    }
)


def _is_named_transient(exc: BaseException) -> bool:
    return any(
        (cls.__module__.split(".")[0], cls.__name__) in _TRANSIENT_NAMES
        for cls in type(exc).__mro__
    )


def _is_retryable_status(exc: BaseException) -> bool:
    """An HTTP answer a retry may cure: 5xx and 429 (too many requests)."""
    httpx = sys.modules.get("httpx")  # not imported (or installed): no httpx error to meet
    if httpx is None or not isinstance(exc, httpx.HTTPStatusError):
        return False
    status = exc.response.status_code
    return status >= 500 or status == 429


def is_transient(exc: BaseException) -> bool:
    """True for network errors a retry may cure: connection resets and refusals, timeouts,
    DNS failures, httpx transport errors, 5xx/429 answers, botocore/aiohttp connection errors.
    httpx (the pipeline extra) is looked up, not imported: an exception of its can only exist
    once something imported it.
    """
    if isinstance(exc, CodecflowError):
        return False
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    return _is_retryable_status(exc) or _is_named_transient(exc)


def is_transient_chain(exc: BaseException) -> bool:
    """`is_transient` of `exc` or of what it was raised from (s3fs wraps botocore's errors)."""
    return any(is_transient(item) for item in _chain(exc))
