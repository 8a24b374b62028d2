"""A token dataset in a researcher's own code: `open_dataset`, and picklable torch datasets of
its segments and of the LM's training windows.

Shape symbols: B batch, K levels (codebooks) per frame, F frames of one segment, F_max the
longest segment of a batch, L tokens of a window (the block size), V vocabulary.

Both datasets are map-style `torch.utils.data.Dataset`s over a `TokenReader` and pickle without
its memory maps (a few hundred bytes): a `DataLoader` worker started by `spawn` or `forkserver`
maps the split itself when it reads its first item, a remote dataset's shards through that
machine's shard cache (`tasks.data.shard_cache`); one started by `fork` (Linux's default)
shares the parent's maps.

- `SegmentDataset`: item i is segment i of the split (shard order), a dict of its codes, int64
  `[K, F]`, and what the shard says about it. Segments differ in length: batch them with
  `collate_segments`, which pads.
- `WindowDataset`: item i is a window of the LM's token sequence, `(inputs, targets)`, int64
  `[L]` each, cut from the post's flat stream on a frame boundary with the layout applied as
  `train-lm` does (`tasks.data.lm_windows.lm_windows_at`). Window i starts at frame
  i * ceil(L / K) (`starts="sequential"`: the windows tile the split once, in order), or where
  train-lm's global window i starts for `seed` (`starts="random"`).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from codecflow.models.layouts import TokenLayout, make_layout
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.lm_windows import lm_windows_at, window_frames, window_starts
from codecflow.tasks.data.records import DatasetInfo
from codecflow.tasks.data.token_dataset import SEGMENT_METADATA, TokenReader, read_dataset_info

__all__ = [
    "PAD_CODE",
    "SegmentDataset",
    "TokenDataset",
    "WindowDataset",
    "WindowStarts",
    "collate_segments",
    "open_dataset",
]

#: The code `collate_segments` pads short segments with: no codebook holds it, so a padded frame
#: that reaches an embedding fails loudly instead of reading as code 0.
PAD_CODE = -1

WindowStarts = Literal["sequential", "random"]


class _ReaderDataset:
    """Lifetime shared by the datasets: they own their reader (closed with them)."""

    reader: TokenReader

    def close(self) -> None:
        """Close the reader's maps (items handed out before stay valid)."""
        self.reader.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SegmentDataset(_ReaderDataset, Dataset[dict[str, Any]]):
    """The segments of one split, as a map-style torch dataset.

    Item i is a dict: `codes` (int64 `[K, F]`, a copy: the shards store the smallest unsigned
    type), `segment_id`, `speaker`, `book_id`, `split` (str), `index` (i), `n_frames` (F) and
    `seconds` (F / frame rate: the encoded length, the last frame's padding included).
    """

    def __init__(self, reader: TokenReader, frame_rate: float) -> None:
        self.reader = reader
        self.frame_rate = float(frame_rate)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, Any]:
        segment = self.reader[i]
        codes = torch.from_numpy(segment.codes.astype("int64"))  # [K, F], a writable copy
        item: dict[str, Any] = {"codes": codes, "index": segment.index}
        item.update({name: getattr(segment, name) for name in SEGMENT_METADATA})
        item["n_frames"] = segment.n_frames
        item["seconds"] = segment.n_frames / self.frame_rate
        item["text"] = segment.text  # None unless the dataset carries transcripts
        return item

    def __repr__(self) -> str:
        return f"SegmentDataset({self.reader!r})"


