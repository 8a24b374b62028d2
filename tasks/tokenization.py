"""Tokenize a segment manifest into sharded token datasets that resume byte-identically.

Plain functions, no Prefect: `tasks.wrappers` makes them tasks. Layout of a token dataset (a
local folder or an `s3://` prefix):

    <out>/plan.parquet                      the manifest rows with their shard, sorted
    <out>/shards/train-00000.arrow          Arrow IPC, one row per segment (token_shard_schema)
    <out>/shards/train-00000.tar            the same as WebDataset (<key>.codes.npy + <key>.json)
    <out>/shards/train-00000.commit.json    commit marker: plan hash, rows, bytes, sha256, rejects
    <out>/rejects.parquet                   segments that failed to decode, with the reason
    <out>/size_report.json                  size accounting (tasks.sizes)
    <out>/dataset.json                      written last: the dataset is complete when it exists

The plan is a pure function of the manifest and the settings: shards of about `shard_hours` of
audio, per split, in segment-id order. A shard is written under a temporary name and renamed
(local) or uploaded in one PUT (S3), then its marker is written; readers and re-runs trust
shards with a marker only. So after `kill -9` at any moment a re-run redoes at most the shards
without a marker and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from schemas.configs import TokenizeSettings
from schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    REJECTS_SCHEMA,
    SEGMENT_MANIFEST_SCHEMA,
    SPLITS,
    token_shard_schema,
)
from schemas.tokenizers import parse_tokenizer_name
from tasks import storage
from tasks.errors import CodecflowError
from tasks.faults import kill_point
from tasks.progress import in_prefect_run, sanitize_artifact_key
from tasks.segments import read_segment_audio
from tasks.sizes import format_size_report, size_report
from tasks.tokenizers import load_tokenizer, tokenizer_spec

__all__ = [
    "DATASET_COMMITTED",
    "DATASET_FORMAT_VERSION",
    "DATASET_KIND",
    "DatasetPlan",
    "DatasetRecord",
    "EncodeStats",
    "encode_segments",
    "ShardPlan",
    "finalize_dataset",
    "format_rejects",
    "is_dataset_committed",
    "plan_dataset",
    "plan_shards",
    "read_dataset_info",
    "read_manifest",
    "read_manifest_table",
    "tokenize_manifest",
    "write_shard_group",
]

#: Bumped whenever the bytes of a shard would change for the same inputs.
DATASET_FORMAT_VERSION = 2

#: The kind of folder a tokenize run owns (`storage.claim_output`), and the files that show a
#: dataset written before ownership markers existed: its shard commit markers (every dataset
#: has one, and a run killed after its first shard too); a bare dataset.json is too common a
#: name to make a folder ours.
DATASET_KIND = "token dataset"
DATASET_COMMITTED = ("shards/*.commit.json",)


@dataclass(frozen=True)
class DatasetRecord:
    """What a tokenize run produced: small, picklable, cacheable."""

    path: Path | str
    fingerprint: str
    n_segments: int
    n_tokens: int
    n_bytes: int
    audio_hours: float
    n_rejects: int = 0


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, split and the manifest rows (sorted by segment_id)."""

    name: str
    split: str
    segment_ids: tuple[str, ...]
    audio_seconds: float = 0.0

    @property
    def plan_hash(self) -> str:
        return _plan_hash(self.name, self.segment_ids)


@dataclass(frozen=True)
class PlannedShard:
    """A shard of the plan without its rows: what tasks pass around."""

    name: str
    split: str
    n_rows: int
    plan_hash: str
    audio_seconds: float


@dataclass(frozen=True)
class DatasetPlan:
    """The whole plan: identity, tokenizer facts, shards, and the shard groups (one task each)."""

    out: str
    manifest: str
    audio_root: str
    fingerprint: str
    spec: dict[str, Any]
    formats: tuple[str, ...]
    shards: tuple[PlannedShard, ...]
    groups: tuple[tuple[str, ...], ...]
    warn_reject_fraction: float = 0.05


