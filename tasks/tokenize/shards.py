"""Encoding segments and writing one group of shards (Arrow IPC streams and WebDataset) with their
commit markers. A committed shard is skipped; a shard is renamed or uploaded whole, then marked.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from codecflow.schemas.tables import (
    token_shard_schema,
)
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.faults import kill_point
from codecflow.tasks.core.progress import ProgressCallback
from codecflow.tasks.core.threads import thread_policy, usable_cpus
from codecflow.tasks.data.manifest import read_segment_audio, read_segment_pcm16
from codecflow.tasks.data.records import Reject, ShardFile, ShardMarker
from codecflow.tasks.data.token_dataset import shard_marker_url
from codecflow.tasks.data.token_shards import webdataset_facts
from codecflow.tasks.tokenize.mulaw_table import encode_pcm16, is_mulaw, pcm16_table
from codecflow.tasks.tokenize.plan import DatasetPlan, PlannedShard

__all__ = [
    "GPU_BATCH_SECONDS",
    "EncodeStats",
    "batch_plan",
    "encode_segments",
    "padded_frames",
    "write_shard_group",
]


@dataclass
class EncodeStats:
    """Where the time of a shard went: reading audio (in the prefetch threads), waiting for it
    (the encoder idle), and encoding."""

    audio_seconds: float = 0.0
    io_wait_seconds: float = 0.0
    encode_seconds: float = 0.0
    batches: int = 0


@dataclass(frozen=True)
class _Coded:
    """A segment tokenized where it was read: mu-law through the 16-bit PCM table."""

    codes: np.ndarray  # [K, F], the tokenizer's token dtype


class _Tokenizer:
    """The plan's tokenizer as the shard writer needs it: its facts from the plan's spec, and
    the model built on first use only. mu-law on 16-bit PCM at its rate (Libri-Light) never
    builds it: those segments go through `mulaw_table`, with the model's codes (tested)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.name = str(spec["name"])
        self.sample_rate = int(spec["sample_rate"])
        self.num_levels = int(spec["num_levels"])
        self.token_dtype = np.dtype(spec["token_dtype"])
        self.table = pcm16_table(self.name) if is_mulaw(self.name) else None
        self._model: Any = None

    def model(self) -> Any:
        if self._model is None:
            import torch

            from codecflow.tasks.loaders import load_tokenizer  # torch, moshi: seconds to import

            device = "cuda" if torch.cuda.is_available() else "cpu"  # neural tokenizers: GPU
            self._model = load_tokenizer(self.name, device=device)
        return self._model


def _load_segment(
    row: Mapping[str, Any], audio_root: str, tokenizer: _Tokenizer
) -> np.ndarray | _Coded | str:
    """A segment's mono audio at the tokenizer's rate (float32 `[T]`), its codes when the
    table encodes it (`_Coded`), or why it cannot be read."""
    rate = int(row["sample_rate"])
    try:
        if tokenizer.table is not None and rate == tokenizer.sample_rate:
            pcm = read_segment_pcm16(audio_root, row)  # [T] int16; None: not 16-bit mono
            if pcm is not None:
                if pcm.size == 0:
                    return _EMPTY
                return _Coded(encode_pcm16(pcm, tokenizer.table))  # [1, T]
        audio = read_segment_audio(audio_root, row)  # [T], mono at the file's rate
    except CodecflowError as err:
        return f"unreadable audio: {err}"
    if audio.size == 0:
        return _EMPTY
    if rate != tokenizer.sample_rate:
        import torch
        import torchaudio

        # Flagged at acquisition (not Libri-Light's 16 kHz): resampled here, once.
        wav = torchaudio.functional.resample(torch.from_numpy(audio), rate, tokenizer.sample_rate)
        audio = wav.numpy()  # [T']
    return audio


_EMPTY = "empty audio: the segment has no samples"


