"""TokenReader: zero-copy segment views, the post's interleaved stream across segment and shard
boundaries, seeded random windows on frame boundaries, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from schemas.tables import token_shard_schema
from tasks.core.errors import CodecflowError
from tasks.data.records import DatasetInfo, DatasetTotals, ShardEntry
from tasks.data.token_dataset import TokenReader, read_dataset_info

K = 3  # levels of the hand-made dataset
#: Frames per segment, per record batch, per shard: the train split has 3 shards, one of them
#: written as two record batches, and a one-frame segment.
LAYOUT = {
    "train-00000": [[5, 1, 7]],
    "train-00001": [[4], [6, 2]],
    "train-00002": [[9]],
    "val-00000": [[3, 8]],
}


def _write_dataset(root: Path, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """A K=3 uint16 dataset in tokenization's layout; returns each split's segments' [K, F]."""
    rng = np.random.default_rng(seed)
    schema = token_shard_schema(pa.uint16())
    (root / "shards").mkdir(parents=True)
    segments: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    shards = []
    for name, batches in LAYOUT.items():
        split = name.split("-")[0]
        path = root / "shards" / f"{name}.arrow"
        frames = 0
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
            for batch_frames in batches:
                codes = [rng.integers(0, 1024, size=(K, f), dtype=np.uint16) for f in batch_frames]
                segments[split].extend(codes)
                frames += sum(batch_frames)
                offsets = np.cumsum([0] + [c.size for c in codes]).astype(np.int32)
                n = len(codes)
                writer.write_batch(
                    pa.record_batch(
                        [
                            pa.array([f"{name}_{j}" for j in range(n)]),
                            pa.array(["spk"] * n),
                            pa.array(["book"] * n),
                            pa.array([split] * n),
                            pa.array(batch_frames, type=pa.int64()),
                            pa.ListArray.from_arrays(
                                pa.array(offsets),
                                pa.array(np.concatenate([c.reshape(-1) for c in codes])),
                            ),
                        ],
                        schema=schema,
                    )
                )
        shards.append(
            {
                "name": name,
                "split": split,
                "file": f"shards/{name}.arrow",
                "rows": sum(len(b) for b in batches),
                "frames": frames,
                "tokens": frames * K,
                "bytes": path.stat().st_size,
                "sha256": "",
                "audio_seconds": frames / 125,
            }
        )
    info = DatasetInfo(
        fingerprint="test",
        format_version=2,
        manifest="segments.parquet",
        tokenizer={"name": "test", "num_levels": K, "codebook_size": 1024, "frame_rate": 125},
        dtype="uint16",
        formats=("arrow",),
        layout="codes: [K, F] flattened level-major per row",
        arrow_schema=schema.to_string(),
        shards=tuple(ShardEntry(**s) for s in shards),
        totals=DatasetTotals(segments=0, audio_hours=0.0, frames=0, tokens=0, bytes=0),
    )
    (root / "dataset.json").write_text(json.dumps(info.to_json()))
    return segments


def _flat(segments: list[np.ndarray]) -> np.ndarray:
    """The post's stream computed independently: concatenate in time, then interleave levels."""
    return np.concatenate(segments, axis=1).T.reshape(-1)  # [F_total, K] -> [F_total * K]


@pytest.fixture(scope="module")
def k3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("k3")
    return root, _write_dataset(root)


def test_sizes_and_segments_match_the_shards(k3: tuple[Path, dict[str, list[np.ndarray]]]) -> None:
    root, segments = k3
    with TokenReader(root, "train") as reader:
        assert reader.num_levels == K and reader.dtype == np.uint16
        assert reader.n_segments == len(segments["train"]) == 7
        assert reader.n_frames == sum(c.shape[1] for c in segments["train"]) == 34
        assert reader.n_tokens == 34 * K
        assert reader.segment_frames.tolist() == [5, 1, 7, 4, 6, 2, 9]
        for i, codes in enumerate(segments["train"]):
            np.testing.assert_array_equal(reader.segment_codes(i), codes)


def test_segment_codes_are_views_of_the_mapped_file(
    k3: tuple[Path, dict[str, list[np.ndarray]]], tiny_dataset: Path
) -> None:
    root, _ = k3
    for dataset, split in ((root, "train"), (tiny_dataset, "train")):
        with TokenReader(dataset, split) as reader:
            codes = reader.segment_codes(reader.n_segments - 1)  # [K, F]
            assert not codes.flags.owndata and not codes.flags.writeable  # read-only mmap pages
            base = codes
            while isinstance(base.base, np.ndarray):
                base = base.base
                assert not base.flags.owndata
            assert not isinstance(base.base, np.ndarray)  # ends in Arrow's buffer, not a copy
            # Same record batch: segments share one mapped values buffer.
            if reader.n_segments > 1 and reader._batch_of[0] == reader._batch_of[1]:
                first, second = reader.segment_codes(0), reader.segment_codes(1)
                assert first.base is second.base or np.shares_memory(first.base, second.base)


