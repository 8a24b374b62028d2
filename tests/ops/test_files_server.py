"""The runs folder's file server (codecflow/cli/files_server.py), started as `make server` starts it
(codecflow/cli/server.py's start_files): it serves files and folder listings, refuses every write and
every path that resolves outside its folder, and `stop` ends it."""

from __future__ import annotations

import importlib
import os
import socket
import urllib.parse
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from live_server import free_port, server_module

from codecflow.cli import processes


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A file server of `tmp_path/runs` on a free port: (its URL, the folder)."""
    server = server_module()
    home, root = tmp_path / "home", tmp_path / "runs"
    (root / "demo" / "report").mkdir(parents=True)
    (root / "demo" / "report" / "index.html").write_text("<h1>codecflow evaluation</h1>")
    (tmp_path / "secret.txt").write_text("not for the browser")
    try:
        pids = server.start_files(home, root, "127.0.0.1", free_port())
        assert pids["files_root"] == str(root.resolve())
        yield pids["files_url"], root
    finally:
        server.stop(home)


def _raw_get(url: str, path: str) -> int:
    """The status of GET `path` sent as written (httpx would normalise `..` away)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        return int(conn.recv(64).split()[1])


def test_it_serves_files_and_listings(files: tuple[str, Path]) -> None:
    url, root = files
    page = httpx.get(f"{url}/demo/report/index.html", timeout=10)
    assert page.status_code == 200 and page.text == "<h1>codecflow evaluation</h1>"
    assert page.headers["content-type"] == "text/html"
    assert page.headers["cache-control"] == "no-cache"  # reports are rewritten in place
    listing = httpx.get(f"{url}/demo/", timeout=10)
    assert listing.status_code == 200 and 'href="report/"' in listing.text
    assert httpx.get(f"{url}/demo/missing.html", timeout=10).status_code == 404


def test_it_refuses_writes(files: tuple[str, Path]) -> None:
    url, root = files
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = httpx.request(method, f"{url}/demo/report/index.html", content=b"x", timeout=10)
        assert answer.status_code == 405, method
        assert answer.headers["allow"] == "GET, HEAD"
    assert (root / "demo" / "report" / "index.html").read_text() == (
        "<h1>codecflow evaluation</h1>"
    )
    assert sorted(p.name for p in (root / "demo" / "report").iterdir()) == ["index.html"]


def test_it_serves_nothing_outside_its_folder(files: tuple[str, Path]) -> None:
    url, root = files
    # `..`, plain or percent-encoded, is dropped: the path stays inside (and is not there).
    assert _raw_get(url, "/../secret.txt") == 404
    assert _raw_get(url, "/%2e%2e/secret.txt") == 404
    assert _raw_get(url, "/demo/%2e%2e/%2e%2e/secret.txt") == 404
    # A symlink inside the folder that points out of it is refused.
    (root / "out").symlink_to(root.parent)
    assert httpx.get(f"{url}/out/secret.txt", timeout=10).status_code == 403
    assert httpx.get(f"{url}/out/", timeout=10).status_code == 403


def test_stop_ends_it(tmp_path: Path) -> None:
    server = server_module()
    home = tmp_path / "home"
    pids = server.start_files(home, tmp_path / "runs", "127.0.0.1", free_port())
    assert server.read_pids(home)["files"] == pids["files"]
    assert server.stop(home) == [f"files (pid {pids['files']})"]
    assert not processes.group_alive(pids["files"])
    with pytest.raises(httpx.ConnectError):
        httpx.get(pids["files_url"], timeout=5)


def test_a_taken_port_is_refused_in_one_line(tmp_path: Path) -> None:
    server = server_module()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(server.ServerError, match=f"^port {port} on 127.0.0.1 is taken"):
            server.start_files(tmp_path / "home", tmp_path / "runs", "127.0.0.1", port)
    assert "files" not in server.read_pids(tmp_path / "home")


def test_the_worker_and_the_flows_read_the_same_variables() -> None:
    links = importlib.import_module("codecflow.tasks.core.links")
    server = server_module()
    assert (server.FILES_URL_ENV, server.FILES_ROOT_ENV) == (
        links.FILES_URL_ENV,
        links.FILES_ROOT_ENV,
    )


