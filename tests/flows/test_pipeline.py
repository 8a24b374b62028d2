"""The whole DAG under a real Prefect server: first run computes, second run is all cache hits,
and a deleted output is recomputed instead of being served stale from the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import PROMPT, TINY_TAR, FlowRunWindow, tiny_tar_md5

from codecflow.flows.pipeline import pipeline_flow
from codecflow.schemas.configs import (
    AcquireSettings,
    EvaluateSettings,
    PipelineConfig,
    TrainLMSettings,
)

STAGE_TASKS = {
    "fetch",
    "extract",
    "list-books",
    "probe-book",
    "plan-segments",
    "segment-manifest",
    "plan-tokens",
    "write-shards",
    "finalize-dataset",
    "train-lm",
    "evaluate",
}
# Not cached on purpose: the listing of the extracted files is how a changed file is noticed.
UNCACHED = {"list-books"}


def _task_states(window: FlowRunWindow) -> dict[str, str]:
    states = window.wait_for(STAGE_TASKS)
    return {name: state for name, state in states if name in STAGE_TASKS}


def test_pipeline_then_cache_hits_then_recompute_of_deleted_output(
    prefect_api_url: str, tmp_path: Path
) -> None:
    cfg = PipelineConfig(
        out=str(tmp_path / "run"),
        acquire=AcquireSettings(
            source=TINY_TAR.as_uri(), md5=tiny_tar_md5(), target_len_sec=5.0, val_fraction=0.2
        ),
        train_lm=TrainLMSettings(
            n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=4, steps=30, device="cpu"
        ),
        evaluate=EvaluateSettings(prompt=str(PROMPT), seconds=0.01, device="cpu"),
    )
    first = pipeline_flow(cfg)
    run = tmp_path / "run"
    assert first.manifest == run / "acquire" / "manifest" / "segments.parquet"
    assert first.dataset == run / "tokens" / "mu-law-256"
    assert first.checkpoint == run / "lm" / "checkpoint"
    assert first.report == run / "report"
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert summary["n_segments"] > 0 and summary["dataset_bytes"] > 0

    window = FlowRunWindow()
    assert pipeline_flow(cfg) == first
    states = _task_states(window)
    assert set(states) == STAGE_TASKS
    assert {states[t] for t in STAGE_TASKS - UNCACHED} == {"Cached"}, states

    shutil.rmtree(run / "report")
    window = FlowRunWindow()
    pipeline_flow(cfg)
    states = _task_states(window)
    assert states["evaluate"] == "Completed"
    assert {states[t] for t in STAGE_TASKS - {"evaluate"} - UNCACHED} == {"Cached"}
    assert (run / "report" / "summary.json").is_file()
