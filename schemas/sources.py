"""Libri-Light's published archives as data, and the resolution of a `source` setting into the
archives to fetch.

Sizes, hours and md5 sums are those of Libri-Light's data preparation README
(https://github.com/facebookresearch/libri-light/blob/main/data_preparation/README.md, section
"1A. Downloading" and "2. Get the limited-supervision train data"); the splits are that README's
"By combining these subsets, one can construct the 3 splits described in the Libri-Light paper".
Sizes are decimal (1 GB = 10**9 bytes), as published, and only approximate.

Pure Python: no I/O, no import of `tasks` (the configs validate with it, the tasks fetch with it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

__all__ = [
    "ARCHIVE_SUFFIXES",
    "LIBRILIGHT_ARCHIVES",
    "LIBRILIGHT_BASE_URL",
    "LIBRILIGHT_SPLITS",
    "LibriLightArchive",
    "ResolvedSource",
    "SourceSpecError",
    "is_archive",
    "resolve_sources",
    "source_layout",
]


class SourceSpecError(ValueError):
    """A `source`, `md5` or `mirror` setting that cannot be resolved; the message is one line.

    A ValueError (not a `tasks.core.errors.CodecflowError`: schemas do not import tasks) so that a
    pydantic validator that calls `resolve_sources` reports it as a validation error.
    """


@dataclass(frozen=True)
class LibriLightArchive:
    """One archive that Libri-Light publishes under `LIBRILIGHT_BASE_URL`."""

    name: str
    filename: str
    hours: float
    approx_bytes: int
    md5: str | None  # None: Libri-Light publishes no md5 for this archive


@dataclass(frozen=True)
class ResolvedSource:
    """One file to fetch: a short name (for folders and messages), where it is, what md5 it must
    have (None: unchecked) and its approximate size (None: unknown until the server says)."""

    name: str
    url: str
    md5: str | None
    approx_bytes: int | None


LIBRILIGHT_BASE_URL = "https://dl.fbaipublicfiles.com/librilight/data/"

_GB = 10**9
_TB = 10**12

LIBRILIGHT_ARCHIVES: dict[str, LibriLightArchive] = {
    archive.name: archive
    for archive in (
        LibriLightArchive("small", "small.tar", 577, 35 * _GB, "c49207eb86a8e8ac895561c37232041e"),
        LibriLightArchive(
            "medium", "medium.tar", 5193, 321 * _GB, "c75e7ac62471bfbf2db77528d62a9b74"
        ),
        LibriLightArchive(
            "large", "large.tar", 51934, 3_050 * _GB, "4dfbac018f50b99797ece101fc9f0c30"
        ),
        # Books that may duplicate others; the README links it (as "unlab_duplicate.tar", served
        # as duplicate.tar) without an md5.
        LibriLightArchive("duplicate", "duplicate.tar", 4500, 274 * _GB, None),
        # The limited-supervision LibriSpeech subsets (10 h, 1 h, 10 min); gzipped, no md5.
        LibriLightArchive(
            "librispeech_finetuning", "librispeech_finetuning.tgz", 10, 600_000_000, None
        ),
    )
}

# The paper's unlabelled splits, as the archives whose union they are.
LIBRILIGHT_SPLITS: dict[str, tuple[str, ...]] = {
    "unlab-600": ("small",),
    "unlab-6k": ("small", "medium"),
    "unlab-60k": ("small", "medium", "large"),
}

_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Multi-part suffixes first: the name of "x.tar.gz" is "x", not "x.tar".
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tgz", ".tar", ".zip")


def _check_md5(md5: str | None, source: str) -> str | None:
    if md5 is None:
        return None
    normalised = md5.strip().lower()
    if not _MD5_RE.match(normalised):
        raise SourceSpecError(f"md5 for source {source!r} is not 32 hex digits: {md5!r}")
    return normalised


def _join(base: str, filename: str) -> str:
    """`base` (a URL or a local folder, with or without a trailing slash) + "/" + `filename`."""
    return base.rstrip("/") + "/" + filename


def _stem(source: str) -> str:
    """The file name of a URL or path without its archive suffix ("" when it names no file)."""
    # A URL's query and fragment are not part of its file name (e.g. a presigned S3 URL).
    path = urlsplit(source).path if _URL_RE.match(source) else source
    filename = PurePosixPath(path.replace("\\", "/")).name if not path.endswith("/") else ""
    lowered = filename.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return PurePosixPath(filename).stem if filename else ""


def resolve_sources(
    source: str, md5: str | None = None, mirror: str | None = None
) -> list[ResolvedSource]:
    """The files that `source` stands for, in download order.

    - a split name (`LIBRILIGHT_SPLITS`: "unlab-600", "unlab-6k", "unlab-60k") -> its archives,
      each with its published md5; an explicit `md5` is an error (it cannot fit them all);
    - an archive name (`LIBRILIGHT_ARCHIVES`: "small", "medium", ...) -> that archive; an explicit
      `md5` overrides the published one (e.g. for a re-packed mirror copy);
    - anything else is a URL or a local path: one source named after its file (suffix dropped),
      checked against `md5` when given. Names are matched exactly, so a typo ("smal") becomes a
      path, which the fetch step then reports as "source not found".

    `mirror` (an http(s)/s3/any fsspec URL or a local folder, trailing slash optional) replaces
    `LIBRILIGHT_BASE_URL` for named archives; a URL or path source is used as given.

    Raises SourceSpecError (a ValueError) with a one-line message.
    """
    if not isinstance(source, str) or not source.strip():
        raise SourceSpecError(
            f"source must be an archive name, a split name, a URL or a path, got {source!r}"
        )
    source = source.strip()
    checked_md5 = _check_md5(md5, source)
    if mirror is not None and not mirror.strip():
        raise SourceSpecError(
            "mirror is empty: give a URL or folder holding Libri-Light's archives"
        )
    base = LIBRILIGHT_BASE_URL if mirror is None else mirror.strip()

    if source in LIBRILIGHT_SPLITS:
        names = LIBRILIGHT_SPLITS[source]
        if checked_md5 is not None:
            raise SourceSpecError(
                f"md5 cannot be given for split {source!r}: it has {len(names)} archives "
                f"({', '.join(names)}), each checked against its published md5"
            )
        archives = [LIBRILIGHT_ARCHIVES[name] for name in names]
    elif source in LIBRILIGHT_ARCHIVES:
        archives = [LIBRILIGHT_ARCHIVES[source]]
    else:
        name = _stem(source)
        if not name:
            raise SourceSpecError(f"source {source!r} names a folder or a host, not a file")
        return [ResolvedSource(name, source, checked_md5, None)]

    return [
        ResolvedSource(
            name=archive.name,
            url=_join(base, archive.filename),
            md5=checked_md5 if checked_md5 is not None else archive.md5,
            approx_bytes=archive.approx_bytes,
        )
        for archive in archives
    ]


#: Sources that are archives (by suffix): fetched, verified and extracted before probing.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(source: str) -> bool:
    """True when `source` names a tar (by its suffix), local or remote."""
    return source.lower().rstrip("/").endswith(ARCHIVE_SUFFIXES)


def source_layout(source: str, layout: str) -> str:
    """ "librilight", "audio" or "lhotse": `layout`, with "auto" resolved from the source's name
    (a lhotse JSONL manifest: lhotse; a Libri-Light archive or split name, or an archive:
    librilight; a folder or a bucket prefix: audio). A folder saved by Hugging Face's
    save_to_disk is told by its files (`tasks.acquire.ingest.resolved_layout`: no I/O here)."""
    if layout != "auto":
        return layout
    source = source.strip()
    if source.lower().endswith((".jsonl", ".jsonl.gz")):
        return "lhotse"
    named = source in LIBRILIGHT_ARCHIVES or source in LIBRILIGHT_SPLITS
    return "librilight" if named or is_archive(source) else "audio"
