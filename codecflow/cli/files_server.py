"""Serve one folder read-only over HTTP: the runs folder, so that the links of codecflow's Prefect
artifacts open reports, datasets and checkpoints in the browser.

    python -m codecflow.cli.files_server --root runs [--host 127.0.0.1] [--port 4201]

`make server` starts it beside the Prefect server (codecflow/cli/server.py) and records it in
`runs/server/pids.json`. Why a server at all: the Prefect UI cannot open a local file. The new UI
renders a `file://` link without an `href`, the old one refuses it, and a browser blocks
`file://` pages opened from an `http://` one.

Read-only and confined: GET and HEAD only (every other method is answered 405), and a path that
resolves outside the root (`..`, an encoded `%2e%2e`, a symlink pointing out) is answered 403.
Folders are listed, so a dataset's shards or a checkpoint's files can be browsed. It binds to
127.0.0.1 by default: the runs folder is for this machine's user, not for the network.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ReadOnlyHandler", "inside", "make_server", "main"]


def inside(root: str, path: str) -> bool:
    """Whether `path`, every symlink resolved, is `root` itself or below it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


class ReadOnlyHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler that writes nothing and serves nothing outside its folder."""

    server_version = "codecflow-files"

    def _confined(self) -> bool:
        # translate_path drops `..` and absolute components already; a symlink inside the
        # folder can still point anywhere, so the resolved path is checked too.
        if inside(self.directory, self.translate_path(self.path)):
            return True
        self.send_error(HTTPStatus.FORBIDDEN, "outside the served folder")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self._confined():
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self._confined():
            super().do_HEAD()

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def end_headers(self) -> None:
        # Reports and the runs index are rewritten in place: always revalidate.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()


def make_server(root: Path, host: str, port: int) -> ThreadingHTTPServer:
    """A server of `root` on host:port (port 0: a free one), not yet serving."""
    handler: Any = partial(ReadOnlyHandler, directory=str(Path(root).resolve()))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m codecflow.cli.files_server",
        description="Serve a folder read-only over HTTP.",
    )
    parser.add_argument("--root", type=Path, default=Path("runs"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4201)
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        server = make_server(root, args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    port = server.server_address[1]
    print(f"serving {root} read-only on http://{args.host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
