"""Helpers shared by the flows."""

from __future__ import annotations

from typing import Any

from prefect import Task

__all__ = ["unless_committed"]


def unless_committed(task: Task[Any, Any], committed: bool) -> Task[Any, Any]:
    """`task`, refreshing its cache when its output is not committed on disk.

    The Prefect cache records what a task returned, not whether its files still exist: when the
    commit marker is gone (a deleted run folder), the task must run again, not return stale paths.
    """
    return task if committed else task.with_options(refresh_cache=True)
