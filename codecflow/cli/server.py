"""Run codecflow as a Prefect project on this machine: a server, a work pool, a worker, deployments.

    codecflow server start [--host 127.0.0.1] [--port 4200] [--home runs/server]
                           [--files-root runs] [--files-port 4201]
    codecflow server stop  [--home runs/server]

Run from the checkout (`make server`): the deployments are those of its prefect.yaml.

`start` launches `prefect server start` in the background with its own database under
`<home>/prefect`, waits for its health check, creates the process work pool `codecflow-local` and
the global concurrency limit `gpu` (1 slot; the train-lm task takes it on a GPU), serves the runs
folder read-only over HTTP (`codecflow.cli.files_server`, so that the artifacts' links open reports,
datasets and checkpoints: the UI cannot open a local file), starts a worker on the pool that
knows that server's address, and deploys every deployment of prefect.yaml (`prefect deploy
--all`), then prints the UI and file server addresses and the log files. Each background process
runs in its own process group, recorded in `<home>/pids.json` (`codecflow.cli.processes`); `stop`
ends exactly those groups.
Every step is idempotent: a second `start` while the server runs says so and does nothing.

The pieces are plain functions (`start_server`, `create_work_pool`, `create_gpu_limit`,
`start_files`, `deploy_all`, `start_worker`, `wait_for_worker`, `stop`) so that tests can run the
same set-up with a temporary home and free ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from codecflow.cli.processes import (
    PIDS,
    ServerError,
    alive,
    descendant_groups,
    kill_group,
    read_pids,
    record,
    recorded,
    spawn,
    start_ticks,
)

__all__ = [
    "FILES_PORT",
    "FILES_ROOT_ENV",
    "FILES_URL_ENV",
    "GPU_LIMIT",
    "POOL",
    "REPO",
    "ServerError",
    "child_env",
    "create_gpu_limit",
    "create_work_pool",
    "deploy_all",
    "port_free",
    "port_taken",
    "read_pids",
    "running_server",
    "start",
    "start_files",
    "start_server",
    "start_worker",
    "stop",
    "wait_for_worker",
]

#: The checkout whose prefect.yaml is deployed: the current folder.
REPO = Path.cwd()
POOL = "codecflow-local"
GPU_LIMIT = "gpu"
#: The file server's default port, beside the UI's 4200.
FILES_PORT = 4201
#: What tells a flow run where the file server is (read by tasks/core/links.py; repeated here so
#: that the CLI imports no task code, and a test checks they agree).
FILES_URL_ENV = "CODECFLOW_FILES_URL"
FILES_ROOT_ENV = "CODECFLOW_FILES_ROOT"
#: The processes `start` records, in the order `stop` ends them: the worker first (it reports
#: to the server), the file server last (nothing depends on it).
_PROCESSES = ("worker", "server", "files")


# --- processes and pids.json ---------------------------------------------------------------


def _prefect(*args: str) -> list[str]:
    """The Prefect CLI of this interpreter (the project's virtual environment)."""
    return [sys.executable, "-m", "prefect", *args]


def _run(
    command: Sequence[str], env: Mapping[str, str], cwd: Path, what: str, log: Path | None = None
) -> str:
    """Run a CLI command to its end; its output. A failure raises one line naming `what`."""
    done = subprocess.run(
        list(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=cwd,
    )
    output = done.stdout + done.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.write(f"$ {' '.join(command)}\n{output}\n")
    if done.returncode != 0:
        if "already exists" in output:
            return output
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        where = f"; see {log}" if log is not None else ""
        raise ServerError(f"{what} failed (exit status {done.returncode}): {last}{where}")
    return output


# --- the pieces -----------------------------------------------------------------------------


def urls(host: str, port: int) -> dict[str, str]:
    """The UI and API addresses of a server on host:port."""
    return {"ui_url": f"http://{host}:{port}", "api_url": f"http://{host}:{port}/api"}


def child_env(home: Path, api_url: str | None = None, repo: Path = REPO) -> dict[str, str]:
    """The environment of every process the set-up starts: the server's own PREFECT_HOME, the
    API it talks to, and the checkout that prefect.yaml's pull step changes into."""
    env = dict(os.environ)
    env["PREFECT_HOME"] = str((Path(home) / "prefect").resolve())
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["CODECFLOW_CHECKOUT"] = str(Path(repo).resolve())
    env.pop("PREFECT_API_KEY", None)
    if api_url is None:
        env.pop("PREFECT_API_URL", None)
    else:
        env["PREFECT_API_URL"] = api_url
    return env


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_taken(host: str, port: int) -> str:
    return f"port {port} on {host} is taken by another process; stop it or pass --port"


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(home: Path) -> dict[str, Any] | None:
    """The server recorded in `<home>/pids.json` if it still runs, else None."""
    pids = read_pids(home)
    return pids if recorded(pids, "server") is not None else None


def start_server(
    home: Path,
    host: str = "127.0.0.1",
    port: int = 4200,
    repo: Path = REPO,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Start `prefect server start` in the background and wait for its health check.

    Returns (and records in pids.json) {"server": pid, "api_url", "ui_url", "server_log"}.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "prefect").mkdir(exist_ok=True)
    if not port_free(host, port):
        raise ServerError(port_taken(host, port))
    addresses = urls(host, port)
    log = home / "server.log"
    command = _prefect("server", "start", "--host", host, "--port", str(port), "--analytics-off")
    env = child_env(home, None, repo)
    # `prefect server start --port N` does not tell the UI: without this the UI's settings name
    # port 4200 and the UI cannot reach a server on any other port.
    env["PREFECT_UI_API_URL"] = addresses["api_url"]
    pid = spawn(command, log, env, Path(repo))
    pids = record(
        home, server=pid, server_started=start_ticks(pid), server_log=str(log), **addresses
    )
    health = f"{addresses['api_url']}/health"
    deadline = time.monotonic() + timeout
    while not _healthy(addresses["api_url"]):
        if not alive(pid):
            raise ServerError(f"prefect server exited before answering on {health}; see {log}")
        if time.monotonic() > deadline:
            raise ServerError(
                f"prefect server did not answer on {health} within {timeout:.0f} s; see {log}"
            )
        time.sleep(0.5)
    return pids


def create_work_pool(home: Path, api_url: str, repo: Path = REPO) -> None:
    """Create the process work pool `codecflow-local` (nothing to do when it exists)."""
    _run(
        _prefect("work-pool", "create", POOL, "--type", "process"),
        child_env(home, api_url, repo),
        Path(repo),
        f"creating the work pool {POOL}",
        Path(home).resolve() / "setup.log",
    )


def gpu_slots() -> int:
    """One slot per GPU that `nvidia-smi -L` lists, at least 1: a train-lm run on CUDA occupies
    `nproc_per_node` slots, so trainings never share a device."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(1 for line in listed.splitlines() if line.startswith("GPU ")))


def create_gpu_limit(home: Path, api_url: str, repo: Path = REPO) -> None:
    """Create the global concurrency limit `gpu`, one slot per GPU (nothing to do when it
    exists)."""
    _run(
        _prefect("global-concurrency-limit", "create", GPU_LIMIT, "--limit", str(gpu_slots())),
        child_env(home, api_url, repo),
        Path(repo),
        f"creating the global concurrency limit {GPU_LIMIT}",
        Path(home).resolve() / "setup.log",
    )


def deploy_all(
    home: Path, api_url: str, repo: Path = REPO, prefect_file: Path | None = None
) -> str:
    """`prefect --no-prompt deploy --all` from the repository root; its output.

    `prefect_file` deploys another prefect.yaml (entrypoints stay relative to `repo`).
    """
    command = _prefect("--no-prompt", "deploy", "--all")
    if prefect_file is not None:
        command += ["--prefect-file", str(Path(prefect_file).resolve())]
    return _run(
        command,
        child_env(home, api_url, repo),
        Path(repo),
        "prefect deploy --all",
        Path(home).resolve() / "deploy.log",
    )


def start_files(
    home: Path,
    root: Path,
    host: str = "127.0.0.1",
    port: int = FILES_PORT,
    repo: Path = REPO,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Serve `root` read-only over HTTP in the background (`codecflow.cli.files_server`); wait
    until it answers; records {"files": pid, "files_url", "files_root", "files_log"}."""
    home, root = Path(home).resolve(), Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not port_free(host, port):
        raise ServerError(
            f"port {port} on {host} is taken by another process; stop it or pass --files-port"
        )
    url, log = f"http://{host}:{port}", home / "files.log"
    command = [sys.executable, "-m", "codecflow.cli.files_server"]
    command += ["--root", str(root), "--host", host, "--port", str(port)]
    pid = spawn(command, log, child_env(home, None, repo), Path(repo))
    pids = record(
        home,
        files=pid,
        files_started=start_ticks(pid),
        files_url=url,
        files_root=str(root),
        files_log=str(log),
    )
    deadline = time.monotonic() + timeout
    while not _answers(f"{url}/"):
        if not alive(pid):
            raise ServerError(f"the file server exited before answering on {url}; see {log}")
        if time.monotonic() > deadline:
            raise ServerError(f"the file server did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.2)
    return pids


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_worker(home: Path, api_url: str, repo: Path = REPO) -> dict[str, Any]:
    """Start a process worker on `codecflow-local` in the background; records it in pids.json.

    When the file server recorded in pids.json runs, the worker (and so every flow run it
    starts) gets its address: the artifacts then link `http://` URLs (tasks/core/links.py)."""
    home = Path(home).resolve()
    log = home / "worker.log"
    command = _prefect(
        "worker", "start", "--pool", POOL, "--name", f"{POOL}-{socket.gethostname()}"
    )
    env = child_env(home, api_url, repo)
    pids = read_pids(home)
    if recorded(pids, "files") is not None:
        env[FILES_URL_ENV], env[FILES_ROOT_ENV] = pids["files_url"], pids["files_root"]
    pid = spawn(command, log, env, Path(repo))
    return record(home, worker=pid, worker_started=start_ticks(pid), worker_log=str(log))


def wait_for_worker(home: Path, api_url: str, timeout: float = 90.0) -> None:
    """Wait until a worker of `codecflow-local` has reported to the server."""
    home = Path(home).resolve()
    pids = read_pids(home)
    worker = pids.get("worker")
    log = pids.get("worker_log", home / "worker.log")
    deadline = time.monotonic() + timeout
    while True:
        if isinstance(worker, int) and not alive(worker):
            raise ServerError(f"the prefect worker on {POOL} exited; see {log}")
        try:
            response = httpx.post(f"{api_url}/work_pools/{POOL}/workers/filter", json={}, timeout=5)
            if response.status_code == 200 and response.json():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(
                f"no prefect worker reported to the work pool {POOL} within {timeout:.0f} s; "
                f"see {log}"
            )
        time.sleep(1.0)


def stop(home: Path) -> list[str]:
    """End the process groups recorded in `<home>/pids.json` and remove it; what was stopped."""
    home = Path(home).resolve()
    pids = read_pids(home)
    # The worker first: it reports to the server. A pid that now names another process (after a
    # reboot) is left alone.
    ours = {
        name: pid for name in _PROCESSES if (pid := recorded(pids, name, group=True)) is not None
    }
    # Found before the kill: once the worker is gone its flow runs have a new parent.
    descendants = descendant_groups(list(ours.values()))
    stopped = []
    for name, pid in ours.items():
        if kill_group(pid):
            stopped.append(f"{name} (pid {pid})")
    for pgid in descendants:  # a worker ends its flow runs itself; this is the fallback
        if kill_group(pgid):
            stopped.append(f"flow run process group {pgid}")
    (home / PIDS).unlink(missing_ok=True)
    return stopped


def start(
    home: Path,
    host: str = "127.0.0.1",
    port: int = 4200,
    repo: Path = REPO,
    prefect_file: Path | None = None,
    timeout: float = 120.0,
    files_root: Path | None = None,
    files_port: int = FILES_PORT,
) -> dict[str, Any]:
    """The whole set-up: server, work pool, `gpu` limit, file server of `files_root` (default
    `<repo>/runs`), worker, deployments.

    On a failure, what was started is stopped again and ServerError says which step failed.
    """
    home = Path(home).resolve()
    try:
        pids = start_server(home, host, port, repo, timeout)
        api_url = pids["api_url"]
        create_work_pool(home, api_url, repo)
        create_gpu_limit(home, api_url, repo)
        # Before the worker: the worker hands its address to every flow run.
        start_files(home, files_root or Path(repo) / "runs", host, files_port, repo)
        start_worker(home, api_url, repo)  # starts up while the deployments are created
        deploy_all(home, api_url, repo, prefect_file)
        wait_for_worker(home, api_url)
    except BaseException:
        stop(home)
        raise
    return read_pids(home)
