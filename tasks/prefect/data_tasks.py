"""Prefect tasks of the data stages (`tasks.acquire`, `tasks.tokenize`): thin wrappers over their
plain functions, adding caching and retries (`tasks.prefect.wrappers` holds the training and
evaluation tasks, and says how tasks are cached).

Apart from the other stages' tasks because nothing here needs torch: a flow of these tasks
(acquire, tokenize) starts without importing it, 0.9 s of every such command on the 2-core VM
(`python -X importtime`). The tokenizer loaders are keyed by name (`content_key` reads their
source without importing them); a neural tokenizer imports them when it encodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from codecflow.schemas.configs import AcquireSettings, TokenizeSettings
from codecflow.tasks.acquire import (
    audio_files,
    audio_probe,
    download,
    extract,
    ingest,
    members,
    probe,
    segments,
    sinks,
    stream,
    vad,
)
from codecflow.tasks.acquire import manifest as segment_manifest
from codecflow.tasks.acquire import marker as extraction
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import is_transient_chain
from codecflow.tasks.core.progress import TqdmProgress, combine
from codecflow.tasks.data import records, token_dataset
from codecflow.tasks.prefect.caching import content_key
from codecflow.tasks.prefect.progress import PrefectProgress
from codecflow.tasks.tokenize import finalize, shards
from codecflow.tasks.tokenize import plan as token_plan

__all__ = [
    "CACHED",
    "RETRIED",
    "extract_task",
    "fetch_task",
    "finalize_dataset_task",
    "import_hf_task",
    "import_lhotse_task",
    "list_audio_task",
    "list_books_task",
    "plan_segments_task",
    "plan_tokens_task",
    "probe_audio_task",
    "probe_book_task",
    "stream_extract_task",
    "write_audio_manifest_task",
    "write_flacs_task",
    "write_manifest_task",
    "write_shards_task",
]


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network errors only (`errors.is_transient`): bad input, a full disk or a read-only
    mount fail at once, with their one-line message, instead of three retries later."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classified, not swallowed
        return is_transient_chain(exc)
    return False


CACHED: dict[str, Any] = {"persist_result": True}

RETRIED: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_condition_fn": _retry_if_transient,
}


@task(name="fetch", cache_key_fn=content_key(code=(download,)), **RETRIED, **CACHED)
def fetch_task(
    source: str, dest: Path, md5: str | None, extracted_dest: str
) -> download.FetchRecord:
    """Download `source` to `dest` (resuming a `.part`), verifying its md5, with progress.

    An archive already extracted at `extracted_dest` is not fetched again: its record comes from
    the extraction marker, so a re-run downloads nothing even when the tar was deleted.
    """
    if extraction.is_extracted(extracted_dest):
        # Only this archive's extraction stands in for its download (same md5, or same URL).
        extraction.check_reuse(extracted_dest, source, md5)
        marker = storage.read_json(storage.join(extracted_dest, extraction.EXTRACTED_MARKER))
        size = int(marker.get("archive_size", 0))
        return download.FetchRecord(Path(dest), marker["md5"], size, size, source)
    with TqdmProgress(Path(dest).name) as bar:
        reporter = combine(bar, PrefectProgress(f"download-{Path(dest).stem}", source))
        return download.fetch(source, Path(dest), md5, progress=reporter)


@task(
    name="extract", cache_key_fn=content_key(code=(extract, extraction, members, sinks)), **CACHED
)
def extract_task(archive: download.FetchRecord, dest: str) -> extraction.ExtractRecord:
    """Extract the downloaded tar safely (keyed on the tar's md5: an extraction of another
    archive at `dest` is refused, not reused)."""
    return extract.extract_tar_safely(
        archive.path, dest, expected_md5=archive.md5 or None, source=archive.source, limits=_AUDIO
    )


#: Acquire extracts only what it reads (audio, metadata, transcripts), within the expansion bound.
_AUDIO = extract.ExtractLimits(keep=extract.acquired_member)


@task(
    name="stream-extract",
    cache_key_fn=content_key(code=(stream, extract, extraction, members, sinks)),
    **RETRIED,
    **CACHED,
)
def stream_extract_task(source: str, dest: str, md5: str | None) -> extraction.ExtractRecord:
    """Extract `source` as it streams, storing no tar (the md5 is checked at the end)."""
    with stream.open_source_stream(source) as source_stream:
        return extract.extract_tar_safely(
            source_stream, dest, expected_md5=md5, description=source, source=source, limits=_AUDIO
        )


@task(name="list-books", **RETRIED)
def list_books_task(root: str, archives: list[str]) -> list[probe.BookListing]:
    """List the book folders of the extracted archives with file sizes and stamps (not cached:
    the listing is what tells a changed file from an unchanged one)."""
    return probe.list_books(root, archives)


@task(name="probe-book", cache_key_fn=content_key(code=(probe,)), **RETRIED, **CACHED)
def probe_book_task(root: str, listing: probe.BookListing) -> probe.BookProbe:
    """Probe one book's files; cached on its listing, so unchanged books are not re-read."""
    return probe.probe_book(root, listing)