def test_no_link_trick_serves_a_file_outside_the_folder(files: tuple[str, Path]) -> None:
    """Each way a link under the served folder could reach /etc/passwd-like files: 403 or 404,
    never the file (issue 23: `runs/x/index.html -> /etc/shadow` was served for `GET /x/`)."""
    url, root = files
    secret = root.parent / "secret.txt"
    fifo = root / "fifo"
    os.mkfifo(fifo)  # opening it would block the handler's thread
    tricks = {
        "index-html": ("index.html", secret),
        "index-htm": ("index.htm", secret),
        "folder-link": ("inner", root.parent),
        "file-link": ("leak.txt", secret),
    }
    for folder, (name, target) in tricks.items():
        (root / folder).mkdir()
        (root / folder / name).symlink_to(target)
    (root / "fifo-index").mkdir()
    (root / "fifo-index" / "index.html").symlink_to(fifo)
    (root / "inside-link").mkdir()
    (root / "inside-link" / "index.html").symlink_to(root / "demo" / "report" / "index.html")
    asked = {
        "/index-html/": 403,
        "/index-html/index.html": 403,
        "/index-htm/": 403,
        "/folder-link/inner/secret.txt": 403,
        "/folder-link/inner/": 403,
        "/file-link/leak.txt": 403,
        "/fifo": 403,
        "/fifo-index/": 200,  # a FIFO is no file: the folder is listed instead
        "/index-html/%2e%2e/%2e%2e/secret.txt": 404,
        "/index-html/..%2f..%2fsecret.txt": 404,
    }
    for path, status in asked.items():
        answer = httpx.get(f"{url}{path}", timeout=10)
        assert answer.status_code == status, path
        assert "not for the browser" not in answer.text, path
    for path in ("/index-html/../../secret.txt", "/%2e%2e/%2e%2e/secret.txt"):
        assert _raw_get(url, path) in (403, 404), path
    # A link that stays inside is served; listings show only what resolves inside.
    inner = httpx.get(f"{url}/inside-link/", timeout=10)
    assert inner.status_code == 200 and inner.text == "<h1>codecflow evaluation</h1>"
    listing = httpx.get(f"{url}/file-link/", timeout=10)
    assert listing.status_code == 200 and "leak.txt" not in listing.text
    top = httpx.get(f"{url}/", timeout=10).text
    assert "demo/" in top and "folder-link/" in top and 'href="fifo"' in top
    assert "inner" not in httpx.get(f"{url}/folder-link/", timeout=10).text


def test_listings_escape_names(files: tuple[str, Path]) -> None:
    url, root = files
    (root / "<img src=x onerror=alert(1)>").mkdir()
    listing = httpx.get(f"{url}/", timeout=10).text
    assert "<img" not in listing and "&lt;img src=x onerror=alert(1)&gt;/" in listing


class _Links(HTMLParser):
    """The hrefs of a page, and the text of each table row (cells joined by |)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.rows: list[str] = []
        self._cells: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v is not None]
        elif tag == "tr":
            self._cells = []
        elif tag in ("td", "th") and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._cells is not None:
            self.rows.append("|".join(self._cells))
            self._cells = None

    def handle_data(self, data: str) -> None:
        if self._cells:
            self._cells[-1] += data


def test_the_token_dataset_link_opens_its_card_with_the_shards_listed(
    files: tuple[str, Path], tiny_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's "open the token dataset" link (the folder's URL) answers the card as HTML,
    not a listing nor raw Markdown; below it every shard with its size, each link relative to
    the folder and fetching the shard's bytes."""
    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.core import links
    from codecflow.tasks.data.token_dataset import read_dataset_info
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    url, root = files
    out = root / "demo" / "tokens"
    tokenize_manifest(tiny_manifest, out, TokenizeSettings(formats=["arrow", "webdataset"]))
    monkeypatch.setenv(links.FILES_URL_ENV, url)
    monkeypatch.setenv(links.FILES_ROOT_ENV, str(root))
    page_url = links.file_url(out)
    assert page_url == f"{url}/demo/tokens/"
    page = httpx.get(page_url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"] == "text/html"
    text = page.text
    assert "<h1>mu-law-256 tokens of 10 speech segments" in text  # the card's title, rendered
    assert "<h2>Tokenizer</h2>" in text and "## Tokenizer" not in text
    assert "<td>levels (K)</td>" in text and "Directory listing" not in text
    parsed = _Links()
    parsed.feed(text)
    for href in parsed.hrefs:  # relative, or the docs' https pages
        assert urllib.parse.urlsplit(href).scheme in ("", "https") and not href.startswith("/")
    info = read_dataset_info(out)
    for shard in info.shards:
        row = next(r for r in parsed.rows if r.startswith(f"{shard.name}|"))
        assert f"{shard.bytes:,} B" in row and f"{shard.webdataset_bytes:,} B" in row
        for path in (shard.file, shard.webdataset_file):
            assert path in parsed.hrefs
            fetched = httpx.get(urllib.parse.urljoin(page_url, path), timeout=10)
            assert fetched.status_code == 200 and fetched.content == (out / path).read_bytes()
    for name in ("README.md", "dataset.json", "shards/webdataset.json", "shards/"):
        answer = httpx.get(urllib.parse.urljoin(page_url, name), timeout=10)
        assert name in parsed.hrefs and answer.status_code == 200, name
