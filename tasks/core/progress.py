"""Progress reporting for long transfers (Libri-Light's archives take hours to days).

Each reporter is a callback `(done_bytes, total_bytes or None) -> None`, as `fetch(...,
progress=...)` and `open_source_stream(..., progress=...)` take: `TqdmProgress` draws a bar on a
terminal (`tasks.prefect.progress.PrefectProgress` keeps a Prefect
progress artifact up to date), `combine` calls several.

Cheap to import: tqdm is imported by the reporter that uses it, when created.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TextIO

__all__ = [
    "Closing",
    "ProgressCallback",
    "TqdmProgress",
    "combine",
    "format_bytes",
    "format_duration",
    "format_rate",
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
