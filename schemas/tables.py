"""Arrow schemas of codecflow's immutable records: the segment manifest and the token shards.

Every Parquet or Arrow file that codecflow writes is validated against one of these schemas, so a
reader never has to guess a column's type.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "MANIFEST_AUDIO_ROOT_KEY",
    "REJECTS_SCHEMA",
    "SEGMENT_CHUNK_TYPE",
    "SEGMENT_MANIFEST_SCHEMA",
    "TOKEN_SHARD_SCHEMA",
    "token_shard_schema",
    "token_shard_schema_v2",
    "SPLITS",
    "TEXTS_NAME",
    "TEXT_METADATA_KEY",
    "TEXTS_SCHEMA",
]

#: Schema metadata of a token shard whose segments carry their transcripts (`text` column).
TEXT_METADATA_KEY = b"codecflow.text"

#: The dataset splits. Speakers never appear in both (see tasks.acquire.segments.split_by_speaker).
SPLITS: tuple[str, ...] = ("train", "val")

#: Key of the manifest's Parquet metadata that names the extracted audio folder, relative to the
#: manifest's own folder (so a run folder can be moved as a whole).
MANIFEST_AUDIO_ROOT_KEY = b"codecflow.audio_root"

#: One voice-activity chunk of a source file, in seconds from the file's start.
SEGMENT_CHUNK_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64())])

#: One row per segment. A segment is the concatenation of consecutive VAD chunks of one source
#: file, with the semantics of Libri-Light's `data_preparation/cut_by_vad.py`: chunks are joined
#: until adding the next one would exceed `target_len_sec`; a chunk longer than the target stays
#: whole. Segments are stored as references (file + chunks) by default, or as FLAC files of their
#: own (then `chunks` is the whole file). `source_path` is relative to the manifest's audio root
#: (metadata key MANIFEST_AUDIO_ROOT_KEY). Audio that is not 16 kHz mono is kept and flagged by
#: `sample_rate` and `channels`: readers resample and down-mix it.
SEGMENT_MANIFEST_SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),  # "<speaker>_<file stem>_<index:04d>", unique
        ("subset", pa.string()),  # Libri-Light subset folder: small, medium, large, ...
        ("speaker", pa.string()),
        ("book_id", pa.string()),
        ("source_path", pa.string()),
        ("start_s", pa.float64()),  # start of the first chunk
        ("end_s", pa.float64()),  # end of the last chunk
        ("duration_s", pa.float64()),  # sum of the chunk lengths (the gaps are dropped)
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
        ("snr", pa.float64()),
        ("split", pa.string()),  # one of SPLITS
        ("chunks", pa.list_(SEGMENT_CHUNK_TYPE)),
    ]
)

#: The transcripts of a manifest's segments, beside it (`<manifest folder>/texts.parquet`), when
#: its source has any: one row per segment that has a text. A file cut into one segment gives it
#: the file's transcript; a file cut into several gives none (its words have no timings).
TEXTS_NAME = "texts.parquet"
TEXTS_SCHEMA = pa.schema([("segment_id", pa.string()), ("text", pa.string())])

#: Files that were seen but could not be used, with the reason (one row per file).
REJECTS_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string())])


def token_shard_schema(
    codes_type: pa.DataType, metadata: dict[bytes, bytes] | None = None, with_text: bool = False
) -> pa.Schema:
    """One row per segment in an Arrow IPC token shard (format version 3). `codes` holds the
    segment's `[K, F]` code matrix as K lists of F codes, level-major (`codes[k][f]` is level k's
    code at frame f: plain pyarrow's `as_py()` gives K lists of F ints), in the smallest unsigned
    integer type that holds the tokenizer's vocabulary (uint8 for mu-law's 256 values, uint16
    for codebooks of 1 024 or Mimi's 2 048). A record batch's codes values stay one contiguous
    buffer (the inner list's), so a reader views a segment's `[K, F]` without a copy.

    `metadata` is the schema's key-value metadata: the tokenizer's facts
    (`tasks.data.token_shards.shard_metadata`). A dataset whose manifest has transcripts adds a
    last column, `text` (the segment's words, or null), and says so in the metadata
    (`codecflow.text`: "1"); one without has exactly the columns above."""
    fields = [
        ("segment_id", pa.string()),
        ("speaker", pa.string()),
        ("book_id", pa.string()),
        ("split", pa.string()),
        ("n_frames", pa.int64()),
        ("codes", pa.list_(pa.list_(codes_type))),
    ]
    if with_text:
        fields.append(("text", pa.string()))
        metadata = {**(metadata or {}), TEXT_METADATA_KEY: b"1"}
    return pa.schema(fields, metadata=metadata)


def token_shard_schema_v2(codes_type: pa.DataType) -> pa.Schema:
    """A token shard of format version 2 and before (read, never written): `codes` the `[K, F]`
    codes flattened level-major into one list, and no schema metadata."""
    return pa.schema(
        [
            ("segment_id", pa.string()),
            ("speaker", pa.string()),
            ("book_id", pa.string()),
            ("split", pa.string()),
            ("n_frames", pa.int64()),
            ("codes", pa.list_(codes_type)),
        ]
    )


#: The mu-law shard schema (uint8 codes), without metadata.
TOKEN_SHARD_SCHEMA = token_shard_schema(pa.uint8())
