"""Report pages (`tasks.evaluate.report`) from hand-made summary.json records: hostile strings are
escaped, the digests show the summary's numbers, and the runs index finds every report below a
folder without crawling data folders or going too deep."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from report_records import summary_dict as _summary_dict

from codecflow.tasks.data.records import EvaluationSummary
from codecflow.tasks.evaluate.report import evaluation_html, samples_table, summary_markdown
from codecflow.tasks.evaluate.runs_index import (
    RUNS_INDEX_COLUMNS,
    find_reports,
    runs_index_rows,
    write_runs_index,
)

HOSTILE = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"


def _summary(**overrides: Any) -> EvaluationSummary:
    return EvaluationSummary.from_json(_summary_dict(**overrides), "summary.json")


def _write(folder: Path, summary: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


# --------------------------------------------------------------------------------------------
# One report
# --------------------------------------------------------------------------------------------


def test_hostile_strings_are_escaped_everywhere_in_the_report() -> None:
    summary = _summary_dict(
        tokenizer=HOSTILE,
        layout=HOSTILE,
        checkpoint=HOSTILE,
        dataset=HOSTILE,
        prompt=HOSTILE,
        settings={"prompt": HOSTILE},
    )
    summary["samples"][1]["flags"] = [HOSTILE]
    summary["speech"]["words"].update(transcripts=[HOSTILE, ""], prompt_transcript=HOSTILE)
    summary["speech"]["voice"]["skipped"] = HOSTILE
    regen = summary["regeneration"]
    regen["source"] = HOSTILE
    regen["runs"][0].update(files=['a.wav" onerror="alert(1)'], transcripts=[HOSTILE])
    regen["runs"][0]["metrics_skipped"] = HOSTILE
    regen["runs"][1]["skipped"] = HOSTILE
    page = evaluation_html(EvaluationSummary.from_json(summary, "summary.json"))
    assert "<script" not in page and "</script" not in page
    # A file name is a path segment, percent-encoded: its quote cannot end the attribute.
    assert 'onerror="' not in page and 'src="a.wav%22%20onerror%3D%22alert%281%29"' in page
    assert page.count(ESCAPED) >= 10
    # The settings block is JSON, escaped once more (its quotes were already JSON-escaped).
    assert "&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;" in page


def test_the_report_shows_the_summarys_numbers_and_files() -> None:
    page = evaluation_html(_summary())
    assert "Evaluation and reports</a>" in page and "guides/evaluation" in page  # the docs
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</body></html>")
    for text in (
        "<title>codecflow evaluation: mu-law-256</title>",
        "<td>2 x 256</td>",
        "<td>1, 0.5</td>",  # level weights
        "/runs/lm/checkpoint (step 40)",
        "/runs/tokens: 0.25 h, 1,234,567 tokens, 2,469,134 bytes",
        "<td>5.5 / 3.25</td>",
        "64 tokens = 4 ms of audio",
        "640 tokens in 0.5 s: 1,280 tokens/s, real-time factor 8 (compute s per audio s; below 1"
        " is faster than real time), 3 prefills",
        'src="continuation_0.wav"',
        'src="continuation_1.wav"',
        'src="spectrogram_1.png"',
        'src="regen/keep1_1.wav"',
        '<span class="flag">screeching crackling</span>',
        "<td>hello world</td>",
        "<td>(no words)</td>",  # an empty transcript
        "(SI-SDR 35.5 dB, log-mel L1 0.01,\nPESQ-WB 4.25, STOI 0.987)",
        "<td>0.0456</td><td>2.71</td>",  # band flatness and crest factor of sample 0
        "recognised words in the prompt: when grass is; WER against the given text:\n0.25",
        "<td>1</td><td>3</td><td>20.09</td>",  # level 1's loss and perplexity
        "46,166 bits per second of audio",  # not 4.617e+04
        "keep 1 level(s), generate the other 1",
        "<h3>keep 2 level(s)</h3>",
        "skipped: keeping 2 of 2 levels leaves nothing to generate",
    ):
        assert text in page, text
    assert 'src="spectrogram_2.png"' not in page
    # A similarity not computed is a dash with its reason, not "None" nor a bare dash.
    assert "None" not in page and "<td>–</td>" not in page
    assert '<td>– <span class="missing">(not measured)</span></td>' in page
    assert "<thead" in page or "<tr><th></th>" not in page  # no empty header row
    assert '<p class="stamp">codecflow ' in page


def test_speech_metrics_turned_off_leave_dashes() -> None:
    summary = _summary(speech={"skipped": "turned off (speech_metrics: false)"})
    page = evaluation_html(summary)
    assert "skipped: turned off (speech_metrics: false)" in page
    assert "hello world" not in page
    rows = samples_table(summary)
    assert [r["voice_similarity_to_prompt"] for r in rows] == [None, None]
    assert [r["words"] for r in rows] == [None, None]


def test_summary_markdown_digest() -> None:
    link = "[open the report](http://127.0.0.1:4201/demo/report/index.html)"
    text = summary_markdown(_summary(), link)
    assert text == (
        "### mu-law-256 LM, step 40\n\n"
        f"{link}\n\n"
        "| val loss | bits / audio s | context | tokens/s | RTF (compute s / audio s) "
        "| flagged samples |\n"
        "|---|---|---|---|---|---|\n"
        "| 2.5000 | 46,166 | 4 ms | 1,280 | 8 | 1 of 2 |\n\n"
        "Validation loss per level: 2.000 | 3.000\n"
    )


def test_samples_table_rows() -> None:
    assert samples_table(_summary()) == [
        {
            "sample": 0,
            "rms_dbfs": -20.12,
            "clipping_fraction": 0.0001,
            "silence_fraction": 0.123,
            "voiced_flatness": 0.457,
            "band_flatness": 0.046,
            "crest_factor": 2.71,
            "flags": "ok",
            "voice_similarity_to_prompt": 0.8,
            "words": "hello world",
        },
        {
            "sample": 1,
            "rms_dbfs": -3.0,
            "clipping_fraction": 0.25,
            "silence_fraction": 0.0,
            "voiced_flatness": 0.9,
            "band_flatness": 0.9,
            "crest_factor": 1.2,
            "flags": "screeching crackling",
            "voice_similarity_to_prompt": None,
            "words": "",
        },
    ]


# --------------------------------------------------------------------------------------------
# Finding reports and the runs index
# --------------------------------------------------------------------------------------------


def test_find_reports_skips_data_folders_other_kinds_and_bad_files(tmp_path: Path) -> None:
    s = _summary_dict()
    wanted = [
        _write(tmp_path / "b" / "report", s),
        _write(tmp_path / "a" / "evaluations" / "step-000010-abc", s),
        _write(tmp_path / "a" / "lm" / "evaluations" / "x", s),  # depth 4: the deepest looked at
    ]
    for skipped in ("acquire", "tokens", "checkpoints", "checkpoint", "codec", "regen", "download"):
        _write(tmp_path / "run" / skipped / "report", s)
    _write(tmp_path / "run" / "lm" / "evaluations" / "x" / "deeper", s)  # depth 5
    _write(tmp_path / "other", {"kind": "something else"})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{half")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "summary.json").write_text("[1]")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "summary.json").write_bytes(b"\xff\xfe")
    assert find_reports(tmp_path) == sorted(wanted)
    assert find_reports(tmp_path / "missing") == []


def test_a_killed_evaluations_temporary_is_no_report(tmp_path: Path) -> None:
    """atomic_dir writes summary.json last inside `.report.<8>.tmp`: a kill -9 just before the
    rename (or during the swap, `.report.old`) leaves one that must not be listed."""
    s = _summary_dict()
    _write(tmp_path / "run" / "report", s)
    _write(tmp_path / "run" / ".report.ab12cd34.tmp", s)
    _write(tmp_path / "run" / ".report.old", s)
    assert find_reports(tmp_path) == [tmp_path / "run" / "report"]


def test_runs_index_rows_average_what_was_measured(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "report", _summary_dict())
    off = _summary_dict(speech={"skipped": "turned off"}, tokenizer="codec")
    off["regeneration"]["runs"] = [{"keep_levels": 1, "skipped": "nothing to generate"}]
    _write(tmp_path / "b" / "report", off)
    os.utime(tmp_path / "a" / "report" / "summary.json", (0, 1_764_660_000))  # 2025-12-02 07:20
    rows = runs_index_rows(tmp_path)
    assert [list(r) for r in rows] == [list(RUNS_INDEX_COLUMNS)] * 2
    assert rows[0] == {
        "report": "a/report",
        "date": "2025-12-02 07:20",
        "tokenizer": "mu-law-256",
        "levels": 2,
        "layout": "flat",
        "level weights": [1.0, 0.5],
        "step": 40,
        "context": "4 ms",
        "val loss": 2.5,
        "level 0 loss": 2.0,
        "bits / audio s": 46_166.0,
        "flagged samples": "1 of 2",
        "voice sim. to prompt": 0.8,  # the None left out of the mean
        "regen voice sim. (keep 1)": pytest.approx(0.6),
        "tokens/s": 1280.0,
        "RTF": 8.0,
        "checkpoint": "/runs/lm/checkpoint",
        "dataset": "/runs/tokens",
    }
    assert rows[1]["report"] == "b/report" and rows[1]["tokenizer"] == "codec"
    assert rows[1]["voice sim. to prompt"] is None
    assert rows[1]["regen voice sim. (keep 1)"] is None


def test_runs_index_page_escapes_folder_names_and_values(tmp_path: Path) -> None:
    _write(tmp_path / '<b>"x' / "report", _summary_dict(tokenizer=HOSTILE))
    index = write_runs_index(tmp_path)
    assert index == tmp_path / "index.html"
    page = index.read_text()
    assert page.count("<script") == 1 and "<b>" not in page  # the one script: the sorting
    assert 'href="%3Cb%3E%22x/report/index.html"' in page
    assert ESCAPED in page and "1 evaluation report(s)" in page
    before = page
    write_runs_index(tmp_path)  # idempotent: the same page, no temporaries beside it
    assert index.read_text() == before
    names = ['<b>"x', "index.html", "runs_bits_per_audio_second.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_a_report_summary_is_not_changed_by_rendering() -> None:
    summary = _summary()
    before = copy.deepcopy(summary)
    evaluation_html(summary)
    summary_markdown(summary, "x")
    samples_table(summary)
    assert summary == before


def test_a_summary_written_before_issue_15_reads_its_inverted_rtf_the_usual_way() -> None:
    """Its `real_time_factor` was audio seconds per compute second: the page shows the usual
    convention (compute seconds per audio second), and a new summary writes only that."""
    fixture = Path(__file__).parents[2] / "fixtures" / "records" / "summary.json"
    old = EvaluationSummary.read(fixture)
    assert old.compute_seconds_per_audio_second is None
    assert old.rtf == pytest.approx(1 / 0.013578041098787278)  # 73.6: far slower than real time
    assert "real-time factor 73.65 (compute s per audio s" in evaluation_html(old)
    page = evaluation_html(old)
    assert old.prompt_roundtrip.pesq_wb is None
    assert (
        'PESQ-WB – <span class="missing">(PESQ refused the pair: no speech, or too short)' in page
    )
    assert 'STOI – <span class="missing">(too short for STOI, or no speech frame)' in page
    new = _summary().to_json()
    assert "real_time_factor" not in new and new["compute_seconds_per_audio_second"] == 8.0


def test_the_true_continuation_and_the_loss_curves_are_on_the_page() -> None:
    truth = {
        "file": "true_continuation.wav",
        "seconds": 1.0,
        "stats": {**_summary_dict()["samples"][0], "rms_dbfs": -17.5},
        "speech": {"voice_similarity_to_prompt": 0.91, "transcript": "the real words"},
    }
    curves = {"total": "loss.png", "per_level": "loss_per_level.png"}
    page = evaluation_html(_summary(true_continuation=truth, loss_curves=curves))
    assert "the recording's own next 1 s" in page
    assert page.count('src="true_continuation.wav"') == 2  # under the prompt, first table row
    assert "<td>true</td>" in page and "<td>-17.5</td>" in page
    assert "<td>0.91</td>" in page and "<td>the real words</td>" in page
    assert 'src="spectrogram_true.png"' in page
    assert '<img src="loss.png"' in page and '<img src="loss_per_level.png"' in page
    plain = evaluation_html(_summary())
    assert "true_continuation" not in plain and "no training log beside the checkpoint" in plain


def test_the_runs_index_sorts_links_and_plots(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "report", _summary_dict(val_bits_per_audio_second=78_810.0))
    _write(tmp_path / "b" / "report", _summary_dict(val_bits_per_audio_second=900.5))
    (tmp_path / "tokens").mkdir()
    _write(
        tmp_path / "c" / "report",
        _summary_dict(dataset=str(tmp_path / "tokens"), checkpoint="s3://bucket/ckpt"),
    )
    page = write_runs_index(tmp_path).read_text()
    assert '<table class="sortable">' in page and "addEventListener" in page
    assert "<script src" not in page  # no CDN: the sorting script is inline
    assert '<td data-v="78810.0">78,810</td>' in page and "e+04" not in page
    assert '<td data-v="900.5">900.5</td>' in page
    assert '<a href="tokens">tokens</a>' in page  # a dataset below the index: relative
    # Pages link relative paths and http(s) only: another local folder or s3:// is text.
    assert '<td data-v="/runs/lm/checkpoint">checkpoint</td>' in page
    assert '<td data-v="s3://bucket/ckpt">ckpt</td>' in page and "file://" not in page
    png = tmp_path / "runs_bits_per_audio_second.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 'src="' + png.name in page


def test_the_report_says_which_sliding_window_ran() -> None:
    page = evaluation_html(_summary(settings={"sampling_window": "exact"}))
    assert "exact window (the last block_size tokens at every step" in page
    older = evaluation_html(_summary(settings={}))  # a report from before the option
    assert "frames window (half a context re-prefilled" in older


def test_the_runs_plot_is_logarithmic_only_across_orders_of_magnitude() -> None:
    from codecflow.tasks.evaluate.runs_index import log_axis

    assert not log_axis([46_166.0])  # one bar
    assert not log_axis([1_200.0, 9_000.0])  # alike: one order of magnitude
    assert log_axis([1_100.0, 128_000.0])  # Mimi beside mu-law
    assert not log_axis([])
