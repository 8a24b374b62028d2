"""The evaluate flow: prompt the LM with speech, sample continuations, write the report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact

from flows._common import unless_committed
from schemas.configs import EvaluateConfig, EvaluateSettings
from tasks.evaluate import ReportRecord, is_report_committed
from tasks.wrappers import evaluate_task

__all__ = ["evaluate_flow"]


@flow(name="evaluate")
def evaluate_flow(cfg: EvaluateConfig = EvaluateConfig()) -> ReportRecord:  # noqa: B008
    """Continue the prompt with a KV cache, decode to WAV, write index.html and summary.json."""
    out = Path(cfg.out)
    settings = EvaluateSettings(**cfg.model_dump(include=set(EvaluateSettings.model_fields)))
    record = unless_committed(evaluate_task, is_report_committed(out))(
        Path(cfg.checkpoint), Path(cfg.dataset), out, settings
    )
    create_link_artifact(
        key="evaluation-report",
        link=(record.path / "index.html").resolve().as_uri(),
        description="Evaluation report: audio players, spectrogram, metrics",
    )
    return record
