"""Safe streaming extraction of tar archives (Python's tarfile `data` filter semantics, PEP 706).

`extract_tar_safely` reads an archive once, front to back, from a local path or from any readable
binary stream (an HTTP body included: a 3 TB Libri-Light tar is never stored), and writes its
members to a local folder or under any fsspec URL (`s3://bucket/prefix/...`). Unsafe members are
refused and listed with their reason (tarfile only reads and checks: the files are written here,
never through a link); the md5 of the bytes read is computed on the way and checked at the end;
nothing is left behind when the archive is corrupt, truncated or has the wrong md5, or expands
past its bound (`ExtractLimits`: a compressed archive may not write more than a multiple of the
bytes read from it, checked as every member is copied, so a decompression bomb stops within
megabytes). The marker
`.extracted.json`, written last, means the extraction completed and says of which archive (md5,
source URL): another archive is never extracted over it nor served from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from codecflow.tasks.acquire.marker import (
    MD5_RE,
    Dest,
    ExtractRecord,
    resolve_dest,
    reusable,
)
from codecflow.tasks.acquire.members import (
    CHUNK,
    EXTRACTED_MARKER,
    HashingReader,
    LastReadSpy,
    end_problem,
    refusal,
)
from codecflow.tasks.acquire.sinks import LocalSink, RemoteSink, Sink
from codecflow.tasks.core.errors import ChecksumMismatchError, CodecflowError, CorruptArchiveError
from codecflow.tasks.core.storage import atomic_dir, atomic_write_json

__all__ = ["ArchiveExpansionError", "ExtractLimits", "extract_tar_safely", "acquired_member"]

_LOG = logging.getLogger(__name__)


#: Written last inside an extracted folder (or prefix): its presence means the extraction completed.


def _stream_name(stream: Any) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) and name else "<archive stream>"


class ArchiveExpansionError(CodecflowError):
    """An archive wrote more than its bound: nothing of it is kept."""


@dataclass(frozen=True)
class ExtractLimits:
    """What an extraction may write.

    `max_expansion` x the archive bytes read so far + `slack_bytes` bounds the member bytes
    written, checked at every chunk copied: an uncompressed tar writes as much as it reads (1x),
    FLAC in a gzip about as much (FLAC does not compress), so 4x leaves room for any real
    archive while a gzip bomb (300 KB holding 300 MiB of zeros) stops after `slack_bytes`.
    `keep` (a member's name -> "" to extract it, else why not) lists the other members as
    refused without writing them; None keeps every safe member.
    """

    max_expansion: float = 4.0
    slack_bytes: int = 16 << 20
    keep: Callable[[str], str] | None = None


#: What acquire reads from an archive: audio in any format libsndfile decodes (Libri-Light's
#: FLAC, and WAV, OGG/Vorbis, Opus, MP3, AIFF for `layout: audio`), metadata (Libri-Light's JSON,
#: a CSV/TSV/JSONL table) and transcripts (LibriSpeech's .txt, .lab sidecars).
ACQUIRED_SUFFIXES = (
    ".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif",
    ".json", ".jsonl", ".csv", ".tsv", ".txt", ".lab",
)  # fmt: skip


def acquired_member(name: str) -> str:
    """ "" for a member acquire reads (audio, its metadata, a transcript), else why not."""
    if name.lower().endswith(ACQUIRED_SUFFIXES):
        return ""
    return "not audio or its metadata (not extracted)"


class _Budget:
    """Counts member bytes as the sinks read them; raises past the expansion bound."""

    def __init__(self, reader: HashingReader, limits: ExtractLimits, what: str) -> None:
        self.reader, self.limits, self.what, self.written = reader, limits, what, 0

    def extractfile(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def opened(member: Any) -> Any:
            source = original(member)
            return None if source is None else _Counted(source, self)

        return opened

    def add(self, n: int) -> None:
        self.written += n
        bound = self.limits.max_expansion * self.reader.n_bytes + self.limits.slack_bytes
        if self.written > bound:
            raise ArchiveExpansionError(
                f"archive {self.what} expands past {self.limits.max_expansion:g}x the "
                f"{self.reader.n_bytes:,} bytes read from it (+ {self.limits.slack_bytes >> 20} "
                f"MiB): {self.written:,} bytes written; refused, nothing kept"
            )


class _Counted:
    """A member's file object whose reads count against the budget."""

    def __init__(self, inner: Any, budget: _Budget) -> None:
        self.inner, self.budget = inner, budget

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self.inner.read(size)
        self.budget.add(len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class _Result:
    n_files: int
    n_bytes: int
    refused: list[tuple[str, str]]
    md5: str
    size: int


def _extract_members(raw: BinaryIO, what: str, sink: Sink, limits: ExtractLimits) -> _Result:
    """Stream every member of the archive `raw` into `sink`; counts, refusals and the md5.

    Raises CorruptArchiveError when the archive cannot be read to its end-of-archive marker,
    ArchiveExpansionError when it writes past `limits`.
    """
    reader = HashingReader(raw)
    budget = _Budget(reader, limits, what)
    refused: list[tuple[str, str]] = []
    n_files = n_bytes = 0
    try:
        with tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|*", bufsize=CHUNK) as tar:
            spy = LastReadSpy(tar.fileobj)
            tar.fileobj = spy
            tar.extractfile = budget.extractfile(tar.extractfile)  # type: ignore[method-assign,assignment]
            for member in tar:
                safe, reason = refusal(member, sink.filter_root)
                if safe is not None and safe.isreg() and limits.keep is not None:
                    reason = limits.keep(safe.name)
                    safe = None if reason else safe
                if safe is not None:
                    reason = sink.unsupported(safe) or sink.write(tar, safe)
                if safe is None or reason:
                    refused.append((member.name, reason))
                    continue
                if not safe.isdir():
                    n_files += 1
                if safe.isreg():
                    n_bytes += safe.size
            if spy.last is not None and spy.last != bytes(tarfile.BLOCKSIZE):
                raise tarfile.ReadError(end_problem(spy.last))
        reader.drain()
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise CorruptArchiveError(f"corrupt archive {what}: {err}") from None
    return _Result(n_files, n_bytes, refused, reader.md5.hexdigest(), reader.n_bytes)


#: What atomic_dir leaves beside `<name>` when killed: `.<name>.<8 random chars>.tmp` (mkdtemp's
#: alphabet) and `.<name>.old`. Only these exact names are ours to remove.
_TEMP_NAME = r"\.{name}\.(?:[a-z0-9_]{{8}}\.tmp|old)"


def _sweep_temporaries(dest: Path) -> list[Path]:
    """Remove the temporary folders a killed extraction of `dest` left beside it; those removed.

    Called at the start of an extraction, when the run owns its root (no other extraction of
    `dest` is running). Only folders named as atomic_dir names them go: a file, a link, or any
    other name (a user's `.small.notes.tmp`, a download's `.part`) is never touched.
    """
    pattern = re.compile(_TEMP_NAME.format(name=re.escape(dest.name)))
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
            _LOG.info("removed %s, left by an extraction that did not finish", entry.path)
            removed.append(Path(entry.path))
    return removed


def _check_md5(what: str, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected:
        raise ChecksumMismatchError(what, "md5", expected, actual)


def _marker_json(what: str, source: str | None, result: _Result) -> dict[str, Any]:
    return {
        "archive": what,
        "source": source,
        "archive_size": result.size,
        "md5": result.md5,
        "n_files": result.n_files,
        "n_bytes": result.n_bytes,
        "refused": [list(item) for item in result.refused],
    }


@contextlib.contextmanager
def _opened(path: Path | None, stream: BinaryIO | None) -> Iterator[BinaryIO]:
    """The archive's bytes: a path is opened (and closed) here; a stream stays the caller's."""
    if path is not None:
        with open(path, "rb") as f:
            yield f
    else:
        assert stream is not None
        yield stream


def extract_tar_safely(
    archive: Path | str | BinaryIO,
    dest: str | Path,
    *,
    expected_md5: str | None = None,
    description: str | None = None,
    source: str | None = None,
    limits: ExtractLimits = ExtractLimits(),  # noqa: B008 - frozen, never mutated
) -> ExtractRecord:
    """Extract a (possibly compressed) tar into `dest`, refusing unsafe members.

    `archive` is a local path or a readable binary stream, seekable or not: it is read once,
    front to back (tarfile's stream mode, `r|*`), and its md5 computed on the way. `dest` is a
    local folder or an fsspec URL (`s3://bucket/prefix/librilight`).

    Members are filtered with the semantics of Python's tarfile `data` filter (PEP 706) and
    stricter rules: names that are not UTF-8 or hold control characters, absolute paths, `..`
    components, links that leave the root, and device/fifo files are refused, skipped, and
    listed in `refused` with their reason. On a local `dest` every symlink and hard link is
    refused too and only folders and regular files are written (by this module, never through a
    link: see LocalSink); on a remote one symlinks are refused and an in-root hard link is
    written as a copy of its (already written) target.

    A local `dest` is written as a temporary folder beside it, renamed to `dest` at the end; the
    temporaries a killed extraction of `dest` left are removed first. A remote one (object
    stores cannot rename) gets each member's object directly, and every object written by this
    call is deleted on failure. Either way the marker `.extracted.json` (source, md5, archive
    size, counts, refusals) is written last, and a call that finds it skips the work: always for
    a stream, for a path when the tar's size matches (or the tar was deleted). A marker of
    another archive (another md5 than `expected_md5`, or without one another `source`) raises
    ExtractionIdentityError and the folder is kept.

    `description` names the archive in errors (default: the path, or the stream's name);
    `source` (the URL it came from) is recorded in the marker. `limits` bounds what the archive
    may write and which members are extracted at all (`ExtractLimits`).

    Raises CorruptArchiveError for a truncated or corrupt archive and ChecksumMismatchError when
    the md5 differs from `expected_md5`, leaving nothing extracted and no marker.
    """
    path: Path | None = None
    stream: BinaryIO | None = None
    if isinstance(archive, str | os.PathLike):
        path = Path(archive)
    elif callable(getattr(archive, "read", None)):
        stream = archive
    else:
        raise CodecflowError(
            f"archive must be a path or a readable binary stream, not {type(archive).__name__}"
        )
    what = description or (str(path) if path is not None else _stream_name(stream))
    expected = None
    if expected_md5 is not None:
        expected = expected_md5.strip().lower()
        if not MD5_RE.fullmatch(expected):
            raise CodecflowError(f"expected md5 for {what} is not 32 hex digits: {expected_md5!r}")

    where = resolve_dest(dest)
    reused = reusable(where, path, expected, source, what)
    if reused is not None:
        return reused
    if path is not None and not path.is_file():
        raise CodecflowError(f"archive not found: {path}")

    with _opened(path, stream) as raw:
        if where.local is not None:
            _sweep_temporaries(where.local)
            with atomic_dir(where.local) as tmp:
                result = _extract_members(raw, what, LocalSink(tmp), limits)
                _check_md5(what, expected, result.md5)
                atomic_write_json(tmp / EXTRACTED_MARKER, _marker_json(what, source, result))
        else:
            result = _extract_remote(raw, what, source, where, expected, limits)
    return ExtractRecord(
        where.root, result.n_files, result.n_bytes, tuple(result.refused), result.md5
    )


def _extract_remote(
    raw: BinaryIO,
    what: str,
    source: str | None,
    where: Dest,
    expected: str | None,
    limits: ExtractLimits,
) -> _Result:
    """Objects written straight under `where`, the marker last; all of them deleted on failure."""
    fs = where.fs
    assert fs is not None
    # A stale marker (another archive, an unreadable one) must go before the first write: a
    # failure below would otherwise leave a marker over a half-written prefix.
    if fs.exists(where.marker_path):
        fs.rm_file(where.marker_path)
    with tempfile.TemporaryDirectory(prefix="codecflow-extract-") as filter_root:
        sink = RemoteSink(fs, where.base, filter_root)
        try:
            result = _extract_members(raw, what, sink, limits)
            _check_md5(what, expected, result.md5)
            data = json.dumps(_marker_json(what, source, result), indent=2, sort_keys=True) + "\n"
            fs.pipe_file(where.marker_path, data.encode())
        except BaseException as err:
            failed = sink.remove_written()
            if failed:
                err.add_note(f"could not delete {len(failed)} objects under {where.root}")
            raise
    return result
