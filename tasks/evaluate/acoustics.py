"""Audio in and out of an evaluation: loading the prompt, acoustic sanity of a sample (the post's
"crackling" and screeching failure modes), WAV files and spectrograms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

from models.tokenizer import AudioTokenizer
from tasks.core.errors import CodecflowError
from tasks.core.plots import figure

__all__ = [
    "CRACKLING_FLATNESS",
    "SCREECHING_CLIPPING",
    "acoustic_stats",
    "load_audio",
    "load_prompt",
]

# A sample "stuck in broadband noise" (the post's crackling mode) has a flat spectrum: white
# noise has a spectral flatness near exp(-Euler's gamma) = 0.56 per frame, voiced speech around
# 0.01-0.1. 0.3 over the non-silent frames separates the two with room on both sides.
CRACKLING_FLATNESS = 0.3

# Screeching saturates: more than 1 % of samples at full scale.
SCREECHING_CLIPPING = 0.01


def load_audio(path: Path, sample_rate: int, what: str = "audio") -> torch.Tensor:
    """Any audio file as float32 mono `[1, 1, T]` at `sample_rate`; one-line errors name it."""
    path = Path(path)
    if not path.is_file():
        raise CodecflowError(f"{what} not found: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except sf.LibsndfileError as exc:
        raise CodecflowError(f"cannot read {what} {path}: {exc}") from exc
    wav = torch.from_numpy(audio.mean(axis=1)).view(1, 1, -1)  # [1, 1, T]
    if rate != sample_rate:
        wav = torchaudio.functional.resample(wav, rate, sample_rate)  # [1, 1, T']
    return wav


def load_prompt(path: Path, tokenizer: AudioTokenizer, what: str = "prompt audio") -> torch.Tensor:
    """Read any audio file as float32 `[1, 1, T]` at the tokenizer's rate, mono, whole frames."""
    wav = load_audio(path, tokenizer.sample_rate, what)  # [1, 1, T]
    whole = wav.shape[-1] // tokenizer.samples_per_frame * tokenizer.samples_per_frame
    if whole == 0:
        raise CodecflowError(f"{what} {path} is shorter than one frame")
    return wav[..., :whole]  # [1, 1, F * samples_per_frame]


def acoustic_stats(wav: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """RMS level (dBFS), clipping and silence fractions, spectral flatness, and failure flags.

    `spectral_flatness` is the mean over all 20 ms frames; `voiced_flatness` over the frames
    that are not silent, which is what the crackling flag reads (silence is not crackling).
    """
    eps = 1e-10
    rms = float(np.sqrt(np.mean(wav**2) + eps))
    frame = max(1, sample_rate // 50)  # 20 ms frames
    n = len(wav) // frame
    frames = wav[: n * frame].reshape(n, frame) if n else wav.reshape(1, -1)
    frame_db = 10 * np.log10(np.mean(frames**2, axis=1) + eps)
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + eps
    flatness = np.exp(np.mean(np.log(spectrum), axis=1)) / np.mean(spectrum, axis=1)
    loud = frame_db >= -50.0
    voiced_flatness = float(np.mean(flatness[loud])) if loud.any() else 0.0
    clipping = float(np.mean(np.abs(wav) >= 0.999))
    flags = []
    if voiced_flatness > CRACKLING_FLATNESS:
        flags.append("crackling")
    if clipping > SCREECHING_CLIPPING:
        flags.append("screeching")
    return {
        "rms_dbfs": 20 * np.log10(rms),
        "clipping_fraction": clipping,
        "silence_fraction": float(np.mean(~loud)),
        "spectral_flatness": float(np.mean(flatness)),
        "voiced_flatness": voiced_flatness,
        "flags": flags,
    }


def _write_wav(path: Path, wav: np.ndarray, rate: int) -> None:
    # Clip before PCM16: a sampled waveform may overshoot full scale, and libsndfile would wrap.
    sf.write(str(path), np.clip(wav, -1.0, 1.0), rate, subtype="PCM_16")


def _plot_spectrogram(wav: np.ndarray, rate: int, prompt_samples: int, path: Path) -> None:
    spec = torchaudio.transforms.Spectrogram(n_fft=512, hop_length=128)(torch.from_numpy(wav))
    db = 10 * torch.log10(spec + 1e-10)  # [n_fft / 2 + 1, frames]
    with figure(path, size=(10, 3.0)) as ax:
        extent = (0.0, wav.size / rate, 0.0, rate / 2000)
        ax.imshow(db.numpy(), origin="lower", aspect="auto", extent=extent, cmap="magma")
        ax.axvline(prompt_samples / rate, color="cyan", linestyle="--", label="end of prompt")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
        ax.legend(loc="upper left")
