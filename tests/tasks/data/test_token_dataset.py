"""TokenReader: zero-copy segment views, the post's interleaved stream across segment and shard
boundaries, seeded random windows on frame boundaries, a sequence of segments with their
metadata, pickled without its maps, clear errors; each on a dataset of today's format (3: IPC
streams, nested codes) and of version 2 (IPC files, flat codes)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from handmade_tokens import LAYOUT, K, flat_stream, write_dataset

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import sha256_file
from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info


@pytest.fixture(scope="module", params=[4, 3, 2], ids=["v4", "v3", "v2"])
def k3(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp(f"k3-v{request.param}")
    return root, write_dataset(root, format_version=request.param)


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


def test_codes_lie_inside_the_memory_map_of_their_shard(
    k3: tuple[Path, dict[str, list[np.ndarray]]], tiny_dataset: Path
) -> None:
    """Zero copy by address: every segment's codes are bytes of its shard's map (an IPC stream
    as much as an IPC file), and opening the split allocates no Arrow memory."""
    root, _ = k3
    for dataset, split in ((root, "train"), (tiny_dataset, "train")):
        allocated = pa.total_allocated_bytes()
        with TokenReader(dataset, split) as reader:
            assert pa.total_allocated_bytes() == allocated
            maps = []
            for source in reader._maps:
                source.seek(0)
                whole = source.read_buffer(source.size())  # a slice of the map: its address
                maps.append((whole.address, whole.address + whole.size))
            for i in range(reader.n_segments):
                start = reader.segment_codes(i).ctypes.data
                end = start + reader.segment_codes(i).nbytes
                assert any(lo <= start and end <= hi for lo, hi in maps), i


def test_tokens_interleave_levels_across_segment_and_shard_boundaries(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, segments = k3
    with TokenReader(root, "train") as train, TokenReader(root, "val") as val:
        expected = flat_stream(segments["train"])  # [34 * K]
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
        np.testing.assert_array_equal(val.tokens(0, val.n_frames), flat_stream(segments["val"]))


def test_random_windows_start_on_frames_and_are_seeded(
    k3: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, segments = k3
    expected = flat_stream(segments["train"])
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
        flat = flat_stream(codes)
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


def test_reader_is_the_sequence_of_its_segments_with_their_metadata(
    k3: tuple[Path, dict[str, list[np.ndarray]]], tiny_dataset: Path
) -> None:
    root, segments = k3
    # segment ids restart in each record batch (write_dataset): rows are found per batch
    names = [
        f"{name}_{j}" for name, batches in LAYOUT.items() for b in batches for j in range(len(b))
    ]
    with TokenReader(root, "train") as reader:
        assert len(reader) == 7
        for i, codes in enumerate(segments["train"]):
            segment = reader[i]
            assert (segment.index, segment.split, segment.speaker, segment.book_id) == (
                i,
                "train",
                "spk",
                "book",
            )
            assert segment.n_frames == codes.shape[1]
            np.testing.assert_array_equal(segment.codes, codes)  # [K, F]
            assert not segment.codes.flags.writeable  # the mapped view, as segment_codes
        assert [reader[i].segment_id for i in range(7)] == [
            n for n in names if n.startswith("train")
        ]
        assert [reader[i].segment_id for i in range(7)][3:6] == [
            "train-00001_0",
            "train-00001_0",
            "train-00001_1",
        ]
        assert reader[-1].index == 6 and reader[-7].index == 0
        np.testing.assert_array_equal(reader[-1].codes, segments["train"][-1])
        for bad in (7, -8):
            with pytest.raises(IndexError, match=r"out of range \[0, 7\)"):
                reader[bad]
        assert reader[np.int64(2)].index == 2
        with pytest.raises(TypeError, match="a segment index is an integer, not slice"):
            reader[1:3]  # type: ignore[index]
    with TokenReader(tiny_dataset, "val") as reader:
        ids = [s.segment_id for s in reader]  # a sequence: iterable through __getitem__
        assert len(ids) == len(reader) == reader.n_segments and len(set(ids)) == len(ids)
        assert {s.split for s in reader} == {"val"}


def test_reader_pickles_without_its_maps_and_maps_its_split_when_first_used(
    k3: tuple[Path, dict[str, list[np.ndarray]]], tmp_path: Path
) -> None:
    root, segments = k3
    with TokenReader(root, "train") as reader:
        data = pickle.dumps(reader)
        assert len(data) < 500  # the location, split and fingerprint: no arrays, no maps
        copy = pickle.loads(data)
        assert "_maps" not in vars(copy) and "segment_frames" not in vars(copy)
        assert len(copy) == 7  # maps the split here
        assert "_maps" in vars(copy) and copy._maps is not reader._maps
        np.testing.assert_array_equal(copy.tokens(0, copy.n_frames), flat_stream(segments["train"]))
        np.testing.assert_array_equal(copy[5].codes, segments["train"][5])
        assert pickle.loads(pickle.dumps(copy)).n_frames == 34  # a used copy pickles as small
        copy.close()
    closed = pickle.loads(pickle.dumps(reader))
    with pytest.raises(CodecflowError, match="is closed"):
        closed.tokens(0, 1)
    with pytest.raises(CodecflowError, match="is closed"):
        len(closed)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pickle.loads(data).nope  # noqa: B018
    # A dataset tokenized again at the same place is not read through an old pickle.
    moved = tmp_path / "k3"
    shutil.copytree(root, moved)
    with TokenReader(moved, "val") as reader:
        data = pickle.dumps(reader)
    info = json.loads((moved / "dataset.json").read_text())
    (moved / "dataset.json").write_text(json.dumps({**info, "fingerprint": "other"}))
    stale = pickle.loads(data)
    with pytest.raises(
        CodecflowError,
        match=r"changed since this 'val' reader was pickled \(fingerprint test then, other now\)",
    ):
        stale.n_segments  # noqa: B018


def test_a_shard_of_another_format_or_dataset_is_refused_naming_it(tmp_path: Path) -> None:
    v3, v2 = tmp_path / "v3", tmp_path / "v2"
    write_dataset(v3, format_version=3)
    write_dataset(v2, format_version=2)
    info = json.loads((v3 / "dataset.json").read_text())
    # A version 2 file where dataset.json says 3 (an IPC file is no IPC stream), and back. The
    # markers are made to agree with the swapped files: their format is what is refused.
    mixed = tmp_path / "mixed"
    shutil.copytree(v3, mixed)
    shutil.copy(v2 / "shards" / "val-00000.arrow", mixed / "shards" / "val-00000.arrow")
    for shard in info["shards"]:
        swapped = mixed / shard["file"]
        shard.update(bytes=swapped.stat().st_size, sha256=sha256_file(swapped))
    (mixed / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(
        CodecflowError,
        match=r"val-00000.arrow is not a readable Arrow IPC stream \(format version 3\)",
    ):
        TokenReader(mixed, "val")
    (mixed / "dataset.json").write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(
        CodecflowError,
        match=r"train-00000.arrow is not a readable Arrow IPC file \(format version 2\)",
    ):
        TokenReader(mixed, "train")
    # A dataset of a format this reader does not know yet.
    (mixed / "dataset.json").write_text(json.dumps({**info, "format_version": 5}))
    with pytest.raises(CodecflowError, match="format version 5, newer than this codecflow reads"):
        TokenReader(mixed, "train")
    # A shard copied from another dataset: its metadata names that dataset's fingerprint.
    (v3 / "dataset.json").write_text(json.dumps({**info, "fingerprint": "another"}))
    with pytest.raises(
        CodecflowError,
        match=r"train-00000.arrow belongs to another token dataset \(fingerprint test; dataset.json says another\)",
    ):
        TokenReader(v3, "train")


def test_plain_pyarrow_reads_the_codes_shape_and_the_tokenizer(tmp_path: Path) -> None:
    """Without codecflow's code: the stream's rows are K lists of F ints, and the schema
    metadata says what they are."""
    segments = write_dataset(tmp_path)
    table = pa.ipc.open_stream(str(tmp_path / "shards" / "train-00000.arrow")).read_all()
    for i, codes in enumerate(segments["train"][:3]):
        row = table.column("codes")[i].as_py()
        assert len(row) == K and all(len(level) == codes.shape[1] for level in row)
        assert row == codes.tolist()  # codes[k][f]
    meta = table.schema.metadata
    assert meta[b"codecflow.num_levels"] == b"3" and meta[b"codecflow.dtype"] == b"uint16"
    assert meta[b"codecflow.format_version"] == b"4"
    assert json.loads(meta[b"codecflow.tokenizer_spec"])["codebook_size"] == 1024
