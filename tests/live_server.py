"""A real Prefect server set up like `make server`, for the tests of tests/ops.

It runs codecflow/cli/server.py's own functions with a temporary home (the server's database, its logs
and pids.json), a free port, and a file server of a temporary runs folder on another free port, so
a test session never touches runs/server or ports 4200 and 4201. It deploys a copy of prefect.yaml in which the two evaluation deployments write into the temporary
folder instead of the repository's runs/ (their `index`, and the scheduled deployment's paths),
and the triggered evaluation samples a few milliseconds of audio without speech metrics (about
5 s instead of 80 s on a 2-core CPU); everything else is deployed as committed, including the
trigger's templated `train_run`, `dataset` and `out`, which the tests check are rendered.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml
from helpers import REPO

from codecflow.cli import processes

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
    """`codecflow.cli.server`: the set-up steps `codecflow server start` runs."""
    import codecflow.cli.server

    return codecflow.cli.server


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
    files_url: str  # the file server of `files_root`, as `make server` serves runs/
    files_root: Path

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
        pids = server.start(
            home,
            "127.0.0.1",
            free_port(),
            REPO,
            prefect_file=prefect_file,
            files_root=folder / "runs",
            files_port=free_port(),
        )
        yield LiveServer(
            api_url=pids["api_url"],
            ui_url=pids["ui_url"],
            home=home,
            prefect_file=prefect_file,
            index=folder / "index",
            files_url=pids["files_url"],
            files_root=Path(pids["files_root"]),
        )
    finally:
        recorded = [server.read_pids(home).get(name) for name in ("server", "worker", "files")]
        server.stop(home)
    left = [pid for pid in recorded if isinstance(pid, int) and processes.group_alive(pid)]
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


# --- helpers for the tests that drive the UI in a browser or kill the worker ------------------

#: Debian's chromium (no `playwright install`); CODECFLOW_CHROMIUM names another one.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def chromium_executable() -> str | None:
    """The chromium to drive (CODECFLOW_CHROMIUM, /usr/bin/chromium or `chromium` on PATH)."""
    import os
    import shutil

    wanted = os.environ.get("CODECFLOW_CHROMIUM")
    if wanted:
        return wanted
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


def ui_api_url(live: LiveServer) -> str | None:
    """The API address the server's /ui-settings give the UI (codecflow/cli/server.py sets
    PREFECT_UI_API_URL: `prefect server start --port N` alone would name port 4200)."""
    import httpx

    settings = httpx.get(f"{live.ui_url}/ui-settings", timeout=10).json()
    api_url: str | None = settings.get("api_url")
    return api_url


@contextmanager
def ui_page(live: LiveServer, artifacts: Path, timeout_ms: float = 30_000) -> Iterator[Any]:
    """A Playwright (sync API) page in headless chromium for the server's UI.

    On an exception inside the block it saves `failure.png` (full page), `failure.html` and
    `failure.log` (console errors, failed API calls) into `artifacts`, prints where they are
    with the page's address (also added to the exception's notes), and re-raises."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    # Not a skip: the browser test is part of the suite, and .ci/run installs Debian's chromium.
    assert executable is not None, f"no chromium at {CHROMIUM}: apt-get install chromium"
    assert ui_api_url(live) == live.api_url, "the UI would talk to another server"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(timeout_ms)
            page = context.new_page()
            # What the page reported: console errors and warnings, API calls that failed.
            events: list[str] = []

            def console(message: Any) -> None:
                if message.type in ("error", "warning"):
                    events.append(f"console {message.type}: {message.text}")

            def response(answer: Any) -> None:
                if answer.status >= 400:
                    events.append(f"{answer.status} {answer.request.method} {answer.url}")

            def failed(request: Any) -> None:
                events.append(f"failed {request.method} {request.url}: {request.failure}")

            page.on("console", console)
            page.on("response", response)
            page.on("requestfailed", failed)
            try:
                yield page
            except BaseException as exc:
                shot, html = artifacts / "failure.png", artifacts / "failure.html"
                log = artifacts / "failure.log"
                log.write_text("".join(f"{event}\n" for event in events))
                try:
                    page.screenshot(path=str(shot), full_page=True)
                    html.write_text(page.content())
                except Exception as why:  # the page may be gone; keep the test's own error
                    print(f"no screenshot: {why}")
                where = f"UI failure: screenshot {shot}, HTML {html}, log {log}, page {page.url}"
                print(where)
                exc.add_note(where)
                raise
        finally:
            browser.close()


