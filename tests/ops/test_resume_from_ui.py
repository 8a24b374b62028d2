"""Resume after the worker dies: a tokenize deployment run is stopped by SIGKILL of the worker's
process group and of its flow run's (as codecflow/cli/server.py's `stop` ends them) after some shards
are committed and before all are; a new worker starts, the deployment runs again with the same
parameters (through the API, or through the UI's custom-run form), and only the missing shards
are written: the committed ones are left untouched, and the dataset ends byte-identical to an
uninterrupted tokenization of the same manifest.

To kill at a known moment, the first run gets (as job variables, so only its flow-run process)
a `sitecustomize` that wraps codecflow.tasks.core.faults.kill_point: after the N-th shard commit every shard
writer blocks at its next fault point and the process writes a flag file; the test kills when
the flag appears. The worker and the re-run have no such hook.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from live_server import (
    LiveServer,
    busy_flow_runs,
    crash_orphaned_runs,
    flow_run_named,
    flow_run_when_final,
    form_field,
    kill_worker,
    open_custom_run,
    poll,
    restart_worker,
    server_module,
    submit_run,
    ui_page,
)

from codecflow.cli import processes
from codecflow.schemas.configs import TokenizeConfig, TokenizeSettings
from codecflow.tasks.tokenize.finalize import tokenize_manifest

#: One shard per 5 s segment of the tiny corpus: 10 shards, 6 train + 4 val.
SHARD_HOURS = 0.0005
#: Three shard-writing tasks (4 + 4 + 2 shards) that run at the same time.
MAX_TASKS = 3
#: Pause (and get killed) once this many shards are committed.
PAUSE_AFTER = 2

PAUSE_HOOK = '''"""Test hook (tests/ops/test_resume_from_ui.py): hold a tokenize run after its N-th shard
commit, so that the test can kill its worker at that moment."""
import os

if os.environ.get("CODECFLOW_TEST_PAUSE_AFTER_COMMIT"):
    import threading
    import time

    import codecflow.tasks.core.faults

    _wanted = int(os.environ["CODECFLOW_TEST_PAUSE_AFTER_COMMIT"])
    _flag = os.environ["CODECFLOW_TEST_PAUSE_FLAG"]
    _original = codecflow.tasks.core.faults.kill_point
    _lock = threading.Lock()
    _commits = [0]

    def kill_point(name):
        with _lock:
            if name == "after-commit":
                _commits[0] += 1
            hold = _commits[0] >= _wanted
            if hold and not os.path.exists(_flag):
                with open(_flag + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(_flag + ".tmp", _flag)
        while hold:  # every shard writer stops at its next fault point, until killed
            time.sleep(1.0)
        _original(name)

    codecflow.tasks.core.faults.kill_point = kill_point
'''


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _committed(out: Path) -> dict[str, tuple[int, int, int, int]]:
    """Committed shards: name -> (marker's inode and mtime, shard's inode and mtime), in ns."""
    found = {}
    for marker in sorted((out / "shards").glob("*.commit.json")):
        name = marker.name.removesuffix(".commit.json")
        shard, mark = (out / "shards" / f"{name}.arrow").stat(), marker.stat()
        found[name] = (mark.st_ino, mark.st_mtime_ns, shard.st_ino, shard.st_mtime_ns)
    return found


def _wait_until_idle(live: LiveServer) -> None:
    """Let the runs other tests left (a triggered evaluation) finish: killing the worker would
    kill them too (any that starts meanwhile is set Crashed after the kill)."""

    def idle() -> bool | None:
        return True if not busy_flow_runs(live) else None

    try:
        poll("no flow runs due, pending or running on the server", idle, 240, every=3.0)
    except AssertionError as exc:
        exc.add_note(f"still busy: {[(r.name, r.state_name) for r in busy_flow_runs(live)]}")
        raise


def _start_paused_run(live: LiveServer, cfg: dict[str, Any], hook: Path, flag: Path) -> Any:
    """Start tokenize/tokenize through the API; its flow-run process gets the pause hook."""
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = {
        "PYTHONPATH": pythonpath,
        "CODECFLOW_TEST_PAUSE_AFTER_COMMIT": str(PAUSE_AFTER),
        "CODECFLOW_TEST_PAUSE_FLAG": str(flag),
    }
    with live.client() as client:
        deployment = client.read_deployment_by_name("tokenize/tokenize")
        return client.create_flow_run_from_deployment(
            deployment.id, parameters={"cfg": cfg}, job_variables={"env": env}
        )


def _rerun_via_ui(live: LiveServer, cfg: dict[str, Any], artifacts: Path) -> Any:
    """Deployments -> tokenize -> Run -> Custom run, the same parameters typed into the form."""
    from playwright.sync_api import expect

    run_name = f"ui-resume-{uuid.uuid4().hex[:8]}"
    with ui_page(live, artifacts) as page:
        open_custom_run(page, live, "tokenize")
        expect(form_field(page, "Out")).to_have_value("runs/demo/tokens/mu-law-256")
        typed = {
            "Manifest": cfg["manifest"],
            "Out": cfg["out"],
            "Shard Hours": str(cfg["shard_hours"]),
            "Max Tasks": str(cfg["max_tasks"]),
        }
        for label, value in typed.items():
            form_field(page, label).fill(value)
        for label, value in typed.items():  # still there: the form was not reset meanwhile
            expect(form_field(page, label)).to_have_value(value)
        flow_run_id = submit_run(page, run_name)
    run = flow_run_named(live, run_name)
    assert str(run.id) == flow_run_id
    return flow_run_when_final(live, run.id, timeout=240)


@pytest.mark.parametrize("rerun", ["api", "ui"])
def test_tokenize_resumes_after_the_worker_is_killed(
    live_server: LiveServer, tiny_manifest: Path, tmp_path: Path, rerun: str
) -> None:
    server = server_module()
    out = tmp_path / "tokens"
    cfg = {
        "manifest": str(tiny_manifest),
        "out": str(out),
        "shard_hours": SHARD_HOURS,
        "max_tasks": MAX_TASKS,
    }
    hook, flag = tmp_path / "hook", tmp_path / "paused.flag"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_HOOK)

    _wait_until_idle(live_server)
    first = _start_paused_run(live_server, cfg, hook, flag)
    try:

        def paused() -> int | None:
            if flag.is_file():
                return int(flag.read_text())
            with live_server.client() as client:
                state = client.read_flow_run(first.id).state
            assert state is None or not state.is_final(), f"the first run ended: {state!r}"
            return None

        flow_pid = poll(f"the first run to commit {PAUSE_AFTER} shards", paused, 180, every=0.5)
        flow_group = os.getpgid(flow_pid)
        killed = kill_worker(live_server)
    finally:
        if not processes.alive(server.read_pids(live_server.home).get("worker", -1)):
            restart_worker(live_server)  # the other tests of the session need a worker
    # The worker and the flow run it was running are gone, nothing of them is left.
    assert flow_group in killed, (flow_group, killed)
    assert not processes.alive(flow_pid)
    assert not any(processes.group_alive(group) for group in killed)
    with live_server.client() as client:
        # Nobody is left to report it: the server still has the run as Running.
        assert client.read_flow_run(first.id).state.is_running()
    crashed = crash_orphaned_runs(live_server, "its worker was killed by the test")
    assert first.id in [run.id for run in crashed]

    before = _committed(out)
    shards = set(pq.read_table(out / "plan.parquet", columns=["shard"])["shard"].to_pylist())
    assert len(shards) == 10, sorted(shards)
    assert PAUSE_AFTER <= len(before) < len(shards), sorted(before)
    assert not (out / "dataset.json").exists()

    if rerun == "api":
        second = live_server.run_deployment("tokenize/tokenize", {"cfg": cfg}, timeout=240)
    else:
        second = _rerun_via_ui(live_server, cfg, tmp_path / "screenshots")
    assert second.state is not None and second.state.is_completed(), second.state
    assert second.id != first.id
    # The same parameters (the UI's form sends every field, defaults included).
    assert TokenizeConfig.model_validate(second.parameters["cfg"]) == TokenizeConfig(**cfg)

    after = _committed(out)
    assert set(after) == shards
    # The shards committed before the kill were not written again: same files, same times.
    assert {name: after[name] for name in before} == before
    redone = set(after) - set(before)
    assert redone and all(after[n][1] > max(v[1] for v in before.values()) for n in redone)

    reference = tmp_path / "reference"
    settings = TokenizeSettings(shard_hours=SHARD_HOURS, max_tasks=MAX_TASKS)
    tokenize_manifest(tiny_manifest, reference, settings)
    resumed, uninterrupted = _files(out), _files(reference)
    assert resumed == uninterrupted
    assert "dataset.json" in resumed and sum(n.endswith(".arrow") for n in resumed) == 10
