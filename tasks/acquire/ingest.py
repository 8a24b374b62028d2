"""Any source of speech into a segment manifest, as plain functions (`codecflow.ingest` and the
acquire flow's `layout: audio` branch call the same ones).

Why a layout of acquire and not a stage of its own: acquire already owns the verified,
resumable download, the safe extraction, probing with rejects, VAD cutting with
`cut_by_vad.py`'s semantics, the hours subset, the speaker-disjoint split and the manifest's
commit; a sibling stage could not import them (a stage never imports another) and would repeat
them. So a folder, a bucket prefix or an archive of any audio becomes `ProbedFile`s like
Libri-Light's files, and everything after probing is one code path.

    <source>/...                      a folder or prefix: read in place, never copied
    <root>/audio/<archive>/...        an archive's extraction (same rules as Libri-Light's)
    <root>/vad/<sha[:2]>/<sha>-<settings>.json   computed voice activity, by file content
    <root>/manifest/segments.parquet  (+ rejects, summary, texts.parquet when there are texts)
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from codecflow.schemas.configs import AcquireSettings
from codecflow.schemas.sources import (
    ARCHIVE_SUFFIXES,
    ResolvedSource,
    is_archive,
    source_layout,
)
from codecflow.tasks.acquire.audio_files import (
    MetadataTable,
    SpeakerRule,
    default_metadata,
    list_audio_folders,
    read_metadata_table,
)
from codecflow.tasks.acquire.audio_probe import probe_audio_folder
from codecflow.tasks.acquire.hf_import import materialize_hf
from codecflow.tasks.acquire.layout import archive_folder
from codecflow.tasks.acquire.lhotse_import import lhotse_probes, lhotse_texts, read_lhotse
from codecflow.tasks.acquire.manifest import ManifestRecord, write_manifest
from codecflow.tasks.acquire.probe import BookListing, BookProbe, Reject
from codecflow.tasks.acquire.segments import SegmentPlan, plan_segments
from codecflow.tasks.acquire.vad import VadSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import join

__all__ = [
    "ARCHIVE_SUFFIXES",
    "AudioOptions",
    "audio_options",
    "HF_SAVED",
    "build_audio_manifest",
    "build_hf_manifest",
    "build_lhotse_manifest",
    "extraction_folder",
    "finish_audio_manifest",
    "is_archive",
    "probe_audio_source",
    "resolved_layout",
    "segment_texts",
    "table_rejects",
    "with_folder_metadata",
]


#: The one line for `speaker_from: table` with no table to read.
NO_TABLE = (
    "speaker_from 'table' needs a metadata table: set metadata, or put metadata.csv or "
    "metadata.jsonl in the source folder"
)

#: What a Hugging Face `save_to_disk` folder holds (a Dataset's info, a DatasetDict's splits).
HF_SAVED = ("dataset_info.json", "dataset_dict.json")


def resolved_layout(settings: AcquireSettings) -> str:
    """The layout of an acquire config: `schemas.sources.source_layout`, and "hf" for a local
    folder that Hugging Face's save_to_disk wrote."""
    layout = source_layout(settings.source, settings.layout)
    source = settings.source
    if settings.layout == "auto" and layout == "audio" and "://" not in source:
        if any(os.path.isfile(os.path.join(source, marker)) for marker in HF_SAVED):
            return "hf"
    return layout


def build_hf_manifest(
    settings: AcquireSettings, root: str, manifest_dir: str | None = None
) -> ManifestRecord:
    """`layout: hf`: the dataset's audio written under the root, then any folder of audio."""
    folder, table, has_speaker = materialize_hf(settings.source, root)
    speaker_from = "table" if has_speaker else "file"
    local = settings.model_copy(update={"metadata": table, "speaker_from": speaker_from})
    return build_audio_manifest(folder, root, local, manifest_dir)


class AudioOptions:
    """The settings a folder's probe needs, built once per run (the metadata table read once)."""

    def __init__(self, rule: SpeakerRule, table: MetadataTable | None, vad: VadSettings) -> None:
        self.rule, self.table, self.vad = rule, table, vad


def audio_options(settings: AcquireSettings) -> AudioOptions:
    """The speaker rule, the metadata table (read now: a missing one fails before probing) and
    the VAD settings of an acquire config."""
    if settings.md5 and not is_archive(settings.source):
        raise CodecflowError(f"md5 checks an archive; {settings.source} is a folder: leave md5 out")
    table = read_metadata_table(settings.metadata) if settings.metadata else None
    if settings.speaker_from == "table" and table is None:
        raise CodecflowError(NO_TABLE)
    vad = VadSettings(
        mode=settings.vad,
        threshold=settings.vad_threshold,
        min_speech_ms=settings.vad_min_speech_ms,
        min_silence_ms=settings.vad_min_silence_ms,
        target_len_sec=settings.target_len_sec,
    )
    return AudioOptions(SpeakerRule(settings.speaker_from, settings.speaker_regex), table, vad)


