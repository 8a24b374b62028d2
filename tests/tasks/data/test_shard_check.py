"""Shards checked against their commit markers when a process first opens them (issue 23):
bytes flipped in place, a truncated, empty or non-Arrow shard, locally and in the shard cache of
a dataset on moto's S3 server. Each is one line naming the shard; a damaged cache entry is
dropped and fetched again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from s3_server import upload_folder

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import CACHE_ENV
from codecflow.tasks.data.shard_cache import entry_path
from codecflow.tasks.data.shard_check import VERIFY_ENV
from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info


@pytest.fixture
def copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A copy of the tiny mu-law dataset this test may damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "tokens"))


def _val_shard(dataset: Path) -> Path:
    shard = next(s for s in read_dataset_info(dataset).shards if s.split == "val")
    return dataset / shard.file


def _flip(path: Path, offset: int = 4096, length: int = 4096) -> None:
    """Flip `length` bytes in place from `offset` (or the middle of a smaller file)."""
    data = bytearray(path.read_bytes())
    start = min(offset, len(data) // 2)
    for i in range(start, min(start + length, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_line(err: pytest.ExceptionInfo[CodecflowError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bytes_flipped_in_place_are_refused(copy: Path) -> None:
    shard = _val_shard(copy)
    _flip(shard)
    with pytest.raises(CodecflowError) as err:
        TokenReader(copy, "val")
    assert _one_line(err).startswith(
        f"token shard {shard} does not match its commit marker: sha256 "
    )
    with TokenReader(copy, "train") as train:  # the other split's shards are intact
        assert train.n_segments > 0


def test_truncated_and_empty_shards_name_the_file(copy: Path) -> None:
    shard = _val_shard(copy)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CodecflowError) as err:
        TokenReader(copy, "val")
    assert _one_line(err) == (
        f"token shard {shard} is {size // 2} bytes, its commit marker says {size} "
        "(truncated or replaced)"
    )
    shard.write_bytes(b"")
    with pytest.raises(CodecflowError, match=r"is 0 bytes, its commit marker says \d+ \(empty\)$"):
        TokenReader(copy, "val")


def test_without_the_hash_a_damaged_shard_still_fails_in_one_line(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CODECFLOW_VERIFY_SHARDS=0` (the documented opt-out) keeps the size check; bytes that
    are no Arrow at all are still one line naming the file, not pyarrow's traceback."""
    monkeypatch.setenv(VERIFY_ENV, "0")
    shard = _val_shard(copy)
    shard.write_bytes(b"\x00" * shard.stat().st_size)
    with pytest.raises(CodecflowError) as err:
        TokenReader(copy, "val")
    assert _one_line(err).startswith(f"token shard {shard} is not a readable Arrow IPC stream")


def test_a_damaged_cache_entry_is_fetched_again(
    tiny_dataset: Path, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    remote = f"{s3_bucket}/tokens/mulaw"
    upload_folder(tiny_dataset, remote)
    with TokenReader(tiny_dataset, "val") as local:
        expected = local.tokens(0, local.n_frames)
    with TokenReader(remote, "val") as first:
        assert first.downloaded >= 1
    shard = next(s for s in read_dataset_info(remote).shards if s.split == "val")
    _flip(entry_path(remote, shard))  # the same size: the old size-only check trusted it
    with TokenReader(remote, "val") as again:
        assert again.downloaded == 1  # dropped and fetched once more
        np.testing.assert_array_equal(again.tokens(0, again.n_frames), expected)
