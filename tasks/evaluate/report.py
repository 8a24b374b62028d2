"""Pages of evaluation reports: one run's `index.html`, the side-by-side runs index, and the
markdown and tables the evaluate flow publishes as Prefect artifacts.

Everything here reads the `summary.json` record (`tasks.data.records.EvaluationSummary`) that
`tasks.evaluate.lm` writes; nothing computes.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import atomic_file
from codecflow.tasks.data.records import SUMMARY_KIND, CodecComparison, EvaluationSummary

__all__ = [
    "COMPARISON_COLUMNS",
    "comparison_html",
    "RUNS_BITS_PNG",
    "RUNS_INDEX_COLUMNS",
    "evaluation_html",
    "find_reports",
    "runs_index_rows",
    "samples_table",
    "summary_markdown",
    "write_runs_index",
]

_STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.flag{color:#b00;font-weight:bold}.skipped{color:#777}
audio{vertical-align:middle}"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _esc(value: Any) -> str:
    return html.escape(_fmt(value))


def _audio(src: str) -> str:
    return f'<audio controls preload="none" src="{html.escape(src)}"></audio>'


def _skipped(reason: str | None) -> str:
    return f'<p class="skipped">skipped: {html.escape(reason)}</p>' if reason else ""


def evaluation_html(summary: EvaluationSummary) -> str:
    """The report page of one evaluation (files referenced relative to the report folder)."""
    levels = range(summary.num_levels)
    overview = _overview(summary)
    overview_rows = [(html.escape(k), _esc(v)) for k, v in overview]
    level_rows = [
        (
            str(k),
            _esc(summary.val_loss_per_level[k]),
            _esc(summary.val_perplexity_per_level[k]),
        )
        for k in levels
    ]
    roundtrip = summary.prompt_roundtrip
    speech = summary.speech
    voice, words = _speech_parts(speech)
    sample_rows = [
        _sample_row(str(i), f"continuation_{i}.wav", stats, voice, words, i)
        for i, stats in enumerate(summary.samples)
    ]
    truth = summary.true_continuation
    if truth is not None:
        heard = truth.get("speech") or {}
        truth_voice = {
            "prompt_vs_sample": [heard.get("voice_similarity_to_prompt")],
            "sample_first_vs_second_half": [heard.get("voice_similarity_first_vs_second_half")],
        }
        truth_words = {"transcripts": [heard.get("transcript")]}
        sample_rows.insert(
            0, _sample_row("true", truth["file"], truth["stats"], truth_voice, truth_words, 0)
        )
    spectrograms = _true_spectrogram(truth) + "\n".join(
        f'<p>sample {i}</p><img src="spectrogram_{i}.png" alt="spectrogram of the prompt and '
        f'continuation {i}" width="100%">'
        for i in range(len(summary.samples))
    )
    regen_parts = _regeneration_parts(summary)
    prompt_words = words.get("prompt_transcript")
    settings_json = html.escape(json.dumps(summary.settings, indent=2))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>codecflow evaluation: {html.escape(summary.tokenizer)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>codecflow evaluation: {html.escape(summary.tokenizer)} LM</h1>
{_table(["", ""], overview_rows)}
<h2>Prompt</h2>
<p>{_esc(summary.prompt)} ({summary.prompt_seconds:.3g} s): {_audio("prompt.wav")}
through the tokenizer: {_audio("prompt_roundtrip.wav")}
(SI-SDR {_fmt(roundtrip.si_sdr_db)} dB, log-mel L1 {_fmt(roundtrip.mel_l1)},
PESQ-WB {_fmt(roundtrip.pesq_wb)}, STOI {_fmt(roundtrip.stoi)})</p>
{_truth_line(truth)}
<p>recognised words in the prompt: {_esc(prompt_words)}; WER against the given text:
{_esc(words.get("prompt_wer"))}</p>
<h2>Continuations</h2>
{_skipped(speech.get("skipped"))}{_skipped(voice.get("skipped"))}{_skipped(words.get("skipped"))}
{
        _table(
            [
                "#",
                "prompt + continuation",
                "RMS dBFS",
                "clipping",
                "silence",
                "band flatness",
                "crest factor",
                "flags",
                "voice sim. to prompt",
                "voice sim. 1st/2nd half",
                "recognised words",
            ],
            sample_rows,
        )
    }
{spectrograms}
<h2>Validation loss per level (held-out split)</h2>
<p>weighted loss {_fmt(summary.val_loss)} nats/token;
{_plain(summary.val_bits_per_audio_second)} bits per second of audio (unweighted)</p>
{_table(["level", "loss (nats/token)", "perplexity"], level_rows)}
{_curves_html(summary.loss_curves)}
<h2>Regeneration from the first levels</h2>
{"".join(regen_parts)}
<h2>Settings</h2>
<pre>{settings_json}</pre>
</body></html>
"""


