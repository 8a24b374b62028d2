"""Evaluation: prompt loading, generation, the report folder and its summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import PROMPT

from models.mulaw import MuLawTokenizer
from schemas.configs import EvaluateSettings
from tasks.errors import CodecflowError
from tasks.evaluate import SUMMARY_KEYS, acoustic_stats, evaluate, load_prompt
from tasks.wrappers import evaluate_task


def _settings(**overrides: object) -> EvaluateSettings:
    return EvaluateSettings(
        prompt=str(PROMPT), generate_seconds=0.02, num_samples=2, device="cpu", **overrides
    )


def test_report_has_audio_spectrogram_and_summary(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    record = evaluate(tiny_checkpoint, tiny_dataset, out, _settings())
    assert record.generated_seconds == pytest.approx(0.02)
    for name in (
        "index.html",
        "spectrogram.png",
        "prompt.wav",
        "continuation_0.wav",
        "continuation_1.wav",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["generated_tokens"] == 2 * 320  # 2 samples x 20 ms at 16 kHz
    assert summary["context_seconds"] == pytest.approx(64 / 16_000)
    assert summary["n_prefills"] >= 2  # 320 tokens through a 64-token window must slide
    prompt, rate = sf.read(out / "prompt.wav")
    both, _ = sf.read(out / "continuation_1.wav")
    assert rate == 16_000 and len(prompt) == 64_000 and len(both) == 64_000 + 320
    html = (out / "index.html").read_text()
    assert 'src="continuation_1.wav"' in html and "generation_tokens_per_s" in html


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
    clipped = acoustic_stats(np.ones(rate, dtype=np.float32), rate)
    assert clipped["clipping_fraction"] == 1.0
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, rate).astype(np.float32)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    assert acoustic_stats(noise, rate)["spectral_flatness"] > 0.5
    assert acoustic_stats(tone, rate)["spectral_flatness"] < 0.1


def test_task_wraps_the_plain_function(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    record = evaluate_task.fn(tiny_checkpoint, tiny_dataset, tmp_path / "r", _settings())
    assert record.summary.is_file()
