"""`codecflow server start|stop` (`make server`, `make server-stop`): the set-up steps of
`codecflow.cli.server`, with their addresses and logs printed, one `error:` line on a failure."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from codecflow.cli.processes import PIDS, ServerError, read_pids
from codecflow.cli.server import (
    FILES_PORT,
    POOL,
    REPO,
    port_free,
    port_taken,
    running_server,
    start,
    stop,
)

__all__ = ["main"]


def _stop_hint(home: Path) -> str:
    if home == (REPO / "runs" / "server").resolve():
        return "make server-stop"
    return f"codecflow server stop --home {home}"


def main(argv: Sequence[str] | None = None) -> int:
    """`codecflow server start|stop`: exit status 0, 2 on a failed step (one `error:` line)."""
    parser = argparse.ArgumentParser(
        prog="codecflow server", description="A local Prefect server running codecflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser(
        "start", help="start the server, work pool, worker and deployments"
    )
    start_parser.add_argument("--host", default="127.0.0.1")
    start_parser.add_argument("--port", type=int, default=4200)
    start_parser.add_argument("--home", type=Path, default=Path("runs/server"))
    start_parser.add_argument(
        "--files-root", type=Path, default=Path("runs"), help="folder served over HTTP"
    )
    start_parser.add_argument("--files-port", type=int, default=FILES_PORT)
    stop_parser = commands.add_parser("stop", help="stop what `start` started")
    stop_parser.add_argument("--home", type=Path, default=Path("runs/server"))
    args = parser.parse_args(argv)
    home: Path = args.home.resolve()

    try:
        if args.command == "stop":
            stopped = stop(home)
            if stopped:
                print(f"stopped {', '.join(stopped)}")
            else:
                print(f"nothing to stop: no running server recorded in {home / PIDS}")
            return 0

        if not (REPO / "prefect.yaml").is_file():
            raise ServerError(
                f"no prefect.yaml in {REPO}: run `codecflow server start` in the checkout "
                "(its deployments are the checkout's)"
            )
        running = running_server(home)
        if running is not None:
            print(
                f"prefect server already running (pid {running['server']}): "
                f"{running.get('ui_url', '?')}; stop it with: {_stop_hint(home)}"
            )
            return 0
        if read_pids(home):  # stale records of processes that have ended
            stop(home)
        if not port_free(args.host, args.port):
            raise ServerError(port_taken(args.host, args.port))
        if not port_free(args.host, args.files_port):
            raise ServerError(
                f"port {args.files_port} on {args.host} is taken by another process; stop it "
                "or pass --files-port"
            )
        started = time.monotonic()
        print(f"starting prefect server on http://{args.host}:{args.port} ...", flush=True)
        pids = start(
            home, args.host, args.port, files_root=args.files_root, files_port=args.files_port
        )
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(f"ready in {time.monotonic() - started:.0f} s")
    print(f"UI:         {pids['ui_url']}")
    print(f"API:        {pids['api_url']}")
    print(f"files:      {pids['files_url']} (serves {pids['files_root']} read-only)")
    print(f"work pool:  {POOL} (worker pid {pids['worker']})")
    print(f"server log: {pids['server_log']}")
    print(f"worker log: {pids['worker_log']}")
    print(f"files log:  {pids['files_log']}")
    print(f"deploy log: {home / 'deploy.log'}")
    print(f"stop with:  {_stop_hint(home)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