@task(
    name="import-lhotse",
    cache_key_fn=content_key("settings.source", "settings.supervisions", code=(ingest,)),
    **CACHED,
)
def import_lhotse_task(settings: AcquireSettings, root: str) -> segment_manifest.ManifestRecord:
    """lhotse manifests into the segment manifest (its supervisions are the speech and text)."""
    return ingest.build_lhotse_manifest(settings, root)


@task(name="import-hf", **CACHED)
def import_hf_task(settings: AcquireSettings, root: str) -> segment_manifest.ManifestRecord:
    """A Hugging Face dataset saved by save_to_disk, its audio written under the root, into the
    segment manifest (not cached: it writes the audio folder the manifest points at)."""
    return ingest.build_hf_manifest(settings, root)


@task(name="list-audio", **RETRIED)
def list_audio_task(audio_root: str) -> list[probe.BookListing]:
    """List the folders of an audio source with file sizes and stamps (not cached, as
    `list_books_task`)."""
    return audio_files.list_audio_folders(audio_root)


@task(
    name="probe-audio",
    cache_key_fn=content_key("settings.metadata", code=(probe, audio_probe, audio_files, vad)),
    **RETRIED,
    **CACHED,
)
def probe_audio_task(
    audio_root: str, listing: probe.BookListing, settings: AcquireSettings, root: str
) -> probe.BookProbe:
    """Decode, find speech (Silero, cached per file) and name the speakers of one folder."""
    options = ingest.audio_options(settings)
    return audio_probe.probe_audio_folder(
        audio_root, listing, options.rule, options.table, options.vad, storage.join(root, "vad")
    )


@task(name="write-audio-manifest", cache_key_fn=content_key(code=(segments, ingest)), **CACHED)
def write_audio_manifest_task(
    audio_root: str, root: str, probes: list[probe.BookProbe], settings: AcquireSettings
) -> segment_manifest.ManifestRecord:
    """Cut, split and write the manifest with its texts (the commit is segments.parquet)."""
    return ingest.finish_audio_manifest(audio_root, root, probes, settings)


@task(name="plan-segments", cache_key_fn=content_key(code=(segments,)), **CACHED)
def plan_segments_task(
    probes: list[probe.BookProbe],
    target_len_sec: float,
    target_hours: float | None,
    val_fraction: float,
    seed: int,
) -> segments.SegmentPlan:
    """Cut by VAD, select the hours, split speakers."""
    return segments.plan_segments(probes, target_len_sec, target_hours, val_fraction, seed)


@task(name="write-segment-flacs", **RETRIED)
def write_flacs_task(root: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write one book's segments as FLAC files (files already complete are kept)."""
    return segment_manifest.write_segment_flacs(root, rows)


@task(name="segment-manifest", cache_key_fn=content_key(code=(segment_manifest,)), **CACHED)
def write_manifest_task(
    root: str, manifest_dir: str, rows: list[dict[str, Any]], plan: segments.SegmentPlan
) -> segment_manifest.ManifestRecord:
    """Write rejects.parquet, summary.json, then segments.parquet (the commit)."""
    return segment_manifest.write_manifest(root, manifest_dir, rows, plan)


@task(
    name="plan-tokens",
    cache_key_fn=content_key("manifest", code=(token_plan, token_dataset)),
    **CACHED,
)
def plan_tokens_task(manifest: str, out: str, settings: TokenizeSettings) -> token_plan.DatasetPlan:
    """Plan the shards of a token dataset and write plan.parquet."""
    return token_plan.plan_dataset(manifest, out, settings)


@task(
    name="write-shards",
    cache_key_fn=content_key(code=(shards, token_plan, records, "codecflow.tasks.loaders")),
    **RETRIED,
    **CACHED,
)
def write_shards_task(
    plan: token_plan.DatasetPlan, names: tuple[str, ...]
) -> list[records.ShardMarker]:
    """Encode and commit a group of shards (committed ones are skipped), with a progress
    artifact in seconds of audio."""
    first = names[0] if names else "shards"
    with PrefectProgress(f"tokenize-{first}", f"tokenize {first}", unit="s audio") as artifact:
        return shards.write_shard_group(plan, names, progress=artifact)


@task(
    name="finalize-dataset",
    cache_key_fn=content_key(code=(finalize, token_dataset, records)),
    **CACHED,
)
def finalize_dataset_task(
    plan: token_plan.DatasetPlan, markers: list[records.ShardMarker]
) -> token_dataset.DatasetRecord:
    """Write rejects, the size report, and dataset.json last."""
    return finalize.finalize_dataset(plan, markers)