def flow_run_when_final(live: LiveServer, flow_run_id: Any, timeout: float) -> Any:
    """The flow run once it is in a final state; fails after `timeout` s with its last state."""
    last: list[Any] = [None]

    def final() -> Any | None:
        with live.client() as client:
            run = client.read_flow_run(flow_run_id)
        last[0] = run.state
        return run if run.state is not None and run.state.is_final() else None

    try:
        return poll(f"flow run {flow_run_id} to finish", final, timeout, every=3.0)
    except AssertionError as exc:
        exc.add_note(f"last state: {last[0]!r}")
        raise


def busy_flow_runs(live: LiveServer) -> list[Any]:
    """Flow runs of this server that a worker runs or is about to: pending, running, cancelling,
    or scheduled for now or earlier (a triggered run is created Scheduled, due at once)."""
    from datetime import UTC, datetime

    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    def states(*types: StateType) -> FlowRunFilterState:
        return FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))

    active = FlowRunFilter(state=states(StateType.PENDING, StateType.RUNNING, StateType.CANCELLING))
    due = FlowRunFilter(
        state=states(StateType.SCHEDULED),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
    )
    with live.client() as client:
        return [
            *client.read_flow_runs(flow_run_filter=active),
            *client.read_flow_runs(flow_run_filter=due),
        ]


def crash_orphaned_runs(live: LiveServer, message: str) -> list[Any]:
    """Set Crashed on the flow runs the server still has as pending, running or cancelling:
    after the only worker was killed, nobody else will. Returns those runs."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    orphaned = [
        run
        for run in busy_flow_runs(live)
        if run.state_type in (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)
    ]
    with live.client() as client:
        for run in orphaned:
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return orphaned


def kill_worker(live: LiveServer, timeout: float = 20.0) -> list[int]:
    """SIGKILL the recorded worker's process group and the groups of the flow runs it started
    (found before the kill, as codecflow/cli/server.py's `stop` does); wait until none of them runs.
    Returns the process groups killed: the worker's first."""
    import os
    import signal

    server = server_module()
    worker = server.read_pids(live.home).get("worker")
    assert isinstance(worker, int) and processes.alive(worker), f"no running worker: {worker}"
    groups = [worker, *processes.descendant_groups([worker])]
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child = processes.CHILDREN.pop(worker, None)
    if child is not None:
        child.wait(timeout=timeout)
    poll(
        f"killed process groups {groups} to end",
        lambda: True if not any(processes.group_alive(g) for g in groups) else None,
        timeout,
        every=0.2,
    )
    return groups


def restart_worker(live: LiveServer) -> int:
    """Start a new worker with codecflow/cli/server.py's start_worker; it is recorded in pids.json, so
    the live server's teardown stops it. Returns its pid."""
    server = server_module()
    pids = server.start_worker(live.home, live.api_url)
    server.wait_for_worker(live.home, live.api_url)
    pid: int = pids["worker"]
    return pid


def form_field(page: Any, label: str) -> Any:
    """The control of a config field in the UI's parameter form (every field of codecflow's
    configs has a default, so its label reads "<Label> (Optional)")."""
    return page.get_by_label(f"{label} (Optional)", exact=True)


def form_group(page: Any, label: str) -> Any:
    """The whole field of the form labelled "<label> (Optional)": its label, description and
    controls (also for fields whose control has no label of its own: a list, an `anyOf`)."""
    title = page.get_by_text(f"{label} (Optional)", exact=True)
    return title.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' group ')][1]")


