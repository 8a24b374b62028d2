"""acquire and tokenize on a real Dask cluster (a scheduler and two worker processes that share
no local disk: tests/dask_cluster.py), the data on S3 (moto on 127.0.0.1): the manifest and the
shards are byte-identical to a run without Dask, and a worker killed with SIGKILL mid-run is
survived."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
import s3fs
from dask_cluster import DaskCluster, dask_cluster
from helpers import TINY_TAR, tiny_tar_md5

from codecflow.flows.acquire import run_acquire
from codecflow.flows.tokenize import run_tokenize
from codecflow.schemas.configs import AcquireConfig, TokenizeConfig


def _snapshot(url: str) -> dict[str, str]:
    """Every object under `url` (s3://...) by its path below it, with its sha256; Prefect's own
    result files and lock files left out (they name runs, not data)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    base = url[5:]
    return {
        path[len(base) + 1 :]: hashlib.sha256(fs.cat(path)).hexdigest()
        for path in sorted(fs.find(base))
        if "/.codecflow-" not in path and "prefect-results" not in path
    }


def _delete(url: str) -> None:
    s3fs.S3FileSystem(skip_instance_cache=True).rm(url[5:], recursive=True)


@pytest.fixture
def cluster(
    prefect_api_url: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DaskCluster:
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    with dask_cluster(tmp_path / "cluster", prefect_api_url) as started:
        yield started  # type: ignore[misc]


def test_acquire_and_tokenize_on_a_cluster_write_the_bytes_of_a_local_run(
    cluster: DaskCluster, s3_bucket: str, tmp_path: Path
) -> None:
    s3fs.S3FileSystem(skip_instance_cache=True).put_file(
        str(TINY_TAR), f"{s3_bucket[5:]}/src/t.tar"
    )
    acquire = AcquireConfig(
        source=f"{s3_bucket}/src/t.tar", md5=tiny_tar_md5(), root=f"{s3_bucket}/acq",
        target_len_sec=5.0, val_fraction=0.2, download_dir=str(tmp_path / "download"),
    )  # fmt: skip
    local = run_acquire(acquire)
    reference = _snapshot(f"{s3_bucket}/acq")
    _delete(f"{s3_bucket}/acq")
    on_cluster = run_acquire(acquire.model_copy(update={"dask_address": cluster.address}))
    assert on_cluster.path == local.path
    assert _snapshot(f"{s3_bucket}/acq") == reference
    tokenize = TokenizeConfig(
        manifest=local.path, out=f"{s3_bucket}/tok", shard_hours=4.0 / 3600, max_tasks=3,
        formats=["arrow", "webdataset"],
    )  # fmt: skip
    run_tokenize(tokenize)
    shards = _snapshot(f"{s3_bucket}/tok")
    assert sum(name.endswith(".arrow") for name in shards) >= 3
    _delete(f"{s3_bucket}/tok")
    run_tokenize(tokenize.model_copy(update={"dask_address": cluster.address}))
    assert _snapshot(f"{s3_bucket}/tok") == shards
    # The work ran on the workers: their logs hold the fanned-out tasks' runs.
    logs = "".join(
        (tmp_path / "cluster" / f"worker{i}" / "log.txt").read_text(errors="replace")
        for i in range(2)
    )
    assert "probe-book" in logs and "write-shards" in logs, logs[-2000:]
    # Each task's cache key is computed on the worker too (its results persisted): a task
    # pickled by value has no source file there, and every key used to fail.
    assert "Error encountered when computing cache key" not in logs


def test_a_worker_killed_mid_run_is_survived(
    cluster: DaskCluster, tiny_manifest: Path, s3_bucket: str
) -> None:
    """SIGKILL to one worker while the shard groups run: Dask reruns its task on the other, and
    the dataset is the bytes of a run that was never disturbed (or, if the run fails, a rerun
    resumes to them)."""
    from distributed import Client

    tokenize = TokenizeConfig(
        manifest=str(tiny_manifest), out=f"{s3_bucket}/tok", shard_hours=2.0 / 3600,
        max_tasks=6, tokenizer="mu-law-256",
    )  # fmt: skip
    run_tokenize(tokenize)
    reference = _snapshot(f"{s3_bucket}/tok")
    _delete(f"{s3_bucket}/tok")
    on_cluster = tokenize.model_copy(update={"dask_address": cluster.address})
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["record"] = run_tokenize(on_cluster)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    with Client(cluster.address) as client:
        deadline = time.monotonic() + 120
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = [w for w, tasks in client.processing().items() if tasks]
        assert busy, "no task reached a worker"
        names = {w: info["name"] for w, info in client.scheduler_info()["workers"].items()}
    cluster.kill_worker(int(str(names[busy[0]])[1:]))
    thread.join(timeout=600)
    if "error" in outcome:
        run_tokenize(on_cluster)  # the run died with the worker: it resumes
    assert _snapshot(f"{s3_bucket}/tok") == reference
