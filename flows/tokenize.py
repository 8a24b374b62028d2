"""The tokenize flow: a segment manifest -> sharded token dataset + size report, resumable.

    plan (cached) -> write shard groups (mapped, one task per group) -> finalize (dataset.json)

The whole run holds the dataset's lock: a second run on the same output refuses at once. On
Prefect's default runner or on Dask (`workers`, `dask_address`), the bytes are the same.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.futures import wait

from codecflow.flows._common import publish_link, run_on_runner, unless_committed
from codecflow.schemas.configs import TokenizeConfig, TokenizeSettings
from codecflow.schemas.tables import SPLITS
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.data.token_dataset import DatasetRecord, is_dataset_committed
from codecflow.tasks.prefect.data_tasks import (
    finalize_dataset_task,
    plan_tokens_task,
    write_shards_task,
)
from codecflow.tasks.tokenize.finalize import format_rejects
from codecflow.tasks.tokenize.sizes import format_size_report

__all__ = ["run_tokenize", "tokenize_flow"]


@flow(name="tokenize")
def tokenize_flow(cfg: TokenizeConfig = TokenizeConfig()) -> DatasetRecord:  # noqa: B008
    """Tokenize every segment; resumes after an interruption, skipping committed shards."""
    apply_thread_policy()  # torch's intra-op threads for this process (issue 17)
    out = cfg.out
    settings = TokenizeSettings(**cfg.model_dump(include=set(TokenizeSettings.model_fields)))
    committed = is_dataset_committed(out)
    with outputs.exclusive_lock(out, f"tokenize {settings.tokenizer}"):
        plan = unless_committed(plan_tokens_task, committed)(cfg.manifest, out, settings)
        groups = unless_committed(write_shards_task, committed).map(
            unmapped(plan), list(plan.groups)
        )
        wait(groups)
        markers = [m for group in groups for m in group.result()]
        record = unless_committed(finalize_dataset_task, committed)(plan, markers)
    sizes = storage.read_json(storage.join(out, "size_report.json"))
    print(format_size_report(sizes), flush=True)
    if record.n_rejects:
        print(format_rejects(record), flush=True)
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
                "int32_reference_bytes": sizes[split]["int32_reference_bytes"],
                "token_bitrate_bps": round(sizes[split]["token_bitrate_bps"], 1),
            }
            for split in (*SPLITS, "total")
        ],
        description=f"Size of the token dataset {out} ({settings.tokenizer})"
        + (f"; {format_rejects(record)}" if record.n_rejects else ""),
    )
    # The folder's URL: the file server answers it with the dataset's index.html, the card as
    # HTML with the shards listed below it (tasks/tokenize/card_page.py).
    publish_link(
        "token-dataset",
        out,
        "open the token dataset",
        "the dataset card, with the shards, dataset.json and size report listed below it",
    )
    return record


def run_tokenize(cfg: TokenizeConfig) -> DatasetRecord:
    """Run the tokenize flow on the runner its config asks for (default, or Dask)."""
    result: DatasetRecord = run_on_runner(
        tokenize_flow,
        cfg,
        cfg.workers,
        cfg.dask_address,
        storage_root=cfg.out,
        slurm=cfg.slurm,
    )
    return result
