"""The evaluate flow: prompt the LM with speech, sample continuations, regenerate a recording
from its first levels, measure, and publish the report (files and Prefect artifacts).

With `train_run` set it evaluates the final checkpoint of a training run (its newest
mid-training one with `while_training`; nothing while it trains without), under a folder named
after that checkpoint, and skips a checkpoint already evaluated: what the scheduled and the
triggered deployments in prefect.yaml run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from codecflow.flows._common import publish_link, unless_committed
from codecflow.schemas.configs import EvaluateConfig, EvaluateSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.links import markdown_link
from codecflow.tasks.core.storage import location
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.data.checkpoints import final_checkpoint, newest_checkpoint
from codecflow.tasks.data.records import EvaluationSummary
from codecflow.tasks.evaluate import report, runs_index
from codecflow.tasks.evaluate.checkpoint_facts import checkpoint_id
from codecflow.tasks.evaluate.lm import ReportRecord, is_report_committed
from codecflow.tasks.prefect.wrappers import evaluate_task

__all__ = ["evaluate_flow"]


@flow(name="evaluate")
def evaluate_flow(cfg: EvaluateConfig = EvaluateConfig()) -> ReportRecord | None:  # noqa: B008
    """Continue the prompt with a KV cache, regenerate from fixed levels, write the report.

    None when `train_run` still trains and `while_training` is off: nothing was evaluated."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    logger = get_run_logger()
    if cfg.train_run:
        run = Path(cfg.train_run)
        final = final_checkpoint(run)
        if final is None and not cfg.while_training:
            logger.info(
                "train-lm run %s has no final checkpoint yet (still training): nothing to "
                "evaluate; while_training: true evaluates its newest checkpoint now",
                run,
            )
            return None
        checkpoint = final or newest_checkpoint(run)
        out = Path(cfg.out) / checkpoint_id(checkpoint)
        if is_report_committed(out):
            logger.info("checkpoint %s is already evaluated in %s: skipped", checkpoint, out)
    else:
        checkpoint, out = Path(cfg.checkpoint), Path(cfg.out)
    settings = EvaluateSettings(**cfg.model_dump(include=set(EvaluateSettings.model_fields)))
    record = unless_committed(evaluate_task, is_report_committed(out))(
        checkpoint, location(cfg.dataset), out, settings
    )
    summary = EvaluationSummary.read(record.summary)
    page = record.path / "index.html"
    publish_link(
        "evaluation-report",
        page,
        "open the report",
        "Evaluation report: audio players, spectrograms, metrics",
    )
    create_markdown_artifact(
        key="evaluation-summary",
        markdown=report.summary_markdown(summary, markdown_link(page, "open the report")),
    )
    create_table_artifact(
        key="evaluation-samples",
        table=report.samples_table(summary),
        description="Acoustic sanity, flags and speech metrics of each continuation",
    )
    if cfg.index:
        try:
            index = runs_index.write_runs_index(Path(cfg.index))
        except CodecflowError as err:  # someone's index.html there: the report stands alone
            logger.warning("runs index not written: %s", err)
            return record
        publish_link(
            "evaluation-runs-index", index, "open the runs index", "Every evaluation side by side"
        )
    return record
