"""Writing the segment manifest with its rejects table (the acquire stage's commit).

Plain functions over a storage root that is a local folder or any fsspec URL (`s3://...`):

    <root>/librilight/<archive>/<subset>/<speaker>/<book>/<file>.flac + .json   (extracted)
    <root>/segments/<speaker>/<book>/<segment_id>.flac     (only with segments_as="flac")
    <root>/manifest/rejects.parquet, summary.json, segments.parquet (written last: the commit)
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import soundfile as sf

from codecflow.schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    REJECTS_SCHEMA,
    SEGMENT_MANIFEST_SCHEMA,
    SPLITS,
    TEXTS_NAME,
    TEXTS_SCHEMA,
)
from codecflow.tasks.acquire.probe import SUMMARY_REFUSED_SHOWN, list_books, probe_book
from codecflow.tasks.acquire.segments import SegmentPlan, plan_segments
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import (
    is_remote,
    join,
    open_atomic_write,
    url_to_fs,
    write_parquet,
)
from codecflow.tasks.data.manifest import read_segment_audio

__all__ = [
    "ManifestRecord",
    "build_segment_manifest",
    "format_summary",
    "write_manifest",
    "write_segment_flacs",
]


@dataclass(frozen=True)
class ManifestRecord:
    """A committed segment manifest and its headline numbers."""

    path: str
    rejects_path: str
    summary_path: str
    n_segments: int
    n_train: int
    n_val: int
    audio_hours: float  # sum of segment durations (VAD speech only, gaps dropped)
    n_speakers: int
    n_rejects: int


def write_segment_flacs(root: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Write each row's audio as its own FLAC (like cut_by_vad.py) under `<root>/segments/`.

    Returns the rows pointing at the new files (one chunk: the whole file). A file already there
    with the right length is kept, so a re-run writes only what is missing.
    """
    fs, base = url_to_fs(root)
    out: list[dict[str, Any]] = []
    for row in rows:
        rel = posixpath.join(
            "segments", row["speaker"], row["book_id"], f"{row['segment_id']}.flac"
        )
        audio = read_segment_audio(root, row, downmix=False)  # [T] or [T, C]
        target = posixpath.join(base, rel)
        if not _flac_has_frames(fs, target, len(audio)):
            buffer = io.BytesIO()
            sf.write(buffer, audio, int(row["sample_rate"]), format="FLAC", subtype="PCM_16")
            with open_atomic_write(join(root, rel)) as f:
                f.write(buffer.getvalue())
        duration = len(audio) / int(row["sample_rate"])
        out.append(
            {
                **row,
                "source_path": rel,
                "start_s": 0.0,
                "end_s": duration,
                "duration_s": duration,
                "chunks": [{"start_s": 0.0, "end_s": duration}],
            }
        )
    return out


def _flac_has_frames(fs: fsspec.AbstractFileSystem, path: str, frames: int) -> bool:
    if not fs.exists(path):
        return False
    try:
        with fs.open(path, "rb") as f:
            return bool(sf.info(f).frames == frames)
    except RuntimeError:
        return False


def write_manifest(
    root: str,
    manifest_dir: str,
    rows: Sequence[Mapping[str, Any]],
    plan: SegmentPlan,
    texts: Mapping[str, str] | None = None,
) -> ManifestRecord:
    """Write rejects.parquet, summary.json and, when the source has transcripts, texts.parquet
    (segment id -> text), then segments.parquet last (the commit). `root` is the audio root the
    rows' paths are relative to."""
    if not rows:
        where = join(root, "librilight") if texts is None else root
        hint = "" if texts is not None else "; a folder of plain audio: --set layout=audio"
        raise CodecflowError(
            f"no usable {'Libri-Light files' if texts is None else 'audio files'} under {where}: "
            f"{plan.summary['files_rejected']} rejected ({plan.summary['rejected_by_reason']})"
            f"{hint}"
        )
    if is_remote(root) or is_remote(manifest_dir):
        audio_root = str(root)
    else:
        audio_root = posixpath.relpath(
            url_to_fs(root)[1], url_to_fs(manifest_dir)[1]
        )  # relative: the run folder can move
    rejects_path = join(manifest_dir, "rejects.parquet")
    summary_path = join(manifest_dir, "summary.json")
    manifest_path = join(manifest_dir, "segments.parquet")
    rejects = pa.Table.from_pylist(
        [{"path": r.path, "reason": r.reason} for r in plan.rejects], schema=REJECTS_SCHEMA
    )
    write_parquet(rejects_path, rejects)
    if texts is not None:
        table = pa.Table.from_pylist(
            [{"segment_id": k, "text": v} for k, v in sorted(texts.items())], schema=TEXTS_SCHEMA
        )
        write_parquet(join(manifest_dir, TEXTS_NAME), table)
    summary = {**plan.summary, "manifest": manifest_path, "rejects": rejects_path}
    with open_atomic_write(summary_path) as f:
        f.write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: audio_root.encode()})
    write_parquet(manifest_path, pa.Table.from_pylist(list(rows), schema=schema))
    n_val = sum(r["split"] == "val" for r in rows)
    return ManifestRecord(
        path=manifest_path,
        rejects_path=rejects_path,
        summary_path=summary_path,
        n_segments=len(rows),
        n_train=len(rows) - n_val,
        n_val=n_val,
        audio_hours=sum(r["duration_s"] for r in rows) / 3600.0,
        n_speakers=len({r["speaker"] for r in rows}),
        n_rejects=len(plan.rejects),
    )


