"""The disk a pipeline's acquisition takes before any token exists: what `codecflow plan`
prints under `download`.

A named Libri-Light archive or split has the size Libri-Light publishes (schemas/sources.py:
"medium" is a 321 GB tar); a local archive has its size on disk; a URL's size is known only
once its server answers. Extraction writes about as much again: the archives hold FLAC files,
which a tar stores as they are. With `keep_archive: false` the tar is streamed and never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codecflow.schemas.configs import AcquireSettings
from codecflow.schemas.sources import is_archive, resolve_sources, source_layout
from codecflow.tasks.core import storage
from codecflow.tasks.core.progress import format_bytes

__all__ = ["DownloadPlan", "download_rows", "plan_download"]


@dataclass(frozen=True)
class DownloadPlan:
    """The archives an acquisition fetches and the disk they take."""

    archives: tuple[tuple[str, int | None], ...]  # (file, bytes; None: unknown before fetching)
    keep_archive: bool
    in_place: str | None  # why nothing is downloaded (a folder read where it is), else None

    @property
    def archive_bytes(self) -> int | None:
        sizes = [size for _, size in self.archives]
        return None if None in sizes else sum(s for s in sizes if s is not None)

    @property
    def peak_bytes(self) -> int | None:
        """The tars (when kept) and their extraction together."""
        size = self.archive_bytes
        return None if size is None else size * (2 if self.keep_archive else 1)


def plan_download(acquire: AcquireSettings) -> DownloadPlan:
    """What `acquire` fetches for the source it names, without fetching anything."""
    source = acquire.source
    layout = source_layout(source, acquire.layout)
    if layout != "librilight" and not is_archive(source):
        return DownloadPlan((), acquire.keep_archive, f"{layout} source, read where it is")
    archives: list[tuple[str, int | None]] = []
    for resolved in resolve_sources(source, acquire.md5, acquire.mirror):
        size = resolved.approx_bytes
        if size is None and not storage.is_remote(resolved.url) and Path(resolved.url).is_file():
            size = Path(resolved.url).stat().st_size
        archives.append((Path(resolved.url).name, size))
    return DownloadPlan(tuple(archives), acquire.keep_archive, None)


def download_rows(plan: DownloadPlan) -> list[str]:
    """The `codecflow plan` lines of a download."""
    if plan.in_place is not None:
        return [f"download         none ({plan.in_place})"]
    files = ", ".join(
        f"{name} {format_bytes(size) if size is not None else '(size known once fetched)'}"
        for name, size in plan.archives
    )
    rows = [f"download         {files}"]
    total, peak = plan.archive_bytes, plan.peak_bytes
    if total is not None and peak is not None:
        if plan.keep_archive:
            rows.append(
                f"disk for audio   {format_bytes(peak)}: {format_bytes(total)} of tar + about "
                f"{format_bytes(total)} extracted (acquire.keep_archive=false: no tar kept)"
            )
        else:
            rows.append(f"disk for audio   about {format_bytes(peak)} extracted (no tar kept)")
    return rows
