"""Probing one folder of any audio (`layout: audio`): decode, find speech, name the speaker.

Each audio file is decoded once (soundfile: WAV, FLAC, OGG/Vorbis, Opus, MP3), its voice
activity computed or read from the cache (`tasks.acquire.vad`), and it becomes a `ProbedFile`
like a Libri-Light file, so cutting, the hours subset, the speaker split and the manifest are
the same code. Bad files never stop the run: each is a `Reject` with its reason (unreadable,
empty, no speech, no speaker), as is a transcript without audio.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
from collections.abc import Mapping

import numpy as np
import soundfile as sf

from codecflow.tasks.acquire.audio_files import (
    AUDIO_SUFFIXES,
    MetadataTable,
    SpeakerRule,
    file_facts,
)
from codecflow.tasks.acquire.probe import BookListing, BookProbe, ProbedFile, Reject
from codecflow.tasks.acquire.vad import VadSettings, cached_voice_activity, voice_activity
from codecflow.tasks.core.storage import url_to_fs

__all__ = ["libsndfile_reason", "probe_audio_folder"]

# A transcript without audio is a reject; a `.json` without audio is not (any record passes).
_SIDECARS = (".txt", ".lab")


def _decode(raw: bytes) -> tuple[np.ndarray, int]:
    """float32 `[T, C]` and the rate; raises RuntimeError / sf.LibsndfileError when libsndfile
    cannot decode the bytes."""
    audio, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    return audio, int(rate)


def libsndfile_reason(err: BaseException) -> str:
    """libsndfile's own words for a file it cannot open, without what soundfile prefixes
    ("Error opening <_io.BytesIO object at 0x...>: ", an address that differs every run)."""
    return str(err).splitlines()[0].split(">: ", 1)[-1]


def _orphan_transcripts(listing: BookListing) -> list[Reject]:
    names = {name for name, _, _ in listing.entries}
    stems = {posixpath.splitext(n)[0] for n in names if n.lower().endswith(AUDIO_SUFFIXES)}
    rejects = []
    for name in sorted(names):
        stem, suffix = posixpath.splitext(name)
        if suffix in _SIDECARS and not name.endswith(".trans.txt") and stem not in stems:
            rel = posixpath.join(listing.book, name) if listing.book else name
            rejects.append(Reject(rel, "transcript without audio: no audio file of that name"))
    return rejects


def _probe_file(
    fs: object,
    path: str,
    rel: str,
    listing: BookListing,
    facts: Mapping[str, object],
    vad: VadSettings,
    cache_root: str,
) -> ProbedFile | Reject:
    raw: bytes = fs.cat(path)  # type: ignore[attr-defined]
    if not raw:
        return Reject(rel, "empty audio: a zero-length file")
    try:
        audio, rate = _decode(raw)
    except (RuntimeError, sf.LibsndfileError) as err:
        return Reject(rel, f"unreadable audio: {libsndfile_reason(err)[:120]}")
    if audio.shape[0] == 0:
        return Reject(rel, "empty audio: no frames")
    fact = facts[posixpath.basename(rel)]
    speaker = getattr(fact, "speaker", None)
    if not speaker:
        return Reject(rel, "no speaker: the speaker rule finds none for this path")
    mono = audio.mean(axis=1)  # [T]
    digest = hashlib.sha256(raw).hexdigest()
    intervals = cached_voice_activity(
        cache_root, digest, vad, lambda: voice_activity(mono, rate, vad)
    )
    if not intervals:
        return Reject(rel, "no speech found: the VAD found no voice activity")
    folder = listing.book or "."
    return ProbedFile(
        path=rel,
        subset=folder.split("/")[0],
        speaker=str(speaker),
        book_id=posixpath.basename(folder) or ".",
        snr=math.nan,
        voice_activity=tuple((float(s), float(e)) for s, e in intervals),
        sample_rate=rate,
        channels=int(audio.shape[1]),
        duration_s=audio.shape[0] / rate,
        n_bytes=len(raw),
        text=getattr(fact, "text", None),
    )


def probe_audio_folder(
    audio_root: str,
    listing: BookListing,
    rule: SpeakerRule,
    table: MetadataTable | None,
    vad: VadSettings,
    cache_root: str,
) -> BookProbe:
    """Probe every audio file of one folder of the source; the transcripts without audio are
    rejects too. Paths are relative to `audio_root`."""
    fs, base = url_to_fs(audio_root)
    facts = file_facts(audio_root, listing, rule, table)
    files: list[ProbedFile] = []
    rejects = _orphan_transcripts(listing)
    for name in sorted(facts):
        rel = posixpath.join(listing.book, name) if listing.book else name
        result = _probe_file(fs, posixpath.join(base, rel), rel, listing, facts, vad, cache_root)
        (files if isinstance(result, ProbedFile) else rejects).append(result)  # type: ignore[arg-type]
    return BookProbe(listing.book, tuple(files), tuple(rejects))
