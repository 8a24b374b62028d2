"""The train-lm flow: a token dataset -> a GPT checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from codecflow.flows._common import unless_committed
from codecflow.flows.train_codec import png_markdown
from codecflow.schemas.configs import TrainLMConfig
from codecflow.tasks.core.links import markdown_link
from codecflow.tasks.core.storage import location
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.data.checkpoints import is_checkpoint_committed
from codecflow.tasks.prefect.wrappers import train_lm_task
from codecflow.tasks.train.lm import CheckpointRecord

__all__ = ["train_lm_flow"]


@flow(name="train-lm")
def train_lm_flow(cfg: TrainLMConfig = TrainLMConfig()) -> CheckpointRecord:  # noqa: B008
    """Train the nanoGPT-style LM on random windows of the flattened token stream."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    out = Path(cfg.out)
    record = unless_committed(train_lm_task, is_checkpoint_committed(out))(
        location(cfg.dataset), out, cfg.settings()
    )
    create_markdown_artifact(
        key="train-lm",
        markdown=(
            f"**{markdown_link(record.path, 'checkpoint')}**\n\n"
            f"| steps | parameters | first loss | last loss | val loss | tokens/s |\n"
            f"|---|---|---|---|---|---|\n"
            f"| {record.steps} | {record.n_parameters:,} | {record.train_loss_first:.4f} "
            f"| {record.train_loss_last:.4f} | {record.val_loss:.4f} | {record.tokens_per_s:,.0f} |"
            "\n\n" + png_markdown(record.path / "loss.png", "LM loss curve")
        ),
    )
    return record
