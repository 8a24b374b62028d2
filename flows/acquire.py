"""The acquire flow: Libri-Light archives -> extracted audio -> probed files -> segment manifest;
with `layout: audio`, any folder, bucket prefix or archive of speech (VAD computed, speakers and
transcripts found: `tasks.acquire.ingest`).

    fetch (resumable, md5-verified) -> extract (tar `data`-filter rules)      per archive
    list books -> probe each book (mapped, cached on the book's listing)      fan-out
    plan segments (cut_by_vad, hours subset, speaker split) -> [FLAC per book] -> manifest

Probing fans out as mapped tasks on Prefect's default runner, or on a Dask cluster with
`workers > 0` / `dask_address`; both produce the same manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait

from codecflow.flows._common import publish_link, run_on_runner, unless_committed
from codecflow.schemas.configs import AcquireConfig, AcquireSettings
from codecflow.schemas.sources import SourceSpecError, resolve_sources
from codecflow.tasks.acquire.ingest import (
    audio_options,
    extraction_folder,
    is_archive,
    resolved_layout,
    table_rejects,
    with_folder_metadata,
)
from codecflow.tasks.acquire.layout import (
    ROOT_COMMITTED,
    ROOT_KIND,
    archive_folder,
    download_dir,
    rows_by_book,
)
from codecflow.tasks.acquire.manifest import ManifestRecord, format_summary
from codecflow.tasks.acquire.marker import check_reuse, is_extracted
from codecflow.tasks.acquire.probe import BookProbe, refused_members_probe
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.prefect.data_tasks import (
    extract_task,
    fetch_task,
    import_hf_task,
    import_lhotse_task,
    list_audio_task,
    list_books_task,
    plan_segments_task,
    probe_audio_task,
    probe_book_task,
    stream_extract_task,
    write_audio_manifest_task,
    write_flacs_task,
    write_manifest_task,
)

__all__ = ["acquire_flow", "run_acquire"]


@flow(name="acquire")
def acquire_flow(cfg: AcquireConfig = AcquireConfig()) -> ManifestRecord:  # noqa: B008
    """Fetch, verify, extract, probe, segment, select hours, split speakers, write the manifest."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    # The whole run holds the root's lock and writes only into a root that is ours.
    with outputs.owned_output(cfg.root, ROOT_KIND, "acquire", ROOT_COMMITTED):
        return _acquire(cfg)


def _acquire(cfg: AcquireConfig) -> ManifestRecord:
    layout = resolved_layout(cfg)
    if layout == "audio":
        return _acquire_audio(cfg)
    if layout in ("lhotse", "hf"):
        return _acquire_imported(cfg, layout)
    logger = get_run_logger()
    try:
        sources = resolve_sources(cfg.source, cfg.md5, cfg.mirror)
    except SourceSpecError as err:
        raise CodecflowError(str(err)) from None
    archives: list[str] = []
    refused: list[BookProbe] = []  # the tar members each extraction refused, as rejects
    for source in sources:
        archive = archive_folder(source)
        dest = storage.join(cfg.root, "librilight", archive)
        # Another archive's extraction there is refused before anything is fetched.
        check_reuse(dest, source.url, source.md5)
        extracted = is_extracted(dest)
        if cfg.keep_archive:
            download = download_dir(cfg.root, cfg.download_dir) / Path(source.url).name
            # An archive already extracted is not fetched again, even if its tar was deleted.
            fetched = unless_committed(fetch_task, download.is_file() or extracted)(
                source.url, download, source.md5, dest
            )
            extraction = unless_committed(extract_task, extracted)(fetched, dest)
        else:
            extraction = unless_committed(stream_extract_task, extracted)(
                source.url, dest, source.md5
            )
        archives.append(archive)
        refused.append(refused_members_probe(archive, extraction.refused))

    listings = list_books_task(cfg.root, archives)
    logger.info("probing %d book folders", len(listings))
    probes = probe_book_task.map(unmapped(cfg.root), listings)
    wait(probes)
    plan = plan_segments_task(
        [p.result() for p in probes] + refused,
        cfg.target_len_sec,
        cfg.target_hours,
        cfg.val_fraction,
        cfg.seed,
    )
    rows: list[dict[str, Any]] = list(plan.rows)
    if cfg.segments_as == "flac":
        written = write_flacs_task.map(unmapped(cfg.root), rows_by_book(rows))
        rows = sorted((r for f in written for r in f.result()), key=lambda r: r["segment_id"])
    manifest_dir = storage.join(cfg.root, "manifest")
    record: ManifestRecord = unless_committed(
        write_manifest_task, storage.exists(storage.join(manifest_dir, "segments.parquet"))
    )(cfg.root, manifest_dir, rows, plan)

    _publish(record, plan.summary, manifest_dir)
    return record


