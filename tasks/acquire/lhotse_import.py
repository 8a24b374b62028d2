"""lhotse manifests into a segment manifest (`layout: lhotse`): a `CutSet`, or a `RecordingSet`
with its `SupervisionSet`, JSONL, gzipped or not, as lhotse writes them.

lhotse's supervisions are the speech: each becomes a voice-activity interval of its recording
(cut-relative starts made recording-relative), so segments are cut with `cut_by_vad.py`'s rules
like every other source, and each segment's text is the texts of the supervisions it joins, in
order: the words of its span. A recording's speaker is its supervisions' most common one (its id
when none is named). The manifests are read with lhotse itself (`pip install lhotse`), imported
here only; the audio is checked with soundfile, not decoded.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import soundfile as sf

from codecflow.tasks.acquire.audio_probe import libsndfile_reason
from codecflow.tasks.acquire.probe import BookProbe, ProbedFile, Reject
from codecflow.tasks.acquire.segments import SegmentPlan
from codecflow.tasks.core.errors import CodecflowError

__all__ = ["LhotseRecording", "lhotse_probes", "lhotse_texts", "read_lhotse"]


@dataclass(frozen=True)
class LhotseRecording:
    """One recording of the manifests with its supervisions (recording-relative seconds)."""

    id: str
    path: str  # the audio file (absolute, or as lhotse wrote it)
    sample_rate: int
    num_samples: int
    channels: int
    spans: tuple[tuple[float, float, str | None, str | None], ...]  # start, end, speaker, text


def _lhotse() -> Any:
    try:
        import lhotse
    except ImportError:
        raise CodecflowError("layout 'lhotse' needs lhotse: pip install lhotse") from None
    return lhotse


def _path(recording: Any) -> str:
    source = recording.sources[0]
    if source.type not in ("file", "url"):
        raise CodecflowError(
            f"lhotse recording {recording.id}: audio of type {source.type!r} is not read "
            "(only 'file' and 'url' sources)"
        )
    return str(source.source)


def _spans(supervisions: Iterable[Any], offset: float) -> list[tuple[float, float, Any, Any]]:
    return [
        (offset + s.start, offset + s.start + s.duration, s.speaker, s.text) for s in supervisions
    ]


def read_lhotse(manifest: str, supervisions: str | None) -> list[LhotseRecording]:
    """The recordings of a CutSet, or of a RecordingSet and its SupervisionSet."""
    lhotse = _lhotse()
    for path in (manifest, supervisions):
        if path is not None and not os.path.exists(path):
            raise CodecflowError(f"lhotse manifest not found: {path}")
    loaded = lhotse.load_manifest(manifest)
    by_id: dict[str, tuple[Any, list[tuple[float, float, Any, Any]]]] = {}
    if isinstance(loaded, lhotse.CutSet):
        for cut in loaded:
            recording = cut.recording
            spans = by_id.setdefault(recording.id, (recording, []))[1]
            spans.extend(_spans(cut.supervisions, cut.start))
    elif isinstance(loaded, lhotse.RecordingSet):
        if supervisions is None:
            raise CodecflowError(
                f"{manifest} is a lhotse RecordingSet: give its SupervisionSet as `supervisions`"
            )
        for recording in loaded:
            by_id[recording.id] = (recording, [])
        for sup in lhotse.load_manifest(supervisions):
            if sup.recording_id in by_id:
                by_id[sup.recording_id][1].extend(_spans([sup], 0.0))
    else:
        raise CodecflowError(
            f"{manifest} is a lhotse {type(loaded).__name__}: give a CutSet, or a RecordingSet "
            "with `supervisions`"
        )
    return [
        LhotseRecording(
            id=rid,
            path=_path(rec),
            sample_rate=int(rec.sampling_rate),
            num_samples=int(rec.num_samples),
            channels=len(rec.channel_ids),
            spans=tuple(sorted(spans)),
        )  # fmt: skip
        for rid, (rec, spans) in sorted(by_id.items())
    ]


def _probed(rec: LhotseRecording, rel: str) -> ProbedFile | Reject:
    if not rec.spans:
        return Reject(rel, "no speech found: the recording has no supervision")
    try:
        info = sf.info(rec.path)
    except (RuntimeError, sf.LibsndfileError) as err:
        return Reject(rel, f"unreadable audio: {libsndfile_reason(err)}")
    speakers = Counter(s[2] for s in rec.spans if s[2])
    speaker = speakers.most_common(1)[0][0] if speakers else rec.id
    return ProbedFile(
        path=rel,
        subset="lhotse",
        speaker=str(speaker),
        book_id=rec.id,
        snr=math.nan,
        voice_activity=tuple((s, e) for s, e, _, _ in rec.spans),
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        duration_s=info.frames / info.samplerate,
        n_bytes=os.path.getsize(rec.path) if os.path.exists(rec.path) else 0,
    )


def lhotse_probes(recordings: Sequence[LhotseRecording]) -> tuple[str, list[BookProbe]]:
    """The audio root (the recordings' common folder) and one probe per recording, paths
    relative to it."""
    if not recordings:
        raise CodecflowError("the lhotse manifests hold no recording")
    folders = [os.path.dirname(os.path.abspath(r.path)) for r in recordings]
    root = os.path.commonpath(folders)
    probes = []
    for rec in recordings:
        rel = os.path.relpath(os.path.abspath(rec.path), root).replace(os.sep, "/")
        result = _probed(rec, rel)
        files = (result,) if isinstance(result, ProbedFile) else ()
        rejects = (result,) if isinstance(result, Reject) else ()
        probes.append(BookProbe(posixpath.dirname(rel), files, rejects))
    return root, probes


def lhotse_texts(
    plan: SegmentPlan, recordings: Sequence[LhotseRecording], root: str
) -> dict[str, str]:
    """segment id -> the texts of the supervisions its chunks are, in order."""
    spans = {
        os.path.relpath(os.path.abspath(r.path), root).replace(os.sep, "/"): r.spans
        for r in recordings
    }
    texts = {}
    for row in plan.rows:
        words = [
            text
            for chunk in row["chunks"]
            for start, end, _, text in spans.get(row["source_path"], ())
            if text and start < chunk["end_s"] and end > chunk["start_s"]
        ]
        if words:
            texts[row["segment_id"]] = " ".join(words)
    return texts
