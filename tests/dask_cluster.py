"""A real Dask cluster for the tests: `dask scheduler` and two `dask worker` processes, each in
its own process group with its own working folder, HOME, temporary folder, Prefect home and
codecflow cache, so they share no local disk with the test or with each other (only the S3
server and the Prefect API, through the environment, as on other machines)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DaskCluster", "dask_cluster"]

_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(home: Path, prefect_api_url: str) -> dict[str, str]:
    """What a worker machine has: the package (this venv), the Prefect API, S3 credentials and
    endpoint from the environment, and nothing of the test's folders."""
    keep = ("PATH", "LANG", "LC_ALL") + tuple(k for k in os.environ if k.startswith("AWS_"))
    env = {k: os.environ[k] for k in keep if k in os.environ}
    for sub in ("tmp", "prefect", "cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home), TMPDIR=str(home / "tmp"), PREFECT_HOME=str(home / "prefect"),
        CODECFLOW_CACHE=str(home / "cache"), PREFECT_API_URL=prefect_api_url,
        DASK_TEMPORARY_DIRECTORY=str(home / "tmp"), OMP_NUM_THREADS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )  # fmt: skip
    return env


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def kill_worker(self, i: int) -> None:
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()


def _wait_for_workers(address: str, n: int, timeout: float = 120.0) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    with Client(address, timeout=timeout) as client:
        while len(client.scheduler_info()["workers"]) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} Dask workers did not join {address}")
            time.sleep(0.2)


@contextmanager
def dask_cluster(root: Path, prefect_api_url: str, n_workers: int = 2) -> Iterator[DaskCluster]:
    """Start the scheduler and `n_workers` workers under `root`; stop them all at the end."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        home = root / name
        home.mkdir(parents=True, exist_ok=True)
        log = (home / "log.txt").open("wb")
        process = subprocess.Popen(
            [str(_BIN / "dask"), *args], cwd=home, env=_environment(home, prefect_api_url),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        processes.append(process)
        return process

    try:
        scheduler = start(
            "scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
        )
        cluster = DaskCluster(address, scheduler)
        for i in range(n_workers):
            cluster.workers.append(
                start(
                    f"worker{i}",
                    [
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"w{i}",
                        "--local-directory",
                        str(root / f"worker{i}" / "tmp"),
                    ],
                )  # fmt: skip
            )
        _wait_for_workers(address, n_workers)
        yield cluster
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