def test_tokens_interleave_levels_across_segment_and_shard_boundaries(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, segments = k3
    with TokenReader(root, "train") as train, TokenReader(root, "val") as val:
        expected = _flat(segments["train"])  # [34 * K]
        assert expected[:K].tolist() == segments["train"][0][:, 0].tolist()  # frame 0, all K
        np.testing.assert_array_equal(train.tokens(0, train.n_frames), expected)
        starts = np.concatenate([[0], np.cumsum(train.segment_frames)])
        # Every start and length, so every window crossing segment (5|6, 6|13) and shard
        # (13|17 between train-00000 and -00001; 23|25|34 across record batches and shards)
        # boundaries, including the one-frame segment, is checked.
        for start in range(train.n_frames):
            for n in range(train.n_frames - start + 1):
                got = train.tokens(start, n)
                assert got.dtype == np.uint16 and got.shape == (n * K,)
                np.testing.assert_array_equal(got, expected[start * K : (start + n) * K])
        assert starts.tolist() == [0, 5, 6, 13, 17, 23, 25, 34]
        np.testing.assert_array_equal(val.tokens(0, val.n_frames), _flat(segments["val"]))


def test_random_windows_start_on_frames_and_are_seeded(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, segments = k3
    expected = _flat(segments["train"])
    with TokenReader(root, "train") as reader:
        for n_tokens in (1, 2, 3, 7, 30, 34 * K - 1, 34 * K):
            windows = reader.random_windows(64, n_tokens, np.random.default_rng(5))
            assert windows.dtype == np.int64 and windows.shape == (64, n_tokens)
            again = reader.random_windows(64, n_tokens, np.random.default_rng(5))
            np.testing.assert_array_equal(windows, again)
            frames = -(-n_tokens // K)
            for w in windows:
                # The window is the stream at some frame boundary, cut to n_tokens.
                matches = [
                    s
                    for s in range(reader.n_frames - frames + 1)
                    if np.array_equal(w, expected[s * K : s * K + n_tokens])
                ]
                assert matches, w
                np.testing.assert_array_equal(w, reader.tokens(matches[0], frames)[:n_tokens])
        # The same draws as the generator's integers: starts are uniform frame indices.
        rng = np.random.default_rng(11)
        starts = np.random.default_rng(11).integers(0, reader.n_frames - 4 + 1, size=8)
        windows = reader.random_windows(8, 4 * K, rng)
        for w, s in zip(windows, starts, strict=True):
            np.testing.assert_array_equal(w, reader.tokens(int(s), 4))
        different = reader.random_windows(8, 4 * K, np.random.default_rng(12))
        assert not np.array_equal(windows, different)


def test_tiny_dataset_matches_the_copied_stream(tiny_dataset: Path) -> None:
    info = read_dataset_info(tiny_dataset)
    with TokenReader(tiny_dataset, "train") as reader:
        assert reader.num_levels == 1 and reader.dtype == np.uint8
        assert reader.n_tokens == sum(s.tokens for s in info.shards if s.split == "train")
        codes = [reader.segment_codes(i) for i in range(reader.n_segments)]
        flat = _flat(codes)
        np.testing.assert_array_equal(reader.tokens(0, reader.n_frames), flat)
        boundary = int(reader.segment_frames[0])
        np.testing.assert_array_equal(
            reader.tokens(boundary - 100, 300), flat[boundary - 100 : boundary + 200]
        )
        windows = reader.random_windows(16, 2049, np.random.default_rng(0))
        assert windows.shape == (16, 2049)
        for w in windows[:4]:
            candidates = np.flatnonzero(flat[: len(flat) - 2048] == w[0])
            assert any(np.array_equal(w, flat[s : s + 2049]) for s in candidates)


def test_errors_name_the_problem(
    k3: tuple[Path, dict[str, list[np.ndarray]]], tmp_path: Path
) -> None:
    root, _ = k3
    with pytest.raises(CodecflowError, match="has no 'test' split"):
        TokenReader(root, "test")
    with pytest.raises(CodecflowError, match="no complete token dataset at .*missing"):
        TokenReader(tmp_path / "missing", "train")
    with TokenReader(root, "val") as reader:
        with pytest.raises(
            CodecflowError,
            match=r"34 tokens \(12 frames\) is longer than the 'val' split .*\(11 frames, 33 tokens\)",
        ):
            reader.random_windows(2, 11 * K + 1, np.random.default_rng(0))
        assert reader.random_windows(2, 11 * K, np.random.default_rng(0)).shape == (2, 33)
        with pytest.raises(CodecflowError, match="longer than the 'val' split"):
            reader.tokens(5, 7)
        with pytest.raises(IndexError):
            reader.segment_codes(2)
    with pytest.raises(CodecflowError, match="is closed"):
        reader.tokens(0, 1)
    info = json.loads((root / "dataset.json").read_text())
    broken = tmp_path / "broken"
    (broken / "shards").mkdir(parents=True)
    info["shards"] = [dict(info["shards"][-1], rows=3)]
    (broken / "dataset.json").write_text(json.dumps(info))
    (broken / "shards" / "val-00000.arrow").write_bytes(
        (root / info["shards"][0]["file"]).read_bytes()
    )
    with pytest.raises(CodecflowError, match="has 2 rows, dataset.json says 3"):
        TokenReader(broken, "val")
    # A dataset.json that is no dataset info: one line naming the file and the first problem.
    del info["totals"]
    (broken / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(CodecflowError, match=r"broken/dataset.json is not a valid .*totals") as err:
        TokenReader(broken, "val")
    assert "\n" not in str(err.value)