def open_artifact(page: Any, live: LiveServer, flow_run_id: str, key: str) -> None:
    """The flow run's page -> its Artifacts tab -> the artifact `key`."""
    import re

    from playwright.sync_api import expect

    page.goto(f"{live.ui_url}/v2/runs/flow-run/{flow_run_id}")  # the new UI, as `/` leads to
    expect(page).to_have_url(re.compile(rf"/runs/flow-run/{flow_run_id}"))
    page.get_by_role("tab", name="Artifacts", exact=True).click()
    page.get_by_text(key, exact=True).click()
    expect(page).to_have_url(re.compile(r"/artifacts/artifact/"))


def open_custom_run(page: Any, live: LiveServer, deployment: str) -> None:
    """From the UI's home page: Deployments -> (search) `deployment` -> Run -> Custom run."""
    import re

    from playwright.sync_api import expect

    page.goto(f"{live.ui_url}/")
    expect(page).to_have_url(re.compile(r"/v2/"))  # `/` redirects to the new UI
    page.get_by_role("link", name="Deployments", exact=True).first.click()
    # The list shows 10 deployments a page: search, rather than depend on where it is.
    page.get_by_placeholder("Search deployments").fill(deployment)
    # The search lands in the address after a pause; a click before that would be undone.
    expect(page).to_have_url(re.compile(rf"[?&]flowOrDeploymentName={re.escape(deployment)}(&|$)"))
    # The flow has the deployment's name too: take the link to the deployment's page.
    page.get_by_role("link", name=deployment, exact=True).and_(
        page.locator('a[href*="/deployments/deployment/"]')
    ).click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    expect(page).to_have_url(re.compile(r"/deployments/deployment/[^/?]+/run"))


def submit_run(page: Any, run_name: str, timeout_ms: float = 60_000) -> str:
    """Name the run, submit the custom-run form, and return the id of the flow run the UI
    created (from its create_flow_run request: a refusal by the server fails here, with the
    server's answer)."""
    from playwright.sync_api import expect

    name = page.get_by_label("Run Name", exact=True)
    name.fill(run_name)
    expect(name).to_have_value(run_name)

    def creates_run(response: Any) -> bool:
        return response.request.method == "POST" and response.url.endswith("/create_flow_run")

    for _ in range(3):
        with page.expect_response(creates_run, timeout=timeout_ms) as created:
            page.get_by_role("button", name="Submit", exact=True).click()
        response = created.value
        # 503 is the server's "retry": SQLite was locked by another writer on a loaded machine
        # (nothing was created; Prefect's own client retries it too). A user clicks again.
        if response.status != 503:
            break
        time.sleep(2.0)
    assert response.ok, f"create_flow_run answered {response.status}: {response.text()}"
    expect(page.get_by_text(f"{run_name} scheduled to start")).to_be_visible()
    flow_run_id: str = response.json()["id"]
    return flow_run_id


def flow_run_named(live: LiveServer, name: str, timeout: float = 30.0) -> Any:
    """The one flow run called `name` (polled: the UI has just created it)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    def found() -> Any | None:
        with live.client() as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
        assert len(runs) <= 1, f"{len(runs)} flow runs named {name}"
        return runs[0] if runs else None

    return poll(f"the flow run {name}", found, timeout, every=1.0)


__all__ += [
    "CHROMIUM_ARGS",
    "busy_flow_runs",
    "chromium_executable",
    "crash_orphaned_runs",
    "flow_run_named",
    "flow_run_when_final",
    "form_field",
    "form_group",
    "kill_worker",
    "open_artifact",
    "open_custom_run",
    "restart_worker",
    "submit_run",
    "ui_api_url",
    "ui_page",
]
