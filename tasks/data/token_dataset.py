"""Token datasets as the stages after tokenize read them: `dataset.json`, the commit checks, and
the zero-copy `TokenReader`.

Zero-copy reads of one split of a token dataset: memory-mapped Arrow shards, the post's stream.

Shape symbols: K levels (codebooks) per frame, F frames of one segment, F_total frames of the
split, N tokens of a window, B windows in a batch.

A token dataset (written by `tasks.tokenize`) stores one row per segment in uncompressed Arrow
IPC shards; a row's `codes` are the segment's `[K, F]` codes, level-major
(`tasks.data.token_shards`: K lists of F codes since format version 3, one flat list before).
`TokenReader` memory-maps every committed shard of one split (as listed in `dataset.json`) and
views the codes values buffer as numpy without a copy, in every format version, so opening a
split costs nothing but the maps, however large it is. The post's flattened 1-D stream
(time-major, levels interleaved: t0·l0, t0·l1, ..., t1·l0, ...) over the concatenation of all
segments in shard order is never materialised: `tokens` and `random_windows` find the segments a
window touches by binary search on the cumulative frame offsets and interleave only those
slices. A remote dataset (`s3://...`) is read the same way from local copies of its shards,
fetched once per machine and checked against their sha256 (`tasks.data.shard_cache`). A reader
is also the sequence of its split's segments (`len`, `reader[i]`), and pickles without its maps,
which the unpickled copy opens again when first used (`tasks.data.torch_datasets` builds torch
datasets on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa

from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.records import DatasetInfo, ShardEntry
from codecflow.tasks.data.shard_cache import fetch_shard
from codecflow.tasks.data.shard_check import ShardDamagedError, check_shard
from codecflow.tasks.data.token_shards import (
    DATASET_FORMAT_VERSION,
    batch_codes,
    is_stream_format,
    read_shard_batches,
    read_shard_metadata,
)

__all__ = [
    "DATASET_COMMITTED",
    "DATASET_FORMAT_VERSION",
    "DATASET_KIND",
    "DatasetRecord",
    "SEGMENT_METADATA",
    "Segment",
    "TokenReader",
    "is_dataset_committed",
    "read_dataset_info",
    "record_from_info",
    "shard_marker_url",
]

#: The kind of folder a tokenize run owns (`outputs.claim_output`), and the files that show a
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


def is_dataset_committed(out: Path | str) -> bool:
    """True when `out` holds a complete token dataset (its dataset.json exists)."""
    return storage.exists(storage.join(str(out), "dataset.json"))


def record_from_info(out: str | Path, info: DatasetInfo) -> DatasetRecord:
    """The record of the dataset in `out` whose dataset.json holds `info`."""
    return DatasetRecord(
        path=out if storage.is_remote(out) else Path(out),
        fingerprint=info.fingerprint,
        n_segments=info.totals.segments,
        n_tokens=info.totals.tokens,
        n_bytes=info.totals.bytes,
        audio_hours=info.totals.audio_hours,
        n_rejects=info.n_rejects,
    )


def read_dataset_info(dataset: str | Path) -> DatasetInfo:
    """The committed `dataset.json` of a token dataset (a folder or a URL such as `s3://b/x`); a
    clear error when there is none or it is not a valid one."""
    info = storage.join(dataset, "dataset.json")
    present = storage.exists(info) if storage.is_remote(info) else Path(info).is_file()
    if not present:
        raise CodecflowError(f"no complete token dataset at {dataset} (dataset.json is missing)")
    return DatasetInfo.read(info)


def shard_marker_url(out: str, name: str) -> str:
    return storage.join(out, "shards", f"{name}.commit.json")


#: The string columns of a token shard that describe its segments (`schemas.tables`).
SEGMENT_METADATA = ("segment_id", "speaker", "book_id", "split")


@dataclass(frozen=True)
class Segment:
    """One segment of a split as `TokenReader[i]` returns it: its codes and its shard row.

    `codes` is `[K, F]` in the dataset's unsigned dtype (uint8, uint16 or uint32): a read-only
    view of the mapped shard, valid while the reader is open (copy it to keep it).
    """

    index: int  # its position in the split (shard order, then row order)
    segment_id: str
    speaker: str
    book_id: str
    split: str
    codes: np.ndarray  # [K, F] in the dataset's dtype: a read-only view of the mapped shard
    text: str | None = None  # its transcript, when the dataset carries them

    @property
    def n_frames(self) -> int:
        """F, the segment's number of frames."""
        return int(self.codes.shape[1])


@dataclass
class _SegmentIndex:
    """What `TokenReader._map_shard` collects per record batch, concatenated once mapped."""

    batch_of: list[np.ndarray] = field(default_factory=list)  # per segment: index into _values
    row_of: list[np.ndarray] = field(default_factory=list)  # per segment: row in its batch
    value_start: list[np.ndarray] = field(default_factory=list)  # first value in the buffer
    frames: list[np.ndarray] = field(default_factory=list)  # per segment: F


