"""Evaluation: prompt loading, generation, the report folder and its summary."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import PROMPT, REPO, tiny_evaluate_settings

from codecflow.models.mulaw import MuLawTokenizer
from codecflow.schemas.configs import HELDOUT_PROMPT, TrainLMSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.checkpoints import newest_checkpoint
from codecflow.tasks.data.records import EvaluationSummary
from codecflow.tasks.evaluate.acoustics import acoustic_stats, load_prompt
from codecflow.tasks.evaluate.checkpoint_facts import checkpoint_id
from codecflow.tasks.evaluate.lm import evaluate
from codecflow.tasks.evaluate.runs_index import (
    RUNS_INDEX_COLUMNS,
    runs_index_rows,
    write_runs_index,
)
from codecflow.tasks.prefect.wrappers import evaluate_task
from codecflow.tasks.train.lm import train_lm

_settings = tiny_evaluate_settings


def test_report_has_audio_spectrograms_metrics_and_summary(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    record = evaluate(tiny_checkpoint, tiny_dataset, out, _settings())
    assert record.generated_seconds == pytest.approx(0.02)
    for name in (
        "index.html",
        "spectrogram_0.png",
        "spectrogram_1.png",
        "prompt.wav",
        "prompt_roundtrip.wav",
        "continuation_0.wav",
        "continuation_1.wav",
        "regen/original.wav",
        "regen/roundtrip.wav",
        "loss.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "true_continuation.wav").exists()  # the whole file prompts
    summary = json.loads((out / "summary.json").read_text())
    # summary.json is exactly the typed record, key for key, in the record's order.
    record_summary = EvaluationSummary.read(out / "summary.json")
    # (`reused_from` only in a report copied from another folder: tests/tasks/evaluate/test_reuse.py;
    # `real_time_factor` only in reports written before issue 15; `true_continuation` only with
    # `prompt_seconds`)
    absent = {"reused_from", "real_time_factor", "true_continuation"}
    fields = [f for f in EvaluationSummary.model_fields if f not in absent]
    assert list(summary) == fields and record_summary.n_prefills >= 2
    assert summary["kind"] == "codecflow-evaluation" and summary["num_levels"] == 1
    assert summary["generated_tokens"] == 2 * 320  # 2 samples x 20 ms at 16 kHz
    assert summary["context_seconds"] == pytest.approx(64 / 16_000)
    assert summary["n_prefills"] >= 2  # 320 tokens through a 64-token window must slide
    assert summary["decode_threads"] == 1  # a tiny model decodes on one thread (tasks.core.threads)
    # The held-out loss repeats what training reported: the same windows and weights.
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert summary["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    assert summary["val_loss_per_level"] == pytest.approx(metrics["val_loss_per_level"], rel=1e-5)
    assert summary["val_perplexity_per_level"][0] == pytest.approx(
        math.exp(summary["val_loss_per_level"][0])
    )
    # nats/token -> bits per second of audio at 16 000 tokens/s.
    assert summary["val_bits_per_audio_second"] == pytest.approx(
        summary["val_loss_per_level"][0] / math.log(2) * 16_000
    )
    # mu-law 256 round trip: 8-bit companding keeps the waveform (well above 20 dB), and its
    # quantisation noise is audible but leaves the words intelligible.
    roundtrip = summary["prompt_roundtrip"]
    assert roundtrip["si_sdr_db"] > 20 and 0.95 < roundtrip["stoi"] <= 1.0
    assert 1.0 < roundtrip["pesq_wb"] < 4.65  # P.862.2's MOS-LQO range
    # The usual real-time factor: compute seconds over audio seconds (2 samples x 20 ms).
    assert summary["compute_seconds_per_audio_second"] == pytest.approx(
        summary["generation_seconds"] / 0.04
    )
    assert summary["loss_curves"] == {"total": "loss.png"}  # one level: no per-level picture
    assert summary["regeneration"]["runs"] == [
        {"keep_levels": 1, "skipped": "keeping 1 of 1 levels leaves nothing to generate"}
    ]
    assert summary["speech"]["skipped"] == "turned off (speech_metrics: false)"
    assert summary["checkpoint_step"] == metrics["steps"]
    prompt, rate = sf.read(out / "prompt.wav")
    both, _ = sf.read(out / "continuation_1.wav")
    assert rate == 16_000 and len(prompt) == 64_000 and len(both) == 64_000 + 320
    page = (out / "index.html").read_text()
    for text in ('src="continuation_1.wav"', 'src="spectrogram_1.png"', "perplexity", "SI-SDR"):
        assert text in page, text
    assert "leaves nothing to generate" in page and "turned off" in page


def test_speech_metrics_in_the_report(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    evaluate(
        tiny_checkpoint,
        tiny_dataset,
        out,
        _settings(speech_metrics=True, seconds=0.5, num_samples=1, prompt_text="when grass is"),
    )
    speech = json.loads((out / "summary.json").read_text())["speech"]
    assert speech["voice"]["skipped"] is None and speech["words"]["skipped"] is None
    assert "grass" in speech["words"]["prompt_transcript"]
    assert speech["words"]["prompt_wer"] is not None
    assert len(speech["words"]["transcripts"]) == 1
    page = (out / "index.html").read_text()
    assert "grass" in page and "voice sim. to prompt" in page


def test_newest_checkpoint_mid_training_is_evaluated(
    tiny_dataset: Path, tiny_lm_settings: TrainLMSettings, tmp_path: Path
) -> None:
    run = tmp_path / "lm"
    settings = tiny_lm_settings.model_copy(update={"steps": 12, "checkpoint_every": 5})
    train_lm(tiny_dataset, run, settings)
    assert newest_checkpoint(run) == run / "checkpoint"
    shutil.rmtree(run / "checkpoint")  # as if training were still running
    newest = newest_checkpoint(run)
    assert newest == run / "checkpoints" / "step-000010"
    assert checkpoint_id(newest).startswith("step-000010-") and len(checkpoint_id(newest)) == 20
    record = evaluate(newest, tiny_dataset, tmp_path / "report", _settings())
    summary = json.loads(record.summary.read_text())
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert summary["checkpoint_step"] == 10
    assert summary["train_loss_last"] == log[9]["loss"]
    # Training validates at each resumable checkpoint (steps 5 and 10): the report's curve has
    # them, and the evaluation's own held-out loss at step 10 repeats training's.
    assert [r["step"] for r in log if "val_loss" in r] == [5, 10]
    assert summary["val_loss"] == pytest.approx(log[9]["val_loss"], rel=1e-5)
    assert summary["loss_curves"] == {"total": "loss.png"}
    assert (tmp_path / "report" / "loss.png").stat().st_size > 1000
    with pytest.raises(CodecflowError, match="has no checkpoint yet"):
        newest_checkpoint(tmp_path / "nothing")


def test_a_prompt_cut_from_a_longer_file_has_its_true_continuation(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    settings = _settings(prompt=str(REPO / HELDOUT_PROMPT), prompt_seconds=4.0, seconds=0.05)
    evaluate(tiny_checkpoint, tiny_dataset, out, settings)
    summary = EvaluationSummary.read(out / "summary.json")
    assert summary.prompt_seconds == 4.0
    truth = summary.true_continuation
    assert truth is not None and truth["seconds"] == pytest.approx(0.05)
    assert truth["stats"]["flags"] == []  # real speech is not flagged
    whole, rate = sf.read(REPO / HELDOUT_PROMPT, dtype="float32")
    both, _ = sf.read(out / "true_continuation.wav", dtype="float32")
    # prompt + the recording's next 50 ms, as PCM16 (1 / 32768 apart at most)
    np.testing.assert_allclose(both, whole[: int(4.05 * rate)], atol=1 / 32_000)
    assert (out / "spectrogram_true.png").is_file()
    assert 'src="true_continuation.wav"' in (out / "index.html").read_text()
    with pytest.raises(CodecflowError, match="shorter than prompt_seconds"):
        evaluate(
            tiny_checkpoint,
            tiny_dataset,
            tmp_path / "r2",
            _settings(prompt=str(REPO / HELDOUT_PROMPT), prompt_seconds=7.0),
        )


def test_runs_index_puts_evaluations_side_by_side(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "a" / "report", _settings(seed=1))
    evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "b" / "report", _settings(seed=2))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "summary.json").write_text('{"kind": "something else"}')
    index = write_runs_index(tmp_path)
    rows = runs_index_rows(tmp_path)
    assert [r["report"] for r in rows] == ["a/report", "b/report"]
    assert set(RUNS_INDEX_COLUMNS) == set(rows[0])
    assert rows[0]["tokenizer"] == "mu-law-256" and rows[0]["context"] == "4 ms"
    page = index.read_text()
    assert page.count('href="a/report/index.html"') == 1 and "b/report/index.html" in page


def test_same_seed_same_samples(tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "a", _settings(seed=3))
    evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "b", _settings(seed=3))
    evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "c", _settings(seed=4))
    a, b, c = (sf.read(tmp_path / d / "continuation_0.wav")[0] for d in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompt_is_resampled_downmixed_and_trimmed(tmp_path: Path) -> None:
    rate = 44_100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, rate)
    wav = load_prompt(path, MuLawTokenizer(16_000))
    assert wav.shape == (1, 1, 16_000)
    assert float(wav.abs().max()) == pytest.approx(0.25, abs=0.02)  # mean of the two channels


def test_bad_prompt_is_named(tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match="prompt audio not found: .*nope.wav"):
        evaluate(
            tiny_checkpoint,
            tiny_dataset,
            tmp_path / "r",
            _settings().model_copy(update={"prompt": str(tmp_path / "nope.wav")}),
        )
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all")
    with pytest.raises(CodecflowError, match="cannot read prompt audio .*garbage.wav"):
        load_prompt(garbage, MuLawTokenizer(16_000))
    assert not (tmp_path / "r").exists()


def test_acoustic_stats_flag_silence_clipping_and_noise() -> None:
    rate = 16_000
    silence = acoustic_stats(np.zeros(rate, dtype=np.float32), rate)
    assert silence["silence_fraction"] == 1.0 and silence["clipping_fraction"] == 0.0
    assert silence["flags"] == []  # silence is neither crackling nor screeching
    clipped = acoustic_stats(np.sign(np.sin(np.arange(rate) / 5.0)).astype(np.float32), rate)
    assert clipped["clipping_fraction"] > 0.9 and "screeching" in clipped["flags"]
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, rate).astype(np.float32)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    assert acoustic_stats(noise, rate)["spectral_flatness"] > 0.5
    assert acoustic_stats(noise, rate)["flags"] == ["crackling"]
    assert acoustic_stats(tone, rate)["spectral_flatness"] < 0.1
    assert acoustic_stats(tone, rate)["flags"] == []
    speech, speech_rate = sf.read(PROMPT, dtype="float32")
    assert acoustic_stats(speech, speech_rate)["flags"] == []  # the real prompt is fine


def test_a_finished_report_is_returned_without_recomputing(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Prefect here at all (as with an empty Prefect database): summary.json decides."""
    out = tmp_path / "report"
    first = evaluate(tiny_checkpoint, tiny_dataset, out, _settings())
    written = first.summary.stat().st_mtime_ns

    def fail(*_: object, **__: object) -> None:
        raise AssertionError("recomputed a finished report")

    monkeypatch.setattr("codecflow.tasks.evaluate.continuation.continue_prompt", fail)
    again = evaluate(tiny_checkpoint, tiny_dataset, out, _settings())
    assert again == first and again.summary.stat().st_mtime_ns == written
    # Another seed is another report: computed (the patched sampler says so).
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate(tiny_checkpoint, tiny_dataset, out, _settings(seed=5))
    # Without its marker the report is not done.
    first.summary.unlink()
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate(tiny_checkpoint, tiny_dataset, out, _settings())


