"""A real Prefect server set up like `make server`, for the tests of tests/ops.

It runs scripts/server.py's own functions with a temporary home (the server's database, its logs
and pids.json) and a free port, so a test session never touches runs/server or port 4200. It
deploys a copy of prefect.yaml in which the two evaluation deployments write into the temporary
folder instead of the repository's runs/ (their `index`, and the scheduled deployment's paths),
and the triggered evaluation samples a few milliseconds of audio without speech metrics (about
5 s instead of 80 s on a 2-core CPU); everything else is deployed as committed, including the
trigger's templated `train_run`, `dataset` and `out`, which the tests check are rendered.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml
from helpers import REPO

__all__ = [
    "LiveServer",
    "free_port",
    "isolated_prefect_yaml",
    "live_server",
    "poll",
    "server_module",
]

T = TypeVar("T")

#: What the triggered evaluation may cost in a test (the committed trigger samples 1 s x 2).
CHEAP_EVALUATION = {
    "seconds": 0.02,
    "regenerate_seconds": 0.02,
    "speech_metrics": False,
    "device": "cpu",
}


def server_module() -> ModuleType:
    """scripts/server.py as a module (scripts/ is not a package)."""
    name = "codecflow_scripts_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def isolated_prefect_yaml(folder: Path) -> Path:
    """prefect.yaml with the evaluation deployments' outputs moved into `folder`; its path."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    scheduled = by_name["evaluate-scheduled"]["parameters"]["cfg"]
    scheduled.update(
        train_run=str(folder / "scheduled" / "lm"),
        dataset=str(folder / "scheduled" / "tokens"),
        out=str(folder / "scheduled" / "evaluations"),
        index=str(folder / "scheduled"),
    )
    triggered = by_name["evaluate-on-train-lm"]
    triggered["parameters"]["cfg"].update(
        train_run=str(folder / "triggered" / "lm"),
        out=str(folder / "triggered" / "lm" / "evaluations"),
        index=str(folder / "triggered"),
    )
    (trigger,) = triggered["triggers"]
    trigger["parameters"]["cfg"].update(index=str(folder / "index"), **CHEAP_EVALUATION)
    (folder / "index").mkdir(exist_ok=True)
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass(frozen=True)
class LiveServer:
    """A running server: its addresses, home folder and the prefect.yaml it deployed."""

    api_url: str
    ui_url: str
    home: Path
    prefect_file: Path
    index: Path  # where the triggered evaluations write their runs index

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A synchronous Prefect client of this server."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: self.api_url}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def run_deployment(self, name: str, parameters: dict[str, Any], timeout: float) -> Any:
        """Run a deployment through the worker; the flow run once final (or at `timeout`)."""
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return run_deployment(name, parameters=parameters, timeout=timeout, poll_interval=2)


@contextmanager
def live_server(folder: Path) -> Iterator[LiveServer]:
    """Start the server, work pool, `gpu` limit, worker and deployments; stop them afterwards."""
    server = server_module()
    home = folder / "home"
    prefect_file = isolated_prefect_yaml(folder)
    try:
        pids = server.start(home, "127.0.0.1", free_port(), REPO, prefect_file=prefect_file)
        yield LiveServer(
            api_url=pids["api_url"],
            ui_url=pids["ui_url"],
            home=home,
            prefect_file=prefect_file,
            index=folder / "index",
        )
    finally:
        recorded = [server.read_pids(home).get(name) for name in ("server", "worker")]
        server.stop(home)
    left = [pid for pid in recorded if isinstance(pid, int) and server._group_alive(pid)]
    assert not left, f"process groups still running after stop: {left}"


def poll(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """Call `probe` until it returns something other than None; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: nothing within {timeout:.0f} s")
        time.sleep(every)