def build_segment_manifest(
    root: str,
    archives: Sequence[str],
    manifest_dir: str | None = None,
    *,
    target_len_sec: float = 60.0,
    target_hours: float | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    segments_as: str = "references",
) -> ManifestRecord:
    """List, probe, plan and write in one call (the flow runs the same steps fanned out)."""
    probes = [probe_book(root, listing) for listing in list_books(root, archives)]
    plan = plan_segments(probes, target_len_sec, target_hours, val_fraction, seed)
    rows: Sequence[Mapping[str, Any]] = plan.rows
    if segments_as == "flac":
        rows = write_segment_flacs(root, rows)
    return write_manifest(root, manifest_dir or join(root, "manifest"), rows, plan)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-screen summary every acquire run prints."""
    reasons = summary["rejected_by_reason"]
    lines = [
        f"files seen       {summary['files_seen']:>10,}",
        f"  accepted       {summary['files_accepted']:>10,}"
        f"   ({summary['files_flagged_not_16k_mono']} not 16 kHz mono: resampled on read)",
        f"  rejected       {summary['files_rejected']:>10,}",
        *(f"    {reason:<28} {count:>6,}" for reason, count in reasons.items()),
        f"speech hours     {summary['accepted_speech_hours']:>10.3f} accepted,"
        f" {summary['hours']:.3f} selected"
        + (f" (target {summary['target_hours']} h)" if summary["target_hours"] else ""),
        f"audio bytes      {summary['accepted_audio_bytes']:>10,} accepted,"
        f" {summary['selected_audio_bytes']:,} selected",
        f"segments         {summary['segments']:>10,} from {summary['speakers']} speakers"
        f" (<= {summary['target_len_sec']} s each)",
    ]
    for split in SPLITS:
        s = summary[split]
        lines.append(
            f"  {split:<14} {s['segments']:>10,} segments, {s['hours']:.3f} h,"
            f" {s['speakers']} speakers"
        )
    if summary.get("layout") in ("audio", "lhotse"):
        lines.append(
            f"transcripts      {summary['segments_with_text']:>10,} segments with text;"
            f" VAD {summary['vad']}, speakers by {summary['speaker_from']}"
        )
        if summary.get("speakers_note"):
            lines.append(f"  note: {summary['speakers_note']}")
    return "\n".join(lines + _refused_lines(summary.get("refused_tar_members", [])))


def _refused_lines(refused: Sequence[Mapping[str, str]]) -> list[str]:
    """The refused tar members, by name and reason (the first few; all are in summary.json)."""
    if not refused:
        return []
    lines = [f"refused tar members (not extracted, counted in rejected): {len(refused):,}"]
    for item in refused[:SUMMARY_REFUSED_SHOWN]:
        path = item["path"]
        shown = path if len(path) <= 72 else f"{path[:34]}...{path[-35:]}"  # one line each
        lines.append(f"    {shown}  ({item['reason']})")
    if len(refused) > SUMMARY_REFUSED_SHOWN:
        lines.append(f"    ... {len(refused) - SUMMARY_REFUSED_SHOWN:,} more in summary.json")
    return lines