def _overview(summary: EvaluationSummary) -> list[tuple[str, Any]]:
    """The first table: what was evaluated, on what, and how fast it generated."""
    overview = [
        ("tokenizer", summary.tokenizer),
        ("levels x codebook", f"{summary.num_levels} x {summary.codebook_size}"),
        ("layout", summary.layout),
        ("level weights", summary.level_weights),
        ("checkpoint", f"{summary.checkpoint} (step {summary.checkpoint_step})"),
        (
            "dataset",
            f"{summary.dataset}: {summary.audio_hours:.4g} h, "
            f"{summary.n_tokens:,} tokens, {summary.dataset_bytes:,} bytes",
        ),
        (
            "train loss first / last",
            f"{_fmt(summary.train_loss_first)} / {_fmt(summary.train_loss_last)}",
        ),
        (
            "context",
            f"{summary.context_tokens} tokens = {summary.context_seconds * 1000:.4g} ms of audio",
        ),
        (
            "generation",
            f"{summary.generated_tokens:,} tokens in "
            f"{summary.generation_seconds:.3g} s: {summary.generation_tokens_per_s:,.0f} "
            f"tokens/s, real-time factor {_fmt(summary.rtf)} (compute s per audio s; "
            f"below 1 is faster than real time), {summary.n_prefills} prefills",
        ),
    ]
    return overview


def _regeneration_parts(summary: EvaluationSummary) -> list[str]:
    """The regeneration section: the source, its round trip, and one table per `keep_levels`."""
    regen = summary.regeneration
    regen_parts = [
        f"<p>source: {_esc(regen.source)} ({regen.seconds:.3g} s) "
        f"{_audio('regen/original.wav')} through the tokenizer: "
        f"{_audio('regen/roundtrip.wav')}</p>"
    ]
    for run in regen.runs:
        k = run["keep_levels"]
        if run.get("skipped"):
            regen_parts.append(f"<h3>keep {k} level(s)</h3>" + _skipped(run["skipped"]))
            continue
        rows = [
            (
                str(i),
                _audio(f),
                _esc(_at(run.get("voice_similarity_to_original"), i)),
                _esc(_at(run.get("word_error_rate_to_original"), i)),
                _words(run.get("transcripts"), i),
            )
            for i, f in enumerate(run["files"])
        ]
        regen_parts.append(
            f"<h3>keep {k} level(s), generate the other {summary.num_levels - k}</h3>"
            + _skipped(run.get("metrics_skipped"))
            + _table(
                [
                    "#",
                    "audio",
                    "voice similarity to original",
                    "WER to original's words",
                    "recognised words",
                ],
                rows,
            )
        )
    return regen_parts


def _sample_row(
    name: str,
    file: str,
    stats: Mapping[str, Any],
    voice: Mapping[str, Any],
    words: Mapping[str, Any],
    i: int,
) -> tuple[str, ...]:
    """A row of the continuations table: the audio, its acoustic numbers, flags and speech."""
    flags = " ".join(stats["flags"])
    return (
        html.escape(name),
        _audio(file),
        _esc(stats["rms_dbfs"]),
        _esc(stats["clipping_fraction"]),
        _esc(stats["silence_fraction"]),
        _esc(stats.get("band_flatness")),  # absent from reports before issue 15
        _esc(stats.get("crest_factor")),
        f'<span class="flag">{html.escape(flags)}</span>' if flags else "ok",
        _esc(_at(voice.get("prompt_vs_sample"), i)),
        _esc(_at(voice.get("sample_first_vs_second_half"), i)),
        _words(words.get("transcripts"), i),
    )


