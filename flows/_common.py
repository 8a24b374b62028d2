"""Helpers shared by the flows."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prefect import Task

__all__ = ["dataset_folder_name", "unless_committed"]


def unless_committed(task: Task[Any, Any], committed: bool) -> Task[Any, Any]:
    """`task`, refreshing its cache when its output is not committed on disk.

    The Prefect cache records what a task returned, not whether its files still exist: when the
    commit marker is gone (a deleted run folder), the task must run again, not return stale paths.
    """
    return task if committed else task.with_options(refresh_cache=True)


def dataset_folder_name(tokenizer: str) -> str:
    """A folder name for a tokenizer's dataset: the name itself when it is one already
    (`mu-law-256`, `mimi_8_rvq`), else a readable slug plus a short hash of the full name
    (`codec:runs/x/codec/checkpoint@4` -> `codec-checkpoint-4-<hash>`)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", tokenizer):
        return tokenizer
    slug = "-".join(p for p in re.split(r"[^A-Za-z0-9]+", tokenizer.split("/")[-1]) if p)
    digest = hashlib.sha256(tokenizer.encode()).hexdigest()[:8]
    return f"{tokenizer.split(':')[0]}-{slug}-{digest}"
