"""The extraction marker `.extracted.json`: what a completed extraction records (the archive's
md5, size and source URL), reading it back, and the identity check that refuses to extract another
archive over it or serve another archive's download from it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.manifest import (
    EXTRACTED_MARKER,  # read by later stages too (the dataset card)
)

#: An md5 as Libri-Light publishes it: 32 lowercase hex digits.
MD5_RE = re.compile(r"[0-9a-f]{32}")

__all__ = [
    "EXTRACTED_MARKER",
    "MD5_RE",
    "Dest",
    "ExtractRecord",
    "ExtractionIdentityError",
    "check_reuse",
    "is_extracted",
    "resolve_dest",
    "reusable",
]


class ExtractionIdentityError(CodecflowError):
    """A destination holds a completed extraction of another archive (another md5 or source)."""


@dataclass(frozen=True)
class ExtractRecord:
    """An extracted archive: its root, what was written, the refused members, the archive's md5."""

    root: str  # the destination: a local absolute path, or the URL as given (no trailing "/")
    n_files: int  # regular files written (and, on an object store, copies for in-root hard links)
    n_bytes: int  # sum of the sizes of the regular files written
    refused: tuple[tuple[str, str], ...]  # (member name, reason), in archive order
    # A default, so that records built by hand (or unpickled from a cache written before this
    # field existed) stay valid; every record extract_tar_safely returns carries the real md5.
    md5: str = ""  # hex md5 of the archive's bytes as read (compressed bytes for a .tar.gz)


@dataclass(frozen=True)
class Dest:
    root: str  # what ExtractRecord.root reports
    local: Path | None  # set for a local folder
    fs: AbstractFileSystem | None = None  # set for a remote URL, with base
    base: str = ""

    @property
    def marker_path(self) -> str:
        return f"{self.base}/{EXTRACTED_MARKER}"


def resolve_dest(dest: str | os.PathLike[str]) -> Dest:
    """A local folder for a path (or a file:// URL), else the fsspec filesystem of the URL."""
    text = os.fspath(dest)
    if not isinstance(dest, os.PathLike) and "://" in text:
        try:
            # A fresh client: a cached one may point at another endpoint (tests, moto).
            fs, base = fsspec.core.url_to_fs(text, skip_instance_cache=True)
        except (ImportError, ValueError) as err:
            raise CodecflowError(f"unsupported destination {text}: {err}") from None
        if not isinstance(fs, LocalFileSystem):
            base = base.rstrip("/")
            return Dest(root=text.rstrip("/"), local=None, fs=fs, base=base)
        text = base
    if not text:
        raise CodecflowError("extraction destination is empty")
    local = Path(os.path.abspath(text))
    return Dest(root=str(local), local=local)


def _read_marker(dest: Dest) -> dict[str, Any] | None:
    """The marker's JSON; None when there is none or it is unreadable (extract again).

    A remote error other than "not found" (credentials, network) propagates: it does not mean
    "not extracted", and extracting again would overwrite a good prefix for nothing.
    """
    try:
        if dest.local is not None:
            raw = (dest.local / EXTRACTED_MARKER).read_bytes()
        else:
            assert dest.fs is not None
            raw = dest.fs.cat_file(dest.marker_path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError:
        if dest.local is not None:
            return None
        raise
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _marker_md5(marker: Mapping[str, Any]) -> str:
    # "tar_md5": markers written before md5 verification existed.
    return str(marker["md5"] if "md5" in marker else marker["tar_md5"])


def _marker_size(marker: Mapping[str, Any]) -> Any:
    return marker.get("archive_size", marker.get("tar_size"))


def _record_from_marker(dest: Dest, marker: Mapping[str, Any]) -> ExtractRecord:
    return ExtractRecord(
        root=dest.root,
        n_files=int(marker["n_files"]),
        n_bytes=int(marker["n_bytes"]),
        refused=tuple((str(name), str(reason)) for name, reason in marker["refused"]),
        md5=_marker_md5(marker),
    )


def is_extracted(dest: str | Path) -> bool:
    """Whether `dest` (a local folder or an fsspec URL) holds a completed extraction's marker."""
    where = resolve_dest(dest)
    if where.local is not None:
        return (where.local / EXTRACTED_MARKER).is_file()
    assert where.fs is not None
    return bool(where.fs.isfile(where.marker_path))


def _identity_error(
    where: Dest, marker: Mapping[str, Any], source: str | None, expected: str | None, what: str
) -> ExtractionIdentityError | None:
    """The error for an extraction of another archive at `where`, or None when it is this one.

    The md5 is the identity when one is expected (the same bytes from a mirror are the same
    archive); without one, the source URL recorded in the marker must be `source`.
    """
    recorded_md5 = str(marker.get("md5", marker.get("tar_md5", "")))
    recorded_source = marker.get("source")
    if expected is not None:
        if expected == recorded_md5:
            return None
    elif source is None or not isinstance(recorded_source, str) or recorded_source == source:
        return None
    old = recorded_source if isinstance(recorded_source, str) else marker.get("archive", "?")
    return ExtractionIdentityError(
        f"{where.root} holds an extraction of {old} (md5 {recorded_md5 or 'unknown'}), "
        f"not {source or what} (md5 {expected or 'not given'}): use another root"
    )


def check_reuse(dest: str | Path, source: str | None, expected_md5: str | None) -> None:
    """Raise ExtractionIdentityError when `dest` holds a completed extraction of another archive.

    "Another" means: `expected_md5` (when given) differs from the md5 the marker records, or (when
    no md5 is given) the marker records another source URL. Nothing there, or an unreadable
    marker (extracted again anyway), passes.
    """
    expected = expected_md5.strip().lower() if expected_md5 is not None else None
    if expected is not None and not MD5_RE.fullmatch(expected):
        raise CodecflowError(f"expected md5 for {source} is not 32 hex digits: {expected_md5!r}")
    where = resolve_dest(dest)
    marker = _read_marker(where)
    if marker is None:
        return
    try:
        _record_from_marker(where, marker)
    except (KeyError, TypeError, ValueError):
        return  # unreadable: extract_tar_safely extracts again, as for no marker
    error = _identity_error(where, marker, source, expected, source or "this archive")
    if error is not None:
        raise error


def reusable(
    where: Dest,
    path: Path | None,
    expected: str | None,
    source: str | None,
    what: str,
) -> ExtractRecord | None:
    """The record of the completed extraction at `where` when it is this archive's, else None.

    Raises ExtractionIdentityError when it is another archive's: that folder is never replaced.
    """
    marker = _read_marker(where)
    if marker is None:
        return None
    try:
        record = _record_from_marker(where, marker)
    except (KeyError, TypeError, ValueError):
        return None  # an unreadable marker: extract again
    error = _identity_error(where, marker, source, expected, what)
    if error is not None:
        raise error
    # The size check is cheap; hashing a 35 GB tar on every call would not be. A missing tar
    # (deleted to save space after extraction) does not invalidate the extraction.
    same_size = path is None or not path.exists() or path.stat().st_size == _marker_size(marker)
    return record if same_size else None
