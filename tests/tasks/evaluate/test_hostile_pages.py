"""Every HTML page codecflow writes, fed hostile names, builds exactly the elements and attributes
it builds for plain names (or fewer: a player or link whose target is not a relative path
becomes text), and links only relative paths and http(s) URLs (issue 23: stored
XSS through a tar member's name in the eval-codec page, `javascript:` links in the runs index).

Each page is rendered twice, once with a plain value and once with each hostile value in every
field it takes from outside (tar member names, folder names, summary.json's fields), parsed with
html.parser, and the two structures compared."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from report_records import summary_dict as _summary_dict

from codecflow.tasks.core.markup import link, md_code, md_text, relative_url, web_url
from codecflow.tasks.data.records import CodecComparison, EvaluationSummary
from codecflow.tasks.evaluate.codec import _html as eval_codec_html
from codecflow.tasks.evaluate.html import comparison_html
from codecflow.tasks.evaluate.report import evaluation_html
from codecflow.tasks.evaluate.runs_index import write_runs_index

HOSTILE = [
    "x'\"><img src=x onerror=alert(1)>",
    "javascript:alert(document.domain)",
    "javascript://%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "//evil.example/x",
    "x</title><script>alert(1)</script>",
]


class _Structure(HTMLParser):
    """The page's elements as (tag, attribute names), and every href and src value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, tuple[str, ...]]] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, tuple(sorted(name for name, _ in attrs))))
        self.urls += [v or "" for name, v in attrs if name in ("href", "src")]


def _structure(page: str) -> _Structure:
    parsed = _Structure()
    parsed.feed(page)
    parsed.close()
    return parsed


def _assert_same_structure(render: Callable[[str], str]) -> None:
    plain = _structure(render("plain-name"))
    for value in HOSTILE:
        hostile = _structure(render(value))
        # Nothing the plain page does not have (a player or a link may become text instead).
        assert not Counter(hostile.elements) - Counter(plain.elements), value
        for url in hostile.urls:
            parts = urlsplit(url)
            assert parts.scheme in ("", "http", "https") and not url.startswith("//"), (value, url)
            assert not parts.scheme or parts.netloc, (value, url)


def _summary(value: str) -> EvaluationSummary:
    summary = _summary_dict(tokenizer=value, layout=value, checkpoint=value, dataset=value)
    summary.update(prompt=value, settings={"prompt": value})
    summary["samples"][1]["flags"] = [value]
    summary["speech"]["words"].update(transcripts=[value, ""], prompt_transcript=value)
    regen = summary["regeneration"]
    regen["source"] = value
    regen["runs"][0].update(files=[value, f"regen/{value}.wav"], transcripts=[value, value])
    return EvaluationSummary.from_json(summary, "summary.json")


def test_the_evaluation_report() -> None:
    _assert_same_structure(lambda value: evaluation_html(_summary(value)))


def test_the_eval_codec_page() -> None:
    """Its segment ids are tar members' names (acquire accepts quotes and brackets)."""
    rows = [{"levels": 1, "spectral_loss": 0.5, "note": None}, {"levels": 2, "spectral_loss": 0.4}]
    clip = np.zeros(4, dtype=np.float32)
    _assert_same_structure(lambda value: eval_codec_html(rows, [(value, clip)], [1, 2]))


def _comparison(value: str) -> CodecComparison:
    row = {
        "tokenizer": value, "num_levels": 1, "codebook_size": 256, "sample_rate": 16000,
        "frame_rate": 16000, "bitrate_kbps": 128, "tokens_per_second": 16000, "si_sdr_db": 30,
        "pesq_wb": None, "stoi": 0.9, "mel_l1": 0.1, "spectral_loss": 0.2,
        "encode_x_realtime": 100, "decode_x_realtime": 100, "trained": True, "audio": value,
    }  # fmt: skip
    table = {
        "kind": "codecflow-codec-comparison", "manifest": value, "segments": [value],
        "audio_seconds": 1.0, "original": value, "rows": [row], "identity": {},
    }  # fmt: skip
    return CodecComparison.from_json(table, "comparison.json")


def test_the_codec_comparison_page() -> None:
    _assert_same_structure(lambda value: comparison_html(_comparison(value), value))


def test_the_runs_index(tmp_path: Path) -> None:
    """A report folder's name and a summary's dataset and checkpoint become links there."""
    pages: dict[str, str] = {}

    def render(value: str) -> str:
        if value not in pages:
            root = tmp_path / f"root{len(pages)}"
            folder = root / value.replace("/", "_") / "report"
            folder.mkdir(parents=True)
            summary = _summary_dict(dataset=value, checkpoint=value, tokenizer=value)
            (folder / "summary.json").write_text(json.dumps(summary))
            pages[value] = write_runs_index(root).read_text()
        return pages[value]

    _assert_same_structure(render)
    assert "javascript:" not in "".join(_structure(p).urls[0] for p in pages.values())


@pytest.mark.parametrize(
    ("value", "relative", "web"),
    [
        ("report/index.html", "report/index.html", None),
        ("javascript:alert(1)/index.html", "javascript%3Aalert%281%29/index.html", None),
        ("x'\"><b>.wav", "x%27%22%3E%3Cb%3E.wav", None),
        ("/etc/passwd", None, None),
        ("//evil.example/x", None, None),
        (
            "https://example.org/tokens",
            "https%3A//example.org/tokens",
            "https://example.org/tokens",
        ),
        ("http:/no-host", "http%3A/no-host", None),
        ("https://example.org/\nx", "https%3A//example.org/%0Ax", None),
        ("data:text/html,x", "data%3Atext/html%2Cx", None),
    ],
)
def test_urls(value: str, relative: str | None, web: str | None) -> None:
    assert relative_url(value) == relative
    assert web_url(value) == web
    assert link(None, value) == link(web_url(value), value) or web is not None


def test_markdown_helpers_keep_values_inert() -> None:
    assert md_code("plain") == "`plain`"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x`") == "`` `x` ``"
    assert md_code("two\nlines") == "`two lines`"
    assert md_text("<img src=x>") == "&lt;img src=x&gt;"
    assert md_text("[click](javascript:alert(1))") == "\\[click\\]\\(javascript:alert\\(1\\)\\)"
    assert md_text("# not a heading") == "\\# not a heading"
    assert link("report/index.html", "<b>") == '<a href="report/index.html">&lt;b&gt;</a>'
