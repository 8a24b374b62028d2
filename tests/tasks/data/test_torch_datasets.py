"""The torch datasets of a token dataset: segments with their metadata (and the padding collate),
LM windows that tile the split or repeat train-lm's, both picklable; on the hand-made K=3
dataset, where the levels and the layouts matter."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from handmade_tokens import FRAME_RATE, K, flat_stream, write_dataset

from codecflow.models.layouts import make_layout
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.lm_windows import lm_windows_batch
from codecflow.tasks.data.token_dataset import TokenReader
from codecflow.tasks.data.torch_datasets import PAD_CODE, collate_segments, open_dataset

CODEBOOK = 1024  # the hand-made dataset's


@pytest.fixture(scope="module")
def k3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("k3")
    return root, write_dataset(root)


def test_open_dataset_tells_the_tokenizer_and_the_splits(
    k3: tuple[Path, dict[str, list[np.ndarray]]], tmp_path: Path
) -> None:
    root, _ = k3
    ds = open_dataset(root)
    assert (ds.tokenizer_name, ds.num_levels, ds.codebook_size, ds.frame_rate) == (
        "test", K, CODEBOOK, FRAME_RATE,
    )  # fmt: skip
    assert ds.splits == {"train": 7, "val": 2}
    assert repr(ds).endswith("segments: train 7, val 2)")
    assert pickle.loads(pickle.dumps(ds)).info == ds.info
    with pytest.raises(CodecflowError, match="no complete token dataset"):
        open_dataset(tmp_path)


def test_segments_are_int64_codes_with_metadata_and_collate_pads(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, segments = k3
    with open_dataset(root).segments("train") as ds:
        assert len(ds) == 7
        for i, codes in enumerate(segments["train"]):
            item = ds[i]
            assert item["codes"].dtype == torch.int64 and item["codes"].shape == codes.shape
            np.testing.assert_array_equal(item["codes"].numpy(), codes)  # [K, F]
            assert (item["index"], item["split"], item["speaker"], item["book_id"]) == (
                i, "train", "spk", "book",
            )  # fmt: skip
            assert item["n_frames"] == codes.shape[1]
            assert item["seconds"] == pytest.approx(codes.shape[1] / FRAME_RATE)
        assert ds[0]["segment_id"] == "train-00000_0" and ds[-1]["segment_id"] == "train-00002_0"
        ds[0]["codes"][0, 0] = 7  # a copy: the mapped shard is read-only and stays as it was
        np.testing.assert_array_equal(ds[0]["codes"].numpy(), segments["train"][0])
        items = [ds[i] for i in (1, 2, 0)]  # 1, 7 and 5 frames
    batch = collate_segments(items)
    assert batch["codes"].shape == (3, K, 7) and batch["codes"].dtype == torch.int64
    assert batch["n_frames"].tolist() == [1, 7, 5] and batch["index"].tolist() == [1, 2, 0]
    assert batch["mask"].sum(dim=1).tolist() == [1, 7, 5]
    for b, item in enumerate(items):
        f = item["n_frames"]
        assert torch.equal(batch["codes"][b, :, :f], item["codes"])
        assert bool((batch["codes"][b, :, f:] == PAD_CODE).all())
        assert bool(batch["mask"][b, :f].all()) and not bool(batch["mask"][b, f:].any())
    assert batch["segment_id"] == [item["segment_id"] for item in items]
    assert batch["seconds"].tolist() == pytest.approx([1 / 125, 7 / 125, 5 / 125])


def test_sequential_windows_tile_the_stream_in_order(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, segments = k3
    stream = torch.from_numpy(flat_stream(segments["train"]).astype(np.int64))  # [34 * K]
    block = 6  # a multiple of K: window i's inputs are tokens 6i .. 6i + 5
    with open_dataset(root).windows("train", block_size=block) as ds:
        # 34 frames, each window reads ceil(7 / 3) + 3 = 6 and moves on by 2: 15 windows.
        assert (ds.frames, ds.stride, len(ds)) == (6, 2, 15)
        assert ds.vocab_size == CODEBOOK and ds.target_levels.tolist() == [1, 2, 0, 1, 2, 0]
        inputs = [ds[i][0] for i in range(len(ds))]
        assert all(x.dtype == torch.int64 and x.shape == (block,) for x in inputs)
        assert torch.equal(torch.cat(inputs), stream[: len(ds) * block])
        for i in range(len(ds)):
            x, y = ds[i]
            assert torch.equal(y, stream[i * block + 1 : i * block + block + 1])  # shifted by 1
            assert ds.window_start(i) == 2 * i
        assert torch.equal(ds[-1][0], inputs[-1])
        with pytest.raises(IndexError, match=r"window 15 out of range \[0, 15\)"):
            ds[15]
        with pytest.raises(TypeError, match="a window index is an integer, not float"):
            ds[1.0]  # type: ignore[index]
    with open_dataset(root).windows("train", block_size=7) as ds:  # not a multiple of K
        assert (ds.stride, len(ds)) == (3, 10)  # frames 0, 3, ..., 27 (+ 6 read: 34 frames)
        assert [ds.window_start(i) for i in range(len(ds))] == list(range(0, 30, 3))
        assert torch.equal(ds[2][0], stream[2 * 3 * K : 2 * 3 * K + 7])  # starts on frame 6
    with open_dataset(root).windows("val", block_size=6, length=2) as two:
        assert len(two) == 2
    with pytest.raises(CodecflowError, match="4 sequential windows asked for; 3 fit the split"):
        open_dataset(root).windows("val", block_size=6, length=4)  # 11 frames
    with pytest.raises(CodecflowError, match="fewer than one window of block_size=30"):
        open_dataset(root).windows("val", block_size=30)


@pytest.mark.parametrize("layout", ["flatten", "delay-offsets"])
def test_random_windows_are_train_lms_windows(
    k3: tuple[Path, dict[str, list[np.ndarray]]], layout: str
) -> None:
    root, _ = k3
    block, seed = 8, 3
    with (
        open_dataset(root).windows(
            "train", block_size=block, layout=layout, starts="random", seed=seed, length=40
        ) as ds,
        TokenReader(root, "train") as reader,
    ):
        assert len(ds) == 40
        assert ds.vocab_size == make_layout(layout).vocab_size(CODEBOOK, K)
        indices = np.arange(40)
        inputs, targets, levels = lm_windows_batch(
            reader, indices, block, seed, make_layout(layout), CODEBOOK
        )  # [40, L] each, as train-lm's first 40 global windows
        got = [ds[int(i)] for i in indices]
        assert torch.equal(torch.stack([x for x, _ in got]), inputs)
        assert torch.equal(torch.stack([y for _, y in got]), targets)
        assert torch.equal(ds.target_levels, levels)
        assert len({ds.window_start(i) for i in range(40)}) > 10  # not one start repeated
        assert torch.equal(ds[39][0], ds[-1][0])
    with open_dataset(root).windows("train", block_size=block, starts="random") as ds:
        assert len(ds) == (34 - ds.frames) // ds.stride + 1  # one pass's worth by default


def test_datasets_pickle_small_and_read_the_same_items(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, _ = k3
    ds = open_dataset(root)
    with ds.segments("val") as segments, ds.windows("train", 6, "delay", "random", 1, 9) as windows:
        assert windows.target_levels.shape == (6,)  # computed here, not pickled
        for dataset in (segments, windows):
            data = pickle.dumps(dataset)
            assert len(data) < 600, len(data)  # no arrays of the split, no maps
            copy = pickle.loads(data)
            assert "_maps" not in vars(copy.reader)
            assert len(copy) == len(dataset)
            if dataset is windows:
                assert torch.equal(copy.target_levels, windows.target_levels)
            for i in range(len(dataset)):
                a, b = dataset[i], copy[i]
                pairs = (
                    zip(a.values(), b.values(), strict=True)
                    if isinstance(a, dict)
                    else zip(a, b, strict=True)
                )
                for x, y in pairs:
                    assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
            copy.close()


def test_windows_at_any_offset_start_inside_a_frame(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    """`window_offsets: any` (the post's runs: nanoGPT's get_batch starts at any token): each
    window is the aligned window's stream shifted by a token offset drawn from (seed, index),
    and its target levels follow the shift."""
    root, segments = k3
    block, seed, flatten = 8, 3, make_layout("flatten")
    stream = torch.from_numpy(flat_stream(segments["train"]).astype(np.int64))  # [F_total * K]
    with TokenReader(root, "train") as reader:
        indices = np.arange(30)
        aligned = lm_windows_batch(reader, indices, block, seed, flatten, CODEBOOK)
        inputs, targets, levels = lm_windows_batch(
            reader, indices, block, seed, flatten, CODEBOOK, "any"
        )
        again = lm_windows_batch(reader, indices, block, seed, flatten, CODEBOOK, "any")
    assert aligned[2].shape == (block,) and levels.shape == (30, block)
    assert torch.equal(inputs, again[0]) and torch.equal(levels, again[2])  # seeded
    shifts = []
    for b in range(30):
        # Where the aligned window starts in the stream, and the shifted one just after.
        first = next(s for s in range(0, len(stream) - block, K)
                     if torch.equal(stream[s : s + block], aligned[0][b]))  # fmt: skip
        shift = next(j for j in range(K) if torch.equal(stream[first + j : first + j + block], inputs[b]))  # fmt: skip
        shifts.append(shift)
        assert torch.equal(targets[b], stream[first + shift + 1 : first + shift + block + 1])
        assert torch.equal(levels[b], (shift + 1 + torch.arange(block)) % K)
    assert sorted(set(shifts)) == [0, 1, 2]  # every offset drawn
