"""The bytes of one token shard, for the writer (tokenize) and the readers: the facts its Arrow
schema's metadata carries, and the codes of a record batch as one contiguous numpy view, in
every format version a reader may meet.

Format versions (`dataset.json` -> `format_version`):

- **4** (written now): the Arrow shards of version 3 (their metadata says 4), and WebDataset
  twins that carry the tokenizer's facts: in each sample's JSON (`webdataset_facts`) and in
  `shards/webdataset.json` beside the tars (`WEBDATASET_INDEX`, `records.WebDatasetIndex`), so
  that plain `webdataset` knows what the codes are.
- **3**: an Arrow IPC *stream* (the format `datasets.Dataset.from_file` and
  `pa.ipc.open_stream` read; Hugging Face's own cache files are streams named `.arrow` too),
  `codes` a `list<list<uint8|uint16>>` of K lists of F codes per row (`schemas.tables.
  token_shard_schema`), and the tokenizer's facts in the schema metadata under `codecflow.*`
  (`shard_metadata`), so that plain pyarrow knows what the codes are.
- **2** and before: an Arrow IPC *file*, `codes` a flat `list<...>` of the K * F codes
  level-major (`token_shard_schema_v2`), no metadata. Read as before, never written.

In both, the codes values of a record batch are one contiguous buffer (the innermost list's),
level-major per row, so a segment's `[K, F]` is a view of the mapped file: no copy
(`BatchCodes`). An IPC stream read from a memory map is zero-copy like a file: the reader
slices the map (tests/tasks/data/test_token_dataset.py checks the addresses).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

__all__ = [
    "BatchCodes",
    "CODES_LAYOUT",
    "CODES_SHAPE",
    "DATASET_FORMAT_VERSION",
    "LAST_FLAT_VERSION",
    "METADATA_PREFIX",
    "WEBDATASET_INDEX",
    "batch_codes",
    "is_stream_format",
    "read_shard_batches",
    "read_shard_metadata",
    "shard_metadata",
    "tokenizer_facts",
    "webdataset_facts",
]

#: Bumped whenever the bytes of a shard would change for the same inputs. 4: the WebDataset
#: twins' sample JSON holds the tokenizer's facts (issue 28); 3: IPC stream, nested `[K][F]`
#: codes, schema metadata (issue 15); 2: IPC file, flat codes. The version is an input of the
#: fingerprint, so a run resumed into a folder of an older version never mixes the two.
DATASET_FORMAT_VERSION = 4

#: The last version written as an IPC file with flat `codes` (read by `read_shard_batches`).
LAST_FLAT_VERSION = 2

#: What a row's `codes` are, in `dataset.json` (`layout`) and the shards' metadata.
CODES_LAYOUT = (
    "codes: [K][F] per row, level-major: K lists (levels) of F codes (frames), "
    "codes[k][f] is level k's code at frame f"
)

#: A WebDataset sample's `codes.npy` shape, as the keys of its JSON that size each axis:
#: `[num_levels, n_frames]`, i.e. `[K, F]`, level-major like the Arrow rows.
CODES_SHAPE = ("num_levels", "n_frames")

#: The dataset-level JSON of the WebDataset twins, relative to the dataset folder: beside the
#: tars, so that a copy of `shards/` alone still says what its tars hold.
WEBDATASET_INDEX = "shards/webdataset.json"

#: The prefix of codecflow's keys in a shard's schema metadata.
METADATA_PREFIX = "codecflow."


def tokenizer_facts(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a reader needs to know of the codes of the tokenizer `spec`
    (`tasks.loaders.tokenizer_spec`): tokenizer (its name, for `load_tokenizer`), num_levels
    (K), codebook_size, sample_rate, frame_rate (frames per second) and dtype, as JSON values."""
    return {
        "tokenizer": str(spec["name"]),
        "num_levels": int(spec["num_levels"]),
        "codebook_size": int(spec["codebook_size"]),
        "sample_rate": int(spec["sample_rate"]),
        "frame_rate": spec["frame_rate"],
        "dtype": str(spec["token_dtype"]),
    }


