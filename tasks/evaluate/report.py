"""Pages of evaluation reports: one run's `index.html`, the side-by-side runs index, and the
markdown and tables the evaluate flow publishes as Prefect artifacts.

Everything here reads the `summary.json` record (`tasks.data.records.EvaluationSummary`) that
`tasks.evaluate.lm` writes; nothing computes.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.core.errors import CodecflowError
from tasks.core.storage import atomic_file
from tasks.data.records import SUMMARY_KIND, EvaluationSummary

__all__ = [
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
            f"tokens/s, real-time factor {summary.real_time_factor:.3g}, "
            f"{summary.n_prefills} prefills",
        ),
    ]
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
    sample_rows = []
    for i, stats in enumerate(summary.samples):
        flags = " ".join(stats["flags"])
        sample_rows.append(
            (
                str(i),
                _audio(f"continuation_{i}.wav"),
                _esc(stats["rms_dbfs"]),
                _esc(stats["clipping_fraction"]),
                _esc(stats["silence_fraction"]),
                _esc(stats["voiced_flatness"]),
                f'<span class="flag">{html.escape(flags)}</span>' if flags else "ok",
                _esc(_at(voice.get("prompt_vs_sample"), i)),
                _esc(_at(voice.get("sample_first_vs_second_half"), i)),
                _words(words.get("transcripts"), i),
            )
        )
    spectrograms = "\n".join(
        f'<p>sample {i}</p><img src="spectrogram_{i}.png" alt="spectrogram of the prompt and '
        f'continuation {i}" width="100%">'
        for i in range(len(summary.samples))
    )
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
(SI-SDR {_fmt(roundtrip.si_sdr_db)} dB, log-mel L1 {_fmt(roundtrip.mel_l1)})</p>
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
                "voiced flatness",
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
{_fmt(summary.val_bits_per_audio_second)} bits per second of audio (unweighted)</p>
{_table(["level", "loss (nats/token)", "perplexity"], level_rows)}
<h2>Regeneration from the first levels</h2>
{"".join(regen_parts)}
<h2>Settings</h2>
<pre>{settings_json}</pre>
</body></html>
"""


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
        f"| val loss | bits / audio s | context | tokens/s | RTF | flagged samples |\n"
        f"|---|---|---|---|---|---|\n"
        f"| {summary.val_loss:.4f} | {summary.val_bits_per_audio_second:,.0f} "
        f"| {summary.context_seconds * 1000:.4g} ms | "
        f"{summary.generation_tokens_per_s:,.0f} | {summary.real_time_factor:.3g} "
        f"| {len(flagged)} of {len(summary.samples)} |\n\n"
        f"Validation loss per level: {per_level}\n"
        + (
            f"\nReused the committed report of the same checkpoint, data, prompts and settings "
            f"in `{summary.reused_from}` (not computed again).\n"
            if summary.reused_from
            else ""
        )
    )


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


#: The runs index's columns: what tells the post's experiments apart, then what they scored.
RUNS_INDEX_COLUMNS = (
    "report",
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
)


def runs_index_rows(root: Path) -> list[dict[str, Any]]:
    """One row per evaluation report below `root`, with the columns of `RUNS_INDEX_COLUMNS`."""
    rows = []
    for folder in find_reports(root):
        s = EvaluationSummary.read(folder / "summary.json")
        voice, _ = _speech_parts(s.speech)
        sims = [x for x in voice.get("prompt_vs_sample") or [] if x is not None]
        keep1 = [r for r in s.regeneration.runs if r["keep_levels"] == 1]
        regen_sims = [
            x for r in keep1 for x in (r.get("voice_similarity_to_original") or []) if x is not None
        ]
        rows.append(
            {
                "report": folder.relative_to(root).as_posix(),
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
                "voice sim. to prompt": sum(sims) / len(sims) if sims else None,
                "regen voice sim. (keep 1)": sum(regen_sims) / len(regen_sims)
                if regen_sims
                else None,
                "tokens/s": s.generation_tokens_per_s,
            }
        )
    return rows


_RUNS_INDEX_TITLE = "<title>codecflow evaluations</title>"


def write_runs_index(root: Path) -> Path:
    """Write `root/index.html`: every evaluation below `root` side by side (mu-law vs codec vs
    Mimi, 8 vs 32 levels, with and without the semantic level). Returns its path."""
    root = Path(root)
    rows = runs_index_rows(root)
    cells = []
    for row in rows:
        link = f'<a href="{html.escape(row["report"])}/index.html">{html.escape(row["report"])}</a>'
        cells.append([link] + [_esc(row[c]) for c in RUNS_INDEX_COLUMNS[1:]])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{_RUNS_INDEX_TITLE}
<style>{_STYLE}</style></head>
<body>
<h1>codecflow evaluations under {html.escape(os.fspath(root))}</h1>
<p>{len(rows)} evaluation report(s). Loss is nats per token (weighted as trained); bits per second
of audio compare tokenizers; a sample is flagged for crackling (broadband noise) or screeching
(clipping).</p>
{_table(list(RUNS_INDEX_COLUMNS), cells)}
</body></html>
"""
    target = root / "index.html"
    # The index sits in a folder codecflow does not own (the runs' parent): it replaces only a
    # page it wrote itself, never someone's index.html.
    if target.is_file() and _RUNS_INDEX_TITLE not in target.read_text(errors="replace"):
        raise CodecflowError(f"{target} is not a codecflow runs index: left as it is")
    with atomic_file(target) as tmp:
        tmp.write_text(page)
    return target
