"""Prefect progress artifacts: `PrefectProgress` is a progress callback (`tasks.core.progress`)
that keeps an artifact of the current flow or task run up to date, visible in the Prefect UI.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from codecflow.tasks.core.progress import Closing, format_rate, sanitize_artifact_key

_log = logging.getLogger(__name__)

__all__ = [
    "PrefectProgress",
    "in_prefect_run",
]


def in_prefect_run() -> bool:
    """Whether a Prefect flow or task run is current (artifacts need one to attach to)."""
    # The context vars are read directly: get_run_context() raises MissingContextError outside.
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class PrefectProgress(Closing):
    """Keeps a Prefect progress artifact of the current run up to date; a no-op outside a run.

    The artifact (key sanitised to Prefect's rule, see `sanitize_artifact_key`) is created at 0 %
    on the first call made inside a flow or task run, then updated at most every
    `min_interval_s` seconds (each update is an API call; a multi-hour download calls back for
    every MiB) and once more on reaching 100 %. Its description reads "<description>: 1.2 GB /
    35.0 GB, 45.3 MB/s, ETA 12:34". An API failure is logged once and turns reporting off: a
    progress bar must never break a transfer.
    """

    def __init__(
        self, key: str, description: str, min_interval_s: float = 2.0, unit: str = "B"
    ) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.key = sanitize_artifact_key(key)
        self.description = description
        self.unit = unit
        self.min_interval_s = min_interval_s
        self.artifact_id: Any = None  # a UUID once created
        self._failed = False
        self._finished = False
        self._started_at = 0.0
        self._start_bytes = 0
        self._last_update = 0.0
        self._pending: tuple[int, int | None] | None = None  # last state not sent (throttled)

    def _describe(self, done: int, total: int | None) -> str:
        if self.unit != "B":  # a count of something else: no byte rate
            shown_total = "?" if total is None else f"{total:,}"
            return f"{self.description}: {done:,} / {shown_total} {self.unit}"
        elapsed = time.monotonic() - self._started_at
        return f"{self.description}: {format_rate(done, total, elapsed, self._start_bytes)}"

    def __call__(self, done: int, total: int | None) -> None:
        if self._failed or self._finished:
            return
        try:
            self._report(done, total)
        except Exception as error:  # reporting must never break the transfer
            self._failed = True
            _log.warning("progress artifact %r disabled: %s", self.key, error)

    def _report(self, done: int, total: int | None) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        now = time.monotonic()
        if self.artifact_id is None:
            if not in_prefect_run():
                return
            self._started_at, self._start_bytes, self._last_update = now, done, now
            # _sync=True: called from sync code, even when the run is an async flow (whose
            # context would otherwise make these functions return coroutines).
            self.artifact_id = create_progress_artifact(  # type: ignore[call-arg]
                progress=0.0, key=self.key, description=self._describe(done, total), _sync=True
            )
        complete = total is not None and done >= total
        if not complete and now - self._last_update < self.min_interval_s:
            self._pending = (done, total)
            return
        percent = 100.0 if complete else (100.0 * done / total if total else 0.0)
        update_progress_artifact(  # type: ignore[call-arg]
            artifact_id=self.artifact_id,
            progress=min(max(percent, 0.0), 100.0),
            description=self._describe(done, total),
            _sync=True,
        )
        self._last_update, self._pending, self._finished = now, None, complete

    def close(self) -> None:
        """Send the last state that throttling held back (idempotent)."""
        if self._pending is not None and self.artifact_id is not None:
            done, total = self._pending
            self._last_update = float("-inf")  # lift the throttle for this one update
            self(done, total)
