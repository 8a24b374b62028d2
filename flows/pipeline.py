"""The pipeline flow: acquire -> tokenize -> train-lm -> evaluate, under one run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from flows._common import dataset_folder_name
from flows.acquire import run_acquire
from flows.evaluate import evaluate_flow
from flows.tokenize import run_tokenize
from flows.train_lm import train_lm_flow
from schemas.configs import (
    AcquireConfig,
    EvaluateConfig,
    PipelineConfig,
    TokenizeConfig,
    TrainLMConfig,
)

__all__ = ["PipelineRecord", "pipeline_flow"]


@dataclass(frozen=True)
class PipelineRecord:
    """The outputs of every stage."""

    manifest: Path
    dataset: Path
    checkpoint: Path
    report: Path


@flow(name="pipeline")
def pipeline_flow(cfg: PipelineConfig = PipelineConfig()) -> PipelineRecord:  # noqa: B008
    """The whole DAG; each stage is its own sub-flow and writes below `cfg.out`."""
    out = Path(cfg.out)
    acquired = run_acquire(AcquireConfig(**cfg.acquire.model_dump(), root=str(out / "acquire")))
    dataset = run_tokenize(
        TokenizeConfig(
            **cfg.tokenize.model_dump(),
            manifest=acquired.path,
            out=str(out / "tokens" / dataset_folder_name(cfg.tokenize.tokenizer)),
        )
    )
    checkpoint = train_lm_flow(
        TrainLMConfig(**cfg.train_lm.model_dump(), dataset=str(dataset.path), out=str(out / "lm"))
    )
    report = evaluate_flow(
        EvaluateConfig(
            **cfg.evaluate.model_dump(),
            checkpoint=str(checkpoint.path),
            dataset=str(dataset.path),
            out=str(out / "report"),
        )
    )
    return PipelineRecord(
        manifest=Path(acquired.path),
        dataset=dataset.path,
        checkpoint=checkpoint.path,
        report=report.path,
    )