def _prefetched(
    rows: Sequence[Mapping[str, Any]],
    audio_root: str,
    tokenizer: _Tokenizer,
    stats: EncodeStats,
    depth: int = 8,
) -> Iterator[tuple[Mapping[str, Any], np.ndarray | _Coded | str]]:
    """The rows with their audio, read `depth` segments ahead by up to two threads (soundfile
    and the resampler release the GIL), as many as the thread policy gives this process, so
    that the encoder does not wait on I/O; the time it still waits is added to
    `stats.io_wait_seconds`. With one thread, read in turn here."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    readers = min(2, thread_policy(usable_cpus()).threads)
    if readers == 1:
        # One thread: nothing to overlap the reads with, and a pool's hand-overs cost 5 % of a
        # mu-law run (measured on one CPU by bench/tokenize_throughput.py).
        for row in rows:
            yield row, _load_segment(row, audio_root, tokenizer)
        return
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="codecflow-read") as pool:
        futures = [pool.submit(_load_segment, row, audio_root, tokenizer) for row in rows[:depth]]
        for i, row in enumerate(rows):
            if i + depth < len(rows):
                futures.append(pool.submit(_load_segment, rows[i + depth], audio_root, tokenizer))
            started = time.perf_counter()
            audio = futures[i].result()
            stats.io_wait_seconds += time.perf_counter() - started
            futures[i] = None  # type: ignore[call-overload]  # free the audio once handed over
            yield row, audio


def batch_plan(
    frames: Sequence[int], max_batch: int, max_frames: float, order: Sequence[int] | None = None
) -> list[list[int]]:
    """The segments' indices in encoder batches: taken in `order` (shortest first when None),
    each batch grows while it holds at most `max_batch` segments and its padded size (segments
    times the longest, in frames) stays within `max_frames`. A segment alone always fits."""
    if order is None:
        order = sorted(range(len(frames)), key=lambda i: frames[i])
    batches: list[list[int]] = []
    width = 0
    for i in order:
        grown = max(width, frames[i])
        if (
            batches
            and len(batches[-1]) < max_batch
            and grown * (len(batches[-1]) + 1) <= max_frames
        ):
            batches[-1].append(i)
            width = grown
        else:
            batches.append([i])
            width = frames[i]
    return batches


def padded_frames(frames: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """The frames the encoder computes for padding alone under `batches`."""
    return sum(len(b) * max(frames[i] for i in b) - sum(frames[i] for i in b) for b in batches)


#: Padded audio per encoder batch on a GPU. On the CPU segments are encoded one at a time:
#: Mimi on 2 cores encodes 21.4x real time alone and at most 15.8x in batches of 16 sorted by
#: length (19.4x per frame of audio, padding left out): big batches spill the caches
#: (`bench/tokenizers_rtf.py --batching`).
GPU_BATCH_SECONDS = 60.0


def encode_segments(
    audios: Sequence[np.ndarray],
    tokenizer: Any,
    batch_seconds: float | None = None,
    max_batch: int = 32,
    order: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Codes `[K, F_i]` of each mono float32 segment, F_i = ceil(T_i / samples_per_frame).

    Causal tokenizers encode batches of segments of similar length (`batch_plan`, shortest
    first unless `order` is given) of at most `batch_seconds` of padded audio (None:
    `GPU_BATCH_SECONDS` on a GPU, one segment at a time on the CPU), zero-padded to the
    longest: a frame's codes depend only on audio up to its end, so each segment keeps exactly
    the codes it gets alone (tested, and measured by `codecflow audit-tokenizer`). Non-causal
    ones (the post's codec looks ahead) encode one at a time.
    """
    import torch

    device = next(iter(tokenizer.parameters()), torch.empty(0)).device
    if batch_seconds is None:
        batch_seconds = GPU_BATCH_SECONDS if device.type == "cuda" else 0.0
    spf = tokenizer.samples_per_frame
    frames = [max(1, -(-len(a) // spf)) for a in audios]
    out: list[np.ndarray | None] = [None] * len(audios)
    limit = batch_seconds * tokenizer.sample_rate / spf if tokenizer.causal else 0
    for batch in batch_plan(frames, max_batch, limit, order):
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
    tokenizer: _Tokenizer,
    stats: EncodeStats,
    pool: int = 64,
) -> Iterator[tuple[Mapping[str, Any], np.ndarray | str]]:
    """(row, codes [K, F]) per row in order, or (row, reason) when its audio cannot be read.

    Audio is prefetched; `pool` segments at a time are batched by similar length."""
    import time

    loaded = _prefetched(rows, audio_root, tokenizer, stats)
    while True:
        chunk = [item for _, item in zip(range(pool), loaded, strict=False)]
        if not chunk:
            return
        audio = [(r, a) for r, a in chunk if isinstance(a, np.ndarray)]
        by_id: dict[str, np.ndarray] = {}
        if audio:
            started = time.perf_counter()
            codes = encode_segments([a for _, a in audio], tokenizer.model())
            stats.encode_seconds += time.perf_counter() - started
            by_id = {r["segment_id"]: c for (r, _), c in zip(audio, codes, strict=True)}
        samples = sum(len(a) for _, a in audio)
        samples += sum(a.codes.shape[1] for _, a in chunk if isinstance(a, _Coded))  # mu-law: F = T
        stats.audio_seconds += samples / tokenizer.sample_rate
        for row, item in chunk:
            if isinstance(item, _Coded):
                yield row, item.codes
            else:
                yield row, (item if isinstance(item, str) else by_id[row["segment_id"]])


def _arrow_table(
    records: Sequence[tuple[Mapping[str, Any], np.ndarray]],
    dtype: np.dtype,
    metadata: dict[bytes, bytes],
    with_text: bool = False,
) -> pa.Table:
    """One shard as a table for an Arrow IPC stream (format version 3,
    `tasks.data.token_shards`): `codes` K lists of F codes per row over one values buffer,
    the tokenizer's facts in the schema `metadata`; with `with_text`, each segment's transcript
    (or null) in a last `text` column."""
    codes_type = pa.from_numpy_dtype(dtype)
    schema = token_shard_schema(codes_type, metadata, with_text=with_text)
    k = records[0][1].shape[0] if records else 1
    frames = np.array([c.shape[1] for _, c in records], dtype=np.int64)  # [rows]
    # Level lists: row i's K lists of F_i codes, one after another over the flat values.
    level_offsets = np.zeros(len(records) * k + 1, dtype=np.int32)  # [rows * K + 1]
    np.cumsum(np.repeat(frames, k), out=level_offsets[1:])
    row_offsets = np.arange(0, len(records) * k + 1, k, dtype=np.int32)  # [rows + 1]
    values = np.concatenate([c.reshape(-1) for _, c in records]) if records else np.zeros(0, dtype)
    levels = pa.ListArray.from_arrays(pa.array(level_offsets), pa.array(values, type=codes_type))
    columns = [
        pa.array([r["segment_id"] for r, _ in records], pa.string()),
        pa.array([r["speaker"] for r, _ in records], pa.string()),
        pa.array([r["book_id"] for r, _ in records], pa.string()),
        pa.array([r["split"] for r, _ in records], pa.string()),
        pa.array(frames, pa.int64()),
        pa.ListArray.from_arrays(pa.array(row_offsets), levels),
    ]
    if with_text:
        columns.append(pa.array([r.get("text") for r, _ in records], pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


class _HashingSink:
    """A writable file (Arrow's IPC writer takes it): each piece goes to `file` and into a sha256
    as it comes, from the caller's memory (no copy); the crash tests' mid-write point after the
    first piece (a shard cut short)."""

    def __init__(self, file: Any) -> None:
        self.file, self.digest, self.size, self.closed = file, hashlib.sha256(), 0, False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.file.write(view)
        self.digest.update(view)
        if self.size == 0:
            kill_point("mid-write")  # crash tests: a shard half-written or half-uploaded
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _put_arrow(url: str, table: pa.Table) -> ShardFile:
    """Write one shard's Arrow IPC stream (uncompressed: readers memory-map it and read the codes
    without a copy, and `datasets.Dataset.from_file` maps a stream as it is) straight into its
    file, hashed as it is written: no buffer of the whole shard (57 MB for a 1 h mu-law shard,
    which cost a copy and its page faults) and no second read. Temporary name + rename locally,
    one PUT on an object store."""
    with storage.open_atomic_write(url) as f:
        sink = _HashingSink(f)
        with ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
            writer.write_table(table)
    return ShardFile(bytes=sink.size, sha256=sink.digest.hexdigest())


def _webdataset_key(segment_id: str) -> str:
    # WebDataset splits a member name at its first dot: the key must have none.
    return segment_id.replace(".", "_")


def _webdataset_bytes(
    records: Sequence[tuple[Mapping[str, Any], np.ndarray]], facts: Mapping[str, Any]
) -> bytes:
    """A tar that plain `webdataset` reads: `<key>.codes.npy` ([K, F]) and `<key>.json` per row,
    the JSON with the row's fields and the tokenizer's `facts` (`token_shards.webdataset_facts`).

    Deterministic bytes: fixed order, mtime 0, root owner, mode 0644, sorted JSON keys.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row, codes in records:
            key = _webdataset_key(row["segment_id"])
            npy = io.BytesIO()
            np.save(npy, codes, allow_pickle=False)
            meta = {
                **facts,
                "segment_id": row["segment_id"],
                "speaker": row["speaker"],
                "book_id": row["book_id"],
                "split": row["split"],
                "n_frames": int(codes.shape[1]),
            }
            if "text" in row:
                meta["text"] = row["text"]
            for name, data in (
                (f"{key}.codes.npy", npy.getvalue()),
                (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _put_file(url: str, data: bytes | pa.Buffer) -> ShardFile:
    """Write one file of a shard from memory (the WebDataset tar) as `_put_arrow` writes the
    stream: in two halves through `_HashingSink`, so that the crash tests stop it between."""
    view = memoryview(data)  # slices of a memoryview copy nothing
    half = len(view) // 2
    with storage.open_atomic_write(url) as f:
        sink = _HashingSink(f)
        sink.write(view[:half])
        sink.write(view[half:])
    return ShardFile(bytes=sink.size, sha256=sink.digest.hexdigest())


def _committed_marker(out: str, shard: PlannedShard) -> ShardMarker | None:
    """The shard's commit marker when it is this plan's (same rows), else None."""
    marker_url = shard_marker_url(out, shard.name)
    if not storage.exists(marker_url):
        return None
    marker = ShardMarker.read(marker_url)
    return marker if marker.plan_hash == shard.plan_hash else None


def _write_shard(
    plan: DatasetPlan,
    shard: PlannedShard,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: _Tokenizer,
    stats: EncodeStats,
) -> None:
    """Encode one shard's rows, write its files whole, then its commit marker.

    A neural tokenizer reads and encodes the shard's rows shortest first, so that each pool of
    segments batched together has similar lengths and little padding (`bench/tokenizers_rtf.py
    --batching` measures it); the shard keeps the plan's order, so its bytes do not change.
    The mu-law table does not batch: its rows are read in the plan's order."""
    reading = list(rows)
    if tokenizer.table is None:
        reading.sort(key=lambda r: (float(r["duration_s"]), r["segment_id"]))
    coded = {
        r["segment_id"]: c for r, c in _encode_rows(reading, plan.audio_root, tokenizer, stats)
    }
    encoded = [(r, coded[r["segment_id"]]) for r in rows]
    good = [(r, c) for r, c in encoded if not isinstance(c, str)]
    rejects = tuple(
        Reject(path=r["segment_id"], reason=c) for r, c in encoded if isinstance(c, str)
    )
    base = storage.join(plan.out, "shards", shard.name)
    table = _arrow_table(good, tokenizer.token_dtype, plan.shard_metadata, plan.has_text)  # type: ignore[arg-type]
    files = {"arrow": _put_arrow(f"{base}.arrow", table)}
    if "webdataset" in plan.formats:
        tar = _webdataset_bytes(good, webdataset_facts(plan.spec))  # type: ignore[arg-type]
        files["webdataset"] = _put_file(f"{base}.tar", tar)
    kill_point("before-commit")  # crash tests: shard written, marker not yet
    frames = sum(int(c.shape[1]) for _, c in good)  # type: ignore[union-attr]
    marker = ShardMarker(
        name=shard.name,
        split=shard.split,
        plan_hash=shard.plan_hash,
        rows=len(good),
        frames=frames,
        tokens=frames * tokenizer.num_levels,
        # A plain sum, as before: 0 (an int) for a shard without a good row, byte for byte.
        audio_seconds=sum(float(r["duration_s"]) for r, _ in good),
        files=files,
        rejects=rejects,
    )
    storage.write_json(shard_marker_url(plan.out, shard.name), marker.to_json())


def write_shard_group(
    plan: DatasetPlan, names: Sequence[str], progress: ProgressCallback | None = None
) -> list[ShardMarker]:
    """Write the shards `names` of the plan (skipping committed ones); return their markers.

    `progress` is called with (seconds of audio done, seconds in the group) after each shard
    (the Prefect task passes a progress artifact).
    """
    by_name = {s.name: s for s in plan.shards}
    todo = [by_name[n] for n in names if _committed_marker(plan.out, by_name[n]) is None]
    if todo:
        plan_url = storage.join(plan.out, "plan.parquet")
        wanted = [s.name for s in todo]
        candidates = storage.read_parquet(plan_url, prune=("shard", wanted)).to_pylist()
        keep = set(wanted)
        rows = [r for r in candidates if r["shard"] in keep]
        tokenizer = _Tokenizer(plan.spec)  # the model is built when a segment needs it
        stats = EncodeStats()
        meter = _Progress(sum(s.audio_seconds for s in todo), names[0], progress)
        for shard in todo:
            shard_rows = sorted(
                (r for r in rows if r["shard"] == shard.name), key=lambda r: r["segment_id"]
            )
            _write_shard(plan, shard, shard_rows, tokenizer, stats)
            kill_point("after-commit")  # crash tests: between shards
            meter.update(stats)
        meter.close(stats)
    markers = []
    for name in names:
        marker = _committed_marker(plan.out, by_name[name])
        assert marker is not None, f"shard {name} has no commit marker after writing"
        markers.append(marker)
    return markers


class _Progress:
    """Live progress of a shard group, in seconds of audio: a tqdm bar on a terminal, the
    caller's progress callback (a Prefect progress artifact inside a run), and a closing line
    with audio hours per wall hour and the time the encoder waited on I/O."""

    def __init__(
        self, total_audio_seconds: float, first: str, callback: ProgressCallback | None
    ) -> None:
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
        self._callback = callback

    def update(self, stats: EncodeStats) -> None:
        self._bar.update(round(stats.audio_seconds) - self._bar.n)
        if self._callback is not None:
            self._callback(round(stats.audio_seconds), round(self._total))

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
