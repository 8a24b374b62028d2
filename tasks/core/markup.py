"""Escaping for every page codecflow writes: HTML (the evaluation report, the eval-codec page,
the codec comparison, the runs index) and Markdown (the dataset card, Prefect artifacts).

One rule: a value the page did not write itself goes through these helpers.

- HTML text and attribute values: `esc` (html.escape, quotes included).
- HTML links and media sources: `relative_url` (a path relative to the page, each segment
  percent-encoded, so a name such as `javascript:alert(1)` or `x'><img ...>` stays a file name)
  or `web_url` (http and https with a host only); `link` renders either, or the text alone.
  `file://`, `javascript:`, `data:`, absolute and protocol-relative paths are never linked.
- Markdown: `md_code` (an inline code span no value can close early) and `md_text` (text with
  HTML and Markdown's own syntax characters escaped).
"""

from __future__ import annotations

import html
import re
import urllib.parse
from typing import Any

__all__ = ["esc", "link", "md_code", "md_text", "relative_url", "web_url"]


def esc(text: Any) -> str:
    """`text` (str() of it) for HTML text or a quoted attribute value: `<>&"'` escaped."""
    return html.escape(str(text), quote=True)


def relative_url(path: str) -> str | None:
    """`path`, relative to the page, as a URL with each segment percent-encoded; None for an
    absolute path (`/x`, `//host/x`), a backslash path or nothing."""
    if not path or path.startswith("/") or "\\" in path:
        return None
    return "/".join(urllib.parse.quote(part, safe="") for part in path.split("/"))


def web_url(value: str) -> str | None:
    """`value` when it is an http(s) URL with a host and no whitespace or control character;
    None for every other scheme (`javascript:`, `data:`, `file:`, `s3:`)."""
    if not value or any(ord(c) < 33 or c == "\x7f" for c in value):
        return None
    parts = urllib.parse.urlsplit(value)
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def link(url: str | None, text: Any) -> str:
    """`<a href="url">text</a>`, or the escaped text alone when there is no safe URL."""
    return f'<a href="{esc(url)}">{esc(text)}</a>' if url else esc(text)


def md_code(value: Any) -> str:
    """An inline code span of `value` that no backtick in it can close early (CommonMark: a
    fence longer than any run of backticks inside, padded when it starts or ends with one).
    Inside a code span neither HTML nor Markdown is interpreted; newlines become spaces."""
    text = " ".join(str(value).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


#: Characters with a meaning in Markdown (CommonMark's ASCII punctuation that can be escaped).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md_text(value: Any) -> str:
    """`value` as Markdown text: HTML escaped (`<` cannot open a tag), Markdown's syntax
    characters backslash-escaped (no link, emphasis or heading), newlines as spaces."""
    text = " ".join(str(value).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
