"""One evaluation's pages: its `index.html`, and the markdown and tables the evaluate flow
publishes as Prefect artifacts (the runs index is `tasks.evaluate.runs_index`).

Everything here reads the `summary.json` record (`tasks.data.records.EvaluationSummary`) that
`tasks.evaluate.lm` writes; nothing computes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codecflow.schemas.resources import docs_url
from codecflow.tasks.core.markup import link
from codecflow.tasks.data.records import EvaluationSummary
from codecflow.tasks.evaluate.html import (
    MISSING_REASONS,
    STYLE,
    audio,
    cell,
    fmt,
    image,
    measured,
    plain,
    skipped,
    speech_parts,
    stamp,
    table,
)

__all__ = ["evaluation_html", "samples_table", "summary_markdown"]


def evaluation_html(summary: EvaluationSummary, folder: Path | None = None) -> str:
    """The report page of one evaluation (files referenced relative to the report folder, which
    `folder` names: the documentation's page is linked relative to it when the site is built)."""
    levels = range(summary.num_levels)
    overview = _overview(summary)
    overview_rows = [(html.escape(k), cell(v)) for k, v in overview]
    level_rows = [
        (
            str(k),
            cell(summary.val_loss_per_level[k]),
            cell(summary.val_perplexity_per_level[k]),
        )
        for k in levels
    ]
    roundtrip = summary.prompt_roundtrip
    speech = summary.speech
    voice, words = speech_parts(speech)
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
    pesq = measured(roundtrip.pesq_wb, _PESQ_MISSING)
    heard = measured(prompt_words, _why_no_words(speech, words))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>codecflow evaluation: {html.escape(summary.tokenizer)}</title>
<style>{STYLE}</style></head>
<body>
<h1>codecflow evaluation: {html.escape(summary.tokenizer)} LM</h1>
<p>How to read it: {link(docs_url("guides/evaluation", folder), "Evaluation and reports")}</p>
{table(None, overview_rows)}
<h2>Prompt</h2>
<p>{cell(summary.prompt)} ({summary.prompt_seconds:.3g} s): {audio("prompt.wav")}
through the tokenizer: {audio("prompt_roundtrip.wav")}
(SI-SDR {measured(roundtrip.si_sdr_db, None)} dB, log-mel L1 {measured(roundtrip.mel_l1, None)},
PESQ-WB {pesq}, STOI {measured(roundtrip.stoi, _STOI_MISSING)})</p>
{_truth_line(truth)}
<p>recognised words in the prompt: {heard}; WER against the given text:
{measured(words.get("prompt_wer"), _why_no_wer(summary, speech, words))}</p>
<h2>Continuations</h2>
{skipped(speech.get("skipped"))}{skipped(voice.get("skipped"))}{skipped(words.get("skipped"))}
{
        table(
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
<p>weighted loss {fmt(summary.val_loss)} nats/token;
{plain(summary.val_bits_per_audio_second)} bits per second of audio (unweighted)</p>
{table(["level", "loss (nats/token)", "perplexity"], level_rows)}
{_curves_html(summary.loss_curves)}
<h2>Regeneration from the first levels</h2>
{"".join(regen_parts)}
<h2>Settings</h2>
<pre>{settings_json}</pre>
{stamp()}
</body></html>
"""


def _overview(summary: EvaluationSummary) -> list[tuple[str, Any]]:
    """The first table: what was evaluated, on what, and how fast it generated."""
    overview = [
        ("tokenizer", summary.tokenizer),
        ("levels x codebook", f"{summary.num_levels} x {summary.codebook_size}"),
        ("layout", summary.layout),
        ("level weights", summary.level_weights or "all 1 (none given)"),
        ("checkpoint", f"{summary.checkpoint} (step {summary.checkpoint_step})"),
        (
            "dataset",
            f"{summary.dataset}: {summary.audio_hours:.4g} h, "
            f"{summary.n_tokens:,} tokens, {summary.dataset_bytes:,} bytes",
        ),
        (
            "train loss first / last",
            f"{fmt(summary.train_loss_first)} / {fmt(summary.train_loss_last)}",
        ),
        (
            "context",
            f"{summary.context_tokens} tokens = {summary.context_seconds * 1000:.4g} ms of audio",
        ),
        (
            "generation",
            f"{summary.generated_tokens:,} tokens in "
            f"{summary.generation_seconds:.3g} s: {summary.generation_tokens_per_s:,.0f} "
            f"tokens/s, real-time factor {fmt(summary.rtf)} (compute s per audio s; "
            f"below 1 is faster than real time), {summary.n_prefills} prefills, "
            f"{_window(summary.settings)}",
        ),
    ]
    return overview


def _regeneration_parts(summary: EvaluationSummary) -> list[str]:
    """The regeneration section: the source, its round trip, and one table per `keep_levels`."""
    regen = summary.regeneration
    regen_parts = [
        f"<p>source: {cell(regen.source)} ({regen.seconds:.3g} s) "
        f"{audio('regen/original.wav')} through the tokenizer: "
        f"{audio('regen/roundtrip.wav')}</p>"
    ]
    for run in regen.runs:
        k = run["keep_levels"]
        if run.get("skipped"):
            regen_parts.append(f"<h3>keep {k} level(s)</h3>" + skipped(run["skipped"]))
            continue

        def why(kind: str, i: int, run: Mapping[str, Any] = run) -> str | None:
            return _at(run.get(f"{kind}_skipped"), i) or run.get("metrics_skipped")

        rows = [
            (
                str(i),
                audio(f),
                measured(
                    _at(run.get("voice_similarity_to_original"), i),
                    why("voice_similarity_to_original", i),
                ),
                measured(
                    _at(run.get("word_error_rate_to_original"), i),
                    why("word_error_rate_to_original", i),
                ),
                _words(run.get("transcripts"), i, why("transcripts", i)),
            )
            for i, f in enumerate(run["files"])
        ]
        regen_parts.append(
            f"<h3>keep {k} level(s), generate the other {summary.num_levels - k}</h3>"
            + skipped(run.get("metrics_skipped"))
            + table(
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
    skipped_all: str | None = None,
) -> tuple[str, ...]:
    """A row of the continuations table: the audio, its acoustic numbers, flags and speech."""
    flags = " ".join(stats["flags"])
    older = "not in reports before issue 15"

    def why(kind: str, section: Mapping[str, Any]) -> str | None:
        return _at(section.get(f"{kind}_skipped"), i) or section.get("skipped") or skipped_all

    return (
        html.escape(name),
        audio(file),
        cell(stats["rms_dbfs"]),
        cell(stats["clipping_fraction"]),
        cell(stats["silence_fraction"]),
        measured(stats.get("band_flatness"), older),
        measured(stats.get("crest_factor"), older),
        f'<span class="flag">{html.escape(flags)}</span>' if flags else "ok",
        measured(_at(voice.get("prompt_vs_sample"), i), why("prompt_vs_sample", voice)),
        measured(
            _at(voice.get("sample_first_vs_second_half"), i),
            why("sample_first_vs_second_half", voice),
        ),
        _words(words.get("transcripts"), i, why("transcripts", words)),
    )


def _truth_line(truth: Mapping[str, Any] | None) -> str:
    if truth is None:
        return ""
    return (
        f"<p>the prompt and the recording's own next {truth['seconds']:.3g} s (the true "
        f"continuation, first row below): {audio(truth['file'])}</p>"
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
        return skipped("no training log beside the checkpoint")
    alts = {"total": "train and validation loss", "per_level": "loss per level"}
    return "\n".join(
        f"<p>{cell(alts.get(kind, kind))}</p>"
        + image(name, f"{alts.get(kind, kind)} against training steps")
        for kind, name in curves.items()
    )


def _at(values: Sequence[Any] | None, i: int) -> Any:
    return values[i] if values is not None and i < len(values) else None


def _words(values: Sequence[Any] | None, i: int, reason: str | None = None) -> str:
    """A transcript cell: the words, "(no words)" for an empty transcript, "–" with `reason`
    when unknown."""
    text = _at(values, i)
    return "(no words)" if text == "" else measured(text, reason)


_PESQ_MISSING, _STOI_MISSING = MISSING_REASONS["pesq_wb"], MISSING_REASONS["stoi"]


def _why_no_words(speech: Mapping[str, Any], words: Mapping[str, Any]) -> str | None:
    return speech.get("skipped") or words.get("skipped")


def _why_no_wer(
    summary: EvaluationSummary, speech: Mapping[str, Any], words: Mapping[str, Any]
) -> str | None:
    off = _why_no_words(speech, words)
    return off or (None if summary.settings.get("prompt_text") else "no prompt_text given")


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
        f"{summary.generation_tokens_per_s:,.0f} | {fmt(summary.rtf)} "
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
    voice, words = speech_parts(summary.speech)
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


def _window(settings: Mapping[str, Any]) -> str:
    """Which sliding window ran past the context (reports before the option: frames)."""
    window = settings.get("sampling_window", "frames")
    if window == "exact":
        return "exact window (the last block_size tokens at every step, the post's sampler)"
    return "frames window (half a context re-prefilled when the cache fills)"