def _truth_line(truth: Mapping[str, Any] | None) -> str:
    if truth is None:
        return ""
    return (
        f"<p>the prompt and the recording's own next {truth['seconds']:.3g} s (the true "
        f"continuation, first row below): {_audio(truth['file'])}</p>"
    )


def _true_spectrogram(truth: Mapping[str, Any] | None) -> str:
    if truth is None:
        return ""
    return (
        '<p>true continuation</p><img src="spectrogram_true.png" alt="spectrogram of the '
        'prompt and its true continuation" width="100%">\n'
    )


def _curves_html(curves: Mapping[str, str] | None) -> str:
    """The training's loss curves (train per step, validation at checkpoints), when drawn."""
    if not curves:
        return _skipped("no training log beside the checkpoint")
    alts = {"total": "train and validation loss", "per_level": "loss per level"}
    return "\n".join(
        f'<p>{alts.get(kind, kind)}</p><img src="{html.escape(name)}" alt="{alts.get(kind, kind)}'
        f' against training steps">'
        for kind, name in curves.items()
    )


def _speech_parts(speech: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The voice and words sections of summary.json's `speech`; empty when it was turned off."""
    if speech.get("skipped"):
        return {}, {}
    return speech.get("voice", {}), speech.get("words", {})


def _at(values: Sequence[Any] | None, i: int) -> Any:
    return values[i] if values is not None and i < len(values) else None


def _words(values: Sequence[Any] | None, i: int) -> str:
    """A transcript cell: the words, "(no words)" for an empty transcript, "–" when unknown."""
    text = _at(values, i)
    return "(no words)" if text == "" else _esc(text)


def summary_markdown(summary: EvaluationSummary, report_link: str) -> str:
    """A short markdown digest of one evaluation, for a Prefect artifact; `report_link` is the
    markdown that leads to the report (a link, or its path where no server serves it)."""
    flagged = [i for i, s in enumerate(summary.samples) if s["flags"]]
    per_level = " | ".join(f"{x:.3f}" for x in summary.val_loss_per_level)
    return (
        f"### {summary.tokenizer} LM, step {summary.checkpoint_step}\n\n"
        f"{report_link}\n\n"
        f"| val loss | bits / audio s | context | tokens/s | RTF (compute s / audio s) "
        f"| flagged samples |\n"
        f"|---|---|---|---|---|---|\n"
        f"| {summary.val_loss:.4f} | {summary.val_bits_per_audio_second:,.0f} "
        f"| {summary.context_seconds * 1000:.4g} ms | "
        f"{summary.generation_tokens_per_s:,.0f} | {_fmt(summary.rtf)} "
        f"| {len(flagged)} of {len(summary.samples)} |\n\n"
        f"Validation loss per level: {per_level}\n"
        + (
            f"\nReused the committed report of the same checkpoint, data, prompts and settings "
            f"in `{summary.reused_from}` (not computed again).\n"
            if summary.reused_from
            else ""
        )
    )


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def samples_table(summary: EvaluationSummary) -> list[dict[str, Any]]:
    """One row per continuation: acoustic numbers, flags and speech metrics."""
    voice, words = _speech_parts(summary.speech)
    return [
        {
            "sample": i,
            "rms_dbfs": round(s["rms_dbfs"], 2),
            "clipping_fraction": round(s["clipping_fraction"], 4),
            "silence_fraction": round(s["silence_fraction"], 3),
            "voiced_flatness": round(s["voiced_flatness"], 3),
            "band_flatness": _rounded(s.get("band_flatness"), 3),
            "crest_factor": _rounded(s.get("crest_factor"), 2),
            "flags": " ".join(s["flags"]) or "ok",
            "voice_similarity_to_prompt": _at(voice.get("prompt_vs_sample"), i),
            "words": _at(words.get("transcripts"), i),
        }
        for i, s in enumerate(summary.samples)
    ]


#: Folders a report never lies in, and which can be huge (the extracted corpus, token shards).
_NOT_REPORTS = {"acquire", "tokens", "checkpoints", "checkpoint", "codec", "regen", "download"}

#: How deep below the index folder reports are looked for: <run>/report, <run>/evaluations/<id>,
#: <run>/lm/evaluations/<id>.
_MAX_DEPTH = 4


def find_reports(root: Path) -> list[Path]:
    """Every evaluation report folder below `root` (a summary.json of kind evaluation), looked
    for at most `_MAX_DEPTH` folders down and never inside data folders: a run folder holds the
    extracted corpus, which a full walk would crawl."""
    root = Path(root)
    found = []
    for folder, subfolders, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        # Hidden folders are never reports: atomic_dir's `.<name>.<8>.tmp` and `.<name>.old`
        # hold a whole summary.json when a kill lands just before (or during) the rename.
        subfolders[:] = sorted(
            d
            for d in subfolders
            if d not in _NOT_REPORTS and not d.startswith(".") and depth < _MAX_DEPTH
        )
        if "summary.json" not in files:
            continue
        try:
            kind = json.loads((Path(folder) / "summary.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            continue
        if kind == SUMMARY_KIND:
            found.append(Path(folder))
    return sorted(found)


#: The runs index's columns: what tells the post's experiments apart, then what they scored,
#: then where the report's inputs are.
RUNS_INDEX_COLUMNS = (
    "report",
    "date",
    "tokenizer",
    "levels",
    "layout",
    "level weights",
    "step",
    "context",
    "val loss",
    "level 0 loss",
    "bits / audio s",
    "flagged samples",
    "voice sim. to prompt",
    "regen voice sim. (keep 1)",
    "tokens/s",
    "RTF",
    "checkpoint",
    "dataset",
)

#: The index's plot of each run's validation bits per second of audio, beside index.html.
RUNS_BITS_PNG = "runs_bits_per_audio_second.png"


def _mean(values: Sequence[Any]) -> float | None:
    present = [x for x in values if x is not None]
    return sum(present) / len(present) if present else None


def _report_date(folder: Path) -> str:
    """When the report was committed: its summary.json's modification time, UTC to the minute."""
    stamp = (folder / "summary.json").stat().st_mtime
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%d %H:%M")


def runs_index_rows(root: Path) -> list[dict[str, Any]]:
    """One row per evaluation report below `root`, with the columns of `RUNS_INDEX_COLUMNS`."""
    rows = []
    for folder in find_reports(root):
        s = EvaluationSummary.read(folder / "summary.json")
        voice, _ = _speech_parts(s.speech)
        keep1 = [r for r in s.regeneration.runs if r["keep_levels"] == 1]
        regen_sims = [x for r in keep1 for x in (r.get("voice_similarity_to_original") or [])]
        rows.append(
            {
                "report": folder.relative_to(root).as_posix(),
                "date": _report_date(folder),
                "tokenizer": s.tokenizer,
                "levels": s.num_levels,
                "layout": s.layout,
                "level weights": s.level_weights,
                "step": s.checkpoint_step,
                "context": f"{s.context_seconds * 1000:.4g} ms",
                "val loss": s.val_loss,
                "level 0 loss": s.val_loss_per_level[0],
                "bits / audio s": s.val_bits_per_audio_second,
                "flagged samples": f"{s.n_flagged_samples} of {len(s.samples)}",
                "voice sim. to prompt": _mean(voice.get("prompt_vs_sample") or []),
                "regen voice sim. (keep 1)": _mean(regen_sims),
                "tokens/s": s.generation_tokens_per_s,
                "RTF": s.rtf,
                "checkpoint": s.checkpoint,
                "dataset": s.dataset,
            }
        )
    return rows


_RUNS_INDEX_TITLE = "<title>codecflow evaluations</title>"

#: Click a column's header to sort by it (again: the other way). Plain JS, no library: a cell's
#: `data-v` holds its raw value (numbers compare as numbers, the rest as text, blanks last).
_SORT_JS = """<script>
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


def _plain(value: Any) -> str:
    """A number as people read it in a table: 78,810 rather than 7.881e+04."""
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return _fmt(value)


def _href(target: str, root: Path) -> str:
    """A link to `target` from `root/index.html`: relative below `root`, a file:// URI for
    another local folder, the URL itself for a remote dataset."""
    if "://" in target:
        return target
    path = Path(target).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_uri()


def _index_cell(column: str, value: Any, root: Path) -> str:
    raw = "" if value is None else value if isinstance(value, int | float) else _fmt(value)
    if column == "report":
        text = f'<a href="{html.escape(value)}/index.html">{html.escape(value)}</a>'
    elif column in ("checkpoint", "dataset"):
        text = f'<a href="{html.escape(_href(value, root))}">{html.escape(Path(value).name)}</a>'
    else:
        text = html.escape(_plain(value))
    return f'<td data-v="{html.escape(str(raw))}">{text}</td>'


def _plot_bits(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Validation bits per second of audio, one bar per run (lower is better)."""
    from codecflow.tasks.core.plots import figure

    with figure(path, size=(max(5.0, 0.6 * len(rows) + 2), 3.5)) as ax:
        names = [r["report"] for r in rows]
        bars = ax.bar(range(len(rows)), [r["bits / audio s"] for r in rows], color="tab:blue")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize="x-small")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel("validation bits / audio second")
        ax.set_yscale("log")


def write_runs_index(root: Path) -> Path:
    """Write `root/index.html`: every evaluation below `root` side by side (mu-law vs codec vs
    Mimi, 8 vs 32 levels, with and without the semantic level), sortable by any column, with a
    plot of each run's validation bits per second of audio. Returns its path."""
    root = Path(root)
    target = root / "index.html"
    # The index sits in a folder codecflow does not own (the runs' parent): it replaces only a
    # page it wrote itself, never someone's index.html.
    if target.is_file() and _RUNS_INDEX_TITLE not in target.read_text(errors="replace"):
        raise CodecflowError(f"{target} is not a codecflow runs index: left as it is")
    rows = runs_index_rows(root)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in RUNS_INDEX_COLUMNS)
    body = "\n".join(
        "<tr>" + "".join(_index_cell(c, row[c], root) for c in RUNS_INDEX_COLUMNS) + "</tr>"
        for row in rows
    )
    plot = ""
    if rows:
        with atomic_file(root / RUNS_BITS_PNG) as tmp:
            _plot_bits(rows, tmp)
        plot = f'<img src="{RUNS_BITS_PNG}" alt="validation bits per audio second, per run">'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{_RUNS_INDEX_TITLE}
<style>{_STYLE}</style></head>
<body>
<h1>codecflow evaluations under {html.escape(os.fspath(root))}</h1>
<p>{len(rows)} evaluation report(s). Loss is nats per token (weighted as trained); bits per second
of audio compare tokenizers; a sample is flagged for crackling (broadband noise), clicking or
screeching (clipping); RTF is compute seconds per second of audio generated. Click a column's
header to sort by it.</p>
<table class="sortable"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
{plot}
{_SORT_JS}
</body></html>
"""
    with atomic_file(target) as tmp:
        tmp.write_text(page)
    return target


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
            f'<td data-v="{html.escape(str(values[key]))}">{html.escape(_plain(values[key]))}'
            + (" (untrained)" if key == "tokenizer" and not row.trained else "")
            + "</td>"
            for _, key in COMPARISON_COLUMNS
        ]
        rows.append("<tr>" + "".join(cells) + f"<td>{_audio(row.audio)}</td></tr>")
    body = "\n".join(rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>codecflow codec comparison</title>
<style>{_STYLE}</style></head>
<body>
<h1>Tokenizers compared on the same held-out segments</h1>
<p>{len(table.segments)} validation segment(s) of {html.escape(table.manifest)},
{table.audio_seconds:.3g} s of audio in all; each metric is the mean over the segments, scored
at 16 kHz against the original (PESQ-WB: ITU-T P.862.2, 1.04-4.64; STOI: 0-1; x real time:
audio seconds per compute second). The first segment as it is: {_audio(table.original)}</p>
<table class="sortable"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<img src="{html.escape(plot)}" alt="PESQ-WB and STOI against bitrate, one point per tokenizer">
{_SORT_JS}
</body></html>
"""
