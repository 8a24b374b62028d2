"""The compare-codecs flow: tokenizers side by side on the same held-out segments (bitrate,
tokens/s, SI-SDR, PESQ-WB, STOI, mel L1, spectral loss, encode and decode speed)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from codecflow.flows.train_codec import png_markdown
from codecflow.schemas.configs import CompareCodecsConfig, CompareCodecsSettings
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.data.records import CodecComparison
from codecflow.tasks.evaluate.compare import ComparisonRecord
from codecflow.tasks.prefect.wrappers import compare_codecs_task

__all__ = ["compare_codecs_flow"]


@flow(name="compare-codecs")
def compare_codecs_flow(cfg: CompareCodecsConfig = CompareCodecsConfig()) -> ComparisonRecord:  # noqa: B008
    """One table and one plot for every tokenizer given, on the manifest's val segments."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    settings = CompareCodecsSettings(
        **cfg.model_dump(include=set(CompareCodecsSettings.model_fields))
    )
    record = compare_codecs_task(cfg.manifest, Path(cfg.out), settings)
    table = CodecComparison.read(record.table)
    rows = [row.model_dump(exclude={"audio"}) for row in table.rows]
    create_table_artifact(key="codec-comparison", table=rows, description=str(record.table))
    create_markdown_artifact(
        key="codec-comparison-plot",
        markdown=png_markdown(record.path / "bitrate_quality.png", "PESQ-WB and STOI by bitrate"),
    )
    return record
