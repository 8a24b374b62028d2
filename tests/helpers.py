"""Paths of the repository's fixtures, shared by the tests (importable: pytest's pythonpath)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

__all__ = [
    "FlowRunWindow",
    "PROMPT",
    "REPO",
    "TINY_TAR",
    "lock_held_by_another_process",
    "tiny_tar_md5",
]

REPO = Path(__file__).resolve().parents[1]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
PROMPT = REPO / "data" / "prompts" / "prompt_librilight_uk_4s.wav"


def tiny_evaluate_settings(**overrides: object) -> Any:
    """Evaluation settings that take seconds on a CPU: 0.02 s continuations of the shipped
    prompt, two samples, the speech metrics off (the GE2E model's first use takes ~15 s)."""
    from codecflow.schemas.configs import EvaluateSettings

    values: dict[str, object] = {
        "prompt": str(PROMPT),
        "seconds": 0.02,
        "num_samples": 2,
        "regenerate_seconds": 0.02,
        "speech_metrics": False,
        "device": "cpu",
    }
    return EvaluateSettings(**{**values, **overrides})


def tiny_tar_md5() -> str:
    """The published md5 of the embedded corpus tar."""
    return TINY_TAR.with_suffix(".tar.md5").read_text().split()[0]


def run_codecflow(api_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`codecflow ARGS` as a user runs it, from the repository root, its output captured.

    With `api_url` (the session's test server) the run shares it; with None it starts Prefect's
    ephemeral server of its own, as on a user's machine. One intra-op thread: the suite's CLI
    runs share two cores with the test process.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [sys.executable, "-m", "codecflow", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


class FlowRunWindow:
    """The task runs of the flow runs created after this window opened, from the Prefect API.

    Flow runs are created by a synchronous API call before they start, so the set of new flow
    runs (a run and its sub-flows) is exact. Task runs are recorded from events, some time after
    the flow returned, and their `created` time is when the server recorded them: a window by
    time would catch an earlier run's late records, so task runs are matched by flow run.
    """

    def __init__(self) -> None:
        self.before = _flow_run_ids()

    def task_run_states(self) -> list[tuple[str, str]]:
        """(task name, state name) of each task run of the new flow runs, sorted.

        Run names are "<task name>-<3 random characters>". Sub-flows also appear as task runs,
        named after the flow (the `evaluate` flow beside the `evaluate` task): those are left out.
        """
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        new = sorted(_flow_run_ids() - self.before)
        if not new:
            return []
        where = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=new))
        with get_client(sync_client=True) as client:
            runs = _all_pages(
                lambda offset: client.read_task_runs(
                    task_run_filter=where, limit=200, offset=offset
                )
            )
        return sorted(
            (run.name.rsplit("-", 1)[0], run.state.name)
            for run in runs
            if run.state is not None and run.state.state_details.child_flow_run_id is None
        )

    def wait_for(
        self, names: set[str], at_least: int = 1, timeout: float = 60.0
    ) -> list[tuple[str, str]]:
        """task_run_states once every task in `names` has `at_least` runs and none is still
        pending (or `timeout` seconds passed)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.task_run_states()
            final = all(state not in {"Pending", "Running", "Scheduled"} for _, state in states)
            counts = Counter(name for name, _ in states)
            if (all(counts[n] >= at_least for n in names) and final) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def _all_pages(read: Callable[[int], list[Any]]) -> list[Any]:
    rows: list[Any] = []
    while True:
        page = read(len(rows))
        rows.extend(page)
        if len(page) < 200:
            return rows


def _flow_run_ids() -> set[UUID]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = _all_pages(lambda offset: client.read_flow_runs(limit=200, offset=offset))
    return {run.id for run in runs}


@contextmanager
def lock_held_by_another_process(out: Path, what: str = "holder test") -> Iterator[int]:
    """A real python process holding `out`'s lock until killed; yields its pid."""
    code = (
        "import sys, time; from codecflow.tasks.core import outputs\n"
        "with outputs.exclusive_lock(sys.argv[1], sys.argv[2]):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(out), what], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process.pid
    finally:
        process.kill()
        process.wait()
