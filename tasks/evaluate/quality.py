"""How close a reconstruction comes to its reference: the numbers the post's codec story is told
in, for the prompt's round trip, `eval-codec` and `compare-codecs`.

- SI-SDR (dB; Le Roux et al. 2019) and log-mel L1 (`models.losses`), at the audio's own rate;
- the post's multi-scale spectral loss (`models.losses.post_spectral_loss`), at the audio's rate;
- PESQ wideband (ITU-T P.862.2, MOS-LQO 1.04-4.64) from the `pesq` package, which accepts only
  16 kHz for wideband: audio at another rate is resampled first;
- STOI (Taal et al. 2011, 0-1) from `pystoi` (it resamples to its own 10 kHz inside).

Both packages run offline. PESQ refuses audio without an utterance, and STOI needs 30 frames of
384 ms (pystoi warns and answers 1e-5 below that): such a metric is None, never a made-up number.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchaudio

from codecflow.models.losses import mel_l1, post_spectral_loss, si_sdr

__all__ = ["PESQ_RATE", "pesq_wb", "quality", "stoi"]

#: P.862.2 wideband is defined at 16 kHz (the `pesq` package raises for any other rate in "wb").
PESQ_RATE = 16_000


def _at_16k(wav: np.ndarray, rate: int) -> np.ndarray:
    if rate == PESQ_RATE:
        return wav.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    return torchaudio.functional.resample(tensor, rate, PESQ_RATE).numpy()


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float | None:
    """PESQ wideband MOS-LQO of `degraded` `[T]` against `reference` `[T]`; None without speech."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(PESQ_RATE, _at_16k(reference, rate), _at_16k(degraded, rate), "wb"))
    except PesqError:  # NoUtterancesError (silence, noise only), a buffer too short
        return None


def stoi(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float | None:
    """STOI of `degraded` `[T]` against `reference` `[T]` (0-1); None when the audio is too
    short for it (pystoi's "Not enough STFT frames" warning) or holds no speech frame."""
    from pystoi import stoi as pystoi_stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi_stoi(reference, degraded, rate, extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught) or not np.isfinite(value):
        return None
    return value


def quality(reference: np.ndarray, degraded: np.ndarray, rate: int) -> dict[str, float | None]:
    """Every metric of `degraded` `[T]` against `reference` `[T]` (cut to the shorter length)."""
    n = min(len(reference), len(degraded))
    ref, deg = reference[:n].astype(np.float32), degraded[:n].astype(np.float32)
    ref_t, deg_t = torch.from_numpy(ref).view(1, 1, -1), torch.from_numpy(deg).view(1, 1, -1)
    return {
        "si_sdr_db": float(si_sdr(deg_t, ref_t).mean()),
        "mel_l1": float(mel_l1(deg_t, ref_t, sample_rate=rate)),
        "spectral_loss": float(post_spectral_loss(ref_t, deg_t)),
        "pesq_wb": pesq_wb(ref, deg, rate),
        "stoi": stoi(ref, deg, rate),
    }