def test_task_wraps_the_plain_function(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    record = evaluate_task.fn(tiny_checkpoint, tiny_dataset, tmp_path / "r", _settings())
    assert record.summary.is_file()


def test_a_users_folder_is_refused_and_a_report_is_ours_again(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from codecflow.tasks.core import outputs

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(
        CodecflowError, match=f"^{mine} is not empty and is not a codecflow evaluation report$"
    ):
        evaluate(tiny_checkpoint, tiny_dataset, mine, _settings())
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "report"
    evaluate(tiny_checkpoint, tiny_dataset, out, _settings())
    # The report folder is written whole and replaces the claimed one: its marker comes along,
    # so another evaluation into it (after summary.json is gone) is accepted.
    assert json.loads((out / outputs.OWNER_MARKER).read_text())["kind"] == "evaluation report"
    (out / "summary.json").unlink()
    evaluate(tiny_checkpoint, tiny_dataset, out, _settings(seed=5))
    assert (out / "summary.json").is_file() and not (tmp_path / "report.lock").exists()


def test_the_runs_index_never_replaces_someone_elses_page(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>my home page</p>\n")
    with pytest.raises(CodecflowError, match="index.html is not a codecflow runs index: left as"):
        write_runs_index(tmp_path)
    assert (tmp_path / "index.html").read_text() == "<p>my home page</p>\n"
    (tmp_path / "index.html").unlink()
    write_runs_index(tmp_path)
    write_runs_index(tmp_path)  # its own page: replaced


def test_generation_progress_reaches_the_log_without_flooding(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import re

    with caplog.at_level(logging.INFO, logger="codecflow.evaluate"):
        evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "report", _settings())
    lines = [r.getMessage() for r in caplog.records if r.name == "codecflow.evaluate"]
    generating = re.compile(
        r"^evaluate: generating token (\d+)/320 \((\d+)%\): ([\d,.]+) tokens/s, ETA (\d+:\d\d)$"
    )
    found = [m for m in map(generating.match, lines) if m]
    # 320 tokens in well under the 30 s cadence: the first token and the last, nothing between.
    assert [(m.group(1), m.group(2)) for m in found] == [("1", "0"), ("320", "100")], lines
    assert found[-1].group(4) == "0:00" and float(found[-1].group(3).replace(",", "")) > 0


def test_the_true_continuations_speech_metrics_are_split_from_the_samples() -> None:
    """speech_metrics runs on the samples and then the truth (one batch of models): the summary's
    per-sample lists keep the samples only, the truth gets its own voice similarity and words."""
    from codecflow.tasks.evaluate.lm import _split_truth

    speech = {
        "voice": {
            "metric": "voice_similarity",
            "skipped": None,
            "prompt_vs_sample": [0.1, 0.2, 0.9],
            "sample_first_vs_second_half": [0.3, 0.4, 0.8],
            "prompt_vs_sample_skipped": [None, None, None],
        },
        "words": {"prompt_transcript": "a b", "transcripts": ["x", "", "the truth"]},
    }
    samples, truth = _split_truth(speech, 2)
    assert samples["voice"]["prompt_vs_sample"] == [0.1, 0.2]
    assert samples["voice"]["metric"] == "voice_similarity"
    assert samples["words"] == {"prompt_transcript": "a b", "transcripts": ["x", ""]}
    assert truth == {
        "voice_similarity_to_prompt": 0.9,
        "voice_similarity_first_vs_second_half": 0.8,
        "transcript": "the truth",
    }
