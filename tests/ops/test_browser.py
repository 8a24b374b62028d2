"""The Prefect UI in a real browser: open the live server's UI, go to the `pipeline` deployment,
start a custom run from its parameter form with the run folder moved into a temporary folder
(and the model and evaluation made tiny), and check that the worker completes it there.

The pipeline's defaults (prefect.yaml) run the demo into runs/demo of the checkout; this run
writes only below tmp_path. Its inputs stay the defaults' relative paths (the embedded corpus
and the prompt under data/), which resolve because the worker runs every flow in the checkout
(prefect.yaml's pull step).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from live_server import (
    LiveServer,
    flow_run_named,
    flow_run_when_final,
    form_field,
    open_custom_run,
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
