"""Random training crops of a manifest's split, read lazily from its audio: no split in memory.

Shape symbols: S segments of the split, B crops per batch, T samples per crop (at 16 kHz).

    index = read_crop_index(manifest, "train")          # a few numbers per segment, no audio
    loader = crop_loader(index, crop=T, seed=0, first=0, steps=100, batch_size=B, ranks=(0, 1))
    for batch in loader: ...                            # float32 [B, 1, T], read by workers

Crop `i` of a run (its global index) is a pure function of `(seed, i)`: a segment drawn
uniformly, then a start drawn uniformly in it, as the in-memory loader drew them (segments
shorter than a crop are zero-padded). Only the crop's frames are read: soundfile seeks to them in
the segment's source file (one per crop, across the segment's VAD chunks), and resamples to
16 kHz only when the source rate differs (a few samples of context either side, so the filter
has no edge there). Rank `r` of `W` takes crops `first + (s * W + r) * B ...` at its step `s`:
the sequence of crops is the same on any number of ranks, and a run that records how many it
consumed continues it after a resume, on any number of ranks.

The index holds numpy arrays only (no Python object per segment): `torch.utils.data` workers are
forked, and arrays of numbers are shared with them page for page, where lists of dicts would be
copied into each worker as their reference counts change.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset, Sampler

from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.manifest import CODEC_RATE, read_manifest_table

__all__ = [
    "CropDataset",
    "CropIndex",
    "RankCrops",
    "batches",
    "crop_loader",
    "read_crop_index",
]

#: Source samples read on each side of a crop that is resampled: torchaudio's default sinc
#: filter (lowpass_filter_width 6) reaches a few samples at the rates of speech corpora.
_RESAMPLE_CONTEXT = 64


@dataclass(frozen=True)
class CropIndex:
    """Where each segment of one split lies in its source file, in source frames."""

    root: str  # the manifest's audio root (a local folder or a URL)
    paths: np.ndarray  # bytes [P], the distinct source files, relative to `root`
    path_of: np.ndarray  # int32 [S], the segment's file in `paths`
    rate: np.ndarray  # int32 [S], the file's sample rate
    chunk_start: np.ndarray  # int64 [S + 1], the segment's chunks: spans[chunk_start[s]:...]
    span_first: np.ndarray  # int64 [N], first frame of each chunk
    span_last: np.ndarray  # int64 [N], one past its last frame
    frames: np.ndarray  # int64 [S], the segment's length at CODEC_RATE

    @property
    def n_segments(self) -> int:
        return len(self.frames)


def read_crop_index(manifest: str, split: str) -> CropIndex:
    """The crop index of `split`, segments in id order (as `load_split_audio` orders them).

    Frame spans are read_segment_audio's, int(start * rate) .. int(end * rate), computed without
    opening the files: a chunk that ends on its file's last frame may read one frame fewer.
    """
    table, root = read_manifest_table(manifest)
    table = table.filter(pc.equal(table["split"], split))
    if table.num_rows == 0:
        raise CodecflowError(f"segment manifest {manifest} has no '{split}' segments")
    table = table.take(pc.sort_indices(table, [("segment_id", "ascending")]))
    rate = table["sample_rate"].to_numpy().astype(np.int32)  # [S]
    chunks = table["chunks"].combine_chunks()
    assert isinstance(chunks, pa.ListArray)
    offsets = chunks.offsets.to_numpy().astype(np.int64)  # [S + 1]
    spans = chunks.flatten()
    span_rate = np.repeat(rate, np.diff(offsets)).astype(np.float64)  # [N]
    first = np.floor(spans.field("start_s").to_numpy() * span_rate).astype(np.int64)  # [N]
    last = np.floor(spans.field("end_s").to_numpy() * span_rate).astype(np.int64)  # [N]
    last = np.maximum(last, first)
    ends = np.concatenate([[0], np.cumsum(last - first)])  # [N + 1]
    lengths = ends[offsets[1:]] - ends[offsets[:-1]]  # [S]
    # At 16 kHz: torchaudio's resample returns ceil(n * new / orig) samples.
    frames = -(-lengths * CODEC_RATE // rate.astype(np.int64))  # [S]
    # Fixed-width UTF-8 bytes: one array, no Python string per segment for the workers to copy.
    sources = np.array([p.encode() for p in table["source_path"].to_pylist()], dtype=bytes)
    unique, path_of = np.unique(sources, return_inverse=True)  # [P], [S]
    return CropIndex(
        root=root,
        paths=unique,
        path_of=path_of.astype(np.int32),
        rate=rate,
        chunk_start=offsets,
        span_first=first,
        span_last=last,
        frames=frames,
    )


def _read_frames(index: CropIndex, segment: int, start: int, count: int) -> np.ndarray:
    """Frames `start .. start + count` of `segment` at its source rate, mono float32 `[<= count]`:
    a seek and a read per chunk that the range touches, never the whole file."""
    source = index.paths[index.path_of[segment]].decode()
    lo, hi = int(index.chunk_start[segment]), int(index.chunk_start[segment + 1])
    pieces: list[np.ndarray] = []
    at = 0  # the segment's frame where the current chunk begins
    try:
        with _open_audio(index.root, source) as f:
            for first, last in zip(index.span_first[lo:hi], index.span_last[lo:hi], strict=True):
                n = int(last - first)
                begin, end = max(start, at), min(start + count, at + n)
                if begin < end:
                    f.seek(min(int(first) + begin - at, f.frames))
                    pieces.append(f.read(end - begin, dtype="float32", always_2d=True))
                at += n
                if at >= start + count:
                    break
    except (RuntimeError, OSError) as err:  # LibsndfileError is a RuntimeError
        where = storage.join(index.root, source)
        where = where if storage.is_remote(where) else os.path.normpath(where)
        raise CodecflowError(f"unreadable audio {where}: {err}") from None
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).mean(axis=1).astype(np.float32)  # [<= count]


@contextlib.contextmanager
def _open_audio(root: str, source: str) -> Iterator[sf.SoundFile]:
    """The source file, opened by path when local (no fsspec layer per crop)."""
    if not storage.is_remote(root):
        with sf.SoundFile(posixpath.join(storage.local_path(root), source)) as f:
            yield f
        return
    fs, base = storage.url_to_fs(root)
    with fs.open(posixpath.join(base, source), "rb") as raw, sf.SoundFile(raw) as f:
        yield f


class CropDataset(Dataset[torch.Tensor]):
    """Crop `i` -> float32 `[1, T]`: a pure function of `(seed, i)` (map-style, for the workers)."""

    def __init__(self, index: CropIndex, crop: int, seed: int) -> None:
        self.index, self.crop, self.seed = index, crop, seed

    def draw(self, i: int) -> tuple[int, int]:
        """(segment, start at 16 kHz) of crop `i`: uniform, as the in-memory loader drew them;
        one generator per crop, seeded by (seed, i), as the LM's windows are."""
        rng = np.random.default_rng([self.seed, int(i)])
        segment = int(rng.integers(0, self.index.n_segments))
        start = int(rng.integers(0, max(1, int(self.index.frames[segment]) - self.crop + 1)))
        return segment, start

    def __getitem__(self, i: int) -> torch.Tensor:
        segment, start = self.draw(i)
        rate = int(self.index.rate[segment])
        out = torch.zeros(1, self.crop)  # [1, T]
        if rate == CODEC_RATE:
            piece = torch.from_numpy(_read_frames(self.index, segment, start, self.crop))  # [<= T]
        else:
            piece = self._resampled(segment, start, rate)  # [<= T]
        out[0, : len(piece)] = piece
        return out

    def _resampled(self, segment: int, start: int, rate: int) -> torch.Tensor:
        """The crop at 16 kHz from `rate`: its source frames and some context, resampled.

        Read from a source frame that falls exactly on an output sample (rates reduced by their
        gcd, `orig` source frames span `new` output samples), so that the crop's samples are
        the whole segment's resampled ones, up to the filter's rounding.
        """
        g = math.gcd(rate, CODEC_RATE)
        orig, new = rate // g, CODEC_RATE // g
        aligned = start // new  # the block of `new` output samples the crop starts in
        blocks_before = min(-(-_RESAMPLE_CONTEXT // orig), aligned)
        first = (aligned - blocks_before) * orig  # source frame of output (aligned - b) * new
        offset = start - (aligned - blocks_before) * new  # the crop's start in the output
        count = math.ceil((offset + self.crop) * orig / new) + _RESAMPLE_CONTEXT
        raw = _read_frames(self.index, segment, first, count)  # [<= count]
        if len(raw) == 0:
            return torch.zeros(0)
        audio = torchaudio.functional.resample(torch.from_numpy(raw), rate, CODEC_RATE)  # [T'']
        return audio[offset : offset + self.crop]  # [<= T]


class RankCrops(Sampler[int]):
    """The global crop indices one rank reads, step after step: `first + (s * W + r) * B + b`."""

    def __init__(self, first: int, steps: int, batch_size: int, rank: int, world: int) -> None:
        self.first, self.steps, self.batch_size = first, steps, batch_size
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[int]:
        for step in range(self.steps):
            base = self.first + (step * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return self.steps * self.batch_size


def crop_loader(
    index: CropIndex,
    *,
    crop: int,
    seed: int,
    first: int,
    steps: int,
    batch_size: int,
    ranks: tuple[int, int] = (0, 1),
    workers: int = 2,
    prefetch: int = 4,
    pin_memory: bool = False,
) -> DataLoader[torch.Tensor]:
    """Batches float32 `[B, 1, T]` of this rank (`ranks` = (rank, world)) for `steps` steps from
    global crop `first` on, read by `workers` processes, each `prefetch` batches ahead (0
    workers: read in this process, when asked for); in page-locked memory with `pin_memory`
    (for a copy to a GPU that does not block)."""
    rank, world = ranks
    return DataLoader(
        CropDataset(index, crop, seed),
        batch_size=batch_size,
        sampler=RankCrops(first, steps, batch_size, rank, world),
        num_workers=workers,
        prefetch_factor=prefetch if workers > 0 else None,
        pin_memory=pin_memory,
        # Batches come back in sampler order whatever the worker that read them: deterministic.
        in_order=True,
        worker_init_fn=_worker_init,
    )


def _worker_init(_worker_id: int) -> None:
    # A forked worker holds the parent's descriptors: not the output's lock (see outputs).
    outputs.close_inherited_locks()


def batches(loader: DataLoader[torch.Tensor]) -> Generator[torch.Tensor, None, None]:
    """The loader's batches; a worker's CodecflowError (unreadable audio) as its own one line.

    `torch.utils.data` re-raises a worker's exception with the worker's traceback as its
    message ("Caught CodecflowError in DataLoader worker process 0. Original Traceback ..."):
    the reason is the traceback's last line.
    """
    try:
        yield from loader
    except CodecflowError as err:
        text = str(err).strip()
        if "Original Traceback" not in text:
            raise
        reason = text.splitlines()[-1].split("CodecflowError: ", 1)[-1]
        raise CodecflowError(reason) from None
