"""Any folder of speech (`layout: audio`): its audio files, their speakers and transcripts.

A source is a folder, a bucket prefix or any fsspec URL, read in place (an archive is extracted
first, see `tasks.acquire.ingest`). Its audio is every file libsndfile may decode, by suffix
(`AUDIO_SUFFIXES`); files are grouped by folder, the unit that probing fans out over (as a
Libri-Light book). Beside the audio:

- transcripts: a sidecar `<stem>.txt` or `<stem>.lab` (one file, one text), LibriSpeech's
  `<speaker>-<chapter>.trans.txt` (one line per utterance: `<utterance id> <TEXT>`), the
  `text` column of a metadata table, or the `text` of a `<stem>.json`;
- speakers: the file's folder, the folder above, a regex's `speaker` group on the path, the
  metadata table's `speaker` column, the `speaker` of its `<stem>.json` (WebDataset's
  per-sample record), or the file itself when none is known.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from codecflow.tasks.acquire.probe import BookListing, file_stamp
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import url_to_fs

__all__ = [
    "AUDIOFOLDER_METADATA",
    "AUDIO_SUFFIXES",
    "FileFacts",
    "MetadataTable",
    "SpeakerRule",
    "default_metadata",
    "file_facts",
    "list_audio_folders",
    "read_metadata_table",
]

#: What libsndfile 1.2 decodes (soundfile): the formats `layout: audio` reads.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
#: Transcript sidecars (LibriSpeech's .trans.txt included) and WebDataset-style `<key>.json`
#: records (`speaker`, `text`) listed beside the audio.
TEXT_SUFFIXES = (".txt", ".lab", ".json")
_TRANS_SUFFIX = ".trans.txt"


def list_audio_folders(audio_root: str) -> list[BookListing]:
    """Every folder under `audio_root` holding audio or transcripts, with its files' sizes and
    stamps (the cache key of its probe); hidden files are skipped."""
    fs, base = url_to_fs(audio_root)
    if not fs.exists(base):
        raise CodecflowError(f"audio source not found: {audio_root}")
    if not fs.isdir(base):
        raise CodecflowError(f"audio source {audio_root} is a file: give its folder")
    folders: dict[str, list[tuple[str, int, str]]] = {}
    for path, info in sorted(fs.find(base, detail=True).items()):
        name = posixpath.basename(path)
        if name.startswith(".") or not name.lower().endswith(AUDIO_SUFFIXES + TEXT_SUFFIXES):
            continue
        folder = posixpath.relpath(posixpath.dirname(path), base)
        entry = (name, int(info.get("size") or 0), file_stamp(info))
        folders.setdefault("" if folder == "." else folder, []).append(entry)
    return [BookListing(f, tuple(sorted(e))) for f, e in sorted(folders.items())]


@dataclass(frozen=True)
class MetadataTable:
    """A metadata table's rows by path (relative to the source): speaker and text, each may be
    None."""

    rows: Mapping[str, tuple[str | None, str | None]]


def read_metadata_table(url: str) -> MetadataTable:
    """A CSV (or TSV) or JSONL table with a `path` column and `speaker` and/or `text` columns."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise CodecflowError(f"metadata table not found: {url}")
    raw = fs.cat(path).decode("utf-8-sig")
    if url.lower().endswith((".jsonl", ".json")):
        try:
            records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise CodecflowError(f"metadata table {url} is not JSON lines: {err}") from None
    else:
        delimiter = "\t" if url.lower().endswith(".tsv") else ","
        records = list(csv.DictReader(io.StringIO(raw), delimiter=delimiter))
    records = [_aliased(r) if isinstance(r, dict) else r for r in records]
    if not records or not all(isinstance(r, dict) and r.get("path") for r in records):
        raise CodecflowError(f"metadata table {url} needs a `path` column on every row")
    rows = {}
    for r in records:
        speaker, text = r.get("speaker"), r.get("text")
        rows[posixpath.normpath(str(r["path"]))] = (
            None if speaker in (None, "") else str(speaker),
            None if text in (None, "") else str(text),
        )
    return MetadataTable(rows)


#: Other names of the table's columns: Hugging Face's `audiofolder` (`file_name`), Common
#: Voice (`sentence`, `client_id`) and common speech datasets (`transcription`, `speaker_id`).
_ALIASES = {
    "path": ("file_name",),
    "text": ("transcription", "sentence", "normalized_text"),
    "speaker": ("speaker_id", "client_id"),
}


