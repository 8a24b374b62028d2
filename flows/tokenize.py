"""The tokenize flow: a segment manifest -> Arrow token shards + size report."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows._common import unless_committed
from schemas.configs import TokenizeConfig, TokenizeSettings
from schemas.tables import SPLITS
from tasks.tokenization import DatasetRecord, is_dataset_committed
from tasks.wrappers import tokenize_task

__all__ = ["tokenize_flow"]


@flow(name="tokenize")
def tokenize_flow(cfg: TokenizeConfig = TokenizeConfig()) -> DatasetRecord:  # noqa: B008
    """Tokenize every segment; resumes after an interruption, skipping committed shards."""
    out = Path(cfg.out)
    settings = TokenizeSettings(**cfg.model_dump(include=set(TokenizeSettings.model_fields)))
    record = unless_committed(tokenize_task, is_dataset_committed(out))(
        Path(cfg.manifest), out, settings
    )
    sizes = json.loads((out / "size_report.json").read_text())
    create_table_artifact(
        key="size-report",
        table=[
            {
                "split": split,
                "segments": sizes[split]["segments"],
                "audio_hours": round(sizes[split]["audio_hours"], 4),
                "tokens": sizes[split]["tokens"],
                "bytes": sizes[split]["bytes"],
                "bytes_per_audio_hour": round(sizes[split]["bytes_per_audio_hour"]),
                "tokens_per_second": round(sizes[split]["tokens_per_second"], 1),
            }
            for split in (*SPLITS, "total")
        ],
        description=f"Size of the token dataset {out} ({settings.tokenizer})",
    )
    return record
