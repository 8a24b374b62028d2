"""`make server` for real: a Prefect server with its own database, the work pool, the `gpu` limit,
a worker and every deployment; the schedule, the trigger and a failing run, through the worker."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import REPO
from live_server import LiveServer, poll, server_module
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from codecflow.cli import server_command
from codecflow.schemas.configs import MODEL_SHAPE_FIELDS as SHAPE
from codecflow.schemas.configs import TrainLMConfig, TrainLMSettings


def _expected_deployments() -> dict[str, dict[str, Any]]:
    return {
        d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }


def _flow_runs(live: LiveServer, deployment: str, *states: StateType) -> list[Any]:
    with live.client() as client:
        found = client.read_deployment_by_name(deployment)
        return list(
            client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))
                )
                if states
                else None,
            )
        )


def test_make_server_deploys_everything(live_server: LiveServer) -> None:
    expected = _expected_deployments()
    with live_server.client() as client:
        deployments = {d.name: d for d in client.read_deployments()}
        pool = client.read_work_pool("codecflow-local")
        gpu = client.read_global_concurrency_limit_by_name("gpu")
        workers = client.read_workers_for_work_pool("codecflow-local")
    assert set(deployments) == set(expected)
    assert pool.type == "process"
    assert [w.name for w in workers] and all(w.name.startswith("codecflow-local") for w in workers)
    assert (gpu.limit, gpu.active) == (1, True)
    for name in ("train-lm", "tokenize", "pipeline"):  # the defaults as committed
        assert deployments[name].parameters == expected[name]["parameters"]
    assert deployments["train-lm"].job_variables == {"env": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}}
    assert not deployments["tokenize"].job_variables
    # prefect.yaml's pull step `{{ $CODECFLOW_CHECKOUT }}`, rendered at deploy time: the worker
    # runs every flow in this checkout.
    for deployment in deployments.values():
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
    pids = json.loads((live_server.home / "pids.json").read_text())
    assert pids["ui_url"] == live_server.ui_url
    assert Path(pids["server_log"]).is_file() and Path(pids["worker_log"]).is_file()
    # The server keeps its database in its own PREFECT_HOME.
    assert (live_server.home / "prefect" / "prefect.db").is_file()
    # The runs folder's file server, and the worker (so every flow run) knows where it is.
    assert pids["files_url"] == live_server.files_url and Path(pids["files_log"]).is_file()
    assert httpx.get(f"{live_server.files_url}/", timeout=10).status_code == 200
    environ = Path(f"/proc/{pids['worker']}/environ").read_bytes().split(b"\0")
    assert f"CODECFLOW_FILES_URL={live_server.files_url}".encode() in environ
    assert f"CODECFLOW_FILES_ROOT={live_server.files_root}".encode() in environ


def test_start_again_says_it_runs_and_starts_nothing(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = server_module()
    before = server.read_pids(live_server.home)
    port = live_server.ui_url.rsplit(":", 1)[1]
    assert server_command.main(["start", "--home", str(live_server.home), "--port", port]) == 0
    assert "already running" in capsys.readouterr().out
    assert server.read_pids(live_server.home) == before


def test_the_schedule_ships_paused_and_runs_once_resumed(live_server: LiveServer) -> None:
    """`make server` deploys the half-hourly evaluation paused: no run is scheduled. The
    command the docs give switches it on; then runs are scheduled on the half hours."""
    import subprocess
    import sys

    deployment = "evaluate/evaluate-scheduled"
    with live_server.client() as client:
        (schedule,) = client.read_deployment_by_name(deployment).schedules
    assert schedule.active is False
    assert _flow_runs(live_server, deployment, StateType.SCHEDULED) == []
    now = datetime.now(UTC)
    prefect = [str(Path(sys.executable).parent / "prefect"), "deployment", "schedule"]
    env = {**os.environ, "PREFECT_API_URL": live_server.api_url, "COLUMNS": "400"}
    listed = subprocess.run(
        [*prefect, "ls", deployment], env=env, capture_output=True, text=True, timeout=120
    )
    assert str(schedule.id) in listed.stdout, listed.stdout + listed.stderr
    resumed = subprocess.run(
        [*prefect, "resume", deployment, str(schedule.id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    def scheduled_in_the_future() -> list[Any] | None:
        runs = _flow_runs(live_server, "evaluate/evaluate-scheduled", StateType.SCHEDULED)
        future = [r for r in runs if r.expected_start_time and r.expected_start_time > now]
        return future or None

    runs = poll("scheduled runs of evaluate/evaluate-scheduled", scheduled_in_the_future, 60)
    assert all(r.expected_start_time.minute in (0, 30) for r in runs)


def test_trigger_evaluates_after_train_lm_completes(
    live_server: LiveServer,
    tiny_dataset: Path,
    tiny_lm_settings: TrainLMSettings,
    tmp_path: Path,
) -> None:
    out = tmp_path / "lm"
    # Every field, as the UI's form submits them: a preset beside the default model shape.
    settings = tiny_lm_settings.model_dump(exclude_unset=True, exclude=set(SHAPE))
    cfg = TrainLMConfig(
        preset="tiny", dataset=str(tiny_dataset), out=str(out), **settings
    ).model_dump(mode="json")
    assert cfg["preset"] == "tiny" and set(SHAPE) <= set(cfg)
    trained = live_server.run_deployment("train-lm/train-lm", {"cfg": cfg}, timeout=240)
    assert trained.state is not None and trained.state.is_completed(), trained.state
    assert (out / "checkpoint" / "model.safetensors").is_file()

    def triggered_run() -> Any | None:
        for run in _flow_runs(live_server, "evaluate/evaluate-on-train-lm"):
            if run.parameters.get("cfg", {}).get("train_run") == str(out):
                return run
        return None

    run = poll(
        "a flow run of evaluate/evaluate-on-train-lm for this train-lm run", triggered_run, 180
    )
    # The templates rendered from the completed run's parameters.
    assert run.parameters["cfg"]["dataset"] == str(tiny_dataset)
    assert run.parameters["cfg"]["out"] == f"{out}/evaluations"

    def finished() -> Any | None:
        with live_server.client() as client:
            current = client.read_flow_run(run.id)
        return current if current.state is not None and current.state.is_final() else None

    done = poll(f"flow run {run.name} to finish", finished, 240)
    assert done.state.is_completed(), f"{done.state.name}: {done.state.message}"
    (summary,) = (out / "evaluations").glob("step-*/summary.json")
    assert json.loads(summary.read_text())
    assert (live_server.index / "index.html").is_file()


def test_bad_input_fails_with_a_clear_message(live_server: LiveServer, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "segments.parquet"
    cfg = {"manifest": str(missing), "out": str(tmp_path / "tokens")}
    run = live_server.run_deployment("tokenize/tokenize", {"cfg": cfg}, timeout=180)
    assert run.state is not None and run.state.is_failed(), run.state
    message = run.state.message or ""
    assert f"segment manifest not found: {missing}" in message
    assert "\n" not in message.strip()
