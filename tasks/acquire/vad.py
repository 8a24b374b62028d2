"""Voice activity for audio that comes without it (`layout: audio`).

- "silero": Silero VAD (snakers4/silero-vad, the `silero-vad` package, which ships its weights:
  offline, on the CPU) on the file's audio down-mixed and resampled to 16 kHz, one of the two
  rates it takes. Its speech intervals are stored as Libri-Light stores them (a JSON object with
  `voice_activity`: [[start_s, end_s], ...]), so cutting keeps `cut_by_vad.py`'s semantics.
- "none": the whole file is speech, cut into pieces of at most `target_len_sec` at the quietest
  20 ms frame of the last quarter of each piece.

Results are cached per file on its content (sha256) and the settings, under `<root>/vad/`: a
file re-probed after a move or in another run is not decoded for VAD again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from codecflow.tasks.core.storage import exists, join, open_atomic_write, url_to_fs

__all__ = ["VAD_RATE", "VadSettings", "cached_voice_activity", "voice_activity"]

#: Silero VAD takes 8 or 16 kHz; audio is resampled to 16 kHz first.
VAD_RATE = 16_000
#: The frame whose energy `none` compares when it looks for a quiet cut.
_QUIET_FRAME_S = 0.02


@dataclass(frozen=True)
class VadSettings:
    """The VAD settings of an acquire config (`AcquireSettings.vad*`, `target_len_sec`)."""

    mode: str  # "silero" or "none"
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    target_len_sec: float = 60.0

    def key(self) -> str:
        """A short digest of what changes the intervals (target_len only matters for none)."""
        fields = asdict(self)
        if self.mode == "silero":
            fields.pop("target_len_sec")
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_PER_THREAD = threading.local()


def _silero() -> Any:
    """This thread's Silero model. The model keeps its recurrent state between calls
    (`reset_states` starts each file), so threads must not share one: Prefect runs the mapped
    probes in threads, and a shared model crashed the TorchScript interpreter (SIGABRT)."""
    model = getattr(_PER_THREAD, "model", None)
    if model is None:
        import warnings

        from silero_vad import load_silero_vad

        with warnings.catch_warnings():
            # silero-vad 6.2 reads its weights with importlib.resources.path (deprecated): its
            # warning, not ours.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = _PER_THREAD.model = load_silero_vad()
    return model


def _silero_intervals(mono: np.ndarray, rate: int, settings: VadSettings) -> list[list[float]]:
    import torch
    import torchaudio
    from silero_vad import get_speech_timestamps

    wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))  # [T]
    if rate != VAD_RATE:
        wav = torchaudio.functional.resample(wav, rate, VAD_RATE)  # [T']
    stamps = get_speech_timestamps(
        wav,
        _silero(),
        threshold=settings.threshold,
        sampling_rate=VAD_RATE,
        min_speech_duration_ms=settings.min_speech_ms,
        min_silence_duration_ms=settings.min_silence_ms,
    )  # sample indices at 16 kHz: exact, where return_seconds rounds to 0.1 s
    return [[s["start"] / VAD_RATE, s["end"] / VAD_RATE] for s in stamps]


def _quiet_cuts(mono: np.ndarray, rate: int, target_len_sec: float) -> list[list[float]]:
    """[0, duration] cut into pieces of at most `target_len_sec`, each cut at the quietest
    20 ms frame of the last quarter of its piece."""
    duration = len(mono) / rate
    frame = max(1, int(_QUIET_FRAME_S * rate))
    out, start = [], 0.0
    while duration - start > target_len_sec:
        lo, hi = int((start + 0.75 * target_len_sec) * rate), int((start + target_len_sec) * rate)
        window = mono[lo:hi]
        n = max(1, len(window) // frame)
        energy = np.square(window[: n * frame].astype(np.float64)).reshape(n, -1).mean(axis=1)
        cut = (lo + int(np.argmin(energy)) * frame + frame // 2) / rate
        out.append([start, cut])
        start = cut
    out.append([start, duration])
    return out


def voice_activity(mono: np.ndarray, rate: int, settings: VadSettings) -> list[list[float]]:
    """Speech intervals `[[start_s, end_s], ...]` of float `[T]` mono audio at `rate`."""
    assert mono.ndim == 1, f"audio must be mono [T], got shape {mono.shape}"
    if settings.mode == "none":
        return _quiet_cuts(mono, rate, settings.target_len_sec)
    return _silero_intervals(mono, rate, settings)


def cached_voice_activity(
    cache_root: str, content_sha256: str, settings: VadSettings, compute: Any
) -> list[list[float]]:
    """The intervals of the file whose bytes hash to `content_sha256`: read from
    `<cache_root>/<sha[:2]>/<sha>-<settings>.json` when there, else `compute()`'d and written
    there (atomically, in Libri-Light's JSON form)."""
    rel = posixpath.join(content_sha256[:2], f"{content_sha256}-{settings.key()}.json")
    url = join(cache_root, rel)
    if exists(url):
        fs, path = url_to_fs(url)
        return [list(map(float, pair)) for pair in json.loads(fs.cat(path))["voice_activity"]]
    intervals = compute()
    record = {"voice_activity": intervals, "vad": asdict(settings)}
    with open_atomic_write(url) as f:
        f.write(json.dumps(record).encode())
    return list(intervals)
