"""Serve one folder read-only over HTTP: the runs folder, so that the links of codecflow's Prefect
artifacts open reports, datasets and checkpoints in the browser.

    python -m codecflow.cli.files_server --root runs [--host 127.0.0.1] [--port 4201]

`make server` starts it beside the Prefect server (codecflow/cli/server.py) and records it in
`runs/server/pids.json`. Why a server at all: the Prefect UI cannot open a local file. The new UI
renders a `file://` link without an `href`, the old one refuses it, and a browser blocks
`file://` pages opened from an `http://` one.

Read-only and confined: GET and HEAD only (every other method is answered 405). What is served
is a regular file that resolves inside the root, after every step the handler takes: the path
asked for (`..`, an encoded `%2e%2e`, a symlink pointing out: 403), and the `index.html` or
`index.htm` the directory handler would serve in its place (a link to /etc/shadow named
index.html: 403). A FIFO or a device is never opened (403). Folders are listed with only the
entries that resolve inside the root, so a dataset's shards or a checkpoint's files can be
browsed; a token dataset's folder has its own index.html, its card as a page with the shards
listed (tasks/tokenize/card_page.py), which is served in place of the listing. It binds to
127.0.0.1 by default: the runs folder is for this machine's user, not for the network.
"""

from __future__ import annotations

import argparse
import html
import io
import os
import stat
import sys
import urllib.parse
from collections.abc import Sequence
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ReadOnlyHandler", "inside", "make_server", "main", "servable"]

#: The files http.server serves for a folder, in its order (SimpleHTTPRequestHandler.send_head).
_INDEX_FILES = ("index.html", "index.htm")


def inside(root: str, path: str) -> bool:
    """Whether `path`, every symlink resolved, is `root` itself or below it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def servable(root: str, path: str) -> bool:
    """Whether `path` resolves inside `root` to a regular file (not a FIFO, device or socket)."""
    try:
        return inside(root, path) and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class ReadOnlyHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler that writes nothing and serves nothing outside its folder."""

    server_version = "codecflow-files"

    def _confined(self) -> bool:
        """Whether what the handler would send for this path is ours to send; 403 when not.

        translate_path drops `..` and absolute components already; a symlink inside the folder
        can still point anywhere, and a folder is answered with its index file, so the path
        that would be opened is checked, resolved, after that substitution."""
        path = self.translate_path(self.path)
        target = path
        if os.path.isdir(path) and urllib.parse.urlsplit(self.path).path.endswith("/"):
            # As send_head: the first index file that isfile() (links followed) is served.
            found = [os.path.join(path, n) for n in _INDEX_FILES]
            target = next((f for f in found if os.path.isfile(f)), path)
        # A folder is listed (entries filtered below); a missing file is the handler's 404.
        listed_or_missing = os.path.isdir(target) or not os.path.lexists(target)
        if inside(self.directory, path) and (listed_or_missing or servable(self.directory, target)):
            return True
        self.send_error(HTTPStatus.FORBIDDEN, "outside the served folder, or not a file")
        return False

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO | None:
        """A listing of the entries that resolve inside the root (names escaped)."""
        try:
            names = sorted(os.listdir(path), key=str.lower)
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "No permission to list directory")
            return None
        shown = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        items = []
        for name in names:
            full = os.path.join(path, name)
            if not inside(self.directory, full):
                continue
            label = name + ("/" if os.path.isdir(full) else "")
            href = urllib.parse.quote(label)
            items.append(f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>')
        title = html.escape(f"Directory listing for {shown}")
        page = (
            f"<!DOCTYPE HTML><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"</head><body><h1>{title}</h1><hr><ul>{''.join(items)}</ul><hr></body></html>\n"
        ).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        return io.BytesIO(page)

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
