"""Where acquire puts things under its root, and how it groups work: plain functions the acquire
flow calls (it holds no logic of its own beyond ordering the tasks).

    <root>/download/<archive file>        fetched tars (`download_dir`; kept with keep_archive)
    <root>/librilight/<archive>/          one extraction per archive (`archive_folder`)
    <root>/manifest/segments.parquet      the manifest, written last
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codecflow.schemas.sources import ResolvedSource
from codecflow.tasks.core import storage

__all__ = [
    "ROOT_COMMITTED",
    "ROOT_KIND",
    "archive_folder",
    "download_dir",
    "rows_by_book",
]

#: The kind of folder an acquire run owns (`tasks.core.outputs`), and what shows one written
#: before the ownership markers existed.
ROOT_KIND = "acquire root"
ROOT_COMMITTED = ("manifest/segments.parquet", "librilight/*/.extracted.json")


def download_dir(root: str, download_to: str | None) -> Path:
    """Where tars are fetched: `download_to` when set, else `<root>/download`, or the local
    cache when the root is remote (not the working folder: a checkout, say)."""
    if download_to:
        return Path(download_to)
    if storage.is_remote(root):
        return storage.cache_root() / "download"
    return Path(storage.join(root, "download"))


def archive_folder(source: ResolvedSource) -> str:
    """The extraction folder's name: the URL's basename without suffixes (`small.tar` ->
    `small`), else the source's name. Another archive extracted under the same name is refused
    (`tasks.acquire.marker.check_reuse`), never reused or replaced."""
    return Path(source.url.rstrip("/")).name.split(".")[0] or source.name


def rows_by_book(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Manifest rows grouped by their book's folder, in first-seen order: one FLAC-writing task
    per book."""
    by_book: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_book.setdefault(os.path.dirname(row["source_path"]), []).append(row)
    return list(by_book.values())
