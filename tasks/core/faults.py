"""A fault-injection seam for crash tests: `kill_point(name)` SIGKILLs the process when the
environment asks for it, so tests can stop a real run at an exact moment (mid-upload, between a
shard and its commit marker) and check what a re-run makes of it.

    CODECFLOW_KILL_AT=<point>[:<n>]   die at the n-th time (default 1st) the run reaches <point>

Does nothing when the variable is unset, which is always the case outside tests.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = [
    "kill_point",
]

_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """Die here, with SIGKILL (no cleanup, no atexit), if CODECFLOW_KILL_AT names this point."""
    wanted = os.environ.get("CODECFLOW_KILL_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
