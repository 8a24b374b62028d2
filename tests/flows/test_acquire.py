"""The acquire flow under a real Prefect server, against a real HTTP server on 127.0.0.1 serving
a generated Libri-Light-format tar (bad members included), a moto S3 server, and Dask."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import task_run_states_since
from http_server import serve
from librilight_fixture import BAD_FILES, GOOD_FILES, make_librilight_tar

from flows.acquire import run_acquire
from schemas.configs import AcquireConfig
from tasks.errors import ChecksumMismatchError


@pytest.fixture(scope="module")
def generated_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("tar") / "small.tar"
    make_librilight_tar(path)
    return path.read_bytes()


def _config(url: str, md5: str, root: Path | str, **overrides: object) -> AcquireConfig:
    return AcquireConfig(
        source=url, md5=md5, root=str(root), target_len_sec=2.0, val_fraction=0.3, **overrides
    )


def test_download_resumes_extracts_safely_and_rejects_bad_files(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path
) -> None:
    md5 = hashlib.md5(generated_tar).hexdigest()
    with serve({"/data/small.tar": generated_tar}) as server:
        server.drop_after = len(generated_tar) // 3  # the first connection dies a third of the way
        url = f"{server.base_url}/data/small.tar"
        record = run_acquire(_config(url, md5, tmp_path / "root"))
        ranges = [r for _, r in server.requests if r]
        assert ranges and ranges[0].startswith("bytes=")  # the retry continued the .part file
        assert (tmp_path / "root" / "download" / "small.tar").read_bytes() == generated_tar

        rows = pq.read_table(record.path).to_pylist()
        rejects = {r["path"]: r["reason"] for r in pq.read_table(record.rejects_path).to_pylist()}
        expected = {f"librilight/small/{p}": kind for p, kind in BAD_FILES.items()}
        assert set(rejects) == set(expected)
        assert all(rejects[p].startswith(kind) for p, kind in expected.items())
        sources = {r["source_path"] for r in rows}
        assert len(sources) == len(GOOD_FILES) + 1  # every good file, and the flagged stereo one
        # Unsafe members were refused: nothing was written outside the extraction folder.
        assert (
            not (tmp_path / "root" / "escape.flac").exists() and not Path("/abs/evil.flac").exists()
        )
        assert not (
            tmp_path / "root" / "librilight" / "small" / "small" / "400" / "broken" / "link.flac"
        ).exists()

        # A second run downloads nothing and re-probes nothing.
        n_requests = len(server.requests)
        started = datetime.now(UTC)
        again = run_acquire(_config(url, md5, tmp_path / "root"))
        assert len(server.requests) == n_requests
        assert again == record
        probes = [state for name, state in task_run_states_since(started) if name == "probe-book"]
        assert len(probes) == 8 and set(probes) == {"Cached"}  # 8 book folders, none re-read


def test_md5_mismatch_keeps_the_download_and_extracts_nothing(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path
) -> None:
    with serve({"/small.tar": generated_tar}) as server:
        with pytest.raises(ChecksumMismatchError, match=f"expected {'0' * 32}, actual "):
            run_acquire(_config(f"{server.base_url}/small.tar", "0" * 32, tmp_path))
    assert (tmp_path / "download" / "small.tar.md5-mismatch").read_bytes() == generated_tar
    assert not (tmp_path / "librilight").exists() or not any((tmp_path / "librilight").iterdir())
    assert not (tmp_path / "manifest").exists()


def test_dask_runner_writes_the_same_manifest(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)  # the Dask workers report here too
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask"))
    tar = tmp_path / "small.tar"
    tar.write_bytes(generated_tar)
    md5 = hashlib.md5(generated_tar).hexdigest()
    default = run_acquire(_config(str(tar), md5, tmp_path / "default"))
    dask = run_acquire(_config(str(tar), md5, tmp_path / "dask-root", workers=2))
    assert pq.read_table(default.path).equals(pq.read_table(dask.path))
    assert pq.read_table(default.rejects_path).equals(pq.read_table(dask.rejects_path))


def test_s3_root_and_streaming_extraction(
    prefect_api_url: str, generated_tar: bytes, s3_bucket: str, tmp_path: Path
) -> None:
    import s3fs

    from schemas.configs import TokenizeSettings
    from tasks.tokenization import tokenize_manifest

    md5 = hashlib.md5(generated_tar).hexdigest()
    root = f"{s3_bucket}/librilight-run"
    with serve({"/small.tar": generated_tar}) as server:
        record = run_acquire(_config(f"{server.base_url}/small.tar", md5, root, keep_archive=False))
    assert record.path == f"{root}/manifest/segments.parquet"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists(f"{root[5:]}/librilight/small/.extracted.json")
    assert not fs.exists(f"{root[5:]}/download")  # streamed: no tar stored anywhere
    assert not (tmp_path / "download").exists()
    # Prefect's task results (the cache records) live beside the data, where any worker sees them.
    assert fs.ls(f"{root[5:]}/.prefect-results")
    with fs.open(record.path[5:], "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert len({r["source_path"] for r in rows}) == len(GOOD_FILES) + 1
    # The tokenizer reads the audio straight from S3 (and resamples the flagged 44.1 kHz file).
    dataset = tokenize_manifest(record.path, tmp_path / "tokens", TokenizeSettings())
    assert dataset.n_segments == len(rows)
