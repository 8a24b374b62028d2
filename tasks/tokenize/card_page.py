"""The dataset card as a page: `index.html` in a token dataset's folder, the card (`README.md`)
rendered as HTML with the dataset's files listed below it (shards with their sizes), every link
relative to the folder.

Why a file written by finalize, and not the files server rendering README.md on request: the
page then opens wherever the folder is. The files server (codecflow/cli/files_server.py) answers
a folder's URL with its `index.html`, so the Prefect UI's "open the token dataset" link shows the
card with no change to the server; a user opening the folder (a file manager, `file://`) or a
copy of it (a bucket served as a website, a Hub repository) finds the same page, where no
codecflow server runs. It is written like the card: atomically, before `dataset.json`, from the
same inputs (no date, no output path), so resumed, Dask and S3 runs write the same bytes.

Markdown is rendered by markdown-it-py (CommonMark and GFM tables; it comes with the pipeline
extra through rich), with raw HTML off: a `<` in a card is text. Its link check is replaced by
the project's rule (`tasks.core.markup`): relative paths and http(s) URLs only, never
`javascript:`, `data:`, `file:` or an absolute path. The YAML front matter is shown as escaped
text. What this page writes itself goes through `esc` and `relative_url`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

from codecflow.tasks.core import storage
from codecflow.tasks.core.markup import esc, link, relative_url, web_url
from codecflow.tasks.data.records import DatasetInfo, ShardEntry
from codecflow.tasks.data.token_shards import WEBDATASET_INDEX

__all__ = ["PAGE_NAME", "card_page", "render_markdown", "split_front_matter", "write_card_page"]

#: The page's name in the dataset folder: what a web server answers for the folder.
PAGE_NAME = "index.html"

_STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}code{background:#f6f6f6}
details{margin:1em 0}.files{border-top:2px solid #ccc;margin-top:2em}"""

#: The dataset's other files, in the order the page lists them, with what each holds.
_OTHER_FILES = (
    ("README.md", "this card, as Markdown with its YAML front matter"),
    ("dataset.json", "the commit: every shard with its rows, bytes and sha256"),
    ("size_report.json", "the size accounting"),
    ("rejects.parquet", "the segments that could not be encoded, and why"),
    ("plan.parquet", "the manifest rows with their shard"),
    (WEBDATASET_INDEX, "the WebDataset twins' facts and tars, per split"),
    ("shards/", "the shards and their commit markers"),
)


def _safe_link(url: str) -> bool:
    """markdown-it's link check, replaced: a relative path or an http(s) URL, nothing else."""
    parts = urllib.parse.urlsplit(url)
    relative = not parts.scheme and not parts.netloc and relative_url(url) is not None
    return relative or web_url(url) is not None


def render_markdown(text: str) -> str:
    """`text` (CommonMark with GFM tables) as HTML: raw HTML escaped, unsafe links left as text."""
    from markdown_it import MarkdownIt  # the pipeline extra's (rich's); not the core install's

    md = MarkdownIt("js-default")  # html off, tables on, no linkify, no typographer
    md.validateLink = _safe_link  # type: ignore[method-assign]
    return md.render(text)


def split_front_matter(card: str) -> tuple[str, str]:
    """(the YAML front matter, the Markdown after it); ("", card) when it has none."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end != -1:
            return card[4 : end + 1], card[end + 5 :]
    return "", card


def _size(n: int) -> str:
    """Bytes for a reader: exact, and in binary units above 1 KiB."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n:,} B" if unit == "B" else f"{value:.1f} {unit} ({n:,} B)"


def _file_cell(path: str | None, size: int | None) -> str:
    if path is None:
        return "<td>–</td><td>–</td>"
    return f'<td>{link(relative_url(path), path)}</td><td class="n">{esc(_size(size or 0))}</td>'


def _shard_rows(shards: Sequence[ShardEntry], tars: bool) -> str:
    columns = ["shard", "split", "rows", "frames", "Arrow", "size"]
    columns += ["WebDataset", "size"] if tars else []
    rows = ["<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for s in shards:
        cells = (
            f"<td>{esc(s.name)}</td><td>{esc(s.split)}</td><td class='n'>{s.rows:,}</td>"
            f"<td class='n'>{s.frames:,}</td>{_file_cell(s.file, s.bytes)}"
        )
        if tars:
            cells += _file_cell(s.webdataset_file, s.webdataset_bytes)
        rows.append(f"<tr>{cells}</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _files(info: DatasetInfo) -> str:
    """The files section: every shard with its sizes, then the dataset's other files."""
    tars = "webdataset" in info.formats
    total = sum(s.bytes + (s.webdataset_bytes or 0) for s in info.shards)
    others = [
        f"<li>{link(relative_url(name), name)}: {esc(what)}</li>"
        for name, what in _OTHER_FILES
        if tars or name != WEBDATASET_INDEX
    ]
    return (
        f'<section class="files"><h2>Files</h2>\n<p>{len(info.shards)} shards, '
        f"{esc(_size(total))} in all.</p>\n{_shard_rows(info.shards, tars)}\n"
        f"<ul>{''.join(others)}</ul></section>"
    )


def card_page(card: str, info: DatasetInfo) -> str:
    """The page of the card text `card` (`tasks.tokenize.card.dataset_card`) of the dataset whose
    dataset.json holds `info`."""
    front, body = split_front_matter(card)
    title = f"{info.tokenizer['name']} tokens (codecflow)"
    meta = (
        f"<details><summary>Front matter (metadata for the Hugging Face Hub)</summary>"
        f"<pre>{esc(front)}</pre></details>\n"
        if front
        else ""
    )
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style></head><body>\n"
        f"{render_markdown(body)}{meta}{_files(info)}\n</body></html>\n"
    )


def write_card_page(out: str, card: str, info: DatasetInfo) -> str:
    """Write the page into the dataset folder `out` atomically (one PUT on an object store); its
    URL."""
    url = storage.join(out, PAGE_NAME)
    with storage.open_atomic_write(url) as f:
        f.write(card_page(card, info).encode())
    return url
