"""Offline speech metrics for spoken continuations sampled from an audio LM.

Three questions about each sampled continuation, answered with models that ship inside their
wheels (no download, no network):

- Does it keep the prompt's voice? Cosine similarity of resemblyzer's GE2E speaker embeddings
  between the prompt and the sample, and between the first and the second half of the sample
  (Kyutai's post "Neural audio codecs" hears the voice change mid-sample).
- Does it say words? pocketsphinx's bundled en-us model transcribes the prompt and each sample;
  the prompt's word error rate against its known text checks the recogniser itself.
- How wrong is a transcript? `word_error_rate`, via jiwer, after lowercasing and removing
  punctuation on both sides.

Plain functions, no Prefect. A metric whose package cannot be imported or whose model fails to
load does not raise: its dict says why under "skipped", and its values are None, so an evaluation
report can say plainly that the metric was skipped. All audio is float32 mono in [-1, 1].
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.loaders import (
    SPEECH_MODEL_RATE,
    Skipped,
    import_reason,
    load_recognizer,
    load_voice_encoder,
    model_name,
)

__all__ = [
    "MIN_VOICED_SECONDS",
    "MODEL_RATE",
    "SpeechInputError",
    "regeneration_metrics",
    "speech_metrics",
    "transcribe",
    "voice_similarity",
    "word_error_rate",
]

#: The speech models' rate (`tasks.loaders.SPEECH_MODEL_RATE`).
MODEL_RATE = SPEECH_MODEL_RATE

#: Voiced audio (after resemblyzer's VAD) below this is not embedded: GE2E looks at 1.6 s windows
#: and zero-pads shorter input, so a fraction of a second says little about the voice.
MIN_VOICED_SECONDS = 0.5


class SpeechInputError(CodecflowError, ValueError):
    """Bad input to a speech metric (codecflow's error family, and a ValueError for callers
    that do not know it)."""


# Neither model is documented as thread-safe, and the cached instances are shared by every thread
# of the process (Prefect may run tasks in threads); a pocketsphinx Decoder holds utterance state.
_VOICE_LOCK = threading.Lock()

_RECOGNIZER_LOCK = threading.Lock()


def _to_model_rate(wav: np.ndarray, sample_rate: int, what: str) -> np.ndarray:
    """1-D float32 at 16 kHz; other rates are resampled, not rejected."""
    if sample_rate <= 0:
        raise SpeechInputError(f"sample_rate must be positive, got {sample_rate}")
    audio = np.asarray(wav, dtype=np.float32)
    if audio.ndim != 1:
        raise SpeechInputError(f"{what} must be mono (1-D), got shape {audio.shape}")
    if sample_rate == MODEL_RATE or audio.size == 0:
        return audio
    # Resampled here, not by resemblyzer (librosa): both models then hear the same 16 kHz
    # signal. torch is imported lazily, like the models, to keep this module cheap to import.
    import torch
    import torchaudio.functional as AF

    resampled = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), sample_rate, MODEL_RATE)
    return resampled.numpy().astype(np.float32, copy=False)


def _audio_problem(audio: np.ndarray) -> str | None:
    """Why this audio cannot carry speech at all, or None."""
    if audio.size == 0:
        return "empty audio"
    if not np.isfinite(audio).all():
        return "audio contains NaN or infinite values"
    if not audio.any():
        return "silent audio (every sample is zero)"
    return None


def _voiced(audio: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """resemblyzer's preprocessing (volume normalisation, VAD trimming): (voiced audio, None) or
    (None, why not)."""
    problem = _audio_problem(audio)
    if problem is not None:
        return None, problem
    from resemblyzer import preprocess_wav

    # Audio whose RMS underflows to 0 (all zeros is caught above, tiny values are not) makes its
    # volume normalisation divide by zero; the VAD then finds nothing, which is reported below,
    # so numpy's warnings would only add noise.
    with np.errstate(all="ignore"):
        voiced = preprocess_wav(np.clip(audio, -1.0, 1.0), source_sr=None)
    seconds = voiced.size / MODEL_RATE
    if voiced.size == 0 or not np.isfinite(voiced).all():
        return None, "no speech found by resemblyzer's voice activity detector"
    if seconds < MIN_VOICED_SECONDS:
        return None, f"too little speech: {seconds:.2f} s voiced, need {MIN_VOICED_SECONDS} s"
    return voiced.astype(np.float32, copy=False), None


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the caller's setting.

    GE2E is a small LSTM (3 x 256 units over 160 frames): more threads only add synchronisation,
    and when the CPU is shared OpenMP's waiting makes it far slower (measured on 2 busy cores:
    one forward took 4-15 s on 2 threads, 0.03 s on 1). The setting is process-wide, so it is
    restored as soon as the embeddings are done.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _embed(encoder: Any, voiced: np.ndarray) -> np.ndarray:
    # embed_utterance returns an L2-normalised vector, so cosine similarity is a dot product.
    return np.asarray(encoder.embed_utterance(voiced), dtype=np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    # Both are unit vectors, so the dot product is the cosine; float32 rounding can take it a
    # hair past 1 (1.00000004 for identical audio), which a report would show as nonsense.
    return float(np.clip(a @ b, -1.0, 1.0))


def voice_similarity(
    reference: np.ndarray, samples: Sequence[np.ndarray], sample_rate: int
) -> dict[str, Any]:
    """GE2E cosine similarity of each sample to the reference voice, and of each sample's first
    half to its second half.

    `reference` is the prompt; each sample is the continuation only (without the prompt, which
    would inflate the similarity). The halves are halves of the voiced audio left by
    resemblyzer's VAD, so both hold speech. A value that cannot be computed (silence, too little
    speech) is None, with its reason at the same index of the matching "..._skipped" list.

    Returns {"metric", "model", "skipped": None | reason, "prompt_vs_sample": [float | None],
    "sample_first_vs_second_half": [float | None], "prompt_vs_sample_skipped": [None | reason],
    "sample_first_vs_second_half_skipped": [None | reason]}.
    """
    ref = _to_model_rate(reference, sample_rate, "reference")
    audios = [_to_model_rate(s, sample_rate, f"sample {i}") for i, s in enumerate(samples)]
    n = len(audios)
    result: dict[str, Any] = {
        "metric": "voice_similarity",
        "model": model_name("resemblyzer", "(GE2E)"),
        "skipped": None,
        "prompt_vs_sample": [None] * n,
        "sample_first_vs_second_half": [None] * n,
        "prompt_vs_sample_skipped": [None] * n,
        "sample_first_vs_second_half_skipped": [None] * n,
    }
    encoder = load_voice_encoder()
    if isinstance(encoder, Skipped):
        result["skipped"] = encoder.reason
        result["prompt_vs_sample_skipped"] = [encoder.reason] * n
        result["sample_first_vs_second_half_skipped"] = [encoder.reason] * n
        return result

    with _VOICE_LOCK, _one_torch_thread():
        ref_embedding: np.ndarray | None = None
        ref_voiced, ref_problem = _voiced(ref)
        if ref_voiced is not None:
            ref_embedding = _embed(encoder, ref_voiced)
        for i, audio in enumerate(audios):
            voiced, problem = _voiced(audio)
            if voiced is None:
                result["prompt_vs_sample_skipped"][i] = problem
                result["sample_first_vs_second_half_skipped"][i] = problem
                continue
            if ref_embedding is None:
                result["prompt_vs_sample_skipped"][i] = f"prompt: {ref_problem}"
            else:
                result["prompt_vs_sample"][i] = _cosine(ref_embedding, _embed(encoder, voiced))
            half = voiced.size // 2
            if half / MODEL_RATE < MIN_VOICED_SECONDS:
                result["sample_first_vs_second_half_skipped"][i] = (
                    f"too little speech to halve: {voiced.size / MODEL_RATE:.2f} s voiced, "
                    f"need 2 x {MIN_VOICED_SECONDS} s"
                )
                continue
            first, second = _embed(encoder, voiced[:half]), _embed(encoder, voiced[half:])
            result["sample_first_vs_second_half"][i] = _cosine(first, second)
    return result


def transcribe(wavs: Sequence[np.ndarray], sample_rate: int) -> dict[str, Any]:
    """pocketsphinx en-us transcripts (lowercase words, no punctuation) of each clip.

    Empty or all-zero audio gives "" without decoding: pocketsphinx hears words in digital
    silence (it said "hi" for 1 s of zeros). Audio with NaN/inf gives None and a reason in
    "transcripts_skipped".

    Returns {"metric": "words", "model", "skipped": None | reason, "transcripts": [str | None],
    "transcripts_skipped": [None | reason]}; when skipped, every transcript is None.
    """
    audios = [_to_model_rate(w, sample_rate, f"clip {i}") for i, w in enumerate(wavs)]
    n = len(audios)
    result: dict[str, Any] = {
        "metric": "words",
        "model": model_name("pocketsphinx", "en-us"),
        "skipped": None,
        "transcripts": [None] * n,
        "transcripts_skipped": [None] * n,
    }
    decoder = load_recognizer()
    if isinstance(decoder, Skipped):
        result["skipped"] = decoder.reason
        result["transcripts_skipped"] = [decoder.reason] * n
        return result

    for i, audio in enumerate(audios):
        if not np.isfinite(audio).all():
            result["transcripts_skipped"][i] = "audio contains NaN or infinite values"
            continue
        if not audio.any():  # empty or all zeros: no words, truthfully
            result["transcripts"][i] = ""
            continue
        pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        with _RECOGNIZER_LOCK:
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
        result["transcripts"][i] = hyp.hypstr if hyp is not None else ""
    return result


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference` (jiwer), case and punctuation ignored.

    Can exceed 1 (insertions). Raises `SpeechInputError` (a ValueError) if the reference has no
    words: the rate would divide by zero.
    """
    import jiwer

    # pocketsphinx writes lowercase words without punctuation; a reference typed from a book
    # has capitals and commas, which must not count as errors.
    transform = jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )
    if not transform(reference) or not transform(reference)[0]:
        raise SpeechInputError(
            f"word_error_rate needs a reference with at least one word, got {reference!r}"
        )
    return float(
        jiwer.wer(
            reference=reference,
            hypothesis=hypothesis,
            reference_transform=transform,
            hypothesis_transform=transform,
        )
    )