#: The attributes `TokenReader._map` sets: an unpickled reader maps its split when one of them
#: is first read.
_MAPPED = frozenset(
    {
        "num_levels", "dtype", "segment_frames", "n_segments", "n_frames", "n_tokens", "_maps",
        "_values", "_metadata", "_batch_of", "_row_of", "_value_start", "_frame_starts",
        "_format_version",
    }
)  # fmt: skip


class TokenReader:
    """One split of a token dataset, memory-mapped, read as codes or as the post's flat stream.

    Every committed shard of `split` listed in `<dataset>/dataset.json` is opened with
    `pa.memory_map` and stays mapped until `close()` (or the end of a `with` block). Segment
    arrays returned by `segment_codes` are read-only views of the mapped files;
    `tokens` and `random_windows` return fresh arrays holding only the tokens asked for.

    `dataset` is a folder, mapped in place (no copy), or a URL (`s3://bucket/tokens/x`) whose
    shards are fetched once into the local shard cache, checked against their sha256, and
    mapped from there (`tasks.data.shard_cache`); `downloaded` counts the shards this reader
    fetched (0 when every one was cached).

    A reader is a sequence of segments: `len(reader)` is the split's number of segments and
    `reader[i]` a `Segment` (the `[K, F]` codes view, segment id, speaker, book, split).

    A reader pickles to its dataset's location, split and fingerprint only, never its maps: the
    copy in another process (a `DataLoader` worker) maps the split there when first used, a
    remote dataset's shards through that machine's shard cache, and refuses a dataset whose
    fingerprint has changed since.

    Raises CodecflowError when the dataset is incomplete, has no segment in `split`, or a shard
    disagrees with `dataset.json` (rows, dtype, frame counts, sha256 of a fetched shard).
    """

    def __init__(self, dataset: str | Path, split: str) -> None:
        self.dataset = storage.location(dataset)  # a Path, or a URL kept as text
        self.split = split
        self.downloaded = 0
        self._closed = False
        self._map(read_dataset_info(self.dataset))

    def _map(self, info: DatasetInfo) -> None:
        """Map every committed shard of the split and build the per-segment index."""
        self.fingerprint = info.fingerprint
        self.num_levels = info.num_levels  # K
        self.dtype = np.dtype(info.dtype)
        if info.format_version > DATASET_FORMAT_VERSION:
            raise CodecflowError(
                f"token dataset {self.dataset} is of format version {info.format_version}, "
                f"newer than this codecflow reads ({DATASET_FORMAT_VERSION}): update codecflow"
            )
        self._format_version = info.format_version
        shards = [s for s in info.shards if s.split == self.split]
        if not shards:
            present = sorted({s.split for s in info.shards})
            raise CodecflowError(
                f"token dataset {self.dataset} has no '{self.split}' split "
                f"(splits with segments: {', '.join(present) or 'none'})"
            )
        self._maps: list[pa.MemoryMappedFile] = []
        self._values: list[np.ndarray] = []  # per record batch: its codes values, [sum K * F]
        self._metadata: list[dict[str, pa.Array]] = []  # per record batch: its string columns
        index = _SegmentIndex()
        try:
            for shard in shards:
                rows = self._map_shard(shard, index)
                if rows != shard.rows:
                    raise CodecflowError(
                        f"token shard {storage.join(self.dataset, shard.file)} has {rows} rows, "
                        f"dataset.json says {shard.rows}"
                    )
        except BaseException:
            self.close()
            raise
        if not index.frames or not sum(len(f) for f in index.frames):
            self.close()
            raise CodecflowError(f"token dataset {self.dataset} has no '{self.split}' segments")
        self._batch_of = np.concatenate(index.batch_of)  # [n_segments] int64
        self._row_of = np.concatenate(index.row_of)  # [n_segments] int64
        self._value_start = np.concatenate(index.value_start)  # [n_segments] int64
        self.segment_frames = np.concatenate(index.frames)  # [n_segments] int64
        self.segment_frames.flags.writeable = False
        # Cumulative frame offsets: segment i covers frames [_frame_starts[i], _frame_starts[i+1]).
        self._frame_starts = np.zeros(len(self.segment_frames) + 1, dtype=np.int64)
        np.cumsum(self.segment_frames, out=self._frame_starts[1:])  # [n_segments + 1]
        self.n_segments = len(self.segment_frames)
        self.n_frames = int(self._frame_starts[-1])  # F_total
        self.n_tokens = self.n_frames * self.num_levels  # F_total * K

    def _map_shard(self, shard: ShardEntry, index: _SegmentIndex) -> int:
        """Map one shard; append its per-segment records to `index`; return its number of rows."""
        path = storage.join(self.dataset, shard.file)  # what errors name: the file or its URL
        source = pa.memory_map(str(self._local_copy(shard, path)), "r")
        self._maps.append(source)
        kind = "stream" if is_stream_format(self._format_version) else "file"
        try:
            schema, batches = read_shard_batches(source, self._format_version)
            self._check_shard_metadata(schema, path)
            rows = 0
            for batch in batches:
                try:
                    codes = batch_codes(batch, self.num_levels, self._format_version)
                except ValueError as exc:
                    raise CodecflowError(f"token shard {path}: {exc}") from None
                if codes.values.dtype != self.dtype:
                    raise CodecflowError(
                        f"token shard {path} holds {codes.values.dtype} codes, dataset.json "
                        f"says {self.dtype}"
                    )
                n = len(codes.n_frames)
                index.batch_of.append(np.full(n, len(self._values), dtype=np.int64))
                index.row_of.append(np.arange(n, dtype=np.int64))
                index.value_start.append(codes.starts)
                index.frames.append(codes.n_frames)
                self._values.append(codes.values)  # a view of the mapped file
                # Arrow arrays over the mapped file: a segment's strings are read when asked for.
                names = SEGMENT_METADATA + (("text",) if "text" in batch.schema.names else ())
                self._metadata.append({name: batch.column(name) for name in names})
                rows += n
        except (pa.ArrowInvalid, OSError) as exc:  # OSError: pyarrow's "Expected to be able..."
            reason = " ".join(str(exc).split())
            raise CodecflowError(
                f"token shard {path} is not a readable Arrow IPC {kind} (format version "
                f"{self._format_version}): {reason}"
            ) from None
        return rows

    def _check_shard_metadata(self, schema: pa.Schema, path: str) -> None:
        """A shard of format 3 names its dataset: one copied from another dataset is refused."""
        found = read_shard_metadata(schema).get("dataset_fingerprint")
        if found is not None and found != self.fingerprint:
            raise CodecflowError(
                f"token shard {path} belongs to another token dataset (fingerprint "
                f"{found[:12]}; dataset.json says {self.fingerprint[:12]})"
            )

    def _local_copy(self, shard: ShardEntry, path: str) -> Path:
        """The file to map: the shard itself, or the cached copy of a remote dataset's shard,
        checked against its commit marker (`tasks.data.shard_check`)."""
        if not isinstance(self.dataset, str):
            if not Path(path).is_file():
                raise CodecflowError(f"token shard {path} listed in dataset.json is missing")
            check_shard(Path(path), shard, path)
            return Path(path)
        cached = fetch_shard(self.dataset, shard)
        self.downloaded += int(cached.downloaded)
        try:
            check_shard(cached.path, shard, f"{path} (cached as {cached.path})")
        except ShardDamagedError:
            # A damaged cache entry is dropped and fetched again, once; the copy in the bucket
            # is checked as it streams (a damaged one there is an error naming it).
            cached.path.unlink(missing_ok=True)
            cached = fetch_shard(self.dataset, shard)
            self.downloaded += int(cached.downloaded)
        return cached.path

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the views and close the maps (views handed out before keep their pages alive)."""
        self._closed = True
        # An unpickled reader that never mapped its split has no maps yet: nothing to close.
        maps = self.__dict__.get("_maps", [])
        self._values, self._metadata, self._maps = [], [], []
        for source in maps:
            source.close()

    # -- pickling: a DataLoader worker maps the split itself ------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Where the split is and which dataset it was: no maps, no arrays (a few hundred bytes,
        however large the split)."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "closed": self._closed,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dataset = state["dataset"]
        self.split = state["split"]
        self.fingerprint = state["fingerprint"]
        self.downloaded = 0
        self._closed = state["closed"]

    def __getattr__(self, name: str) -> Any:
        # Called only for an attribute that is not set: in an unpickled reader, those `_map`
        # sets. The first one read maps the split in this process (a remote dataset's shards
        # through this machine's shard cache), after checking that it is the same dataset.
        if name not in _MAPPED or "fingerprint" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self._check_open()
        info = read_dataset_info(self.dataset)
        if info.fingerprint != self.fingerprint:
            raise CodecflowError(
                f"token dataset {self.dataset} changed since this '{self.split}' reader was "
                f"pickled (fingerprint {self.fingerprint[:12]} then, {info.fingerprint[:12]} "
                "now): open it again"
            )
        self._map(info)
        return self.__dict__[name]

    def __enter__(self) -> TokenReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CodecflowError(f"the '{self.split}' reader of {self.dataset} is closed")

    # -- segments -----------------------------------------------------------------------------

    def segment_codes(self, i: int) -> np.ndarray:
        """Segment `i`'s codes, `[K, F_i]` in the dataset's dtype: a read-only view, no copy."""
        self._check_open()
        if not 0 <= i < self.n_segments:
            raise IndexError(f"segment {i} out of range [0, {self.n_segments})")
        start = int(self._value_start[i])
        n = int(self.segment_frames[i]) * self.num_levels
        values = self._values[int(self._batch_of[i])]  # [sum K * F] of one record batch
        return values[start : start + n].reshape(self.num_levels, -1)  # [K, F_i]

    def __len__(self) -> int:
        """The number of segments of the split."""
        return self.n_segments

    def __getitem__(self, i: int) -> Segment:
        """Segment `i` (negative counts from the end): its `[K, F]` codes view and metadata."""
        self._check_open()
        if not isinstance(i, int | np.integer):
            raise TypeError(f"a segment index is an integer, not {type(i).__name__}")
        if not -self.n_segments <= i < self.n_segments:
            raise IndexError(f"segment {i} out of range [0, {self.n_segments})")
        i = int(i) % self.n_segments
        columns = self._metadata[int(self._batch_of[i])]
        row = int(self._row_of[i])
        fields = {name: str(columns[name][row].as_py()) for name in SEGMENT_METADATA}
        text = columns["text"][row].as_py() if "text" in columns else None
        return Segment(index=i, codes=self.segment_codes(i), text=text, **fields)

    # -- the flat stream ----------------------------------------------------------------------

    def _gather(self, start_frame: int, out: np.ndarray) -> None:
        """Fill `out` (`[n, K]`) with frames start_frame .. start_frame + n of the split."""
        n_frames = out.shape[0]
        i = int(np.searchsorted(self._frame_starts, start_frame, side="right")) - 1
        local = start_frame - int(self._frame_starts[i])  # first frame inside segment i
        filled = 0
        while filled < n_frames:
            codes = self.segment_codes(i)  # [K, F_i]
            take = min(codes.shape[1] - local, n_frames - filled)
            out[filled : filled + take] = codes[:, local : local + take].T  # [take, K]
            filled += take
            i, local = i + 1, 0

    def _check_span(self, start_frame: int, n_frames: int) -> None:
        if n_frames < 0 or start_frame < 0:
            raise CodecflowError(f"bad frame range: start {start_frame}, length {n_frames}")
        if start_frame + n_frames > self.n_frames:
            raise CodecflowError(
                f"a window of {n_frames} frames at frame {start_frame} is longer than the "
                f"'{self.split}' split of {self.dataset} ({self.n_frames} frames, "
                f"{self.n_tokens} tokens)"
            )

    def tokens(self, start_frame: int, n_frames: int) -> np.ndarray:
        """Frames start_frame .. start_frame + n_frames of the post's flat stream, `[n_frames * K]`
        in the dataset's dtype, levels interleaved per frame, across segment and shard
        boundaries."""
        self._check_open()
        self._check_span(start_frame, n_frames)
        out = np.empty((n_frames, self.num_levels), dtype=self.dtype)  # [n_frames, K]
        self._gather(start_frame, out)
        return out.reshape(-1)  # [n_frames * K]

    def random_windows(
        self, batch_size: int, n_tokens: int, generator: np.random.Generator
    ) -> np.ndarray:
        """`batch_size` windows of `n_tokens` tokens of the flat stream, int64 `[B, N]`.

        Each window starts on a frame boundary, drawn uniformly among the starts whose
        ceil(n_tokens / K) frames fit in the split, and is cut to `n_tokens`. The same generator
        state gives the same windows.
        """
        self._check_open()
        if batch_size < 1 or n_tokens < 1:
            raise CodecflowError(f"bad window request: batch {batch_size}, tokens {n_tokens}")
        frames = -(-n_tokens // self.num_levels)  # ceil(N / K)
        if frames > self.n_frames:
            raise CodecflowError(
                f"a window of {n_tokens} tokens ({frames} frames) is longer than the "
                f"'{self.split}' split of {self.dataset} ({self.n_frames} frames, "
                f"{self.n_tokens} tokens)"
            )
        starts = generator.integers(0, self.n_frames - frames + 1, size=batch_size)  # [B]
        out = np.empty((batch_size, frames, self.num_levels), dtype=np.int64)  # [B, frames, K]
        for b, start in enumerate(starts.tolist()):
            self._gather(start, out[b])
        flat = out.reshape(batch_size, frames * self.num_levels)  # [B, frames * K]
        if flat.shape[1] == n_tokens:
            return flat  # [B, N]
        return np.ascontiguousarray(flat[:, :n_tokens])  # [B, N]

    def __repr__(self) -> str:
        return (
            f"TokenReader({str(self.dataset)!r}, {self.split!r}: {self.n_segments} segments, "
            f"{self.n_frames} frames x {self.num_levels} levels, {self.dtype})"
        )
