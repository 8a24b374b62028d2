"""Tokenize a segment manifest into Arrow IPC shards, and account for their size.

Plain functions, no Prefect: `tasks.wrappers` makes them tasks. Layout of a token dataset:

    <out>/shards/train-00000.arrow          one row per segment (schemas.tables.TOKEN_SHARD_SCHEMA)
    <out>/shards/train-00000.commit.json    commit marker: rows, bytes, sha256, plan hash
    <out>/size_report.json                  size accounting
    <out>/dataset.json                      written last: the dataset is complete when it exists

A shard is written under a temporary name, fsynced and renamed, then its marker is written; a
re-run skips every shard whose marker matches the plan, so an interrupted run resumes where it
stopped and ends with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch
import torchaudio

from schemas.configs import TokenizeSettings
from schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    SEGMENT_MANIFEST_SCHEMA,
    SPLITS,
    token_shard_schema,
)
from tasks import storage
from tasks.errors import CodecflowError
from tasks.io import atomic_file, atomic_write_json, sha256_file
from tasks.segments import read_segment_audio
from tasks.tokenizers import load_tokenizer, tokenizer_spec

__all__ = [
    "DATASET_FORMAT_VERSION",
    "DatasetRecord",
    "ShardPlan",
    "interleave_levels",
    "is_dataset_committed",
    "load_split_stream",
    "plan_shards",
    "read_manifest",
    "read_dataset_info",
    "tokenize_manifest",
]

#: Bumped whenever the bytes of a shard would change for the same inputs.
DATASET_FORMAT_VERSION = 1
_PCM16_BYTES_PER_SECOND = 16_000 * 2  # 16-bit PCM at Libri-Light's 16 kHz, for the compression


@dataclass(frozen=True)
class DatasetRecord:
    """What a tokenize run produced: small, picklable, cacheable."""

    path: Path
    fingerprint: str
    n_segments: int
    n_tokens: int
    n_bytes: int
    audio_hours: float


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, split and the manifest rows (sorted by segment_id)."""

    name: str
    split: str
    segment_ids: tuple[str, ...]

    @property
    def plan_hash(self) -> str:
        return hashlib.sha256("\n".join((self.name, *self.segment_ids)).encode()).hexdigest()


def plan_shards(rows: Sequence[Mapping[str, Any]], shard_hours: float) -> list[ShardPlan]:
    """Cut the manifest into ordered shards of about `shard_hours` of audio each, per split."""
    plans: list[ShardPlan] = []
    limit_s = shard_hours * 3600.0
    for split in SPLITS:
        split_rows = sorted((r for r in rows if r["split"] == split), key=lambda r: r["segment_id"])
        current: list[str] = []
        seconds = 0.0
        for row in split_rows:
            if current and seconds + row["duration_s"] > limit_s:
                plans.append(
                    ShardPlan(
                        f"{split}-{sum(p.split == split for p in plans):05d}", split, tuple(current)
                    )
                )
                current, seconds = [], 0.0
            current.append(row["segment_id"])
            seconds += row["duration_s"]
        if current:
            plans.append(
                ShardPlan(
                    f"{split}-{sum(p.split == split for p in plans):05d}", split, tuple(current)
                )
            )
    return plans


def read_manifest(manifest: str) -> tuple[list[dict[str, Any]], str]:
    """The manifest's rows and its audio root (a local path or URL)."""
    if not storage.exists(manifest):
        raise CodecflowError(f"segment manifest not found: {manifest}")
    fs, path = storage.url_to_fs(manifest)
    try:
        table = pq.read_table(path, filesystem=fs)
    except pa.ArrowInvalid as exc:
        raise CodecflowError(f"segment manifest {manifest} is not a Parquet file: {exc}") from exc
    if not table.schema.remove_metadata().equals(SEGMENT_MANIFEST_SCHEMA):
        raise CodecflowError(f"segment manifest {manifest} does not have the manifest schema")
    audio_root = (table.schema.metadata or {}).get(MANIFEST_AUDIO_ROOT_KEY, b".").decode()
    if not storage.is_remote(audio_root):
        # Relative to the manifest's folder, so that a run folder can be moved.
        audio_root = storage.join(posixpath.dirname(str(manifest)) or ".", audio_root)
    return table.to_pylist(), audio_root


