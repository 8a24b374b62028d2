"""Folders of real speech in the shapes researchers bring (`layout: audio`), made from
`../shared/data/speech/` (three LibriSpeech clips, CC BY 4.0, and the post's prompt, public
domain; attributions in that folder's README) and the repository's prompt.

- `mixed_folder`: WAV at 8 kHz, FLAC at 22.05 kHz, OGG/Vorbis at 44.1 kHz, stereo MP3 at 48 kHz,
  Opus at 48 kHz,
  in one folder per speaker, with sidecar transcripts (.txt, .lab), a transcript without audio,
  a corrupt WAV and a zero-length FLAC;
- `librispeech_tree`: `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with the chapter's
  `<speaker>-<chapter>.trans.txt`.

The transcripts are test sentences written here (the clips' own words are not shipped with
them): what is checked is that each reaches its segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from helpers import REPO

__all__ = ["MIXED_EXPECTED", "SPEECH", "librispeech_tree", "mixed_folder"]

SPEECH = REPO.parent / "shared" / "data" / "speech"
_PROMPT = REPO / "data" / "prompts" / "prompt_librilight_uk_4s.wav"
_CLIPS = ("198-209-0000.ogg", "3436-172162-0000.ogg", "5703-47212-0000.ogg")

#: file -> (speaker, sample rate, channels) of the usable files of `mixed_folder`.
MIXED_EXPECTED = {
    "alice/one.wav": ("alice", 8_000, 1),
    "alice/two.flac": ("alice", 22_050, 1),
    "bob/three.ogg": ("bob", 44_100, 1),
    "bob/four.mp3": ("bob", 48_000, 2),
    "dave/five.wav": ("dave", 16_000, 1),
    "erin/six.opus": ("erin", 48_000, 1),
}


def _read(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(path, dtype="float32")
    return audio, int(rate)


def _at(audio: np.ndarray, rate: int, to: int) -> np.ndarray:
    if rate == to:
        return audio
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, to).numpy()


def mixed_folder(root: Path) -> Path:
    """The mixed folder under `root` (made once; returned as it is when there)."""
    folder = root / "mixed"
    if folder.is_dir():
        return folder
    for name in ("alice", "bob", "carol", "dave", "erin"):
        (folder / name).mkdir(parents=True)
    a, rate = _read(SPEECH / _CLIPS[0])
    sf.write(folder / "alice" / "one.wav", _at(a, rate, 8_000), 8_000)
    b, rate_b = _read(SPEECH / _CLIPS[1])
    sf.write(folder / "alice" / "two.flac", b[: 4 * rate_b], rate_b)  # 4 s: one segment of 5 s
    (folder / "alice" / "two.txt").write_text("the second test sentence\n")
    c, rate_c = _read(SPEECH / _CLIPS[2])
    sf.write(folder / "bob" / "three.ogg", _at(c, rate_c, 44_100), 44_100, format="OGG")
    p, rate_p = _read(_PROMPT)
    stereo = np.stack([_at(p, rate_p, 48_000)] * 2, axis=1)  # [T, 2]
    sf.write(folder / "bob" / "four.mp3", stereo, 48_000, format="MP3")
    (folder / "bob" / "four.lab").write_text("the fourth test sentence")
    (folder / "bob" / "ghost.txt").write_text("a transcript whose audio is missing")
    (folder / "carol" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    (folder / "carol" / "empty.flac").write_bytes(b"")
    sf.write(folder / "dave" / "five.wav", p, rate_p)  # the prompt, 16 kHz
    opus = _at(c[: 5 * rate_c], rate_c, 48_000)  # Opus codes at 48 kHz
    sf.write(folder / "erin" / "six.opus", opus, 48_000, format="OGG", subtype="OPUS")
    return folder


def librispeech_tree(root: Path) -> Path:
    """A LibriSpeech-style tree: two speakers, one chapter each, a trans.txt per chapter."""
    tree = root / "LibriSpeech" / "dev-clean"
    if tree.is_dir():
        return tree
    for clip in _CLIPS:
        speaker, chapter, utt = clip.split(".")[0].split("-")
        folder = tree / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        audio, rate = _read(SPEECH / clip)
        stem = f"{speaker}-{chapter}-{utt}"
        sf.write(folder / f"{stem}.flac", _at(audio, rate, 16_000), 16_000)
        with (folder / f"{speaker}-{chapter}.trans.txt").open("a") as f:
            f.write(f"{stem} TEST WORDS OF {speaker}\n")
    return tree
