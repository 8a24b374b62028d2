"""The pipeline's first two stages as plain calls, for a notebook or a script: no Prefect server,
the same functions the flows run. They need the `pipeline` extra (downloads, resampling, Silero
VAD), so `import codecflow` loads this module only when one of them is first used.

    import codecflow

    manifest = codecflow.ingest("my_recordings/", "runs/mine")  # any folder of speech
    dataset = codecflow.tokenize(manifest, "runs/mine/tokens", tokenizer="mimi_8_rvq")
    ds = codecflow.open_dataset(dataset)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codecflow.schemas.configs import AcquireSettings, TokenizeSettings
from codecflow.schemas.sources import resolve_sources
from codecflow.tasks.acquire.download import fetch
from codecflow.tasks.acquire.extract import ExtractLimits, acquired_member, extract_tar_safely
from codecflow.tasks.acquire.ingest import (
    build_audio_manifest,
    build_hf_manifest,
    build_lhotse_manifest,
    extraction_folder,
    is_archive,
    resolved_layout,
)
from codecflow.tasks.acquire.layout import (
    ROOT_COMMITTED,
    ROOT_KIND,
    archive_folder,
    download_dir,
)
from codecflow.tasks.acquire.manifest import build_segment_manifest
from codecflow.tasks.acquire.marker import check_reuse, is_extracted
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.tokenize.finalize import tokenize_manifest

__all__ = ["ingest", "tokenize"]


def _extracted(settings: AcquireSettings, root: str, layout: str) -> list[str]:
    """Fetch (resumable, md5-checked) and extract each archive the source names, unless it is
    extracted already; the folders, as the layout names them."""
    folders = []
    for source in resolve_sources(settings.source, settings.md5, settings.mirror):
        if layout == "audio":
            dest = extraction_folder(root, source)
        else:
            dest = storage.join(root, "librilight", archive_folder(source))
        check_reuse(dest, source.url, source.md5)
        if not is_extracted(dest):
            target = download_dir(root, None) / Path(source.url).name
            fetched = fetch(source.url, target, source.md5)
            limits = ExtractLimits(keep=acquired_member)
            extract_tar_safely(
                fetched.path,
                dest,
                expected_md5=fetched.md5 or None,
                source=source.url,
                limits=limits,
            )
        folders.append(dest)
    return folders


def ingest(source: str, root: str, **settings: Any) -> str:
    """Any source of speech into a segment manifest under `root`; its path.

    `source` is a folder, a bucket prefix (`s3://...`) or an archive (`.tar`, `.tar.gz`; local or
    http(s)) of audio in any format libsndfile decodes, a lhotse CutSet or RecordingSet (JSONL;
    `supervisions=` with a RecordingSet), a Hugging Face dataset saved by `save_to_disk` (with an
    Audio column), or a Libri-Light archive name. The other
    settings are `codecflow acquire`'s (`speaker_from`, `metadata`, `vad`, `target_len_sec`,
    `val_fraction`, ...; `codecflow acquire --help` lists them). A manifest already committed
    under `root` is returned as it is.

    Example:
        ```python
        manifest = codecflow.ingest("LibriSpeech/dev-clean", "runs/ls", speaker_from="grandparent")
        ```
    """
    config = AcquireSettings(source=source, **settings)
    layout = resolved_layout(config)
    manifest = storage.join(root, "manifest", "segments.parquet")
    with outputs.owned_output(root, ROOT_KIND, "ingest", ROOT_COMMITTED):
        if storage.exists(manifest):
            return manifest
        if layout == "lhotse":
            return build_lhotse_manifest(config, root).path
        if layout == "hf":
            return build_hf_manifest(config, root).path
        if layout == "audio":
            audio_root = _extracted(config, root, layout)[0] if is_archive(source) else source
            return build_audio_manifest(audio_root, root, config).path
        archives = [Path(folder).name for folder in _extracted(config, root, layout)]
        return build_segment_manifest(
            root,
            archives,
            target_len_sec=config.target_len_sec,
            target_hours=config.target_hours,
            val_fraction=config.val_fraction,
            seed=config.seed,
            segments_as=config.segments_as,
        ).path


def tokenize(manifest: str, out: str, tokenizer: str = "mu-law-256", **settings: Any) -> str:
    """Tokenize a segment manifest into a token dataset at `out`; its path.

    `tokenizer` is any name `codecflow tokenizers` lists; the other settings are `codecflow
    tokenize`'s (`formats`, `shard_hours`, ...). A committed dataset with the same fingerprint is
    returned as it is; an interrupted one resumes.

    Example:
        ```python
        dataset = codecflow.tokenize(manifest, "runs/ls/tokens/mimi8", tokenizer="mimi_8_rvq")
        ```
    """
    record = tokenize_manifest(manifest, out, TokenizeSettings(tokenizer=tokenizer, **settings))
    return str(record.path)
