"""Speech metrics on real audio: GE2E voice similarity, pocketsphinx transcripts, WER, and the
plain "skipped" answers when a package is missing or the audio holds no speech."""

from __future__ import annotations

import io
import sys
import tarfile
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from helpers import PROMPT, TINY_TAR

from codecflow.tasks.evaluate.speech_metrics import (
    MIN_VOICED_SECONDS,
    SpeechInputError,
    regeneration_metrics,
    speech_metrics,
    transcribe,
    voice_similarity,
    word_error_rate,
)
from codecflow.tasks.loaders import load_recognizer, load_voice_encoder

RATE = 16_000
# The prompt's two lines, as far as its 4 s go ("...and corn still grassy" in the poem; the clip
# may cut the last word short, which is why WER assertions below are loose).
PROMPT_TEXT = "When grass is gone, and corn still grassy;"


@pytest.fixture(scope="module")
def prompt() -> np.ndarray:
    audio, rate = sf.read(PROMPT, dtype="float32")
    assert rate == RATE and audio.ndim == 1
    return audio


@pytest.fixture(scope="module")
def other_speakers() -> dict[str, np.ndarray]:
    """The first 4 s of each of the tiny corpus's three readers (none is the prompt's reader)."""
    out: dict[str, np.ndarray] = {}
    with tarfile.open(TINY_TAR) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".flac"):
                data = tar.extractfile(member)
                assert data is not None
                audio, rate = sf.read(io.BytesIO(data.read()), dtype="float32")
                assert rate == RATE
                out[member.name.split("/")[1]] = audio[: 4 * RATE]
    assert len(out) == 3
    return out