def _dataset_fingerprint(manifest_sha256: str, spec: Mapping[str, Any], shard_hours: float) -> str:
    identity = {
        "manifest_sha256": manifest_sha256,
        "tokenizer": spec,
        "shard_hours": shard_hours,
        "format_version": DATASET_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _encode_rows(
    rows: Sequence[Mapping[str, Any]], audio_root: str, tokenizer: Any
) -> Iterator[dict[str, Any]]:
    for row in rows:
        audio = read_segment_audio(audio_root, row)  # [T], mono at the file's rate
        wav = torch.from_numpy(audio).view(1, 1, -1)  # [1, 1, T]
        if int(row["sample_rate"]) != tokenizer.sample_rate:
            # Flagged at acquisition (not Libri-Light's 16 kHz): resampled here, once.
            wav = torchaudio.functional.resample(
                wav, int(row["sample_rate"]), tokenizer.sample_rate
            )  # [1, 1, T']
        with torch.inference_mode():
            codes = tokenizer.encode(wav)[0]  # [K, F]
        yield {
            "segment_id": row["segment_id"],
            "speaker": row["speaker"],
            "book_id": row["book_id"],
            "split": row["split"],
            "n_frames": int(codes.shape[1]),
            "codes": codes.reshape(-1).numpy().astype(tokenizer.token_dtype),  # [K * F]
        }


def _write_shard(path: Path, records: list[dict[str, Any]], token_dtype: np.dtype) -> None:
    codes_type = pa.from_numpy_dtype(token_dtype)
    schema = token_shard_schema(codes_type)
    columns = {name: [r[name] for r in records] for name in schema.names}
    codes = columns.pop("codes")
    offsets = np.zeros(len(codes) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in codes], out=offsets[1:])
    values = np.concatenate(codes) if codes else np.zeros(0, dtype=token_dtype)
    arrays = [pa.array(columns[n], type=schema.field(n).type) for n in columns]
    arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=codes_type)))
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_file(path) as tmp:
        # Uncompressed IPC file: readers memory-map it and read the codes without a copy.
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
            writer.write_table(table)


def _shard_is_committed(shard_dir: Path, plan: ShardPlan) -> bool:
    marker = shard_dir / f"{plan.name}.commit.json"
    shard = shard_dir / f"{plan.name}.arrow"
    if not (marker.is_file() and shard.is_file()):
        return False
    record = json.loads(marker.read_text())
    return record.get("plan_hash") == plan.plan_hash and record.get("sha256") == sha256_file(shard)


def is_dataset_committed(out: Path) -> bool:
    """True when `out` holds a complete token dataset (its dataset.json exists)."""
    return (Path(out) / "dataset.json").is_file()


def tokenize_manifest(manifest: str | Path, out: Path, settings: TokenizeSettings) -> DatasetRecord:
    """Tokenize every segment of `manifest` into Arrow shards under `out`; resumable.

    Shards already committed for the same plan are kept as they are; `dataset.json` is written
    last. Raises CodecflowError on a missing or malformed manifest.
    """
    manifest, out = str(manifest), Path(out)
    rows, audio_root = read_manifest(manifest)
    tokenizer = load_tokenizer(settings.tokenizer)
    spec = tokenizer_spec(settings.tokenizer, tokenizer)
    fingerprint = _dataset_fingerprint(storage.sha256(manifest), spec, settings.shard_hours)
    info_path = out / "dataset.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") == fingerprint:
            return _record_from_info(out, info)
        raise CodecflowError(
            f"{out} already holds another token dataset (fingerprint {info.get('fingerprint')}); "
            "choose another output folder"
        )

    by_id = {row["segment_id"]: row for row in rows}
    token_dtype = np.dtype(tokenizer.token_dtype)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    for plan in plan_shards(rows, settings.shard_hours):
        shard = shard_dir / f"{plan.name}.arrow"
        if not _shard_is_committed(shard_dir, plan):
            plan_rows = [by_id[s] for s in plan.segment_ids]
            _write_shard(shard, list(_encode_rows(plan_rows, audio_root, tokenizer)), token_dtype)
            atomic_write_json(
                shard_dir / f"{plan.name}.commit.json",
                {
                    "plan_hash": plan.plan_hash,
                    "rows": len(plan.segment_ids),
                    "bytes": shard.stat().st_size,
                    "sha256": sha256_file(shard),
                },
            )
        marker = json.loads((shard_dir / f"{plan.name}.commit.json").read_text())
        frames = _count_frames(shard)
        seconds = sum(by_id[s]["duration_s"] for s in plan.segment_ids)
        shards.append(
            {
                "name": plan.name,
                "split": plan.split,
                "file": f"shards/{plan.name}.arrow",
                "rows": marker["rows"],
                "frames": frames,
                "tokens": frames * tokenizer.num_levels,
                "bytes": marker["bytes"],
                "sha256": marker["sha256"],
                "audio_seconds": seconds,
            }
        )

    report = size_report(shards, spec, rows)
    atomic_write_json(out / "size_report.json", report)
    info = {
        "fingerprint": fingerprint,
        "format_version": DATASET_FORMAT_VERSION,
        "manifest": manifest if storage.is_remote(manifest) else str(Path(manifest).resolve()),
        "tokenizer": spec,
        "dtype": str(token_dtype),
        "layout": "codes: [K, F] flattened level-major per row",
        "schema": token_shard_schema(pa.from_numpy_dtype(token_dtype)).to_string(),
        "shards": shards,
        "totals": report["total"],
    }
    atomic_write_json(info_path, info)
    return _record_from_info(out, info)


