"""Progress reporting for long transfers (Libri-Light's archives take hours to days) and long
loops (training, generation).

`StepProgress` logs one line at a fixed cadence (the first step, then every
`$CODECFLOW_PROGRESS_SECONDS`, 30 s by default, and the last), so a 4-day training run shows its
step, loss, rate and ETA in the run's log while a test run of 2 s writes two lines.

Each reporter is a callback `(done_bytes, total_bytes or None) -> None`, as `fetch(...,
progress=...)` and `open_source_stream(..., progress=...)` take: `TqdmProgress` draws a bar on a
terminal (`tasks.prefect.progress.PrefectProgress` keeps a Prefect
progress artifact up to date), `combine` calls several.

Cheap to import: tqdm is imported by the reporter that uses it, when created.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TextIO

__all__ = [
    "Closing",
    "PROGRESS_ENV",
    "ProgressCallback",
    "StepProgress",
    "TqdmProgress",
    "combine",
    "format_bytes",
    "format_duration",
    "format_rate",
    "progress_interval",
    "sanitize_artifact_key",
]

ProgressCallback = Callable[[int, int | None], None]

_log = logging.getLogger(__name__)

# Decimal units, as Libri-Light publishes its sizes ("35 GB") and as tqdm's unit_scale shows them.
_UNITS = ("kB", "MB", "GB", "TB", "PB")

# Prefect's rule for artifact keys: prefect/types/names.py,
# LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX = "^[a-z0-9-]*$".
_KEY_FORBIDDEN_RE = re.compile(r"[^a-z0-9-]+")


def format_bytes(n_bytes: float) -> str:
    """A byte count in decimal units: "512 B", "1.2 GB", "3.1 TB"."""
    if n_bytes < 1000:
        return f"{int(n_bytes)} B"
    value = float(n_bytes)
    for unit in _UNITS:
        value /= 1000
        if value < 999.95 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """A duration as M:SS under an hour, H:MM:SS above ("12:34", "27:05:09")."""
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(done: int, total: int | None, elapsed_s: float, start_bytes: int = 0) -> str:
    """ "1.2 GB / 35.0 GB, 45.3 MB/s, ETA 12:34": bytes done (of total), rate, time left.

    The rate counts the bytes of this session only (`done - start_bytes`): a resumed download
    starts at the size of its part file. "?" stands for what is not known yet (the total, or the
    ETA before any byte arrived).
    """
    if done < 0:
        raise ValueError(f"done bytes must be >= 0, got {done}")
    amount = f"{format_bytes(done)} / {format_bytes(total) if total is not None else '?'}"
    rate = (done - start_bytes) / elapsed_s if elapsed_s > 0 else 0.0
    if total is not None and done >= total:
        eta = "0:00"
    elif total is not None and rate > 0:
        eta = format_duration((total - done) / rate)
    else:
        eta = "?"
    return f"{amount}, {rate / 1e6:.1f} MB/s, ETA {eta}"


def sanitize_artifact_key(key: str) -> str:
    """`key` as a Prefect artifact key: lowercase letters, digits and dashes only.

    Any run of other characters becomes one dash ("Fetch small.tar" -> "fetch-small-tar").
    """
    sanitized = _KEY_FORBIDDEN_RE.sub("-", key.lower()).strip("-")
    if not sanitized:
        raise ValueError(f"progress artifact key {key!r} has no letter or digit")
    return sanitized


def combine(*callbacks: ProgressCallback | None) -> ProgressCallback:
    """One callback that calls each of `callbacks` in order (None entries are skipped)."""
    kept = [callback for callback in callbacks if callback is not None]

    def call_all(done: int, total: int | None) -> None:
        for callback in kept:
            callback(done, total)

    return call_all


class Closing:
    """Context-manager protocol for reporters: `with Reporter(...) as r:` closes `r` at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TqdmProgress(Closing):
    """A tqdm bar in bytes (rate, ETA) on stderr; off when stderr is not a terminal.

    `force=True` draws it anyway (e.g. into a log file); `file` replaces stderr. The bar is made
    on the first call, when the total is known. A download that restarts from zero (a server that
    ignores Range requests) resets it.
    """

    def __init__(
        self,
        description: str,
        *,
        file: TextIO | None = None,
        force: bool = False,
        mininterval_s: float = 0.5,
    ) -> None:
        self.description = description
        self._file = file if file is not None else sys.stderr
        isatty = getattr(self._file, "isatty", None)
        self.enabled = force or bool(isatty is not None and isatty())
        self._mininterval_s = mininterval_s
        self._bar: Any = None

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=done,
                desc=self.description,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                file=self._file,
                mininterval=self._mininterval_s,
                dynamic_ncols=True,
                disable=False,
            )
            return
        bar = self._bar
        if total != bar.total:
            bar.total = total
        if done < bar.n:
            bar.reset(total=total)
        bar.update(done - bar.n)

    def close(self) -> None:
        """Draw the final state and release the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


#: Seconds between two progress lines of a long loop; 0 logs every step.
PROGRESS_ENV = "CODECFLOW_PROGRESS_SECONDS"

_DEFAULT_PROGRESS_SECONDS = 30.0


def progress_interval() -> float:
    """`$CODECFLOW_PROGRESS_SECONDS`, else 30 s: often enough to see a run move, rare enough that
    a 4-day training run's log stays readable (about 12 000 lines)."""
    text = os.environ.get(PROGRESS_ENV, "").strip()
    if not text:
        return _DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{PROGRESS_ENV} must be a number of seconds, got {text!r}") from None
    if not seconds >= 0:  # NaN too
        raise ValueError(f"{PROGRESS_ENV} must be >= 0, got {text!r}")
    return seconds