def _aliased(record: dict[str, object]) -> dict[str, object]:
    out = dict(record)
    for name, others in _ALIASES.items():
        if out.get(name) in (None, ""):
            out[name] = next((out[o] for o in others if out.get(o) not in (None, "")), None)
    return out


#: The metadata file of a Hugging Face `audiofolder`, used when `metadata` is not set.
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")


def default_metadata(audio_root: str) -> str | None:
    """`<audio_root>/metadata.csv` or `.jsonl` (an audiofolder's), when there; else None."""
    fs, base = url_to_fs(audio_root)
    for name in AUDIOFOLDER_METADATA:
        if fs.exists(posixpath.join(base, name)):
            return f"{audio_root.rstrip('/')}/{name}"
    return None


@dataclass(frozen=True)
class SpeakerRule:
    """How a file's speaker is found (`AcquireSettings.speaker_from` and its companions)."""

    source: str  # "parent", "grandparent", "regex", "table", "file"
    regex: str | None = None

    def speaker(
        self, rel: str, table: MetadataTable | None, record: Mapping[str, object] | None = None
    ) -> str | None:
        """The speaker of the file at `rel` (relative to the source), None when the rule finds
        none (a reject); `record` is its `<stem>.json`, if any."""
        parts = rel.split("/")
        if self.source == "sidecar":
            value = (record or {}).get("speaker")
            return None if value in (None, "") else str(value)
        if self.source == "parent":
            return parts[-2] if len(parts) >= 2 else None
        if self.source == "grandparent":
            return parts[-3] if len(parts) >= 3 else None
        if self.source == "regex":
            assert self.regex is not None
            found = re.search(self.regex, rel)
            return found.group("speaker") if found and found.group("speaker") else None
        if self.source == "table":
            return (table.rows.get(rel) or (None, None))[0] if table else None
        return posixpath.splitext(rel)[0].replace("/", "_")  # "file": its own speaker


@dataclass(frozen=True)
class FileFacts:
    """What the folder around an audio file says of it."""

    speaker: str | None
    text: str | None


def _librispeech_lines(raw: bytes) -> dict[str, str]:
    out = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        utterance, _, text = line.strip().partition(" ")
        if utterance and text:
            out[utterance] = text.strip()
    return out


def file_facts(
    audio_root: str,
    listing: BookListing,
    rule: SpeakerRule,
    table: MetadataTable | None,
) -> dict[str, FileFacts]:
    """Speaker and transcript of each audio file of one folder, by file name."""
    fs, base = url_to_fs(audio_root)
    names = [name for name, _, _ in listing.entries]
    folder = posixpath.join(base, listing.book) if listing.book else base
    trans: dict[str, str] = {}
    for name in names:
        if name.endswith(_TRANS_SUFFIX):
            trans.update(_librispeech_lines(fs.cat(posixpath.join(folder, name))))
    facts = {}
    for name in names:
        if not name.lower().endswith(AUDIO_SUFFIXES):
            continue
        stem = posixpath.splitext(name)[0]
        rel = posixpath.join(listing.book, name) if listing.book else name
        record = _record(fs, folder, stem, names)
        text = (table.rows.get(rel) or (None, None))[1] if table else None
        text = text or trans.get(stem) or _sidecar(fs, folder, stem, names)
        text = text or (str(record["text"]) if record.get("text") else None)
        facts[name] = FileFacts(rule.speaker(rel, table, record), text)
    return facts


def _record(fs: object, folder: str, stem: str, names: Sequence[str]) -> dict[str, object]:
    """`<stem>.json` as a dict (WebDataset's per-sample metadata), {} when absent or not one."""
    if f"{stem}.json" not in names:
        return {}
    try:
        value = json.loads(fs.cat(posixpath.join(folder, f"{stem}.json")))  # type: ignore[attr-defined]
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _sidecar(fs: object, folder: str, stem: str, names: Sequence[str]) -> str | None:
    for suffix in (".txt", ".lab"):
        if f"{stem}{suffix}" in names:
            raw = fs.cat(posixpath.join(folder, f"{stem}{suffix}"))  # type: ignore[attr-defined]
            text = " ".join(raw.decode("utf-8", "replace").split())
            return text or None
    return None
