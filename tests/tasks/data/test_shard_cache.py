"""The shard cache of remote token datasets, on moto's S3 server: fetched once and checked
against the sha256 of the commit marker, shared by processes, never left half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs
from helpers import REPO
from s3_server import upload_folder

from codecflow.tasks.core import outputs
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import CACHE_ENV, sha256_file
from codecflow.tasks.data.records import ShardEntry
from codecflow.tasks.data.shard_cache import dataset_cache_dir, entry_path, fetch_shard
from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info

#: A child process that fetches one shard of a remote dataset and prints what it did.
FETCH = """
import json, sys
from codecflow.tasks.data.shard_cache import fetch_shard
from codecflow.tasks.data.token_dataset import read_dataset_info
url, index = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
fetched = fetch_shard(url, read_dataset_info(url).shards[index])
print(json.dumps({"path": str(fetched.path), "downloaded": fetched.downloaded}), flush=True)
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty shard cache for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def remote(tiny_dataset: Path, s3_bucket: str) -> str:
    """The tiny mu-law dataset, copied to a fresh bucket: its s3:// URL."""
    url = f"{s3_bucket}/tokens/mulaw"
    upload_folder(tiny_dataset, url)
    return url


def _children(url: str, index: int, n: int, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", FETCH, url, str(index)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(n)
    ]


def test_remote_reader_maps_the_cached_copy_and_fetches_once(
    tiny_dataset: Path, remote: str, cache: Path
) -> None:
    assert read_dataset_info(remote) == read_dataset_info(tiny_dataset)
    with TokenReader(tiny_dataset, "train") as local:
        expected = local.tokens(0, local.n_frames)
        assert local.downloaded == 0
    assert not cache.exists()  # a local dataset is read in place: nothing copied
    train = [s for s in read_dataset_info(remote).shards if s.split == "train"]
    with TokenReader(remote, "train") as reader:
        assert reader.dataset == remote  # the URL as given, never `s3:/...`
        assert reader.downloaded == len(train)
        np.testing.assert_array_equal(reader.tokens(0, reader.n_frames), expected)
    for shard in train:
        entry = entry_path(remote, shard)
        assert entry.parent == dataset_cache_dir(remote) and entry.is_relative_to(cache)
        assert sha256_file(entry) == shard.sha256
    source = json.loads((dataset_cache_dir(remote) / "source.json").read_text())
    assert source == {"dataset": remote}
    with TokenReader(remote + "/", "train") as again:  # the same dataset, the same entries
        assert again.downloaded == 0
        np.testing.assert_array_equal(again.tokens(0, again.n_frames), expected)


def test_a_shard_that_does_not_match_its_marker_is_refused_and_not_cached(
    remote: str, cache: Path
) -> None:
    shard = next(s for s in read_dataset_info(remote).shards if s.split == "val")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    key = f"{remote[5:]}/{shard.file}"
    data = bytearray(fs.cat(key))
    data[-100] ^= 0xFF  # same size, one byte changed
    fs.pipe(key, bytes(data))
    with pytest.raises(
        CodecflowError, match=rf"sha256 mismatch for token shard {remote}/{shard.file}"
    ):
        TokenReader(remote, "val")
    folder = dataset_cache_dir(remote)
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".arrow", ".tmp"))]


def test_a_missing_remote_dataset_is_named(s3_bucket: str, cache: Path) -> None:
    with pytest.raises(CodecflowError, match=rf"no complete token dataset at {s3_bucket}/nothing"):
        TokenReader(f"{s3_bucket}/nothing", "train")


def test_two_processes_share_one_download(remote: str, cache: Path) -> None:
    """Both children start while this test holds the entry's lock (as a rank that is
    downloading would): neither may fetch before it is released, then one downloads and the
    other finds the entry."""
    index = 0
    shard: ShardEntry = read_dataset_info(remote).shards[index]
    entry = entry_path(remote, shard)
    env = {**os.environ, CACHE_ENV: str(cache)}
    with outputs.exclusive_lock(entry, "test: a rank downloading", wait=True):
        children = _children(remote, index, 2, env)
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # time enough to download a shard of this size from 127.0.0.1
        assert [c.poll() for c in children] == [None, None]  # waiting for the lock
        assert not entry.exists()
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(r["downloaded"] for r in results) == [False, True]
    assert {r["path"] for r in results} == {str(entry)}
    assert sha256_file(entry) == shard.sha256


def test_a_killed_download_commits_nothing_and_the_next_one_completes(
    remote: str, cache: Path
) -> None:
    shard = read_dataset_info(remote).shards[0]
    entry = entry_path(remote, shard)
    env = {**os.environ, CACHE_ENV: str(cache), "CODECFLOW_KILL_AT": "shard-fetch"}
    (child,) = _children(remote, 0, 1, env)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == -9, stderr[-2000:]  # SIGKILL after the first chunk
    assert not entry.exists()
    partial = [p for p in entry.parent.iterdir() if p.name.startswith(f".{entry.name}.")]
    assert partial and all(p.name.endswith(".tmp") for p in partial)
    fetched = fetch_shard(remote, shard)
    assert (fetched.path, fetched.downloaded) == (entry, True)
    assert sha256_file(entry) == shard.sha256
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".tmp")]