def _format_value(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class StepProgress:
    """Progress lines of a loop of `total` steps at a fixed cadence, on `logger` at INFO:

        train-lm step 120/400 (30%): loss 3.4120, 12,345 tokens/s, ETA 1:23
        evaluate: generating token 160/320 (50%): 2,345 tokens/s, ETA 0:04

    A line is logged at the first update, then when `every_s` seconds (default
    `progress_interval()`) have passed since the last line, and at the last step. The rate is
    over the steps since the previous line (`items_per_step` units each: tokens, samples); the
    ETA extrapolates the mean step time since `start` (a resumed run's first step). `clock` is
    the time source (monotonic seconds), replaceable to test the cadence without sleeping.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: int,
        unit: str,
        items_per_step: float = 1.0,
        *,
        step_name: str = "step",
        start: int = 0,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.what, self.total, self.unit = logger, what, total, unit
        self.items_per_step, self.step_name = items_per_step, step_name
        self.every_s = progress_interval() if every_s is None else every_s
        self._clock = clock
        self._start, self._started_at = start, clock()
        self._last_done, self._last_at = start, self._started_at
        self._lines = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        """A progress callback (`models.sampling.generate`'s): `total` replaces the one given
        when the caller learns it only now."""
        if total is not None:
            self.total = total
        self.update(done)

    def update(self, done: int, **values: float) -> bool:
        """`done` steps of `total` are finished (`values`: this step's loss, ...); True when a
        line was logged."""
        now = self._clock()
        due = self._lines == 0 or done >= self.total or now - self._last_at >= self.every_s
        if not due or done <= self._last_done:
            return False
        rate = (done - self._last_done) * self.items_per_step / max(now - self._last_at, 1e-9)
        per_step = (now - self._started_at) / (done - self._start)
        eta = format_duration(per_step * max(self.total - done, 0))
        shown = "".join(f"{name} {_format_value(v)}, " for name, v in values.items())
        self.logger.info(
            "%s %s %d/%d (%d%%): %s%s %s/s, ETA %s",
            self.what,
            self.step_name,
            done,
            self.total,
            100 * done // max(self.total, 1),
            shown,
            f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}",
            self.unit,
            eta,
        )
        self._last_done, self._last_at, self._lines = done, now, self._lines + 1
        return True
