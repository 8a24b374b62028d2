"""lhotse manifests written by lhotse itself (`layout: lhotse`): a CutSet, and a RecordingSet
with its SupervisionSet, gzipped JSONL; supervisions become the speech and the segments' text."""

from __future__ import annotations

import json
from pathlib import Path

import lhotse  # a dev dependency: `make test` has it (codecflow needs it only for this layout)
import pyarrow.parquet as pq
import pytest
from speech_fixture import librispeech_tree

import codecflow
from codecflow.schemas.configs import AcquireSettings
from codecflow.tasks.acquire.ingest import resolved_layout
from codecflow.tasks.core.errors import CodecflowError


def _supervisions(tree: Path) -> tuple[list, list]:
    """Each LibriSpeech-style file as a Recording, with two supervisions of its speech."""
    recordings, supervisions = [], []
    for flac in sorted(tree.rglob("*.flac")):
        recording = lhotse.Recording.from_file(flac)
        speaker = flac.name.split("-")[0]
        recordings.append(recording)
        for i, (start, duration) in enumerate(((0.3, 4.0), (5.0, 4.5))):
            supervisions.append(
                lhotse.SupervisionSegment(
                    id=f"{recording.id}-{i}", recording_id=recording.id, start=start,
                    duration=duration, speaker=speaker, text=f"WORDS {i} OF {recording.id}",
                )
            )  # fmt: skip
    return recordings, supervisions


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lhotse")
    recordings, supervisions = _supervisions(librispeech_tree(folder))
    recording_set = lhotse.RecordingSet.from_recordings(recordings)
    supervision_set = lhotse.SupervisionSet.from_segments(supervisions)
    recording_set.to_file(folder / "recordings.jsonl.gz")
    supervision_set.to_file(folder / "supervisions.jsonl.gz")
    cuts = lhotse.CutSet.from_manifests(recordings=recording_set, supervisions=supervision_set)
    cuts.to_file(folder / "cuts.jsonl.gz")
    return folder


def test_a_cutset_becomes_segments_with_their_supervisions_text(
    manifests: Path, tmp_path: Path
) -> None:
    source = str(manifests / "cuts.jsonl.gz")
    assert resolved_layout(AcquireSettings(source=source)) == "lhotse"
    manifest = codecflow.ingest(source, str(tmp_path), target_len_sec=5.0, val_fraction=0.3)
    rows = pq.read_table(manifest).to_pylist()
    assert {r["speaker"] for r in rows} == {"198", "3436", "5703"}
    # Each supervision is a chunk: 4.0 s and 4.5 s do not join under 5 s, so 2 segments each.
    assert len(rows) == 6
    assert sorted(round(r["duration_s"], 3) for r in rows) == [4.0] * 3 + [4.5] * 3
    texts = {
        r["segment_id"]: r["text"]
        for r in pq.read_table(tmp_path / "manifest" / "texts.parquet").to_pylist()
    }
    assert texts["198_198-209-0000_0000"] == "WORDS 0 OF 198-209-0000"
    assert texts["198_198-209-0000_0001"] == "WORDS 1 OF 198-209-0000"
    summary = json.loads((tmp_path / "manifest" / "summary.json").read_text())
    assert summary["layout"] == "lhotse" and summary["segments_with_text"] == 6


def test_joined_supervisions_give_their_texts_in_order(manifests: Path, tmp_path: Path) -> None:
    manifest = codecflow.ingest(
        str(manifests / "recordings.jsonl.gz"), str(tmp_path),
        supervisions=str(manifests / "supervisions.jsonl.gz"), target_len_sec=10.0,
    )  # fmt: skip
    rows = pq.read_table(manifest).to_pylist()
    assert len(rows) == 3 and all(len(r["chunks"]) == 2 for r in rows)  # 4.0 + 4.5 <= 10
    texts = pq.read_table(tmp_path / "manifest" / "texts.parquet").to_pylist()
    assert {t["text"] for t in texts} == {
        f"WORDS 0 OF {i} WORDS 1 OF {i}"
        for i in ("198-209-0000", "3436-172162-0000", "5703-47212-0000")
    }


def test_a_recordingset_without_supervisions_is_one_line(manifests: Path, tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match="give its SupervisionSet as `supervisions`"):
        codecflow.ingest(str(manifests / "recordings.jsonl.gz"), str(tmp_path))
    with pytest.raises(CodecflowError, match="lhotse manifest not found"):
        codecflow.ingest(str(manifests / "nope.jsonl.gz"), str(tmp_path / "x"))
