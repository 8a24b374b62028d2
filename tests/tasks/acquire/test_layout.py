"""Where acquire puts things, and how it groups the FLAC writing (plain functions the flow uses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codecflow.schemas.sources import resolve_sources
from codecflow.tasks.acquire.layout import archive_folder, download_dir, rows_by_book
from codecflow.tasks.core.storage import CACHE_ENV


def test_archive_folders_are_the_url_basename_without_suffixes() -> None:
    assert [archive_folder(s) for s in resolve_sources("unlab-6k")] == ["small", "medium"]
    (local,) = resolve_sources("/data/my-corpus.tar.gz")
    assert archive_folder(local) == "my-corpus"


def test_downloads_go_beside_a_local_root_and_to_the_cache_for_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert download_dir("runs/x", None) == Path("runs/x/download")
    assert download_dir("runs/x", "/big/disk") == Path("/big/disk")
    assert download_dir("s3://bucket/root", None) == tmp_path / "cache" / "download"


def test_rows_are_grouped_by_book_in_first_seen_order() -> None:
    rows = [
        {"source_path": "ll/small/1/book-a/x.flac", "i": 0},
        {"source_path": "ll/small/2/book-b/y.flac", "i": 1},
        {"source_path": "ll/small/1/book-a/z.flac", "i": 2},
    ]
    assert [[r["i"] for r in group] for group in rows_by_book(rows)] == [[0, 2], [1]]
