"""The one exception family that codecflow raises on bad input.

The CLI prints any `CodecflowError` as a single line (`error: <message>`) and exits non-zero, so
every message must name the thing that is wrong (a file, a URL, a field) on its own.
"""

from __future__ import annotations

__all__ = ["CodecflowError", "SourceNotFoundError", "ChecksumMismatchError", "CorruptArchiveError"]


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


class CorruptArchiveError(CodecflowError):
    """An archive cannot be read to its end."""