def collate_segments(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch `SegmentDataset` items of different lengths (a `DataLoader`'s `collate_fn`).

    Returns `codes` int64 `[B, K, F_max]` padded with `PAD_CODE`, `mask` bool `[B, F_max]`
    (True on real frames), `n_frames` and `index` int64 `[B]`, `seconds` float64 `[B]`, and the
    string fields as lists of B (`text`: the transcripts, None where a segment has none).
    """
    if not items:
        raise ValueError("collate_segments needs at least one item")
    n_frames = torch.tensor([item["n_frames"] for item in items], dtype=torch.int64)  # [B]
    k = items[0]["codes"].shape[0]
    codes = torch.full((len(items), k, int(n_frames.max())), PAD_CODE, dtype=torch.int64)
    for b, item in enumerate(items):
        codes[b, :, : item["n_frames"]] = item["codes"]  # [K, F_b] into [K, F_max]
    mask = torch.arange(codes.shape[2])[None, :] < n_frames[:, None]  # [B, F_max]
    batch: dict[str, Any] = {"codes": codes, "mask": mask, "n_frames": n_frames}
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.int64)
    batch["seconds"] = torch.tensor([item["seconds"] for item in items], dtype=torch.float64)
    batch.update({name: [item[name] for item in items] for name in SEGMENT_METADATA})
    batch["text"] = [item.get("text") for item in items]  # str or None each
    return batch


class WindowDataset(_ReaderDataset, Dataset[tuple[Tensor, Tensor]]):
    """Windows of the LM's token sequence over one split, as a map-style torch dataset.

    Item i is `(inputs, targets)`, int64 `[L]` each (L = `block_size`; targets are the inputs
    shifted by one token), in `layout`'s vocabulary (`vocab_size` ids): the same tensors
    `train-lm` builds; `target_levels` is the level of each target position. Window i starts at
    frame `window_start(i)`:

    - `starts="sequential"` (the default): frame i * ceil(L / K), so the windows tile the split
      once, in order (with `flatten` and L a multiple of K, window i's inputs are tokens
      i * L .. (i + 1) * L - 1 of the stream); `len` is the number of windows that fit, and
      `length` may only lower it;
    - `starts="random"`: where train-lm's global window i starts for `seed` (drawn from
      (seed, i) alone, so index i is window i whatever the order, worker or rank). `len` is
      `length`, by default that of the sequential windows (one pass's worth of tokens).

    Raises CodecflowError when the split holds no window of `block_size` tokens.
    """

    def __init__(
        self,
        reader: TokenReader,
        block_size: int,
        codebook_size: int,
        layout: TokenLayout | str = "flatten",
        starts: WindowStarts = "sequential",
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if block_size < 1 or (length is not None and length < 1):
            raise CodecflowError(f"bad windows: block_size {block_size}, length {length}")
        if starts not in ("sequential", "random"):
            raise CodecflowError(f"starts must be 'sequential' or 'random', got {starts!r}")
        self.reader, self.block_size, self.codebook_size = reader, block_size, codebook_size
        self.layout = make_layout(layout) if isinstance(layout, str) else layout
        self.starts, self.seed = starts, seed
        k = reader.num_levels
        self.frames = window_frames(block_size, k)  # read per window, lead-in included
        if reader.n_frames < self.frames:
            raise CodecflowError(
                f"the {reader.split} split of {reader.dataset} has {reader.n_tokens} tokens, "
                f"fewer than one window of block_size={block_size}"
            )
        self.stride = -(-block_size // k)  # frames between sequential windows: ceil(L / K)
        fit = (reader.n_frames - self.frames) // self.stride + 1
        if starts == "sequential" and length is not None and length > fit:
            raise CodecflowError(f"{length} sequential windows asked for; {fit} fit the split")
        self.length = length or fit
        self.vocab_size = self.layout.vocab_size(codebook_size, k)
        self._target_levels: Tensor | None = None

    @property
    def target_levels(self) -> Tensor:
        """int64 `[L]`: the RVQ level of each target position (-1 on a layout's PAD), the same
        for every window."""
        if self._target_levels is None:
            self._target_levels = lm_windows_at(
                self.reader, [0], self.block_size, self.layout, self.codebook_size
            )[2]
        return self._target_levels

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_target_levels": None}  # recomputed: L values, not pickled

    def __len__(self) -> int:
        return self.length

    def window_start(self, i: int) -> int:
        """The frame window `i` starts at (before the layout's lead-in is cut)."""
        if not isinstance(i, int | np.integer):
            raise TypeError(f"a window index is an integer, not {type(i).__name__}")
        if not -self.length <= i < self.length:
            raise IndexError(f"window {i} out of range [0, {self.length})")
        i = int(i) % self.length
        if self.starts == "sequential":
            return i * self.stride
        return window_starts([i], self.reader.n_frames, self.frames, self.seed)[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        start = self.window_start(i)
        inputs, targets, _ = lm_windows_at(
            self.reader, [start], self.block_size, self.layout, self.codebook_size
        )  # [1, L] each
        return inputs[0], targets[0]  # [L], [L]

    def __repr__(self) -> str:
        return (
            f"WindowDataset({self.reader!r}, block_size={self.block_size}, "
            f"layout={self.layout.name!r}, starts={self.starts!r}: {self.length} windows)"
        )


class TokenDataset:
    """A token dataset opened by `open_dataset`: its `dataset.json` (`info`), the tokenizer's
    facts, and the torch datasets of each split. Picklable; it maps nothing itself."""

    def __init__(self, path: str | Path) -> None:
        self.path = storage.location(path)  # a Path, or a URL kept as text
        self.info: DatasetInfo = read_dataset_info(self.path)

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's name, for `load_tokenizer` (`mu-law-256`, `mimi_8_rvq`, ...)."""
        return str(self.info.tokenizer["name"])

    @property
    def num_levels(self) -> int:
        """K, codes per frame."""
        return self.info.num_levels

    @property
    def codebook_size(self) -> int:
        """Codes per level: every code lies in [0, codebook_size)."""
        return int(self.info.tokenizer["codebook_size"])

    @property
    def frame_rate(self) -> float:
        """Frames per second of audio."""
        return float(self.info.tokenizer["frame_rate"])

    @property
    def splits(self) -> dict[str, int]:
        """Segments per split, in the order of `dataset.json` (`{"train": 6, "val": 4}`)."""
        counts: dict[str, int] = {}
        for shard in self.info.shards:
            counts[shard.split] = counts.get(shard.split, 0) + shard.rows
        return counts

    def reader(self, split: str) -> TokenReader:
        """A `TokenReader` of `split`: the codes, the flat stream, random windows."""
        return TokenReader(self.path, split)

    def segments(self, split: str) -> SegmentDataset:
        """The segments of `split` as a torch dataset (see `SegmentDataset`)."""
        return SegmentDataset(self.reader(split), self.frame_rate)

    def windows(
        self,
        split: str,
        block_size: int,
        layout: TokenLayout | str = "flatten",
        starts: WindowStarts = "sequential",
        seed: int = 0,
        length: int | None = None,
    ) -> WindowDataset:
        """LM windows of `block_size` tokens over `split` in `layout` (train-lm's `layout`
        names: flatten, flatten-offsets, delay, delay-offsets; see `WindowDataset`)."""
        reader = self.reader(split)
        try:
            return WindowDataset(
                reader, block_size, self.codebook_size, layout, starts, seed, length
            )
        except BaseException:
            reader.close()
            raise

    def __repr__(self) -> str:
        splits = ", ".join(f"{name} {n}" for name, n in self.splits.items())
        return (
            f"TokenDataset({str(self.path)!r}: {self.tokenizer_name}, K={self.num_levels}, "
            f"codebook {self.codebook_size}, {self.frame_rate:g} frames/s; segments: {splits})"
        )


def open_dataset(path: str | Path) -> TokenDataset:
    """The committed token dataset at `path`: a folder, or a URL such as `s3://bucket/tokens/x`
    (credentials and endpoint from the `AWS_*` environment; shards fetched once per machine into
    the shard cache). Raises CodecflowError when no complete dataset is there.

    Example:
        ```python
        ds = codecflow.open_dataset("runs/demo/tokens/mu-law-256")
        codes = ds.segments("train")[0]["codes"]  # int64 [K, F]
        inputs, targets = ds.windows("train", block_size=256)[0]  # int64 [N] each
        ```
    """
    return TokenDataset(path)