def speech_metrics(
    prompt: np.ndarray,
    samples: Sequence[np.ndarray],
    sample_rate: int,
    *,
    prompt_text: str | None = None,
) -> dict[str, Any]:
    """Voice similarity and words for a prompt and its sampled continuations (continuation only).

    Returns {"voice": `voice_similarity(...)`, "words": {"metric", "model", "skipped",
    "prompt_transcript", "prompt_transcript_skipped", "transcripts" (one per sample),
    "transcripts_skipped", "sample_word_counts", "prompt_text", "prompt_wer",
    "prompt_wer_skipped"}}. "prompt_wer" is the WER of the prompt's transcript against
    `prompt_text`: it measures the recogniser, so sample transcripts can be read with that error
    in mind.
    """
    voice = voice_similarity(prompt, samples, sample_rate)
    heard = transcribe([prompt, *samples], sample_rate)
    transcripts = heard["transcripts"]
    words: dict[str, Any] = {
        "metric": heard["metric"],
        "model": heard["model"],
        "skipped": heard["skipped"],
        "prompt_transcript": transcripts[0],
        "prompt_transcript_skipped": heard["transcripts_skipped"][0],
        "transcripts": transcripts[1:],
        "transcripts_skipped": heard["transcripts_skipped"][1:],
        "sample_word_counts": [None if t is None else len(t.split()) for t in transcripts[1:]],
        "prompt_text": prompt_text,
        "prompt_wer": None,
        "prompt_wer_skipped": None,
    }
    if prompt_text is None:
        words["prompt_wer_skipped"] = "no prompt_text given"
    elif transcripts[0] is None:
        words["prompt_wer_skipped"] = f"no prompt transcript: {heard['transcripts_skipped'][0]}"
    else:
        try:
            words["prompt_wer"] = word_error_rate(prompt_text, transcripts[0])
        except ImportError as exc:
            words["prompt_wer_skipped"] = import_reason("jiwer", exc)
        except ValueError as exc:  # a prompt_text without words: say so, do not fail the report
            words["prompt_wer_skipped"] = " ".join(str(exc).split())
    return {"voice": voice, "words": words}


