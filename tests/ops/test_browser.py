"""The Prefect UI in a real browser: open the live server's UI, go to the `pipeline` deployment,
check its form (stages titled by their key, list defaults shown, tokenizer choices), start a
custom run from it with the run folder moved into a temporary folder (and the model and
evaluation made tiny), and check that the worker completes it there, that it led to exactly one
evaluation (its own: the evaluate-on-train-lm trigger does not fire for its train-lm sub-flow),
that the train-lm sub-flow's log holds its progress line, and that the report opens from the
run's Artifacts tab through the runs folder's file server.

The pipeline's defaults (prefect.yaml) run the demo into runs/demo of the checkout; this run
writes only below the live server's temporary runs folder (which its file server serves, as
`make server` serves runs/). Its inputs stay the defaults' relative paths (the embedded corpus
and the prompt under data/), which resolve because the worker runs every flow in the checkout
(prefect.yaml's pull step).

On a failure in the browser, `ui_page` keeps `failure.png`, `failure.html` and `failure.log` in
the test's `tmp_path/screenshots/` (the form and the run) or `tmp_path/screenshots-report/`
(the Artifacts tab and the report), and prints their paths.
"""

from __future__ import annotations

import json
import os
import re
import stat
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
    form_group,
    open_artifact,
    open_custom_run,
    poll,
    submit_run,
    ui_page,
)

from codecflow.schemas.tokenizers import KNOWN_NAMES
from codecflow.tasks.core.storage import default_mode

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


#: The pipeline form's sections, in order, each titled by its key (YAML's and --set's name).
SECTIONS = ["acquire", "train_codec", "tokenize", "train_lm", "evaluate"]


def _check_the_form(page: Any) -> None:
    """The form as issue 15 asked: stages titled by their key with descriptions (not
    "AcquireSettings (Optional)" nor "Field (Optional)"), in the pipeline's order after `out`,
    defaults shown that the deployment's parameters leave out (a list among them), and the
    known tokenizer names offered beside the typed forms."""
    from playwright.sync_api import expect

    expect(form_group(page, "evaluate")).to_be_visible()  # the whole form is rendered
    labels = page.locator("label").all_inner_texts()
    shown = [t.removesuffix(" (Optional)") for t in labels if t.endswith(" (Optional)")]
    assert [t for t in shown if t in ["Out", *SECTIONS]] == ["Out", *SECTIONS], shown
    for unwanted in ("AcquireSettings", "TokenizeSettings", "Field (Optional)"):
        expect(page.get_by_text(unwanted, exact=False)).to_have_count(0)
    expect(form_group(page, "acquire")).to_contain_text("Stage 1: fetch, verify, extract")
    expect(form_group(page, "train_codec").get_by_role("tab")).to_have_text(
        ["train a codec", "no codec stage"]
    )
    # Defaults of fields prefect.yaml does not set: the lists too.
    expect(form_group(page, "Regenerate Levels").locator("input")).to_have_value("1")
    expect(form_group(page, "Formats").get_by_text("arrow", exact=True)).to_be_visible()
    expect(form_field(page, "Checkpoint Every").first).to_have_value("100")
    tokenizer = form_group(page, "Tokenizer")
    expect(tokenizer.get_by_role("tab", name="known name")).to_have_attribute(
        "aria-selected", "true"
    )
    expect(tokenizer.get_by_role("tab", name="codec:CHECKPOINT[@LEVELS] or other")).to_be_visible()
    expect(tokenizer.get_by_role("button", name="Select known name")).to_have_text("mu-law-256")
    tokenizer.get_by_role("button", name="Select known name").click()  # the choices
    options = page.get_by_role("option")
    expect(options.filter(has_text="mimi_8_rvq_nosemantic")).to_have_count(1)
    expect(options).to_have_count(len(KNOWN_NAMES))
    page.keyboard.press("Escape")  # closed, the value unchanged
    expect(tokenizer.get_by_role("button", name="Select known name")).to_have_text("mu-law-256")


def test_custom_pipeline_run_from_the_ui(live_server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Below the served runs folder; the runs index goes to the run's parent.
    runs = live_server.files_root / f"browser-{uuid.uuid4().hex[:8]}"
    out = runs / "ui-run"
    run_name = f"ui-custom-run-{uuid.uuid4().hex[:8]}"
    with ui_page(live_server, tmp_path / "screenshots") as page:
        open_custom_run(page, live_server, "pipeline")
        expect(form_field(page, "Out")).to_have_value("runs/demo")  # the deployment's default
        _check_the_form(page)
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
    # The defaults the form showed are what it sent.
    assert cfg["tokenize"]["formats"] == ["arrow"]
    assert cfg["evaluate"]["regenerate_levels"] == [1]

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
    assert (runs / "index.html").is_file()  # the runs index, beside the run folder
    _outputs_are_readable_by_others(out)

    _one_evaluation_and_a_progress_line(live_server, out)
    _the_report_opens_from_the_artifacts_tab(live_server, flow_run_id, out, tmp_path)


def _outputs_are_readable_by_others(out: Path) -> None:
    """Report and checkpoint folders get the umask's modes (0755 and 0644 under 022), not
    mkdtemp's private 0700: a colleague, or a file server run by another user, can read them."""
    for top in (out / "report", out / "lm" / "checkpoint"):
        for path in [top, *top.rglob("*")]:
            want = default_mode(is_dir=path.is_dir())
            assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(want))
    assert default_mode(is_dir=True) == 0o777 & ~_umask()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _the_report_opens_from_the_artifacts_tab(
    live: LiveServer, flow_run_id: str, out: Path, tmp_path: Path
) -> None:
    """The pipeline run's Artifacts tab -> pipeline-outputs -> "report": the report itself, its
    audio included, served by the runs folder's file server."""
    from playwright.sync_api import expect

    report_url = f"{live.files_url}/{out.relative_to(live.files_root)}/report/index.html"
    with ui_page(live, tmp_path / "screenshots-report") as page:
        open_artifact(page, live, flow_run_id, "pipeline-outputs")
        expect(page.get_by_role("link", name="runs index", exact=True)).to_have_attribute(
            "href", f"{live.files_url}/{out.parent.relative_to(live.files_root)}/index.html"
        )
        page.get_by_role("link", name="report", exact=True).click()
        expect(page).to_have_url(report_url)
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "codecflow evaluation: mu-law-256 LM"
        )
        audio = page.locator("audio").first.get_attribute("src")
        assert audio is not None
        answer = page.request.get(f"{report_url.rsplit('/', 1)[0]}/{audio}")
        assert answer.ok and answer.headers["content-type"].startswith("audio/"), answer.status
    # The evaluate sub-flow's own link artifact, as the API holds it: an http:// URL.
    (evaluation,) = _flow_runs_of(live, "evaluate", out)
    with live.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[evaluation.id])
            )
        )
    links = {
        a.key: a.data for a in artifacts if a.key in ("evaluation-report", "evaluation-summary")
    }
    assert links["evaluation-report"] == f"[open the report]({report_url})", links
    assert f"[open the report]({report_url})" in links["evaluation-summary"]
    assert "file://" not in json.dumps(links)


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
