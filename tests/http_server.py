"""A real HTTP server on 127.0.0.1 for download tests: Range requests, dropped connections,
forced status codes, and a log of what was asked."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["ServerState", "serve"]


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    support_range: bool = True
    drop_after: int | None = None  # close the connection after this many body bytes (once)
    status: int | None = None  # answer every request with this status instead
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    base_url: str = ""


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            if state.status is not None:
                return self._empty(state.status)
            body = state.files.get(self.path)
            if body is None:
                return self._empty(404)
            start, status = 0, 200
            if range_header and state.support_range:
                match = re.fullmatch(r"bytes=(\d+)-", range_header)
                assert match, range_header
                start = int(match.group(1))
                if start >= len(body):
                    return self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                status = 206
            chunk = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if state.drop_after is not None and state.drop_after < len(chunk):
                # Simulate a connection reset mid-body: send part of it and hang up.
                self.wfile.write(chunk[: state.drop_after])
                self.wfile.flush()
                state.drop_after = None
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)

    return Handler


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[ServerState]:
    """Serve `files` (URL path -> bytes) on 127.0.0.1 at a free port until the block ends."""
    state = ServerState(files=dict(files))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
