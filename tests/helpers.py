"""Paths of the repository's fixtures, shared by the tests (importable: pytest's pythonpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

__all__ = [
    "PROMPT",
    "REPO",
    "TINY_TAR",
    "lock_held_by_another_process",
    "task_run_states_since",
    "tiny_tar_md5",
]

REPO = Path(__file__).resolve().parents[1]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
PROMPT = REPO / "data" / "prompts" / "prompt_librilight_uk_4s.wav"


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
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def task_run_states_since(since: datetime) -> list[tuple[str, str]]:
    """(task name, state name) of every task run created since `since`, from the Prefect API.

    Run names are "<task name>-<3 random characters>". Sub-flows also appear as task runs,
    named after the flow (the `evaluate` flow beside the `evaluate` task): those are left out.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    return sorted(
        (run.name.rsplit("-", 1)[0], run.state.name)
        for run in runs
        if run.created is not None
        and run.created >= since
        and run.state is not None
        and run.state.state_details.child_flow_run_id is None
    )


@contextmanager
def lock_held_by_another_process(out: Path, what: str = "holder test") -> Iterator[int]:
    """A real python process holding `out`'s lock until killed; yields its pid."""
    code = (
        "import sys, time; from tasks.core import outputs\n"
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
