"""The Prefect UI in a real browser: open the live server's UI, go to the `pipeline` deployment,
start a custom run from its parameter form with the run folder moved into a temporary folder
(and the model and evaluation made tiny), and check that the worker completes it there, that it
led to exactly one evaluation (its own: the evaluate-on-train-lm trigger does not fire for its
train-lm sub-flow), and that the train-lm sub-flow's log holds its progress line.

The pipeline's defaults (prefect.yaml) run the demo into runs/demo of the checkout; this run
writes only below tmp_path. Its inputs stay the defaults' relative paths (the embedded corpus
and the prompt under data/), which resolve because the worker runs every flow in the checkout
(prefect.yaml's pull step).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from live_server import (
    LiveServer,
    flow_run_named,
    flow_run_when_final,
    form_field,
    open_custom_run,
    poll,
    submit_run,
    ui_page,
)

#: The form fields changed for the run: label -> value typed ("Out" is set to the run folder).
#: The rest make the run take seconds instead of minutes on a 2-core CPU.
TINY = {
    "N Layer": "2",
    "N Head": "2",
    "N Embd": "32",
    "Block Size": "64",
    "Batch Size": "8",
    "Steps": "10",
    "Eval Batches": "2",
    "Seconds": "0.02",
    "Regenerate Seconds": "0.02",
}


def test_custom_pipeline_run_from_the_ui(live_server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    out = tmp_path / "ui-run"  # the runs index goes to its parent: tmp_path
    run_name = f"ui-custom-run-{uuid.uuid4().hex[:8]}"
    with ui_page(live_server, tmp_path / "screenshots") as page:
        open_custom_run(page, live_server, "pipeline")
        expect(form_field(page, "Out")).to_have_value("runs/demo")  # the deployment's default
        typed = {"Out": str(out), **TINY}
        for label, value in typed.items():
            form_field(page, label).fill(value)
        metrics = form_field(page, "Speech Metrics")  # a switch; on by default
        expect(metrics).to_have_attribute("aria-checked", "true")
        metrics.click()
        for label, value in typed.items():  # still there: the form was not reset meanwhile
            expect(form_field(page, label)).to_have_value(value)
        expect(metrics).to_have_attribute("aria-checked", "false")
        flow_run_id = submit_run(page, run_name)

    run = flow_run_named(live_server, run_name)
    assert str(run.id) == flow_run_id
    cfg = run.parameters["cfg"]
    # What was typed into the form, as the server received it.
    assert cfg["out"] == str(out)
    assert cfg["train_lm"]["steps"] == 10 and cfg["train_lm"]["n_embd"] == 32
    assert cfg["evaluate"]["seconds"] == 0.02 and cfg["evaluate"]["speech_metrics"] is False
    # The rest kept the deployment's defaults: relative inputs in the checkout.
    assert cfg["acquire"]["source"] == "data/librilight-tiny/librilight-tiny.tar"
    assert cfg["tokenize"]["tokenizer"] == "mu-law-256"

    done = flow_run_when_final(live_server, run.id, timeout=360)
    assert done.state.is_completed(), f"{done.state.name}: {done.state.message}"
    # Every stage wrote below the temporary run folder.
    assert (out / "acquire" / "download" / "librilight-tiny.tar").is_file()
    assert (out / "acquire" / "manifest" / "segments.parquet").is_file()
    assert (out / "tokens" / "mu-law-256" / "dataset.json").is_file()
    assert (out / "lm" / "checkpoint" / "model.safetensors").is_file()
    config = json.loads((out / "lm" / "checkpoint" / "config.json").read_text())
    assert config["gpt"]["n_embd"] == 32, config["gpt"]
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["checkpoint"] == str(out / "lm" / "checkpoint")
    assert summary["checkpoint_step"] == 10
    assert summary["generated_seconds"] == 0.02
    assert (out / "report" / "index.html").is_file()
    assert (tmp_path / "index.html").is_file()  # the runs index, beside the run folder

    _one_evaluation_and_a_progress_line(live_server, out)


def _flow_runs_of(live: LiveServer, flow: str, under: Path) -> list[Any]:
    """The runs of the flow named `flow` whose parameters name a path below `under`."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with live.client() as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
    return [r for r in runs if str(under) in json.dumps(r.parameters)]


def _completed_event_related(live: LiveServer, flow_run_id: Any) -> list[dict[str, str]] | None:
    """The related resources of the flow run's prefect.flow-run.Completed event (None: not yet
    recorded; the server writes events a moment after the state)."""
    import httpx

    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.Completed"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        },
        "limit": 10,
    }
    events = httpx.post(f"{live.api_url}/events/filter", json=body, timeout=30).json()["events"]
    return events[0]["related"] if events else None


def _one_evaluation_and_a_progress_line(live: LiveServer, out: Path) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    (trained,) = _flow_runs_of(live, "train-lm", out)
    related = poll(
        "the train-lm sub-flow's Completed event",
        lambda: _completed_event_related(live, trained.id),
        60,
    )
    roles = {r["prefect.resource.role"]: r.get("prefect.resource.name") for r in related}
    print(f"train-lm sub-flow's Completed event relates to: {related}")
    # What the trigger's match_related tells apart: the flow is train-lm, and a sub-flow relates
    # to the pipeline's task run that started it, not to a deployment.
    assert roles.get("flow") == "train-lm" and "task-run" in roles, related
    assert "deployment" not in roles, related
    # The trigger fires within seconds of an event (tests/ops/test_server.py sees it fire for a
    # train-lm deployment run): give it 30 s after the sub-flow completed, then count.
    assert trained.end_time is not None
    time.sleep(max(0.0, 30.0 - (datetime.now(UTC) - trained.end_time).total_seconds()))
    evaluations = _flow_runs_of(live, "evaluate", out)
    assert [r.parameters["cfg"]["out"] for r in evaluations] == [str(out / "report")], [
        (r.name, r.parameters) for r in evaluations
    ]
    # The training's progress line (first and last step of 10: seconds under the 30 s cadence),
    # in the sub-flow's log in the server.
    with live.client() as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[trained.id]))
        )
    lines = [log.message for log in logs if log.message.startswith("train-lm step ")]
    last = re.compile(
        r"^train-lm step 10/10 \(100%\): loss \d+\.\d{4}, [\d,.]+ tokens/s, ETA 0:00$"
    )
    assert len(lines) == 2 and last.match(lines[-1]), lines