def _halves(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return audio[: len(audio) // 2], audio[len(audio) // 2 :]


def test_same_speaker_is_closer_than_other_speakers_and_noise(
    prompt: np.ndarray, other_speakers: dict[str, np.ndarray]
) -> None:
    first, second = _halves(prompt)
    noise = (np.random.default_rng(0).standard_normal(2 * RATE) * 0.1).astype(np.float32)
    result = voice_similarity(first, [second, *other_speakers.values(), noise], RATE)

    assert result["metric"] == "voice_similarity"
    assert result["model"].startswith("resemblyzer ") and "GE2E" in result["model"]
    assert result["skipped"] is None
    same, *others, noise_sim = result["prompt_vs_sample"]
    # Measured: same reader 0.86; other readers 0.41-0.55; white noise 0.35.
    assert same > max(others) + 0.15, result["prompt_vs_sample"]
    assert noise_sim < same - 0.3
    assert all(-1.0 <= s <= 1.0 for s in result["prompt_vs_sample"])
    assert result["prompt_vs_sample_skipped"] == [None] * 5
    # Every sample here has >= 2 x MIN_VOICED_SECONDS of voiced audio, so halves are compared.
    assert all(s is not None for s in result["sample_first_vs_second_half"])


def test_prompt_is_transcribed_with_its_words(prompt: np.ndarray) -> None:
    result = transcribe([prompt], RATE)
    assert result["skipped"] is None
    assert result["model"].startswith("pocketsphinx ") and result["model"].endswith("en-us")
    (text,) = result["transcripts"]
    # Measured: "when grass is gone and corn still crashing" (WER 0.125 against PROMPT_TEXT).
    assert {"grass", "gone", "corn"} <= set(text.split()), text
    assert word_error_rate(PROMPT_TEXT, text) < 0.5


def test_speech_metrics_reports_voice_words_and_prompt_wer(
    prompt: np.ndarray, other_speakers: dict[str, np.ndarray]
) -> None:
    first, second = _halves(prompt)
    speaker = next(iter(other_speakers.values()))
    report = speech_metrics(first, [second, speaker], RATE, prompt_text="when grass is gone")

    voice, words = report["voice"], report["words"]
    assert voice["prompt_vs_sample"][0] > voice["prompt_vs_sample"][1]
    assert words["skipped"] is None
    assert "grass" in words["prompt_transcript"]
    assert words["prompt_wer"] is not None and words["prompt_wer"] < 0.5
    assert words["prompt_wer_skipped"] is None
    assert len(words["transcripts"]) == len(words["sample_word_counts"]) == 2
    assert words["sample_word_counts"] == [len(t.split()) for t in words["transcripts"]]
    assert words["sample_word_counts"][1] >= 5  # 4 s of read speech

    without_text = speech_metrics(first, [second], RATE)["words"]
    assert without_text["prompt_wer"] is None
    assert without_text["prompt_wer_skipped"] == "no prompt_text given"


@pytest.mark.parametrize("rate", [8_000, 24_000])
def test_other_sample_rates_are_resampled(prompt: np.ndarray, rate: int) -> None:
    at_rate = AF.resample(torch.from_numpy(prompt), RATE, rate).numpy()
    reference = voice_similarity(prompt, [_halves(prompt)[1]], RATE)["prompt_vs_sample"][0]

    result = voice_similarity(at_rate, [_halves(at_rate)[1]], rate)
    # Measured: 16 kHz 0.956; 24 kHz 0.956; 8 kHz 0.967 (band-limited, still the same voice).
    assert result["prompt_vs_sample"][0] == pytest.approx(reference, abs=0.05)
    (text,) = transcribe([at_rate], rate)["transcripts"]
    if rate >= RATE:  # 8 kHz loses the consonants pocketsphinx needs ("when crowd is gone...")
        assert "grass" in text.split(), text
    else:
        assert text


def test_silence_and_too_little_speech_give_none_with_reasons(prompt: np.ndarray) -> None:
    silence = np.zeros(RATE, dtype=np.float32)
    blip = prompt[: int(0.3 * RATE)]  # speech onset only: the VAD keeps nothing
    one_second = prompt[RATE : 2 * RATE]  # enough to compare with the prompt, not to halve
    nan = np.full(RATE, np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resemblyzer's divide-by-zero warnings are kept inside
        result = voice_similarity(prompt, [silence, blip, one_second, nan, silence[:0]], RATE)

    assert result["skipped"] is None
    sims, halves = result["prompt_vs_sample"], result["sample_first_vs_second_half"]
    reasons = result["prompt_vs_sample_skipped"]
    assert sims[0] is None and "silent" in reasons[0]
    assert sims[1] is None and "no speech" in reasons[1]
    assert sims[2] is not None and reasons[2] is None
    assert halves[2] is None
    assert "to halve" in result["sample_first_vs_second_half_skipped"][2]
    assert str(MIN_VOICED_SECONDS) in result["sample_first_vs_second_half_skipped"][2]
    assert sims[3] is None and "NaN" in reasons[3]
    assert sims[4] is None and "empty" in reasons[4]
    assert all(isinstance(r, str) and "\n" not in r for r in reasons if r is not None)

    # A silent prompt: nothing to compare with, but each sample's halves still are.
    silent_prompt = voice_similarity(silence, [prompt], RATE)
    assert silent_prompt["prompt_vs_sample"] == [None]
    assert silent_prompt["prompt_vs_sample_skipped"][0].startswith("prompt: silent")
    assert silent_prompt["sample_first_vs_second_half"][0] is not None

    # pocketsphinx hears "hi" in digital silence: silence is transcribed as no words.
    words = transcribe([silence, silence[:0], nan], RATE)
    assert words["transcripts"][:2] == ["", ""]
    assert words["transcripts"][2] is None and "NaN" in words["transcripts_skipped"][2]

    report = speech_metrics(silence, [silence], RATE, prompt_text="when grass is gone")
    assert report["voice"]["prompt_vs_sample"] == [None]
    assert report["words"]["prompt_transcript"] == ""
    assert report["words"]["sample_word_counts"] == [0]
    assert report["words"]["prompt_wer"] == 1.0


@pytest.fixture
def fresh_model_cache() -> Iterator[None]:
    """Loaders cache failures too: start clean, and do not leave a failure for later tests."""
    load_voice_encoder.cache_clear()
    load_recognizer.cache_clear()
    yield
    load_voice_encoder.cache_clear()
    load_recognizer.cache_clear()


@pytest.mark.usefixtures("fresh_model_cache")
def test_missing_packages_skip_metrics_without_raising(
    prompt: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    for package in ("resemblyzer", "pocketsphinx", "jiwer"):
        monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail

    report = speech_metrics(prompt, [prompt, prompt], RATE, prompt_text="when grass is gone")

    voice = report["voice"]
    assert voice["skipped"].startswith("resemblyzer is not installed")
    assert voice["prompt_vs_sample"] == voice["sample_first_vs_second_half"] == [None, None]
    assert voice["model"].startswith("resemblyzer")
    words = report["words"]
    assert words["skipped"].startswith("pocketsphinx is not installed")
    assert words["prompt_transcript"] is None and words["transcripts"] == [None, None]
    assert words["sample_word_counts"] == [None, None]
    assert words["prompt_wer"] is None and "pocketsphinx" in words["prompt_wer_skipped"]
    for reason in (voice["skipped"], words["skipped"]):
        assert "\n" not in reason

    # jiwer alone missing: transcripts are there, the WER says why it is not.
    monkeypatch.delitem(sys.modules, "pocketsphinx")
    load_recognizer.cache_clear()
    words = speech_metrics(prompt, [], RATE, prompt_text="when grass is gone")["words"]
    assert "grass" in words["prompt_transcript"]
    assert words["prompt_wer"] is None
    assert words["prompt_wer_skipped"].startswith("jiwer is not installed")


def test_word_error_rate() -> None:
    assert word_error_rate("when grass is gone", "when grass is gone") == 0.0
    # Case and punctuation are not errors: recognisers write neither.
    assert word_error_rate("When grass is gone,", "when grass is gone") == 0.0
    assert word_error_rate("when grass is gone", "when glass is gone") == pytest.approx(0.25)
    assert word_error_rate("when grass is gone", "") == 1.0
    assert word_error_rate("gone", "when grass is gone") == pytest.approx(3.0)  # insertions
    for empty in ("", "   ", "?!"):
        with pytest.raises(ValueError, match="at least one word"):
            word_error_rate(empty, "when grass is gone")


def test_bad_audio_arguments_raise(prompt: np.ndarray) -> None:
    with pytest.raises(SpeechInputError, match="mono"):
        voice_similarity(np.stack([prompt, prompt]), [prompt], RATE)
    with pytest.raises(ValueError, match="sample_rate"):
        transcribe([prompt], 0)


def test_regeneration_metrics_tell_same_words_and_voice_from_other_ones(
    prompt: np.ndarray, other_speakers: dict[str, np.ndarray]
) -> None:
    other = next(iter(other_speakers.values()))
    result = regeneration_metrics(prompt, [prompt.copy(), other], RATE)
    assert result["metrics_skipped"] is None
    same, different = result["voice_similarity_to_original"]
    assert same == pytest.approx(1.0, abs=1e-3) and different < same - 0.2
    assert "grass" in result["original_transcript"]
    assert result["word_error_rate_to_original"][0] == 0.0
    assert result["word_error_rate_to_original"][1] > 0.5  # another reader, other words
