"""The runs index: every evaluation report under a folder side by side (`index.html`, sortable
by column), with a plot of validation bits per audio second per run.

It reads the `summary.json` records (`tasks.data.records.EvaluationSummary`) it finds; nothing
computes.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from codecflow.schemas.resources import docs_url
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.markup import link, relative_url, web_url
from codecflow.tasks.core.storage import atomic_file
from codecflow.tasks.data.records import SUMMARY_KIND, EvaluationSummary
from codecflow.tasks.evaluate.html import (
    SORT_JS,
    STYLE,
    fmt,
    measured,
    plain,
    sortable_table,
    speech_parts,
    stamp,
)

__all__ = [
    "RUNS_BITS_PNG",
    "RUNS_INDEX_COLUMNS",
    "find_reports",
    "log_axis",
    "runs_index_rows",
    "write_runs_index",
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


def _first(reasons: Sequence[str | None] | None) -> str | None:
    return next((r for r in reasons or [] if r), None)


def _blank_reasons(
    s: EvaluationSummary, voice: Mapping[str, Any], keep1: Sequence[Mapping[str, Any]]
) -> dict[str, str | None]:
    """Why a report's voice-similarity columns may be blank, by column (the first reason its
    summary gives)."""
    off = s.speech.get("skipped")
    regen = [
        r.get("skipped")
        or r.get("metrics_skipped")
        or _first(r.get("voice_similarity_to_original_skipped"))
        for r in keep1
    ]
    return {
        "voice sim. to prompt": off
        or voice.get("skipped")
        or _first(voice.get("prompt_vs_sample_skipped")),
        "regen voice sim. (keep 1)": off
        or _first(regen)
        or ("no regeneration keeping 1 level" if not keep1 else None),
    }


def _report_date(folder: Path) -> str:
    """When the report was committed: its summary.json's modification time, UTC to the minute."""
    stamp = (folder / "summary.json").stat().st_mtime
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%d %H:%M")


def runs_index_rows(root: Path) -> list[dict[str, Any]]:
    """One row per evaluation report below `root`, with the columns of `RUNS_INDEX_COLUMNS`."""
    return [row for row, _ in _runs(root)]


def _runs(root: Path) -> list[tuple[dict[str, Any], dict[str, str | None]]]:
    """Each report's row, and why each of its missing metrics is missing (by column)."""
    rows = []
    for folder in find_reports(root):
        s = EvaluationSummary.read(folder / "summary.json")
        voice, _ = speech_parts(s.speech)
        keep1 = [r for r in s.regeneration.runs if r["keep_levels"] == 1]
        regen_sims = [x for r in keep1 for x in (r.get("voice_similarity_to_original") or [])]
        rows.append(
            (
                {
                    "report": folder.relative_to(root).as_posix(),
                    "date": _report_date(folder),
                    "tokenizer": s.tokenizer,
                    "levels": s.num_levels,
                    "layout": s.layout,
                    "level weights": s.level_weights or "all 1",
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
                },
                _blank_reasons(s, voice, keep1),
            )
        )
    return rows


_RUNS_INDEX_TITLE = "<title>codecflow evaluations</title>"


#: Click a column's header to sort by it (again: the other way). Plain JS, no library: a cell's
#: `data-v` holds its raw value (numbers compare as numbers, the rest as text, blanks last).
def _href(target: str, root: Path) -> str | None:
    """A link to `target` from `root/index.html`: relative below `root`, the URL itself for an
    http(s) dataset; None (shown as text) for another local folder, `s3://`, `javascript:` and
    every other scheme: a page links relative paths and http(s) only."""
    if "://" in target or ":" in target.split("/")[0]:
        return web_url(target)
    path = Path(target).resolve()
    try:
        return relative_url(path.relative_to(root.resolve()).as_posix())
    except ValueError:
        return None


def _index_cell(column: str, value: Any, root: Path, why: Mapping[str, str | None]) -> str:
    raw = "" if value is None else value if isinstance(value, int | float) else fmt(value)
    if value is None:
        text = measured(None, why.get(column))
    elif column == "report":  # a folder below root: its name percent-encoded in the link
        text = link(relative_url(f"{value}/index.html"), value)
    elif column in ("checkpoint", "dataset"):
        text = link(_href(value, root), Path(value).name)
    else:
        text = html.escape(plain(value))
    return f'<td data-v="{html.escape(str(raw))}">{text}</td>'


def _plot_bits(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Validation bits per second of audio, one bar per run (lower is better)."""
    from codecflow.tasks.core.plots import figure

    values = [r["bits / audio s"] for r in rows]
    # At most 12.8 inches at 100 dpi: the 1 280 px a page must fit (the page scales it down too).
    with figure(path, size=(min(12.8, max(5.0, 0.6 * len(rows) + 2)), 4.0)) as ax:
        names = [r["report"] for r in rows]
        bars = ax.bar(range(len(rows)), values, color="tab:blue")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize="x-small")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel("val. bits per audio second")
        if log_axis(values):
            ax.set_yscale("log")


def log_axis(values: Sequence[float]) -> bool:
    """A log axis only when the values span more than one order of magnitude (mu-law at
    ~100 000 bits/s beside Mimi at ~1 000); one bar, or bars alike, read better on a linear one."""
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > 10


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
    runs = _runs(root)
    rows = [row for row, _ in runs]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in RUNS_INDEX_COLUMNS)
    body = "\n".join(
        "<tr>" + "".join(_index_cell(c, row[c], root, why) for c in RUNS_INDEX_COLUMNS) + "</tr>"
        for row, why in runs
    )
    plot = ""
    if rows:
        with atomic_file(root / RUNS_BITS_PNG) as tmp:
            _plot_bits(rows, tmp)
        plot = f'<img src="{RUNS_BITS_PNG}" alt="validation bits per audio second, per run">'
    guide = link(docs_url("guides/evaluation", root), "Evaluation and reports")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{_RUNS_INDEX_TITLE}
<style>{STYLE}</style></head>
<body>
<h1>codecflow evaluations under {html.escape(os.fspath(root))}</h1>
<p>{len(rows)} evaluation report(s). Loss is nats per token (weighted as trained); bits per second
of audio compare tokenizers; a sample is flagged for crackling (broadband noise), clicking or
screeching (clipping); RTF is compute seconds per second of audio generated. Click a column's
header to sort by it. How to read it: {guide}.</p>
{sortable_table(head, body)}
{plot}
{stamp()}
{SORT_JS}
</body></html>
"""
    with atomic_file(target) as tmp:
        tmp.write_text(page)
    return target