def table_rejects(table: MetadataTable | None, listings: Sequence[BookListing]) -> BookProbe:
    """The metadata table's rows whose audio is not in the source, as rejects."""
    if table is None:
        return BookProbe("", (), ())
    present = {
        posixpath.join(listing.book, name) if listing.book else name
        for listing in listings
        for name, _, _ in listing.entries
    }
    missing = sorted(path for path in table.rows if path not in present)
    reason = "metadata without audio: the table names a file the source does not hold"
    return BookProbe("", (), tuple(Reject(path, reason) for path in missing))


def probe_audio_source(
    audio_root: str, root: str, options: AudioOptions
) -> tuple[list[BookListing], list[BookProbe]]:
    """List the source's folders and probe each (in this process; the flow fans them out)."""
    listings = list_audio_folders(audio_root)
    cache = join(root, "vad")
    probes = [
        probe_audio_folder(audio_root, listing, options.rule, options.table, options.vad, cache)
        for listing in listings
    ]
    return listings, [*probes, table_rejects(options.table, listings)]


def segment_texts(plan: SegmentPlan, probes: Sequence[BookProbe]) -> dict[str, str]:
    """segment id -> the transcript of its file, for files cut into exactly one segment (a file
    cut into several has no word timings to divide its text by: its segments get none)."""
    text_of = {f.path: f.text for p in probes for f in p.files if f.text}
    by_file: dict[str, list[str]] = {}
    for row in plan.rows:
        by_file.setdefault(row["source_path"], []).append(row["segment_id"])
    return {
        ids[0]: text_of[path] for path, ids in by_file.items() if len(ids) == 1 and path in text_of
    }


def _summarised(
    plan: SegmentPlan, settings: AcquireSettings, texts: Mapping[str, str], layout: str = "audio"
) -> Any:
    summary = dict(plan.summary)
    summary["layout"] = layout
    summary["speaker_from"] = settings.speaker_from
    if settings.speaker_from == "file":
        # Each file its own speaker: the split holds out whole files, not whole voices.
        summary["speakers_note"] = "no speaker known: each file is its own speaker"
    summary["vad"] = settings.vad if layout == "audio" else "the source's supervisions"
    if layout == "lhotse":
        summary["speaker_from"] = "supervisions"
    summary["segments_with_text"] = len(texts)
    return SegmentPlan(plan.rows, plan.rejects, summary)


def finish_audio_manifest(
    audio_root: str,
    root: str,
    probes: Sequence[BookProbe],
    settings: AcquireSettings,
    manifest_dir: str | None = None,
) -> ManifestRecord:
    """Cut the probed files by VAD, select the hours, split speakers, and write the manifest
    with its texts under `<root>/manifest` (paths relative to `audio_root`)."""
    plan = plan_segments(
        probes, settings.target_len_sec, settings.target_hours, settings.val_fraction, settings.seed
    )
    texts = segment_texts(plan, probes)
    plan = _summarised(plan, settings, texts)
    return write_manifest(
        audio_root, manifest_dir or join(root, "manifest"), plan.rows, plan, texts
    )


def with_folder_metadata(settings: AcquireSettings, audio_root: str) -> AcquireSettings:
    """`settings` with `metadata` set to the folder's own table (a Hugging Face audiofolder's
    metadata.csv / .jsonl) when none is given and there is one."""
    if settings.metadata is not None:
        return settings
    found = default_metadata(audio_root)
    return settings if found is None else settings.model_copy(update={"metadata": found})


def build_audio_manifest(
    audio_root: str, root: str, settings: AcquireSettings, manifest_dir: str | None = None
) -> ManifestRecord:
    """Probe every audio file under `audio_root`, then `finish_audio_manifest`: the whole
    `layout: audio` acquisition of a source already on disk or in a bucket, in one call."""
    settings = with_folder_metadata(settings, audio_root)
    _, probes = probe_audio_source(audio_root, root, audio_options(settings))
    return finish_audio_manifest(audio_root, root, probes, settings, manifest_dir)


def build_lhotse_manifest(
    settings: AcquireSettings, root: str, manifest_dir: str | None = None
) -> ManifestRecord:
    """`layout: lhotse`: the recordings and supervisions of lhotse manifests into the segment
    manifest, each segment with the texts of its supervisions."""
    recordings = read_lhotse(settings.source, settings.supervisions)
    audio_root, probes = lhotse_probes(recordings)
    plan = plan_segments(
        probes, settings.target_len_sec, settings.target_hours, settings.val_fraction, settings.seed
    )
    texts = lhotse_texts(plan, recordings, audio_root)
    plan = _summarised(plan, settings, texts, "lhotse")
    manifest_dir = manifest_dir or join(root, "manifest")
    return write_manifest(audio_root, manifest_dir, plan.rows, plan, texts)


def extraction_folder(root: str, source: ResolvedSource) -> str:
    """Where an archive of `layout: audio` is extracted: `<root>/audio/<archive_folder>` (the
    name Libri-Light's extraction under `<root>/librilight/` takes too)."""
    return join(root, "audio", archive_folder(source))
