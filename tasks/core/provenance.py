"""What wrote a page: codecflow's version, the git commit of the checkout it runs from (None
for an installed wheel, or when git is missing), and the time of writing (UTC, to the minute).
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Provenance", "git_commit", "provenance"]


@dataclass(frozen=True)
class Provenance:
    version: str
    commit: str | None  # short hash, "+" when the checkout has uncommitted changes
    date: str  # "2026-12-07 02:31 UTC"


@functools.lru_cache(maxsize=1)
def git_commit(folder: Path | None = None) -> str | None:
    """The short commit of the git checkout whose root is `folder` (default: codecflow's own
    checkout, the folder above tasks/), with "+" when tracked files have changed since; None
    elsewhere: an installed wheel is no checkout, even inside a user's own repository. Asked
    once a process."""
    where = (folder or Path(__file__).resolve().parents[2]).resolve()
    try:
        top, head = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "--short=12", "HEAD"],
            cwd=where, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.split()  # fmt: skip
        if Path(top).resolve() != where:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return f"{head}+" if dirty else head or None


def provenance() -> Provenance:
    from codecflow import __version__

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Provenance(__version__, git_commit(), now)