def regeneration_metrics(
    original: np.ndarray, regenerations: Sequence[np.ndarray], sample_rate: int
) -> dict[str, Any]:
    """How a recording regenerated from its first levels compares with the original.

    The post's semantic experiment: regenerated from Mimi's semantic token alone, a recording
    keeps what is said but not who says it. So per regeneration: GE2E similarity to the
    original's voice, and the word error rate of its transcript against the original's
    transcript (the recogniser's own errors cancel partly, as both pass through it).

    Returns {"voice_similarity_to_original": [float | None], "transcripts": [str | None],
    "original_transcript": str | None, "word_error_rate_to_original": [float | None],
    "metrics_skipped": None | reason (when a model could not be had)}.
    """
    voice = voice_similarity(original, regenerations, sample_rate)
    heard = transcribe([original, *regenerations], sample_rate)
    reference, transcripts = heard["transcripts"][0], heard["transcripts"][1:]
    rates: list[float | None] = []
    why_not: list[str | None] = []
    for i, hypothesis in enumerate(transcripts):
        try:
            ok = reference is not None and hypothesis is not None
            rates.append(word_error_rate(reference, hypothesis) if ok else None)
            why_not.append(None if ok else _no_wer(heard, i))
        except (ValueError, ImportError) as err:  # no words in the original, or no jiwer
            rates.append(None)
            why_not.append(str(err) or "no words in the original")
    skipped = [r for r in (voice["skipped"], heard["skipped"]) if r]
    return {
        "voice_similarity_to_original": voice["prompt_vs_sample"],
        "voice_similarity_to_original_skipped": [
            None if why is None else why.replace("prompt:", "original:")
            for why in voice["prompt_vs_sample_skipped"]
        ],
        "original_transcript": reference,
        "transcripts": transcripts,
        "transcripts_skipped": heard["transcripts_skipped"][1:],
        "word_error_rate_to_original": rates,
        "word_error_rate_to_original_skipped": why_not,
        "metrics_skipped": "; ".join(skipped) or None,
    }


def _no_wer(heard: Mapping[str, Any], i: int) -> str:
    """Why regeneration `i` has no word error rate: a transcript is missing, and why."""
    original, own = heard["transcripts_skipped"][0], heard["transcripts_skipped"][i + 1]
    return f"original not transcribed: {original}" if original else f"not transcribed: {own}"
