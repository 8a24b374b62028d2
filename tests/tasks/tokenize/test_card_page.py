"""The dataset card's page (`index.html` in a token dataset's folder): the card rendered as
HTML, its front matter as text, the shards listed with their sizes; nothing the page did not
write is markup, and links are relative paths or http(s) only."""

from __future__ import annotations

import re
from pathlib import Path

from codecflow.tasks.data.records import DatasetInfo, DatasetTotals, ShardEntry
from codecflow.tasks.data.token_dataset import read_dataset_info
from codecflow.tasks.tokenize.card import CARD_NAME
from codecflow.tasks.tokenize.card_page import (
    PAGE_NAME,
    card_page,
    render_markdown,
    split_front_matter,
)


def _hrefs(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]*)"', page)


def test_the_page_is_the_card_rendered_with_the_shards_below(tiny_dataset: Path) -> None:
    card = (tiny_dataset / CARD_NAME).read_text()
    page = (tiny_dataset / PAGE_NAME).read_text()
    info = read_dataset_info(tiny_dataset)
    assert page == card_page(card, info)  # what finalize wrote, from the card and dataset.json
    front, body = split_front_matter(card)
    assert front.startswith("pretty_name:") and body.lstrip().startswith("# mu\\-law\\-256 tokens")
    assert "<details><summary>Front matter" in page and "license: cc-by-4.0" in page
    assert '<pre><code class="language-python">import pyarrow as pa' in page  # the snippets
    # The card first, then the files: every shard with its size, linked relative to the folder.
    files = page.index("<h2>Files</h2>")
    assert page.index("<h2>Loading</h2>") < files
    for shard in info.shards:
        assert f'<a href="{shard.file}">{shard.file}</a>' in page[files:]
        assert f"{shard.bytes:,} B" in page[files:]
    assert "WebDataset" not in page[files:]  # arrow only: no tar column, no index
    for href in _hrefs(page):  # the docs' pages, or files of the folder
        assert href.startswith("https://") or (":" not in href and not href.startswith("/"))


def test_markdown_renders_no_markup_and_no_unsafe_link() -> None:
    hostile = (
        "<script>alert(1)</script> <img src=x onerror=alert(1)>\n\n"
        "[a](javascript:alert(1)) [b](file:///etc/passwd) [c](/etc/passwd) "
        "[d](//evil.example/x) [e](data:text/html,hi) ![f](data:image/png;base64,AA) "
        "[g](vbscript:x) <mailto:a@b.c>\n\n"
        "[ok](shards/train-00000.arrow) [web](https://example.org/a) <http://example.org/b>\n\n"
        "| a | b |\n|---|---:|\n| `x\\|y` | 2 |\n"
    )
    html = render_markdown(hostile)
    assert "<script" not in html and "<img src=x" not in html and "&lt;script&gt;" in html
    assert _hrefs(html) == [
        "shards/train-00000.arrow",
        "https://example.org/a",
        "http://example.org/b",
    ]
    assert "<table>" in html and "<code>x|y</code>" in html  # GFM tables


def test_the_page_escapes_what_the_dataset_names() -> None:
    """A tokenizer or shard named with markup (a user's spec, a hand-made dataset.json) is text
    on the page, and a shard file that is no relative path is not linked."""
    evil = "<img src=x onerror=alert(1)>"
    shard = ShardEntry(
        name=evil, split="train", file="/etc/passwd", rows=1, frames=2, tokens=2, bytes=3,
        sha256="00", audio_seconds=0.1, webdataset_file=f"shards/{evil}.tar", webdataset_bytes=4,
    )  # fmt: skip
    info = DatasetInfo(
        fingerprint="f", format_version=4, manifest="m", tokenizer={"name": evil}, dtype="uint8",
        formats=("arrow", "webdataset"), layout="l", schema="s", shards=(shard,),
        totals=DatasetTotals(segments=1, audio_hours=0.0, frames=2, tokens=2, bytes=3),
    )  # fmt: skip
    page = card_page(f"---\nx: '{evil}'\n---\n# {evil}\n", info)
    assert "<img" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") >= 4
    assert 'href="/etc/passwd"' not in page and "/etc/passwd" in page
    assert "shards/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.tar" in _hrefs(page)
    assert 'href="shards/webdataset.json"' in page  # with WebDataset twins: their index
