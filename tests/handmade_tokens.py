"""A hand-made K=3 uint16 token dataset in tokenization's layout (several shards, one of them
written as two record batches, and a one-frame segment), in the format of today (version 4: IPC
streams, nested `[K][F]` codes, schema metadata; its Arrow shards are version 3's but for the
version their metadata names), of version 3, or of version 2 (IPC files, flat codes), and
the post's stream computed independently of `TokenReader`: for the reader's tests and the torch
datasets' (importable: pytest's pythonpath)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from codecflow.schemas.tables import token_shard_schema, token_shard_schema_v2
from codecflow.tasks.core.storage import sha256_file
from codecflow.tasks.data.records import DatasetInfo, DatasetTotals, ShardEntry
from codecflow.tasks.data.token_shards import (
    CODES_LAYOUT,
    DATASET_FORMAT_VERSION,
    METADATA_PREFIX,
    shard_metadata,
)

__all__ = ["FRAME_RATE", "K", "LAYOUT", "TOKENIZER", "flat_stream", "write_dataset"]

K = 3  # levels of the hand-made dataset
FRAME_RATE = 125  # frames per second it claims
#: Frames per segment, per record batch, per shard: the train split has 3 shards, one of them
#: written as two record batches, and a one-frame segment.
LAYOUT = {
    "train-00000": [[5, 1, 7]],
    "train-00001": [[4], [6, 2]],
    "train-00002": [[9]],
    "val-00000": [[3, 8]],
}


TOKENIZER = {
    "name": "test",
    "num_levels": K,
    "codebook_size": 1024,
    "frame_rate": FRAME_RATE,
    "sample_rate": 16_000,
    "token_dtype": "uint16",
}


def _codes_column(codes: list[np.ndarray], format_version: int) -> pa.Array:
    """The `codes` of one record batch, built by hand (not by the shard writer): nested
    `[K][F]` lists (3), or the flat level-major list (2)."""
    values = pa.array(np.concatenate([c.reshape(-1) for c in codes]))
    if format_version == 2:
        offsets = np.cumsum([0] + [c.size for c in codes]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), values)
    level_lengths = [c.shape[1] for c in codes for _ in range(K)]
    levels = pa.ListArray.from_arrays(
        pa.array(np.cumsum([0, *level_lengths]).astype(np.int32)), values
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(0, len(codes) * K + 1, K, np.int32)), levels)


def _info(schema: pa.Schema, shards: list[dict], format_version: int) -> DatasetInfo:
    """The dataset.json of the hand-made shards."""
    return DatasetInfo(
        fingerprint="test",
        format_version=format_version,
        manifest="segments.parquet",
        tokenizer=dict(TOKENIZER),
        dtype="uint16",
        formats=("arrow",),
        layout=CODES_LAYOUT
        if format_version >= 3
        else "codes: [K, F] flattened level-major per row",
        arrow_schema=schema.remove_metadata().to_string(),
        shards=tuple(ShardEntry(**s) for s in shards),
        totals=DatasetTotals(segments=0, audio_hours=0.0, frames=0, tokens=0, bytes=0),
    )


def write_dataset(
    root: Path, seed: int = 0, format_version: int = DATASET_FORMAT_VERSION
) -> dict[str, list[np.ndarray]]:
    """A K=3 uint16 dataset in tokenization's layout; returns each split's segments' [K, F]."""
    assert format_version in (2, 3, 4)
    rng = np.random.default_rng(seed)
    if format_version == 2:
        schema, new_writer = token_shard_schema_v2(pa.uint16()), ipc.new_file
    else:
        metadata = shard_metadata(TOKENIZER, "test")
        metadata[f"{METADATA_PREFIX}format_version".encode()] = str(format_version).encode()
        schema = token_shard_schema(pa.uint16(), metadata)
        new_writer = ipc.new_stream
    (root / "shards").mkdir(parents=True)
    segments: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    shards = []
    for name, batches in LAYOUT.items():
        split = name.split("-")[0]
        path = root / "shards" / f"{name}.arrow"
        frames = 0
        with pa.OSFile(str(path), "wb") as sink, new_writer(sink, schema) as writer:
            for batch_frames in batches:
                codes = [rng.integers(0, 1024, size=(K, f), dtype=np.uint16) for f in batch_frames]
                segments[split].extend(codes)
                frames += sum(batch_frames)
                n = len(codes)
                columns = [
                    pa.array([f"{name}_{j}" for j in range(n)]),
                    pa.array(["spk"] * n),
                    pa.array(["book"] * n),
                    pa.array([split] * n),
                    pa.array(batch_frames, type=pa.int64()),
                    _codes_column(codes, format_version),
                ]
                writer.write_batch(pa.record_batch(columns, schema=schema))
        shards.append(
            {
                "name": name,
                "split": split,
                "file": f"shards/{name}.arrow",
                "rows": sum(len(b) for b in batches),
                "frames": frames,
                "tokens": frames * K,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "audio_seconds": frames / FRAME_RATE,
            }
        )
    info = _info(schema, shards, format_version)
    (root / "dataset.json").write_text(json.dumps(info.to_json()))
    return segments


def flat_stream(segments: list[np.ndarray]) -> np.ndarray:
    """The post's stream computed independently: concatenate in time, then interleave levels."""
    return np.concatenate(segments, axis=1).T.reshape(-1)  # [F_total, K] -> [F_total * K]
