"""The train-codec flow: a segment manifest -> the post's RVQ codec, resumable after a kill."""

from __future__ import annotations

import base64
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from codecflow.flows._common import unless_committed
from codecflow.schemas.configs import TrainCodecConfig, TrainCodecSettings
from codecflow.tasks.core.links import markdown_link
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.prefect.wrappers import train_codec_task
from codecflow.tasks.train.codec import CodecCheckpointRecord, is_codec_committed

__all__ = ["png_markdown", "train_codec_flow"]


def png_markdown(path: Path, alt: str) -> str:
    """A PNG inlined as a data URI in markdown: Prefect's image artifacts take URLs only."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


@flow(name="train-codec")
def train_codec_flow(cfg: TrainCodecConfig = TrainCodecConfig()) -> CodecCheckpointRecord:  # noqa: B008
    """Train the Jukebox-style encoder/decoder with the RVQ bottleneck on the train split."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    out = Path(cfg.out)
    settings = TrainCodecSettings(**cfg.model_dump(include=set(TrainCodecSettings.model_fields)))
    record = unless_committed(train_codec_task, is_codec_committed(out))(
        cfg.manifest, out, settings
    )
    create_markdown_artifact(
        key="codec-loss",
        markdown=(
            f"**{markdown_link(record.path, 'codec checkpoint')}**: {record.num_levels} levels, "
            f"{record.n_parameters:,} parameters, {record.steps} steps "
            f"(resumed from step {record.resumed_from}); "
            f"loss {record.train_loss_first:.4f} -> {record.train_loss_last:.4f}\n\n"
            + png_markdown(record.path / "loss.png", "codec loss curve")
        ),
    )
    return record