def _count_frames(shard: Path) -> int:
    with pa.memory_map(str(shard)) as source:
        table = ipc.open_file(source).read_all()
        return int(pa.compute.sum(table.column("n_frames")).as_py() or 0)


def size_report(
    shards: Sequence[Mapping[str, Any]], spec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per split and total: segments, hours, frames, tokens, bytes and the rates derived."""

    def summarise(selected: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        seconds = sum(s["audio_seconds"] for s in selected)
        n_bytes = sum(s["bytes"] for s in selected)
        tokens = sum(s["tokens"] for s in selected)
        hours = seconds / 3600.0
        return {
            "segments": sum(s["rows"] for s in selected),
            "audio_hours": hours,
            "frames": sum(s["frames"] for s in selected),
            "tokens": tokens,
            "bytes": n_bytes,
            "bytes_per_audio_hour": n_bytes / hours if hours else 0.0,
            "tokens_per_second": tokens / seconds if seconds else 0.0,
            "compression_vs_pcm16": (seconds * _PCM16_BYTES_PER_SECOND) / n_bytes
            if n_bytes
            else 0.0,
        }

    report: dict[str, Any] = {"tokenizer": dict(spec)}
    for split in SPLITS:
        report[split] = summarise([s for s in shards if s["split"] == split])
    report["total"] = summarise(list(shards))
    return report


def _record_from_info(out: Path, info: Mapping[str, Any]) -> DatasetRecord:
    totals = info["totals"]
    return DatasetRecord(
        path=out,
        fingerprint=info["fingerprint"],
        n_segments=totals["segments"],
        n_tokens=totals["tokens"],
        n_bytes=totals["bytes"],
        audio_hours=totals["audio_hours"],
    )


def read_dataset_info(dataset: Path) -> dict[str, Any]:
    """The committed `dataset.json` of a token dataset; a clear error when there is none."""
    info_path = Path(dataset) / "dataset.json"
    if not info_path.is_file():
        raise CodecflowError(f"no complete token dataset at {dataset} (dataset.json is missing)")
    info: dict[str, Any] = json.loads(info_path.read_text())
    return info


def interleave_levels(codes: np.ndarray) -> np.ndarray:
    """`[K, F]` codes -> the post's flat stream `[F * K]`: the K levels of each frame in a row."""
    return np.ascontiguousarray(codes.T).reshape(-1)  # [F * K]


def load_split_stream(dataset: Path, split: str) -> np.ndarray:
    """All segments of one split as one flat token stream (`[N]`, the dataset's dtype), in shard
    order.

    Each segment's `[K, F]` codes are interleaved frame by frame, then segments are concatenated,
    as the post's reference code does with its single `.bin` file.
    """
    info = read_dataset_info(dataset)
    levels = int(info["tokenizer"]["num_levels"])
    pieces: list[np.ndarray] = []
    for shard in info["shards"]:
        if shard["split"] != split:
            continue
        with pa.memory_map(str(Path(dataset) / shard["file"])) as source:
            codes = ipc.open_file(source).read_all().column("codes").combine_chunks()
            offsets = codes.offsets.to_numpy()
            values = codes.values.to_numpy(zero_copy_only=True)  # a view of the mapped file
            for i in range(len(codes)):
                row = values[offsets[i] : offsets[i + 1]].reshape(levels, -1)  # [K, F]
                # Copy before the map closes: the view would point at unmapped memory.
                pieces.append(interleave_levels(row).copy())  # [F * K]
    if not pieces:
        raise CodecflowError(f"token dataset {dataset} has no '{split}' segments")
    return np.concatenate(pieces)  # [N]
