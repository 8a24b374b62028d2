"""The pipeline flow: acquire -> [train-codec] -> tokenize -> train-lm -> evaluate, under one
run folder.

With a `train_codec` section, the post's RVQ codec is trained on the acquired manifest under
`<out>/codec` and the tokenizer `codec:trained[@<levels>]` becomes
`codec:<out>/codec/checkpoint[@<levels>]` (`resolve_tokenizer`): configs name the codec the
pipeline trains, never its derived path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from codecflow.flows._common import dataset_folder_name, not_served_note
from codecflow.flows.acquire import run_acquire
from codecflow.flows.evaluate import evaluate_flow
from codecflow.flows.tokenize import run_tokenize
from codecflow.flows.train_codec import train_codec_flow
from codecflow.flows.train_lm import train_lm_flow
from codecflow.schemas.configs import (
    AcquireConfig,
    EvaluateConfig,
    PipelineConfig,
    TokenizeConfig,
    TrainCodecConfig,
    TrainLMConfig,
)
from codecflow.schemas.tokenizers import parse_tokenizer_name
from codecflow.tasks.core.links import file_url, markdown_link
from codecflow.tasks.core.threads import apply_thread_policy

__all__ = [
    "PipelineRecord",
    "outputs_markdown",
    "pipeline_flow",
    "resolve_tokenizer",
    "train_lm_config",
]


@dataclass(frozen=True)
class PipelineRecord:
    """The outputs of every stage; `codec` is the trained codec's checkpoint (None: no codec
    stage)."""

    manifest: Path
    dataset: Path
    checkpoint: Path
    report: Path
    codec: Path | None = None


def resolve_tokenizer(tokenizer: str, codec_checkpoint: Path | None) -> str:
    """The tokenizer name to tokenize with: `codec:trained[@<levels>]` -> `codec:<checkpoint>
    [@<levels>]` for the codec the pipeline trained; any other name as it is."""
    if not PipelineConfig.names_trained_codec(tokenizer):
        return tokenizer
    # PipelineConfig's validator guarantees a train_codec stage whenever the name refers to it.
    assert codec_checkpoint is not None, f"{tokenizer!r} without a trained codec"
    parsed = parse_tokenizer_name(tokenizer)
    return str(dataclasses.replace(parsed, checkpoint=str(codec_checkpoint)))


def train_lm_config(cfg: PipelineConfig, dataset: Path | str) -> TrainLMConfig:
    """The pipeline's train-lm stage: its `train_lm` section on `dataset`, into `<out>/lm`.

    Only the fields the section sets are passed on (a `preset` must not meet the default model
    shape), so the stage's settings are exactly the user's, whatever the number of ranks.
    """
    lm_settings = cfg.train_lm.model_dump(exclude_unset=True)
    return TrainLMConfig(**lm_settings, dataset=str(dataset), out=str(Path(cfg.out) / "lm"))


def outputs_markdown(record: PipelineRecord, index: Path) -> str:
    """Every output of a pipeline run as links (or paths where no file server serves them): what
    the run's Artifacts tab in the Prefect UI leads to, so that one click opens the report."""
    outputs = [
        (record.report / "index.html", "report"),
        (index, "runs index"),
        (record.checkpoint, "LM checkpoint"),
        (record.dataset, "token dataset"),
        (Path(record.manifest).parent, "segment manifest"),
    ]
    if record.codec is not None:
        outputs.append((record.codec, "codec checkpoint"))
    lines = [f"- {markdown_link(path, text)}" for path, text in outputs if path.exists()]
    served = all(file_url(path) is not None for path, _ in outputs if path.exists())
    note = "" if served else f"\n\n{not_served_note()}"
    return "### pipeline outputs\n\n" + "\n".join(lines) + note


@flow(name="pipeline")
def pipeline_flow(cfg: PipelineConfig = PipelineConfig()) -> PipelineRecord:  # noqa: B008
    """The whole DAG; each stage is its own sub-flow and writes below `cfg.out`."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    out = Path(cfg.out)
    acquired = run_acquire(AcquireConfig(**cfg.acquire.model_dump(), root=str(out / "acquire")))
    codec: Path | None = None
    if cfg.train_codec is not None:
        codec = train_codec_flow(
            TrainCodecConfig(
                **cfg.train_codec.model_dump(), manifest=acquired.path, out=str(out / "codec")
            )
        ).path
    tokenizer = resolve_tokenizer(cfg.tokenize.tokenizer, codec)
    dataset = run_tokenize(
        TokenizeConfig(
            **{**cfg.tokenize.model_dump(), "tokenizer": tokenizer},
            manifest=acquired.path,
            out=str(out / "tokens" / dataset_folder_name(tokenizer)),
        )
    )
    checkpoint = train_lm_flow(train_lm_config(cfg, dataset.path))
    report = evaluate_flow(
        EvaluateConfig(
            **cfg.evaluate.model_dump(),
            checkpoint=str(checkpoint.path),
            dataset=str(dataset.path),
            out=str(out / "report"),
            # The folder holding this run and its siblings (runs/): their evaluations side by
            # side in its index.html.
            index=str(out.resolve().parent),
        )
    )
    assert report is not None, "a checkpoint (not a train_run) is always evaluated"
    record = PipelineRecord(
        manifest=Path(acquired.path),
        dataset=Path(dataset.path),  # the pipeline's out is a local folder
        checkpoint=checkpoint.path,
        report=report.path,
        codec=codec,
    )
    index = out.resolve().parent / "index.html"
    create_markdown_artifact(
        key="pipeline-outputs",
        markdown=outputs_markdown(record, index),
        description="Links to the report, the runs index, the checkpoint and the data",
    )
    return record
