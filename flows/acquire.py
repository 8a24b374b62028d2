"""The acquire flow: fetch a Libri-Light-format tar, extract it safely, cut segments by VAD."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from prefect import flow

from flows._common import unless_committed
from schemas.configs import AcquireConfig
from tasks.extract import EXTRACTED_MARKER
from tasks.segments import ManifestRecord
from tasks.wrappers import extract_task, fetch_task, manifest_task

__all__ = ["acquire_flow"]


@flow(name="acquire")
def acquire_flow(cfg: AcquireConfig = AcquireConfig()) -> ManifestRecord:  # noqa: B008
    """Download (resumable, md5-verified), extract (tar `data`-filter rules), segment, split."""
    out = Path(cfg.out)
    archive_name = Path(urlparse(cfg.source).path).name or "source.tar"
    download = out / "download" / archive_name
    extracted = out / "librilight"
    manifest = out / "segments.parquet"

    fetched = unless_committed(fetch_task, download.is_file())(cfg.source, download, cfg.md5)
    root = unless_committed(extract_task, (extracted / EXTRACTED_MARKER).is_file())(
        fetched, extracted
    )
    return unless_committed(manifest_task, manifest.is_file())(
        root, manifest, cfg.target_len_sec, cfg.val_fraction, cfg.seed
    )