def _cut_shards(
    table: pa.Table, shard_hours: float
) -> tuple[pa.Array, list[tuple[str, str, int, int, float]]]:
    """Plan the shards: the row order (split, then segment_id) and the shards as (name, split,
    first position, end position, seconds) over that order:
    greedy runs of about `shard_hours` of audio per split.

    Only the sort keys are sorted, never a copy of the whole manifest: the 3.6 M segments of
    Libri-Light's 60 000 h plan in seconds and well under 2 GB (bench/plan_60k.py)."""
    limit_s = shard_hours * 3600.0
    rank = pc.index_in(table["split"], value_set=pa.array(SPLITS))
    keys = pa.table({"_rank": rank, "segment_id": table["segment_id"]})
    order = pc.sort_indices(keys, sort_keys=[("_rank", "ascending"), ("segment_id", "ascending")])
    ranks = pc.take(rank, order).to_numpy(zero_copy_only=False)  # [N] split index
    durations = pc.take(table["duration_s"], order).to_numpy()  # [N]
    cuts: list[tuple[str, str, int, int, float]] = []
    for rank_of_split, split in enumerate(SPLITS):
        rows = np.flatnonzero(ranks == rank_of_split)
        if rows.size == 0:
            continue
        first, last = int(rows[0]), int(rows[-1]) + 1  # contiguous after the sort
        start, seconds, index = first, 0.0, 0
        for i in range(first, last):
            duration = float(durations[i])
            if i > start and seconds + duration > limit_s:
                cuts.append((f"{split}-{index:05d}", split, start, i, seconds))
                start, seconds, index = i, 0.0, index + 1
            seconds += duration
        cuts.append((f"{split}-{index:05d}", split, start, last, seconds))
    return order, cuts


def _plan_hash(name: str, segment_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join((name, *segment_ids)).encode()).hexdigest()


def plan_shards(
    rows: Sequence[Mapping[str, Any]] | pa.Table, shard_hours: float
) -> list[ShardPlan]:
    """Cut the manifest into ordered shards of about `shard_hours` of audio each, per split."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    order, cuts = _cut_shards(table.select(["segment_id", "split", "duration_s"]), shard_hours)
    ids = pc.take(table["segment_id"], order)
    return [
        ShardPlan(name, split, tuple(ids.slice(a, b - a).to_pylist()), seconds)
        for name, split, a, b, seconds in cuts
    ]


def group_shards(names: Sequence[str], max_tasks: int) -> list[tuple[str, ...]]:
    """Consecutive shards grouped so that there are at most `max_tasks` groups (one task each):
    60 000 h in 1 h shards is 60 000 shards, far more task runs than Prefect should track."""
    per_task = max(1, math.ceil(len(names) / max_tasks))
    return [tuple(names[i : i + per_task]) for i in range(0, len(names), per_task)]


def read_manifest_table(manifest: str) -> tuple[pa.Table, str]:
    """The manifest as an Arrow table and its audio root (a local path or URL)."""
    if not storage.exists(manifest):
        raise CodecflowError(f"segment manifest not found: {manifest}")
    fs, path = storage.url_to_fs(manifest)
    try:
        # One thread, no pre-buffering: the lowest peak memory for a 3.6 M-row manifest.
        table = pq.read_table(path, filesystem=fs, use_threads=False, pre_buffer=False)
    except pa.ArrowInvalid as exc:
        raise CodecflowError(f"segment manifest {manifest} is not a Parquet file: {exc}") from exc
    if not table.schema.remove_metadata().equals(SEGMENT_MANIFEST_SCHEMA):
        raise CodecflowError(f"segment manifest {manifest} does not have the manifest schema")
    audio_root = (table.schema.metadata or {}).get(MANIFEST_AUDIO_ROOT_KEY, b".").decode()
    if not storage.is_remote(audio_root):
        # Relative to the manifest's folder, so that a run folder can be moved.
        audio_root = storage.join(posixpath.dirname(str(manifest)) or ".", audio_root)
    return table, audio_root


def read_manifest(manifest: str) -> tuple[list[dict[str, Any]], str]:
    """The manifest's rows and its audio root (a local path or URL)."""
    table, audio_root = read_manifest_table(manifest)
    return table.to_pylist(), audio_root