def webdataset_facts(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The facts each WebDataset sample's JSON holds besides its own fields: `tokenizer_facts`,
    the format version and `codes_shape` (`CODES_SHAPE`), so that one sample read alone says
    what its `codes.npy` is."""
    return {
        **tokenizer_facts(spec),
        "format_version": DATASET_FORMAT_VERSION,
        "codes_shape": list(CODES_SHAPE),
    }


def shard_metadata(spec: Mapping[str, Any], fingerprint: str | None) -> dict[bytes, bytes]:
    """The schema metadata of a shard of a dataset of the tokenizer `spec`
    (`tasks.loaders.tokenizer_spec`), as UTF-8 bytes (Arrow metadata is bytes to bytes):
    `codecflow.` + format_version, the `tokenizer_facts` (tokenizer, num_levels, codebook_size,
    sample_rate, frame_rate, dtype), codes_layout, dataset_fingerprint (when known) and
    tokenizer_spec (the whole spec as sorted JSON: a codec's checkpoint sha256, ...).
    Numbers are their JSON text (`16000.0`, `8`), names as they are."""
    facts: dict[str, Any] = {
        "format_version": DATASET_FORMAT_VERSION,
        **tokenizer_facts(spec),
        "codes_layout": CODES_LAYOUT,
    }
    if fingerprint is not None:
        facts["dataset_fingerprint"] = fingerprint
    facts["tokenizer_spec"] = json.dumps(dict(spec), sort_keys=True)
    return {
        f"{METADATA_PREFIX}{key}".encode(): (
            value if isinstance(value, str) else json.dumps(value)
        ).encode()
        for key, value in facts.items()
    }


def read_shard_metadata(schema: pa.Schema) -> dict[str, str]:
    """codecflow's facts in a shard's schema metadata, prefix dropped (`{"num_levels": "8",
    ...}`); empty for a shard of format version 2 or before."""
    prefix = METADATA_PREFIX.encode()
    return {
        key[len(prefix) :].decode(): value.decode()
        for key, value in (schema.metadata or {}).items()
        if key.startswith(prefix)
    }


def is_stream_format(format_version: int) -> bool:
    """True when shards of `format_version` are IPC streams (3 on), False for IPC files."""
    return format_version > LAST_FLAT_VERSION


def read_shard_batches(
    source: pa.NativeFile, format_version: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of a shard opened as `source` (a memory map: the batches
    slice it, no copy). Raises `pa.ArrowInvalid` when it is not of the format's kind."""
    if is_stream_format(format_version):
        stream = ipc.open_stream(source)
        return stream.schema, iter(stream)
    reader = ipc.open_file(source)
    return reader.schema, (reader.get_batch(b) for b in range(reader.num_record_batches))


@dataclass(frozen=True)
class BatchCodes:
    """The codes of one record batch: one contiguous values buffer, level-major per row."""

    values: np.ndarray  # [sum_i K * F_i], the shard's dtype: a view of the batch's buffer
    starts: np.ndarray  # [rows] int64: where row i's K * F_i values start in `values`
    n_frames: np.ndarray  # [rows] int64: F_i


def batch_codes(batch: pa.RecordBatch, num_levels: int, format_version: int) -> BatchCodes:
    """`batch`'s codes as a view (`to_numpy(zero_copy_only=True)`), checked against its
    `n_frames` column and K = `num_levels`. Raises ValueError saying what disagrees."""
    codes = batch.column("codes")
    n_frames = batch.column("n_frames").to_numpy().astype(np.int64)  # [rows]
    if not is_stream_format(format_version):
        if not pa.types.is_list(codes.type) or pa.types.is_list(codes.type.value_type):
            raise ValueError(f"codes are {codes.type}, not the flat list of format 2")
        offsets = codes.offsets.to_numpy().astype(np.int64)  # [rows + 1], into codes.values
        if not np.array_equal(np.diff(offsets), n_frames * num_levels):
            raise ValueError(f"codes lengths are not n_frames * {num_levels}")
        values = codes.values.to_numpy(zero_copy_only=True)
        return BatchCodes(values, offsets[:-1], n_frames)
    if not pa.types.is_list(codes.type) or not pa.types.is_list(codes.type.value_type):
        raise ValueError(f"codes are {codes.type}, not the [K][F] nested list of format 3")
    outer = codes.offsets.to_numpy().astype(np.int64)  # [rows + 1], into the level lists
    if not np.all(np.diff(outer) == num_levels):
        raise ValueError(f"a row's codes do not have {num_levels} levels")
    levels = codes.values  # one list per (row, level), rows after rows
    inner = levels.offsets.to_numpy().astype(np.int64)  # [rows * K + 1], into the values
    lengths = np.diff(inner[outer[0] : outer[-1] + 1])  # [rows * K]
    if not np.array_equal(lengths, np.repeat(n_frames, num_levels)):
        raise ValueError(f"a level's codes are not n_frames long (K = {num_levels})")
    # A row's K level lists are adjacent in the values: row i spans inner[outer[i]] onwards,
    # K * F_i values, level-major; reshaped to [K, F_i] by the reader.
    values = levels.values.to_numpy(zero_copy_only=True)
    return BatchCodes(values, inner[outer[:-1]], n_frames)
