"""What a CLI run needs around its flow: its own ephemeral Prefect server, and signals.

Prefect starts its ephemeral API server as a child in the CLI's process group. Ctrl-C in a
terminal signals the whole group, so the server died first and the run went on against a dead
API, retrying for minutes. And a run killed by SIGKILL left the server orphaned. Here:

- `ephemeral_server()` starts that server before the run, in a session of its own (the
  terminal's SIGINT does not reach it) with a parent-death signal (it cannot outlive the CLI,
  even after `kill -9`), and stops it after the run, never before.
- `interrupts()` turns the first SIGINT or SIGTERM into `KeyboardInterrupt` in the run, so the
  flow stops within seconds, its committed work kept; the CLI ends it with
  `error: interrupted; re-run to resume`, exit status 128 + the signal (130 for SIGINT).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = ["Interrupt", "ephemeral_server", "interrupts"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that asks Linux to SIGTERM the child when its parent dies, or None.

    libc is looked up here, in the parent: between fork and exec only the call itself is safe.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: go now
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _session_server_class() -> type[Any]:
    from prefect.server.api.server import SubprocessASGIServer

    class SessionServer(SubprocessASGIServer):  # type: ignore[misc]
        """Prefect's ephemeral server, started in its own session, dying with its parent."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            original = subprocess.Popen

            def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                kwargs.setdefault("start_new_session", True)
                kwargs.setdefault("preexec_fn", _parent_death_signal())
                return original(*args, **kwargs)

            subprocess.Popen = popen  # type: ignore[assignment,misc]
            try:
                return super()._run_uvicorn_command()  # type: ignore[no-any-return]
            finally:
                subprocess.Popen = original  # type: ignore[misc]

    return SessionServer


def _uses_ephemeral_server() -> bool:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return not settings.api.url and bool(settings.server.ephemeral.enabled)


@contextlib.contextmanager
def ephemeral_server() -> Iterator[None]:
    """Run the block against an ephemeral server of our own, when no API is configured.

    Prefect's clients ask `SubprocessASGIServer()` for the ephemeral server: one instance per
    port, the default one under `None`, which this one becomes by being made first. So every
    client of the run uses it (Dask workers get its URL from `flows._common.run_on_runner`).
    """
    if not _uses_ephemeral_server():
        yield
        return
    server = _session_server_class()()
    server.start()
    try:
        yield
    finally:
        _flush_events()
        server.stop()


def _flush_events() -> None:
    """Send the events and logs still queued while the server is up: once it is gone, each
    failed send prints a traceback ("Error flushing events")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


@dataclass
class Interrupt:
    """The signal that interrupted the run, if any."""

    signum: int | None = None

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def interrupts() -> Iterator[Interrupt]:
    """SIGINT and SIGTERM raise `KeyboardInterrupt` in the main thread during the block.

    Only the first signal does: a second one while the run unwinds (committing nothing, closing
    files) would cut that short. The previous handlers come back at the end.
    """
    seen = Interrupt()

    def handler(signum: int, frame: FrameType | None) -> None:
        if seen.signum is None:
            seen.signum = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