def _tokenizer_identity(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    identity = dict(spec)
    parsed = parse_tokenizer_name(name)
    if parsed.kind == "codec" and parsed.checkpoint is not None and spec.get("trained", True):
        # The name holds a path; the dataset is defined by the weights behind it (a preset's
        # untrained weights come from its name and a fixed seed).
        identity["checkpoint_sha256"] = storage.sha256(
            storage.join(parsed.checkpoint, "model.safetensors")
        )
    return identity


def _fingerprint(
    manifest_sha256: str, identity: Mapping[str, Any], settings: TokenizeSettings
) -> str:
    return hashlib.sha256(
        json.dumps(
            {
                "manifest_sha256": manifest_sha256,
                "tokenizer": identity,
                "shard_hours": settings.shard_hours,
                "formats": sorted(settings.formats),
                "format_version": DATASET_FORMAT_VERSION,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


def is_dataset_committed(out: Path | str) -> bool:
    """True when `out` holds a complete token dataset (its dataset.json exists)."""
    return storage.exists(storage.join(str(out), "dataset.json"))


def _check_existing(out: str, fingerprint: str) -> dict[str, Any] | None:
    info_url = storage.join(out, "dataset.json")
    if not storage.exists(info_url):
        return None
    info: dict[str, Any] = storage.read_json(info_url)
    if info.get("fingerprint") != fingerprint:
        raise CodecflowError(
            f"{out} already holds another token dataset (fingerprint {info.get('fingerprint')}); "
            "choose another output folder"
        )
    return info


def plan_dataset(manifest: str | Path, out: str | Path, settings: TokenizeSettings) -> DatasetPlan:
    """Plan the shards and write `plan.parquet` (the manifest rows with their shard)."""
    manifest, out = str(manifest), str(out)
    table, audio_root = read_manifest_table(manifest)
    tokenizer = load_tokenizer(settings.tokenizer)
    spec = tokenizer_spec(settings.tokenizer, tokenizer)
    identity = _tokenizer_identity(settings.tokenizer, spec)
    if spec.get("trained") is False:
        _log_warning(
            "codec preset %s has no trained weights: its codes carry no information; train one "
            "with `codecflow train-codec`",
            parse_tokenizer_name(settings.tokenizer).checkpoint,
        )
    fingerprint = _fingerprint(storage.sha256(manifest), identity, settings)
    _check_existing(out, fingerprint)
    if table.num_rows == 0:
        raise CodecflowError(f"segment manifest {manifest} has no segments")
    # The inputs are valid: only now is `out` created (or refused when it is not ours). The
    # caller holds the dataset's lock, so the temporaries found there are a dead run's.
    storage.claim_output(out, DATASET_KIND, DATASET_COMMITTED)
    storage.remove_stale_temporaries(out)
    order, cuts = _cut_shards(table, settings.shard_hours)
    plan_url = storage.join(out, "plan.parquet")
    if not _same_plan(plan_url, fingerprint):
        metadata = {
            b"codecflow.fingerprint": fingerprint.encode(),
            MANIFEST_AUDIO_ROOT_KEY: audio_root.encode(),
        }
        _write_plan(plan_url, table, order, cuts, metadata)
    ids = pc.take(table["segment_id"], order)  # Arrow strings in plan order, not Python ones
    planned = tuple(
        PlannedShard(name, split, b - a, _plan_hash(name, ids.slice(a, b - a).to_pylist()), seconds)
        for name, split, a, b, seconds in cuts
    )
    del ids
    return DatasetPlan(
        out=out,
        manifest=manifest,
        audio_root=audio_root,
        fingerprint=fingerprint,
        spec={**spec, **identity},
        formats=tuple(sorted(settings.formats)),
        shards=planned,
        groups=tuple(group_shards([s.name for s in planned], settings.max_tasks)),
        warn_reject_fraction=settings.warn_reject_fraction,
    )


def _write_plan(
    url: str,
    table: pa.Table,
    order: pa.Array,
    cuts: Sequence[tuple[str, str, int, int, float]],
    metadata: dict[bytes, bytes],
    block: int = 1 << 18,
) -> None:
    """plan.parquet: the manifest rows in plan order with their shard, written block by block
    so that no sorted copy of the whole manifest is ever held."""
    names = np.repeat(np.array([c[0] for c in cuts]), [c[3] - c[2] for c in cuts])
    schema = table.schema.append(pa.field("shard", pa.string())).with_metadata(metadata)
    with storage.open_atomic_write(url) as f, pq.ParquetWriter(f, schema) as writer:
        for start in range(0, len(order), block):
            rows = table.take(order.slice(start, block))
            shard = pa.array(names[start : start + block], pa.string())
            writer.write_table(rows.append_column("shard", shard).replace_schema_metadata(metadata))


def _same_plan(plan_url: str, fingerprint: str) -> bool:
    if not storage.exists(plan_url):
        return False
    fs, path = storage.url_to_fs(plan_url)
    metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    return metadata.get(b"codecflow.fingerprint") == fingerprint.encode()


def _write_parquet(url: str, table: pa.Table) -> None:
    with storage.open_atomic_write(url) as f:
        pq.write_table(table, f)  # streamed: no second copy of a 3.6 M-row plan in memory


# --------------------------------------------------------------------------------------------
# Writing shards
# --------------------------------------------------------------------------------------------


@dataclass
class EncodeStats:
    """Where the time of a shard went: reading audio (in the prefetch threads), waiting for it
    (the encoder idle), and encoding."""

    audio_seconds: float = 0.0
    io_wait_seconds: float = 0.0
    encode_seconds: float = 0.0
    batches: int = 0


def _load_segment(row: Mapping[str, Any], audio_root: str, sample_rate: int) -> np.ndarray | str:
    """A segment's mono audio at `sample_rate` (float32 `[T]`), or why it cannot be read."""
    import torch
    import torchaudio

    try:
        audio = read_segment_audio(audio_root, row)  # [T], mono at the file's rate
    except CodecflowError as err:
        return f"unreadable audio: {err}"
    if audio.size == 0:
        return "empty audio: the segment has no samples"
    if int(row["sample_rate"]) != sample_rate:
        # Flagged at acquisition (not Libri-Light's 16 kHz): resampled here, once.
        wav = torchaudio.functional.resample(
            torch.from_numpy(audio), int(row["sample_rate"]), sample_rate
        )
        audio = wav.numpy()  # [T']
    return audio


def _prefetched(
    rows: Sequence[Mapping[str, Any]],
    audio_root: str,
    sample_rate: int,
    stats: EncodeStats,
    depth: int = 8,
) -> Iterator[tuple[Mapping[str, Any], np.ndarray | str]]:
    """The rows with their audio, read `depth` segments ahead by two threads (soundfile and the
    resampler release the GIL), so that the encoder does not wait on I/O; the time it still
    waits is added to `stats.io_wait_seconds`."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="codecflow-read") as pool:
        futures = [pool.submit(_load_segment, row, audio_root, sample_rate) for row in rows[:depth]]
        for i, row in enumerate(rows):
            if i + depth < len(rows):
                futures.append(pool.submit(_load_segment, rows[i + depth], audio_root, sample_rate))
            started = time.perf_counter()
            audio = futures[i].result()
            stats.io_wait_seconds += time.perf_counter() - started
            futures[i] = None  # type: ignore[call-overload]  # free the audio once handed over
            yield row, audio


def encode_segments(
    audios: Sequence[np.ndarray], tokenizer: Any, batch_seconds: float = 60.0, max_batch: int = 32
) -> list[np.ndarray]:
    """Codes `[K, F_i]` of each mono float32 segment, F_i = ceil(T_i / samples_per_frame).

    Causal tokenizers encode batches of segments of similar length, zero-padded to the longest:
    a frame's codes depend only on audio up to its end, so each segment keeps exactly the codes
    it gets alone (tested). Non-causal ones (the post's codec looks ahead) encode one at a time.
    """
    import torch

    device = next(iter(tokenizer.parameters()), torch.empty(0)).device
    spf = tokenizer.samples_per_frame
    frames = [max(1, -(-len(a) // spf)) for a in audios]
    out: list[np.ndarray | None] = [None] * len(audios)
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    limit = batch_seconds * tokenizer.sample_rate if tokenizer.causal else 0
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        longest = frames[i] * spf  # sorted: the newcomer is the longest so far
        if batch is not None and len(batch) < max_batch and longest * (len(batch) + 1) <= limit:
            batch.append(i)
        else:
            batches.append([i])
    for batch in batches:
        width = max(frames[i] for i in batch) * spf
        wav = torch.zeros(len(batch), 1, width)  # [B, 1, T]
        for row, i in enumerate(batch):
            wav[row, 0, : len(audios[i])] = torch.from_numpy(audios[i])
        with torch.inference_mode():
            codes = tokenizer.encode(wav.to(device)).cpu().numpy()  # [B, K, F]
        for row, i in enumerate(batch):
            out[i] = codes[row, :, : frames[i]].astype(tokenizer.token_dtype)  # [K, F_i]
    return [c for c in out if c is not None]


def _encode_rows(
    rows: Sequence[Mapping[str, Any]],
    audio_root: str,
    tokenizer: Any,
    stats: EncodeStats,
    pool: int = 64,
) -> Iterator[tuple[Mapping[str, Any], np.ndarray | str]]:
    """(row, codes [K, F]) per row in order, or (row, reason) when its audio cannot be read.

    Audio is prefetched; `pool` segments at a time are batched by similar length."""
    import time

    loaded = _prefetched(rows, audio_root, tokenizer.sample_rate, stats)
    while True:
        chunk = [item for _, item in zip(range(pool), loaded, strict=False)]
        if not chunk:
            return
        good = [(r, a) for r, a in chunk if not isinstance(a, str)]
        started = time.perf_counter()
        codes = encode_segments([a for _, a in good], tokenizer)  # type: ignore[misc]
        stats.encode_seconds += time.perf_counter() - started
        stats.audio_seconds += sum(len(a) for _, a in good) / tokenizer.sample_rate  # type: ignore[arg-type]
        by_id = {r["segment_id"]: c for (r, _), c in zip(good, codes, strict=True)}
        for row, audio in chunk:
            yield row, (audio if isinstance(audio, str) else by_id[row["segment_id"]])


def _arrow_bytes(records: Sequence[tuple[Mapping[str, Any], np.ndarray]], dtype: np.dtype) -> bytes:
    codes_type = pa.from_numpy_dtype(dtype)
    schema = token_shard_schema(codes_type)
    offsets = np.zeros(len(records) + 1, dtype=np.int32)
    np.cumsum([c.size for _, c in records], out=offsets[1:])
    values = np.concatenate([c.reshape(-1) for _, c in records]) if records else np.zeros(0, dtype)
    columns = [
        pa.array([r["segment_id"] for r, _ in records], pa.string()),
        pa.array([r["speaker"] for r, _ in records], pa.string()),
        pa.array([r["book_id"] for r, _ in records], pa.string()),
        pa.array([r["split"] for r, _ in records], pa.string()),
        pa.array([int(c.shape[1]) for _, c in records], pa.int64()),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=codes_type)),
    ]
    sink = pa.BufferOutputStream()
    # Uncompressed IPC file: readers memory-map it and read the codes without a copy.
    with ipc.new_file(sink, schema) as writer:
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return bytes(sink.getvalue())


def _webdataset_key(segment_id: str) -> str:
    # WebDataset splits a member name at its first dot: the key must have none.
    return segment_id.replace(".", "_")


def _webdataset_bytes(
    records: Sequence[tuple[Mapping[str, Any], np.ndarray]], levels: int
) -> bytes:
    """A tar that plain `webdataset` reads: `<key>.codes.npy` ([K, F]) and `<key>.json` per row.

    Deterministic bytes: fixed order, mtime 0, root owner, mode 0644.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row, codes in records:
            key = _webdataset_key(row["segment_id"])
            npy = io.BytesIO()
            np.save(npy, codes, allow_pickle=False)
            meta = {
                "segment_id": row["segment_id"],
                "speaker": row["speaker"],
                "book_id": row["book_id"],
                "split": row["split"],
                "n_frames": int(codes.shape[1]),
                "num_levels": levels,
            }
            for name, data in (
                (f"{key}.codes.npy", npy.getvalue()),
                (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _put(url: str, data: bytes) -> None:
    """Write `data` at `url`: temporary name + rename locally, one PUT on an object store."""
    with storage.open_atomic_write(url) as f:
        half = len(data) // 2
        f.write(data[:half])
        kill_point("mid-write")  # crash tests: a shard half-written or half-uploaded
        f.write(data[half:])


def _marker_url(out: str, name: str) -> str:
    return storage.join(out, "shards", f"{name}.commit.json")


def _committed_marker(out: str, shard: PlannedShard) -> dict[str, Any] | None:
    marker_url = _marker_url(out, shard.name)
    if not storage.exists(marker_url):
        return None
    marker: dict[str, Any] = storage.read_json(marker_url)
    return marker if marker.get("plan_hash") == shard.plan_hash else None


def write_shard_group(plan: DatasetPlan, names: Sequence[str]) -> list[dict[str, Any]]:
    """Write the shards `names` of the plan (skipping committed ones); return their markers."""
    by_name = {s.name: s for s in plan.shards}
    markers: list[dict[str, Any]] = []
    todo = [by_name[n] for n in names if _committed_marker(plan.out, by_name[n]) is None]
    if todo:
        fs, path = storage.url_to_fs(storage.join(plan.out, "plan.parquet"))
        rows = pq.read_table(
            path, filesystem=fs, filters=[("shard", "in", [s.name for s in todo])]
        ).to_pylist()
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # neural tokenizers on the GPU
        tokenizer = load_tokenizer(plan.spec["name"], device=device)
        dtype = np.dtype(tokenizer.token_dtype)
        stats = EncodeStats()
        progress = _Progress(sum(s.audio_seconds for s in todo), names[0])
        for shard in todo:
            shard_rows = sorted(
                (r for r in rows if r["shard"] == shard.name), key=lambda r: r["segment_id"]
            )
            encoded = list(_encode_rows(shard_rows, plan.audio_root, tokenizer, stats))
            good = [(r, c) for r, c in encoded if not isinstance(c, str)]
            rejects = [
                {"path": r["segment_id"], "reason": c} for r, c in encoded if isinstance(c, str)
            ]
            files: dict[str, Any] = {}
            arrow = _arrow_bytes(good, dtype)  # type: ignore[arg-type]
            _put(storage.join(plan.out, "shards", f"{shard.name}.arrow"), arrow)
            files["arrow"] = {"bytes": len(arrow), "sha256": hashlib.sha256(arrow).hexdigest()}
            if "webdataset" in plan.formats:
                tar = _webdataset_bytes(good, tokenizer.num_levels)  # type: ignore[arg-type]
                _put(storage.join(plan.out, "shards", f"{shard.name}.tar"), tar)
                files["webdataset"] = {"bytes": len(tar), "sha256": hashlib.sha256(tar).hexdigest()}
            kill_point("before-commit")  # crash tests: shard written, marker not yet
            frames = sum(int(c.shape[1]) for _, c in good)  # type: ignore[union-attr]
            storage.write_json(
                _marker_url(plan.out, shard.name),
                {
                    "name": shard.name,
                    "split": shard.split,
                    "plan_hash": shard.plan_hash,
                    "rows": len(good),
                    "frames": frames,
                    "tokens": frames * tokenizer.num_levels,
                    "audio_seconds": sum(float(r["duration_s"]) for r, _ in good),
                    "files": files,
                    "rejects": rejects,
                },
            )
            kill_point("after-commit")  # crash tests: between shards
            progress.update(stats)
        progress.close(stats)
    for name in names:
        marker = _committed_marker(plan.out, by_name[name])
        assert marker is not None, f"shard {name} has no commit marker after writing"
        markers.append(marker)
    return markers


class _Progress:
    """Live progress of a shard group, in seconds of audio: a tqdm bar on a terminal, a Prefect
    progress artifact inside a run, and a closing line with audio hours per wall hour and the
    time the encoder waited on I/O."""

    def __init__(self, total_audio_seconds: float, first: str) -> None:
        import sys
        import time

        from tqdm import tqdm

        self._started = time.perf_counter()
        self._total = max(total_audio_seconds, 1e-9)
        self._bar = tqdm(
            total=round(total_audio_seconds),
            unit="s audio",
            desc=f"tokenize {first}",
            disable=not sys.stderr.isatty(),
        )
        self._artifact: Any = None
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            key = sanitize_artifact_key(f"tokenize-{first}")
            self._artifact = create_progress_artifact(
                progress=0.0, key=key, description=f"tokenize {first}"
            )

    def update(self, stats: EncodeStats) -> None:
        self._bar.update(round(stats.audio_seconds) - self._bar.n)
        if self._artifact is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(
                artifact_id=self._artifact,
                progress=min(100.0, 100 * stats.audio_seconds / self._total),
            )

    def close(self, stats: EncodeStats) -> None:
        import logging
        import time

        self._bar.close()
        wall = time.perf_counter() - self._started
        logging.getLogger("codecflow.tokenize").info(
            "tokenized %.3f h of audio in %.1f s: %.0f audio h per wall h; encoder %.1f s, "
            "waited %.1f s on I/O",
            stats.audio_seconds / 3600,
            wall,
            stats.audio_seconds / wall if wall else 0.0,
            stats.encode_seconds,
            stats.io_wait_seconds,
        )


# --------------------------------------------------------------------------------------------
# Finishing
# --------------------------------------------------------------------------------------------


def _source_bytes(plan: DatasetPlan) -> int | None:
    """Bytes of the distinct source files the dataset was cut from (for the compression ratio)."""
    fs, base = storage.url_to_fs(storage.join(plan.out, "plan.parquet"))
    sources = set(
        pq.read_table(base, filesystem=fs, columns=["source_path"])["source_path"].to_pylist()
    )
    root_fs, root = storage.url_to_fs(plan.audio_root)
    try:
        return sum(int(root_fs.size(posixpath.join(root, s))) for s in sources)
    except FileNotFoundError:
        return None


def finalize_dataset(plan: DatasetPlan, markers: Sequence[Mapping[str, Any]]) -> DatasetRecord:
    """Write rejects.parquet and size_report.json, then dataset.json (the commit)."""
    existing = _check_existing(plan.out, plan.fingerprint)
    if existing is not None:
        return _record_from_info(plan.out, existing)
    shards = [
        {
            "name": m["name"],
            "split": m["split"],
            "file": f"shards/{m['name']}.arrow",
            "rows": m["rows"],
            "frames": m["frames"],
            "tokens": m["tokens"],
            "bytes": m["files"]["arrow"]["bytes"],
            "sha256": m["files"]["arrow"]["sha256"],
            "audio_seconds": m["audio_seconds"],
            **(
                {
                    "webdataset_file": f"shards/{m['name']}.tar",
                    "webdataset_bytes": m["files"]["webdataset"]["bytes"],
                }
                if "webdataset" in m["files"]
                else {}
            ),
        }
        for m in markers
    ]
    rejects = [r for m in markers for r in m["rejects"]]
    rejects_url = storage.join(plan.out, "rejects.parquet")
    _write_parquet(rejects_url, pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA))
    _check_rejects(plan, markers, len(rejects), rejects_url)
    report = size_report(shards, plan.spec, _source_bytes(plan))
    storage.write_json(storage.join(plan.out, "size_report.json"), report)
    info = {
        "fingerprint": plan.fingerprint,
        "format_version": DATASET_FORMAT_VERSION,
        "manifest": plan.manifest
        if storage.is_remote(plan.manifest)
        else str(Path(plan.manifest).resolve()),
        "tokenizer": plan.spec,
        "dtype": plan.spec["token_dtype"],
        "formats": list(plan.formats),
        "layout": "codes: [K, F] flattened level-major per row",
        "schema": token_shard_schema(
            pa.from_numpy_dtype(np.dtype(plan.spec["token_dtype"]))
        ).to_string(),
        "shards": shards,
        "n_rejects": len(rejects),
        "totals": report["total"],
    }
    storage.write_json(storage.join(plan.out, "dataset.json"), info)  # last: the commit
    return _record_from_info(plan.out, info)


def _check_rejects(
    plan: DatasetPlan, markers: Sequence[Mapping[str, Any]], n_rejects: int, rejects_url: str
) -> None:
    """Refuse to commit a dataset without a segment; warn above the set fraction of rejects."""
    total = n_rejects + sum(int(m["rows"]) for m in markers)
    if n_rejects and n_rejects == total:
        # The shard markers hold no row: removed (we wrote them), so that a run after the audio
        # is restored encodes the shards again instead of trusting empty ones.
        for shard in plan.shards:
            fs, path = storage.url_to_fs(_marker_url(plan.out, shard.name))
            if fs.exists(path):
                fs.rm(path)
        raise CodecflowError(
            f"every segment of {plan.manifest} was rejected ({n_rejects} of {total}; the "
            f"reasons are in {rejects_url}): nothing committed to {plan.out}"
        )
    if total and n_rejects / total > plan.warn_reject_fraction:
        _log_warning(
            "%d of %d segments (%.1f%%) were rejected, more than warn_reject_fraction=%g: see %s",
            n_rejects,
            total,
            100 * n_rejects / total,
            plan.warn_reject_fraction,
            rejects_url,
        )


def _log_warning(message: str, *args: Any) -> None:
    """A warning in the Prefect run's log inside a run, else on the `codecflow.tokenize` logger."""
    import logging

    logger: Any = logging.getLogger("codecflow.tokenize")
    if in_prefect_run():
        from prefect import get_run_logger

        logger = get_run_logger()
    logger.warning(message, *args)


def format_rejects(record: DatasetRecord) -> str:
    """The closing line about rejected segments ('' when there were none)."""
    if not record.n_rejects:
        return ""
    rejects = storage.join(str(record.path), "rejects.parquet")
    return f"rejected: {record.n_rejects} segments that could not be decoded (see {rejects})"


def tokenize_manifest(
    manifest: str | Path, out: str | Path, settings: TokenizeSettings
) -> DatasetRecord:
    """Plan, write every shard group in turn and finalize, holding the dataset's lock.

    The Prefect flow runs the same steps with the groups fanned out as tasks.
    """
    out = str(out)
    with storage.exclusive_lock(out, f"tokenize {settings.tokenizer}"):
        plan = plan_dataset(manifest, out, settings)
        existing = _check_existing(out, plan.fingerprint)
        if existing is not None:
            return _record_from_info(out, existing)
        markers = [m for group in plan.groups for m in write_shard_group(plan, group)]
        record = finalize_dataset(plan, markers)
    print(format_size_report(storage.read_json(storage.join(out, "size_report.json"))), flush=True)
    if record.n_rejects:
        print(format_rejects(record), flush=True)
    return record


def _record_from_info(out: str | Path, info: Mapping[str, Any]) -> DatasetRecord:
    totals = info["totals"]
    return DatasetRecord(
        path=out if storage.is_remote(out) else Path(out),
        fingerprint=info["fingerprint"],
        n_segments=totals["segments"],
        n_tokens=totals["tokens"],
        n_bytes=totals["bytes"],
        audio_hours=totals["audio_hours"],
        n_rejects=int(info.get("n_rejects", 0)),
    )


def read_dataset_info(dataset: Path) -> dict[str, Any]:
    """The committed `dataset.json` of a token dataset; a clear error when there is none."""
    info_path = Path(dataset) / "dataset.json"
    if not info_path.is_file():
        raise CodecflowError(f"no complete token dataset at {dataset} (dataset.json is missing)")
    info: dict[str, Any] = json.loads(info_path.read_text())
    return info
