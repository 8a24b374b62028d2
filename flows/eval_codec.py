"""The eval-codec flow: reconstruction losses of a trained codec by number of levels."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from codecflow.flows._common import unless_committed
from codecflow.flows.train_codec import png_markdown
from codecflow.schemas.configs import EvalCodecConfig, EvalCodecSettings
from codecflow.tasks.core.links import markdown_link
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.evaluate.codec import CodecReportRecord, is_codec_report_committed
from codecflow.tasks.prefect.wrappers import eval_codec_task

__all__ = ["eval_codec_flow"]


@flow(name="eval-codec")
def eval_codec_flow(cfg: EvalCodecConfig = EvalCodecConfig()) -> CodecReportRecord:  # noqa: B008
    """Spectral loss, SI-SDR, mel L1 and bitrate at 1, 2, 4, 8, 16 levels on the val split."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    out = Path(cfg.out)
    settings = EvalCodecSettings(**cfg.model_dump(include=set(EvalCodecSettings.model_fields)))
    record = unless_committed(eval_codec_task, is_codec_report_committed(out))(
        Path(cfg.checkpoint), cfg.manifest, out, settings
    )
    rows = json.loads(record.table.read_text())
    create_table_artifact(key="codec-levels", table=rows, description=str(record.table))
    create_markdown_artifact(
        key="codec-loss-vs-levels",
        markdown=markdown_link(record.path, "codec evaluation (WAVs, levels.json)")
        + "\n\n"
        + png_markdown(record.path / "loss_vs_levels.png", "spectral loss against levels"),
    )
    return record
