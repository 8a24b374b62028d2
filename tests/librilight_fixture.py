"""A generated Libri-Light-format tar: several subsets' worth of speakers and books, and one of
every kind of bad member the acquire flow must survive.

Layout, as in Libri-Light's `small.tar`: `small/<speaker>/<book>/<file>.flac` + `<file>.json`.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["BAD_FILES", "GOOD_FILES", "REFUSED_MEMBERS", "flac_bytes", "make_librilight_tar"]

RATE = 16_000

#: (speaker, book, stem, seconds): the good files, 3 speakers x 2 books.
GOOD_FILES = [
    (speaker, book, f"{book}_{i:02d}_reader{speaker}", 3.0 + i)
    for speaker, books in (
        ("100", ("emerald", "oz")),
        ("200", ("alice", "looking")),
        ("300", ("moby", "typee")),
    )
    for book in books
    for i in range(2)
]

#: Relative path of each bad file -> the reason kind it must be rejected with.
BAD_FILES = {
    "small/400/broken/corrupt_00.flac": "unreadable audio",
    "small/400/broken/truncated_00.flac": "truncated audio",
    "small/400/broken/notaudio_00.flac": "unreadable audio",
    "small/400/broken/nojson_00.flac": "missing metadata",
    "small/400/broken/noflac_00.json": "missing audio",
    "small/400/broken/badjson_00.json": "invalid metadata",
    "small/400/broken/nokeys_00.json": "invalid metadata",
    "small/400/broken/empty_00.flac": "empty audio",
}

#: The members of the tar (with `bad=True`) that the extraction refuses -> their reject reason.
REFUSED_MEMBERS = {
    "/abs/evil.flac": "refused tar member: absolute path",
    "../escape.flac": "refused tar member: '..' component",
    "small/400/broken/link.flac": "refused tar member: link outside the destination",
}


def flac_bytes(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> bytes:
    """Speech-like test audio: 200-400 Hz tones in 0.5 s bursts with pauses, as 16-bit FLAC."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 400) * t)
    envelope = (np.sin(2 * np.pi * t) > -0.3).astype(np.float64)
    mono = (tone * envelope).astype(np.float32)
    audio = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _metadata(speaker: str, book: str, vad: list[list[float]]) -> bytes:
    return json.dumps(
        {
            "speaker": speaker,
            "book_meta": {"id": book, "title": book},
            "snr": 20.0,
            "voice_activity": vad,
        }
    ).encode()


def _vad(seconds: float) -> list[list[float]]:
    return [
        [round(s + 0.1, 2), round(min(s + 0.8, seconds), 2)] for s in np.arange(0, seconds, 1.0)
    ]


def make_librilight_tar(path: Path, *, bad: bool = True, flagged: bool = True) -> dict[str, bytes]:
    """Write the tar; return its members (name -> bytes) for comparisons."""
    members: dict[str, bytes] = {}
    for k, (speaker, book, stem, seconds) in enumerate(GOOD_FILES):
        folder = f"small/{speaker}/{book}"
        members[f"{folder}/{stem}.flac"] = flac_bytes(seconds, seed=k)
        members[f"{folder}/{stem}.json"] = _metadata(speaker, book, _vad(seconds))
    if flagged:
        # Accepted and flagged: 44.1 kHz stereo; its VAD runs past the end (clipped to 2 s).
        members["small/500/odd/stereo44k_00.flac"] = flac_bytes(2.0, rate=44_100, channels=2)
        members["small/500/odd/stereo44k_00.json"] = _metadata(
            "500", "odd", [[0.1, 1.0], [1.2, 9.0]]
        )
    if bad:
        good = flac_bytes(3.0)
        meta = _metadata("400", "broken", [[0.0, 1.0]])
        members["small/400/broken/corrupt_00.flac"] = b"fLaC" + bytes(range(256)) * 8
        members["small/400/broken/corrupt_00.json"] = meta
        members["small/400/broken/truncated_00.flac"] = good[: len(good) // 2]
        members["small/400/broken/truncated_00.json"] = meta
        members["small/400/broken/notaudio_00.flac"] = b"<html>not audio</html>"
        members["small/400/broken/notaudio_00.json"] = meta
        members["small/400/broken/nojson_00.flac"] = good
        members["small/400/broken/noflac_00.json"] = meta
        members["small/400/broken/badjson_00.flac"] = good
        members["small/400/broken/badjson_00.json"] = b"{not json"
        members["small/400/broken/nokeys_00.flac"] = good
        members["small/400/broken/nokeys_00.json"] = b'{"speaker": "400"}'
        members["small/400/broken/empty_00.flac"] = flac_bytes(0.0)
        members["small/400/broken/empty_00.json"] = meta
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        if bad:
            for name in ("/abs/evil.flac", "../escape.flac"):
                info = tarfile.TarInfo(name)
                info.size = 4
                tar.addfile(info, io.BytesIO(b"evil"))
            link = tarfile.TarInfo("small/400/broken/link.flac")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../../../../etc/passwd"
            tar.addfile(link)
    return members
