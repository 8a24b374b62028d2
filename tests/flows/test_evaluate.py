"""The evaluate flow under a real Prefect server, as the scheduled deployment runs it: the newest
checkpoint of a training run, a report named after it, artifacts, the runs index, and a second
run that skips the checkpoint it has already evaluated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import PROMPT
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from codecflow.flows.evaluate import evaluate_flow
from codecflow.schemas.configs import EvaluateConfig, TrainLMSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.links import FILES_ROOT_ENV, FILES_URL_ENV
from codecflow.tasks.evaluate.checkpoint_facts import checkpoint_id
from codecflow.tasks.train.lm import train_lm


def _artifacts() -> dict[str, str]:
    """The evaluation artifacts of the session's server: key -> data (the newest of each)."""
    keys = [
        "evaluation-report",
        "evaluation-summary",
        "evaluation-samples",
        "evaluation-runs-index",
    ]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    return {a.key: str(a.data) for a in sorted(found, key=lambda a: a.created) if a.key}


def test_scheduled_evaluation_of_the_newest_checkpoint_skips_what_it_evaluated(
    prefect_api_url: str,
    tiny_checkpoint: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (FILES_URL_ENV, FILES_ROOT_ENV):  # as without `make server`
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "lm"
    shutil.copytree(tiny_checkpoint, run / "checkpoint")  # a finished train-lm run folder
    cfg = EvaluateConfig(
        train_run=str(run),
        dataset=str(tiny_dataset),
        out=str(tmp_path / "evaluations"),
        index=str(tmp_path),
        prompt=str(PROMPT),
        seconds=0.02,
        regenerate_seconds=0.02,
        speech_metrics=False,
        device="cpu",
    )
    first = evaluate_flow(cfg)
    assert first.path == tmp_path / "evaluations" / checkpoint_id(run / "checkpoint")
    written = first.summary.stat().st_mtime_ns

    second = evaluate_flow(cfg)  # the schedule fires again: same checkpoint, nothing to do
    assert second.path == first.path
    assert second.summary.stat().st_mtime_ns == written

    index = (tmp_path / "index.html").read_text()
    assert f"evaluations/{first.path.name}/index.html" in index
    artifacts = _artifacts()
    assert set(artifacts) == {
        "evaluation-report",
        "evaluation-summary",
        "evaluation-samples",
        "evaluation-runs-index",
    }
    # No file server here (`make server` runs one): the report is named by its path, not by a
    # file:// link, which the Prefect UI cannot open.
    page = first.path / "index.html"
    assert artifacts["evaluation-report"].startswith(f"open the report: `{page}` (a local file")
    assert f"open the report: `{page}`" in artifacts["evaluation-summary"]
    assert artifacts["evaluation-runs-index"].startswith(
        f"open the runs index: `{tmp_path / 'index.html'}`"
    )
    assert "file://" not in "".join(artifacts.values())


def test_a_run_still_training_is_evaluated_only_when_asked(
    prefect_api_url: str,
    tiny_dataset: Path,
    tiny_lm_settings: TrainLMSettings,
    tmp_path: Path,
) -> None:
    """The scheduled deployment's default waits for the final checkpoint: while the run trains
    (only resumable checkpoints), nothing is evaluated or written; `while_training` evaluates
    its newest checkpoint, and the final one once it exists."""
    run = tmp_path / "lm"
    settings = tiny_lm_settings.model_copy(update={"steps": 12, "checkpoint_every": 5})
    train_lm(tiny_dataset, run, settings)
    final = run / "checkpoint"
    held = tmp_path / "final"
    final.rename(held)  # as if training were still running: step-000005 and step-000010 only
    cfg = EvaluateConfig(
        train_run=str(run),
        dataset=str(tiny_dataset),
        out=str(tmp_path / "evaluations"),
        prompt=str(PROMPT),
        seconds=0.02,
        regenerate_seconds=0.02,
        speech_metrics=False,
        device="cpu",
    )
    assert evaluate_flow(cfg) is None
    assert not (tmp_path / "evaluations").exists()
    mid = evaluate_flow(cfg.model_copy(update={"while_training": True}))
    assert mid is not None and mid.path.name.startswith("step-000010-")
    held.rename(final)  # training has ended
    done = evaluate_flow(cfg)
    assert done is not None and done.path.name == checkpoint_id(final)
    assert done.path != mid.path
    with pytest.raises(CodecflowError, match="is not a folder"):
        evaluate_flow(cfg.model_copy(update={"train_run": str(tmp_path / "no-such-run")}))
