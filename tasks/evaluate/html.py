"""HTML the report pages share: the style sheet, escaping, links, number formatting, tables and
audio players, and the codec comparison page (`compare-codecs`).

The one rule for every page (the evaluation report, the eval-codec page, the comparison page,
the runs index, and the dataset card in Markdown) is `codecflow.tasks.core.markup`'s: a value
the page did not write itself is escaped in text and attributes, and links and media sources
are relative paths (percent-encoded) or http(s) URLs only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from codecflow.tasks.core.markup import esc, relative_url
from codecflow.tasks.data.records import CodecComparison

__all__ = [
    "COMPARISON_COLUMNS",
    "MISSING_REASONS",
    "SORT_JS",
    "STYLE",
    "audio",
    "cell",
    "comparison_html",
    "fmt",
    "image",
    "measured",
    "plain",
    "skipped",
    "sortable_table",
    "speech_parts",
    "stamp",
    "table",
    "wide",
]

#: Every page fits a 1 280 px window (tests/ops/test_pages_browser.py): wide tables scroll
#: inside their own box, pictures shrink to the page.
STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
.wide{overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.flag{color:#b00;font-weight:bold}.skipped{color:#777}
.missing{color:#777;font-size:small}.stamp{color:#777;font-size:small}
img{max-width:100%;height:auto}audio{vertical-align:middle;max-width:100%}
pre{overflow-x:auto}"""


def cell(value: Any) -> str:
    """A value as a page shows it: formatted (`fmt`), then escaped (`esc`)."""
    return esc(fmt(value))


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """A table of already escaped cells, in a box that scrolls when it is wider than the page;
    `header` None: no header row (a table of labelled rows)."""
    head = f"<tr>{''.join(f'<th>{html.escape(h)}</th>' for h in header)}</tr>\n" if header else ""
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return wide(f"<table>{head}{body}</table>")


def measured(value: Any, reason: str | None) -> str:
    """A metric's cell: its value, or "–" with why it is missing (`reason`, else "not
    measured"), so that no blank goes unexplained."""
    if value is not None:
        return cell(value)
    return f'– <span class="missing">({esc(reason or "not measured")})</span>'


#: Why a quality metric can be None (tasks/evaluate/quality.py), by its key.
MISSING_REASONS = {
    "pesq_wb": "PESQ refused the pair: no speech, or too short",
    "stoi": "too short for STOI, or no speech frame",
}


def stamp() -> str:
    """The line every page ends with: codecflow's version, the git commit of its checkout when
    there is one, and when the page was written (UTC)."""
    from codecflow.tasks.core.provenance import provenance

    made = provenance()
    commit = f", commit {esc(made.commit)}" if made.commit else ""
    return f'<p class="stamp">codecflow {esc(made.version)}{commit}, written {esc(made.date)}</p>'


def sortable_table(head: str, body: str) -> str:
    """A table whose header cells `head` sort its rows `body` on a click (`SORT_JS`), in a box
    that scrolls when it is wider than the page."""
    return wide(
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def wide(html_table: str) -> str:
    """`html_table` in a box that scrolls sideways when it is wider than the page."""
    return f'<div class="wide">{html_table}</div>'


def audio(src: str) -> str:
    """A player of the page-relative file `src` (nothing when `src` is not relative)."""
    url = relative_url(src)
    if url is None:
        return esc(src)
    return f'<audio controls preload="none" src="{html.escape(url, quote=True)}"></audio>'


def image(src: str, alt: str, extra: str = "") -> str:
    """An image of the page-relative file `src` (its name as text when `src` is not relative)."""
    url = relative_url(src)
    if url is None:
        return esc(src)
    return f'<img src="{html.escape(url, quote=True)}" alt="{esc(alt)}"{extra}>'


def skipped(reason: str | None) -> str:
    return f'<p class="skipped">skipped: {html.escape(reason)}</p>' if reason else ""


#: The codec comparison's columns: (header, CodecComparisonRow field); `tasks.evaluate.compare`.
COMPARISON_COLUMNS = (
    ("tokenizer", "tokenizer"),
    ("levels", "num_levels"),
    ("codebook", "codebook_size"),
    ("kbit/s", "bitrate_kbps"),
    ("tokens/s", "tokens_per_second"),
    ("SI-SDR (dB)", "si_sdr_db"),
    ("PESQ-WB", "pesq_wb"),
    ("STOI", "stoi"),
    ("mel L1", "mel_l1"),
    ("spectral loss", "spectral_loss"),
    ("encode x real time", "encode_x_realtime"),
    ("decode x real time", "decode_x_realtime"),
)


def comparison_html(table: CodecComparison, plot: str) -> str:
    """The codec comparison page: one row per tokenizer, the plot, and the first segment through
    each (files relative to the report folder)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in COMPARISON_COLUMNS) + "<th>audio</th>"
    rows = []
    for row in table.rows:
        values = row.to_json()
        cells = [
            f'<td data-v="{html.escape(str(values[key]))}">'
            + (
                html.escape(plain(values[key]))
                if values[key] is not None
                else measured(None, MISSING_REASONS.get(key))
            )
            + (" (untrained)" if key == "tokenizer" and not row.trained else "")
            + "</td>"
            for _, key in COMPARISON_COLUMNS
        ]
        rows.append("<tr>" + "".join(cells) + f"<td>{audio(row.audio)}</td></tr>")
    body = "\n".join(rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>codecflow codec comparison</title>
<style>{STYLE}</style></head>
<body>
<h1>Tokenizers compared on the same held-out segments</h1>
<p>{len(table.segments)} validation segment(s) of {html.escape(table.manifest)},
{table.audio_seconds:.3g} s of audio in all; each metric is the mean over the segments, scored
at 16 kHz against the original (PESQ-WB: ITU-T P.862.2, 1.04-4.64; STOI: 0-1; x real time:
audio seconds per compute second). The first segment as it is: {audio(table.original)}</p>
{sortable_table(head, body)}
{image(plot, "PESQ-WB and STOI against bitrate, one point per tokenizer")}
{stamp()}
{SORT_JS}
</body></html>
"""


def speech_parts(speech: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The voice and words sections of summary.json's `speech`; empty when it was turned off."""
    if speech.get("skipped"):
        return {}, {}
    return speech.get("voice", {}), speech.get("words", {})


def plain(value: Any) -> str:
    """A number as people read it in a table: 78,810 rather than 7.881e+04."""
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return fmt(value)


SORT_JS = """<script>
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.style.cursor = "pointer";
  th.title = "sort by " + th.textContent;
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var up = th.dataset.dir !== "asc";
    th.closest("tr").querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = up ? "asc" : "desc";
    var key = function (tr) {
      var v = tr.cells[col].dataset.v;
      return v === "" || v === undefined ? null : (isNaN(Number(v)) ? v : Number(v));
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : String(x) < String(y) ? -1 : 1;
      return up ? c : -c;
    });
    rows.forEach(function (tr) { body.appendChild(tr); });
  });
});
</script>"""