def _publish(record: ManifestRecord, summary: dict[str, Any], manifest_dir: str) -> None:
    text = format_summary(summary)
    print(text, flush=True)
    create_markdown_artifact(
        key="acquire-summary", markdown=f"```\n{text}\n```", description=record.path
    )
    publish_link(
        "segment-manifest",
        manifest_dir,
        "open the manifest folder",
        "segments.parquet, rejects.parquet, summary.json",
    )


def _audio_root(cfg: AcquireConfig) -> str:
    """The folder probed: the source itself, or an archive's extraction under the root."""
    if not is_archive(cfg.source):
        return cfg.source
    try:
        [source] = resolve_sources(cfg.source, cfg.md5, cfg.mirror)
    except SourceSpecError as err:
        raise CodecflowError(str(err)) from None
    dest = extraction_folder(cfg.root, source)
    check_reuse(dest, source.url, source.md5)
    extracted = is_extracted(dest)
    download = download_dir(cfg.root, cfg.download_dir) / Path(source.url).name
    fetched = unless_committed(fetch_task, download.is_file() or extracted)(
        source.url, download, source.md5, dest
    )
    unless_committed(extract_task, extracted)(fetched, dest)
    return dest


def _acquire_imported(cfg: AcquireConfig, layout: str) -> ManifestRecord:
    """`layout: lhotse` (a CutSet, or a RecordingSet and its SupervisionSet) or `hf` (a
    Hugging Face dataset saved by save_to_disk), in one task each."""
    settings = AcquireSettings(**cfg.model_dump(include=set(AcquireSettings.model_fields)))
    manifest_dir = storage.join(cfg.root, "manifest")
    task = import_lhotse_task if layout == "lhotse" else import_hf_task
    record: ManifestRecord = unless_committed(
        task, storage.exists(storage.join(manifest_dir, "segments.parquet"))
    )(settings, cfg.root)
    _publish(record, storage.read_json(record.summary_path), manifest_dir)
    return record


def _acquire_audio(cfg: AcquireConfig) -> ManifestRecord:
    """`layout: audio`: any folder, prefix or archive of speech, VAD computed where missing."""
    audio_root = _audio_root(cfg)
    listings = list_audio_task(audio_root)
    get_run_logger().info("probing %d audio folders", len(listings))
    settings = AcquireSettings(**cfg.model_dump(include=set(AcquireSettings.model_fields)))
    settings = with_folder_metadata(settings, audio_root)
    probes = probe_audio_task.map(
        unmapped(audio_root), listings, unmapped(settings), unmapped(cfg.root)
    )
    wait(probes)
    found = [p.result() for p in probes]
    options = audio_options(settings)
    found.append(table_rejects(options.table, listings))
    manifest_dir = storage.join(cfg.root, "manifest")
    record: ManifestRecord = unless_committed(
        write_audio_manifest_task, storage.exists(storage.join(manifest_dir, "segments.parquet"))
    )(audio_root, cfg.root, found, settings)
    _publish(record, storage.read_json(record.summary_path), manifest_dir)
    return record


def run_acquire(cfg: AcquireConfig) -> ManifestRecord:
    """Run the acquire flow on the runner its config asks for (default, or Dask)."""
    result: ManifestRecord = run_on_runner(
        acquire_flow,
        cfg,
        cfg.workers,
        cfg.dask_address,
        storage_root=cfg.root,
        slurm=cfg.slurm,
    )
    return result
