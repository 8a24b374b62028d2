"""Helpers shared by the flows."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from codecflow.schemas.tokenizers import dataset_folder_name
from codecflow.tasks.core.links import FILES_ROOT_ENV, FILES_URL_ENV, file_url, where
from codecflow.tasks.core.storage import cache_root
from codecflow.tasks.core.threads import worker_thread_env

__all__ = [
    "dataset_folder_name",
    "not_served_note",
    "publish_link",
    "result_storage_for",
    "run_on_runner",
    "task_runner_for",
    "unless_committed",
]

P = ParamSpec("P")
R = TypeVar("R")


def unless_committed(task: Task[P, R], committed: bool) -> Task[P, R]:
    """`task`, refreshing its cache when its output is not committed on disk.

    The Prefect cache records what a task returned, not whether its files still exist: when the
    commit marker is gone (a deleted run folder), the task must run again, not return stale paths.
    """
    return task if committed else task.with_options(refresh_cache=True)


def not_served_note() -> str:
    """Why an output is named as a path rather than linked, and how to get links."""
    root = os.environ.get(FILES_ROOT_ENV)
    if os.environ.get(FILES_URL_ENV) and root:
        return f"(outside {root}, the folder the file server serves: open it on this machine)"
    return "(a local file: open it on this machine; `make server` serves runs/ over HTTP)"


def publish_link(key: str, path: str | Path, text: str, description: str) -> None:
    """A link artifact to `path` when the runs folder's file server serves it (tasks.core.links),
    else a markdown artifact that names the path: a `file://` link opens nowhere in the UI."""
    url = file_url(path)
    if url is not None:
        create_link_artifact(key=key, link=url, link_text=text, description=description)
        return
    create_markdown_artifact(
        key=key, markdown=f"{text}: `{where(path)}` {not_served_note()}", description=description
    )


def _slurm_runner(slurm: Any) -> Any:
    """A Dask runner whose workers are Slurm jobs (dask-jobqueue's SLURMCluster), `jobs` of
    them, each one Dask worker of `cores` threads; the workers run this Python, and report to
    the Prefect API this process uses (exported in their job script)."""
    from prefect_dask import DaskTaskRunner

    directives = [f"--gpus-per-node={slurm.gpus}"] if slurm.gpus else []
    prologue = [f"export PREFECT_API_URL={os.environ['PREFECT_API_URL']}"]
    return DaskTaskRunner(
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs={
            "queue": slurm.partition, "account": slurm.account, "cores": slurm.cores,
            "processes": 1, "memory": slurm.memory, "walltime": slurm.walltime,
            "python": sys.executable, "job_extra_directives": directives,
            "job_script_prologue": prologue, "scheduler_options": {"dashboard_address": ":0"},
            "worker_extra_args": ["--nthreads", str(slurm.cores)],
            # The jobs' logs: not sbatch's default, slurm-<id>.out in the working folder.
            "log_directory": str(cache_root() / "slurm-logs"),
        },
        adapt_kwargs={"minimum": slurm.jobs, "maximum": slurm.jobs},
    )  # fmt: skip


def task_runner_for(workers: int, dask_address: str | None, slurm: Any = None) -> Any:
    """Prefect's default runner (None), or a Dask runner for `dask_address`, `slurm` (workers
    as Slurm jobs) or `workers > 0` (a LocalCluster), in that order."""
    if not dask_address and slurm is None and workers == 0:
        return None
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    if slurm is not None:
        return _slurm_runner(slurm)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            # Each worker process's share of the CPUs (tasks.core.threads): torch in every one
            # would otherwise take them all.
            "env": worker_thread_env(workers),
        },
    )


def result_storage_for(root: str) -> str | None:
    """Where Prefect keeps the task results (the cache records) of a run writing below `root`.

    A local root keeps Prefect's default (under PREFECT_HOME). An `s3://` root puts them beside
    the data, in `<root>/.prefect-results`, through a saved `RemoteFileSystem` block (s3fs; the
    credentials and `AWS_ENDPOINT_URL` come from the environment, never stored in the block): a
    worker on another machine then finds the same cache. Returns the block's slug, or None.
    """
    if not root.startswith("s3://"):
        return None
    from prefect.filesystems import RemoteFileSystem

    basepath = f"{root.rstrip('/')}/.prefect-results"
    name = "codecflow-results-" + hashlib.sha256(basepath.encode()).hexdigest()[:12]
    RemoteFileSystem(basepath=basepath, settings={}).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def run_on_runner(
    flow: Any,
    cfg: Any,
    workers: int,
    dask_address: str | None,
    storage_root: str = "",
    slurm: Any = None,
) -> Any:
    """Run `flow(cfg)` on the runner asked for, its results on S3 when `storage_root` is there.

    Dask worker processes must report to the same Prefect API as this process: against Prefect's
    ephemeral default each would start a temporary server of its own (measured: 35 s instead of
    10 s for four one-second tasks). So the API this process uses (a configured server, or the
    ephemeral one codecflow starts for the run) is exported to the workers first.
    """
    results = result_storage_for(storage_root)
    if results is not None:
        flow = flow.with_options(result_storage=results)
    if not dask_address and slurm is None and workers == 0:
        return flow(cfg)
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            os.environ["PREFECT_API_URL"] = str(client.api_url)
    return flow.with_options(task_runner=task_runner_for(workers, dask_address, slurm))(cfg)
