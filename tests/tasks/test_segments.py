"""Tests of tasks.segments: Libri-Light metadata, cut_by_vad semantics, the speaker split and
the segment manifest, on the committed tiny corpus.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.tables import SEGMENT_MANIFEST_SCHEMA, SPLITS
from tasks.errors import (
    CodecflowError,
)
from tasks.extract import ExtractRecord, extract_tar_safely
from tasks.segments import (
    build_segment_manifest,
    cut_by_vad,
    read_segment_audio,
    scan_librilight,
    split_by_speaker,
)

REPO = Path(__file__).resolve().parents[2]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
TINY_MD5 = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar.md5"

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


# --------------------------------------------------------------------------------------------
# cut_by_vad
# --------------------------------------------------------------------------------------------


def test_cut_by_vad_accumulates() -> None:
    vad = [(0.0, 10.0), (11.0, 21.0), (22.0, 32.0), (33.0, 34.0)]
    assert cut_by_vad(vad, 25.0) == [[(0.0, 10.0), (11.0, 21.0)], [(22.0, 32.0), (33.0, 34.0)]]


def test_cut_by_vad_boundary_exactly_at_target_stays() -> None:
    # cut_by_vad.py closes a segment only when the total would *exceed* the target.
    assert cut_by_vad([(0.0, 10.0), (10.5, 20.5), (21.0, 21.5)], 20.0) == [
        [(0.0, 10.0), (10.5, 20.5)],
        [(21.0, 21.5)],
    ]


def test_cut_by_vad_long_chunk_alone() -> None:
    vad = [(0.0, 5.0), (6.0, 100.0), (101.0, 104.0)]
    assert cut_by_vad(vad, 30.0) == [[(0.0, 5.0)], [(6.0, 100.0)], [(101.0, 104.0)]]
    assert cut_by_vad([(0.0, 90.0), (91.0, 92.0)], 30.0) == [[(0.0, 90.0)], [(91.0, 92.0)]]


def test_cut_by_vad_empty_and_bad_input() -> None:
    assert cut_by_vad([], 60.0) == []
    with pytest.raises(CodecflowError, match="target_len_sec"):
        cut_by_vad([(0.0, 1.0)], 0.0)
    with pytest.raises(CodecflowError, match="chunk 1"):
        cut_by_vad([(0.0, 1.0), (3.0, 2.0)], 10.0)


# --------------------------------------------------------------------------------------------
# split_by_speaker
# --------------------------------------------------------------------------------------------


def test_split_by_speaker_is_deterministic_and_disjoint() -> None:
    rng = random.Random(0)
    hours = {f"spk{i}": rng.uniform(0.5, 5.0) for i in range(40)}
    split = split_by_speaker(hours, 0.1, seed=7)
    assert split == split_by_speaker(dict(reversed(list(hours.items()))), 0.1, seed=7)
    assert set(split) == set(hours) and set(split.values()) == set(SPLITS)
    val_hours = sum(h for s, h in hours.items() if split[s] == "val")
    assert val_hours >= 0.1 * sum(hours.values())
    assert val_hours < 0.1 * sum(hours.values()) + max(hours.values())  # stops once reached
    assert split != split_by_speaker(hours, 0.1, seed=8)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_split_by_speaker_two_speakers_one_each(fraction: float) -> None:
    split = split_by_speaker({"a": 1.0, "b": 1.0}, fraction, seed=0)
    assert sorted(split.values()) == ["train", "val"]


def test_split_by_speaker_small_inputs() -> None:
    assert split_by_speaker({}, 0.1, 0) == {}
    assert split_by_speaker({"only": 3.0}, 0.5, 0) == {"only": "train"}
    with pytest.raises(CodecflowError, match="val_fraction"):
        split_by_speaker({"a": 1.0}, 1.0, 0)


# --------------------------------------------------------------------------------------------
# scan_librilight, build_segment_manifest, read_segment_audio
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "librilight"
    extract_tar_safely(TINY_TAR, root)
    return root


def test_scan_librilight(tiny_root: Path) -> None:
    files = scan_librilight(tiny_root)
    assert [f.speaker for f in files] == ["198", "3436", "5703"]
    for f in files:
        meta = json.loads((tiny_root / f.path).with_suffix(".json").read_text())
        assert f.path.startswith(f"small/{f.speaker}/")
        assert f.book_id == meta["book_meta"]["id"] == f.path.split("/")[-1].split("-")[1]
        assert f.sample_rate == 16_000 and 10.0 < f.duration_s < 20.0
        assert f.voice_activity == tuple(tuple(c) for c in meta["voice_activity"])
        assert all(0 <= a < b <= f.duration_s for a, b in f.voice_activity)


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "bad Libri-Light metadata"), ('{"speaker": "1"}', "missing key 'book_meta'")],
)
def test_scan_librilight_bad_json(tmp_path: Path, tiny_root: Path, content: str, message: str):
    flac = next(tiny_root.rglob("*.flac"))
    folder = tmp_path / "small" / "1" / "book"
    folder.mkdir(parents=True)
    shutil.copy(flac, folder / "x.flac")
    (folder / "x.json").write_text(content)
    with pytest.raises(CodecflowError, match=re.escape(message)) as info:
        scan_librilight(tmp_path)
    assert str(folder / "x.json") in str(info.value)


@pytest.mark.parametrize("target", [5.0, 60.0])
def test_build_segment_manifest(tmp_path: Path, tiny_root: Path, target: float) -> None:
    out = tmp_path / "manifest.parquet"
    rec = build_segment_manifest(tiny_root, out, target_len_sec=target, val_fraction=0.3, seed=0)
    assert pq.read_schema(out).equals(SEGMENT_MANIFEST_SCHEMA, check_metadata=False)
    rows = pq.read_table(out).to_pylist()
    assert [r["segment_id"] for r in rows] == sorted(r["segment_id"] for r in rows)
    assert len({r["segment_id"] for r in rows}) == len(rows) == rec.n_segments

    expected_ids = []
    for f in scan_librilight(tiny_root):
        stem = Path(f.path).stem
        expected_ids += [
            f"{stem}_{i:04d}" for i in range(len(cut_by_vad(f.voice_activity, target)))
        ]
    assert sorted(expected_ids) == [r["segment_id"] for r in rows]
    if target == 60.0:
        assert rec.n_segments == 3  # each ~15 s file is one segment

    for r in rows:
        chunks = [(c["start_s"], c["end_s"]) for c in r["chunks"]]
        assert r["duration_s"] == pytest.approx(sum(b - a for a, b in chunks))
        assert (r["start_s"], r["end_s"]) == (chunks[0][0], chunks[-1][1])
        assert r["split"] in SPLITS and r["sample_rate"] == 16_000
        assert r["source_path"].startswith(f"small/{r['speaker']}/")
    train = {r["speaker"] for r in rows if r["split"] == "train"}
    val = {r["speaker"] for r in rows if r["split"] == "val"}
    assert train and val and not train & val
    assert rec.n_speakers == 3 and rec.n_train + rec.n_val == rec.n_segments
    assert rec.n_val == sum(r["split"] == "val" for r in rows)
    assert rec.audio_hours == pytest.approx(sum(r["duration_s"] for r in rows) / 3600)
    assert siblings(tmp_path) == {"manifest.parquet"}  # written atomically, no temp left


def test_build_segment_manifest_is_reproducible(tmp_path: Path, tiny_root: Path) -> None:
    a = build_segment_manifest(tiny_root, tmp_path / "a.parquet", 5.0)
    b = build_segment_manifest(tiny_root, tmp_path / "b.parquet", 5.0)
    assert pq.read_table(a.path).equals(pq.read_table(b.path))


def test_build_segment_manifest_empty_root(tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match=re.escape(str(tmp_path))):
        build_segment_manifest(tmp_path, tmp_path / "m.parquet")


def test_read_segment_audio(tmp_path: Path, tiny_root: Path) -> None:
    rec = build_segment_manifest(tiny_root, tmp_path / "m.parquet", target_len_sec=5.0)
    rows = pq.read_table(rec.path).to_pylist()
    for r in rows:
        audio = read_segment_audio(tiny_root, r)
        sr = r["sample_rate"]
        expected = sum(int(c["end_s"] * sr) - int(c["start_s"] * sr) for c in r["chunks"])
        assert audio.dtype.name == "float32" and audio.shape == (expected,)
        assert 0.0 < float(abs(audio).max()) <= 1.0
    # Chunks may also be given as (start, end) tuples; the audio is the chunk's frames.
    import soundfile as sf

    row = rows[0]
    full, sr = sf.read(tiny_root / row["source_path"], dtype="float32")
    start, end = row["chunks"][0]["start_s"], row["chunks"][0]["end_s"]
    one = read_segment_audio(tiny_root, {**row, "chunks": [(start, end)]})
    assert (one == full[int(start * sr) : int(end * sr)]).all()


def test_records_are_frozen() -> None:
    rec = ExtractRecord(Path("."), 0, 0, ())
    with pytest.raises(AttributeError):
        rec.n_files = 1  # type: ignore[misc]
