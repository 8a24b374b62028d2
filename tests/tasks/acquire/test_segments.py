"""Tests of tasks.acquire (probe, segments): probing with rejects, cut_by_vad semantics, hour-targeted subsets,
the speaker split, the manifest and its rejects table, FLAC segments, reading audio back."""

from __future__ import annotations

import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import TINY_TAR
from librilight_fixture import BAD_FILES, GOOD_FILES, flac_bytes, make_librilight_tar

from codecflow.schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    REJECTS_SCHEMA,
    SEGMENT_MANIFEST_SCHEMA,
    SPLITS,
)
from codecflow.tasks.acquire.manifest import build_segment_manifest, format_summary, write_manifest
from codecflow.tasks.acquire.probe import ProbedFile, list_books, probe_book, refused_members_probe
from codecflow.tasks.acquire.segments import (
    clip_pieces,
    cut_by_vad,
    plan_segments,
    select_by_hours,
    split_by_speaker,
)
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.manifest import read_segment_audio

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


#: issue 12's past-the-end case: 10 s of audio, this VAD, target 5 s. cut_by_vad.py's cut_book
#: groups by the nominal lengths (3, 2.5, 3, then 2.2 + 1.5 = 3.7 <= 5) and numpy's slicing clips
#: the last piece to [9.8, 10]: 4 pieces of 3.0, 2.5, 3.0 and 0.2 s.
PAST_END_VAD = [(0.0, 3.0), (3.5, 6.0), (6.5, 9.5), (9.8, 12.0), (12.5, 14.0)]


def _cut_sequence_reference(
    data: np.ndarray, vad: list[tuple[float, float]], target: float, sr: int
) -> list[np.ndarray]:
    """cut_by_vad.py's cut_sequence semantics restated on an array (the pieces it would save)."""
    pieces: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    accumulated = 0.0
    for start, end in vad:
        if accumulated + (end - start) > target and accumulated > 0:
            pieces.append(current)
            current, accumulated = [], 0.0
        current.append(data[int(start * sr) : int(end * sr)])
        accumulated += end - start
    if current:
        pieces.append(current)
    return [np.hstack(p) for p in pieces]


def test_clip_pieces_past_the_end_as_cut_book() -> None:
    pieces = cut_by_vad(PAST_END_VAD, 5.0)
    clipped = clip_pieces(pieces, 10.0)
    assert [i for i, _ in clipped] == [0, 1, 2, 3]
    lengths = [sum(b - a for a, b in chunks) for _, chunks in clipped]
    assert lengths == pytest.approx([3.0, 2.5, 3.0, 0.2])
    assert clipped[3][1] == [(9.8, 10.0)]
    # A piece wholly past the end (cut_by_vad.py writes an empty .wav) is skipped, index kept.
    assert [i for i, _ in clip_pieces([[(0.0, 1.0)], [(11.0, 12.0)], [(2.0, 3.0)]], 10.0)] == [0, 2]


def test_past_the_end_pieces_and_samples_equal_cut_sequence(tmp_path: Path) -> None:
    sr = 16_000
    book = tmp_path / "librilight" / "pe" / "small" / "800" / "book"
    book.mkdir(parents=True)
    data = np.random.default_rng(0).uniform(-0.5, 0.5, 10 * sr)  # [T], 10 s
    sf.write(book / "long_00.flac", data, sr, subtype="PCM_16")
    vad = json.dumps([list(v) for v in PAST_END_VAD])
    meta = (
        f'{{"speaker": "800", "book_meta": {{"id": "book"}}, "snr": 9.0, "voice_activity": {vad}}}'
    )
    (book / "long_00.json").write_text(meta)
    (listing,) = list_books(str(tmp_path), ["pe"])
    rows = plan_segments([probe_book(str(tmp_path), listing)], 5.0).rows
    assert [r["segment_id"] for r in rows] == [f"800_long_00_{i:04d}" for i in range(4)]
    assert [r["duration_s"] for r in rows] == pytest.approx([3.0, 2.5, 3.0, 0.2])
    decoded, _ = sf.read(book / "long_00.flac", dtype="float32")  # what cut_by_vad.py reads
    reference = _cut_sequence_reference(decoded, PAST_END_VAD, 5.0, sr)
    assert [len(p) for p in reference] == [3 * sr, 2.5 * sr, 3 * sr, 0.2 * sr]
    for row, piece in zip(rows, reference, strict=True):
        np.testing.assert_array_equal(read_segment_audio(str(tmp_path), row), piece)


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
# probing, rejects, manifest
# --------------------------------------------------------------------------------------------


def _extract_plain(tar_path: Path, dest: Path) -> None:
    """Extract only the regular files with safe names (extraction itself is tested elsewhere)."""
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            if member.isfile() and not member.name.startswith(("/", "..")):
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    tar_path = root / "gen.tar"
    make_librilight_tar(tar_path)
    _extract_plain(tar_path, root / "librilight" / "gen")
    return root


def test_every_bad_file_is_rejected_with_its_reason(generated_root: Path) -> None:
    listings = list_books(str(generated_root), ["gen"])
    probes = [probe_book(str(generated_root), listing) for listing in listings]
    rejects = {r.path: r.reason for p in probes for r in p.rejects}
    expected = {f"librilight/gen/{path}": kind for path, kind in BAD_FILES.items()}
    assert set(rejects) == set(expected)
    for path, kind in expected.items():
        assert rejects[path].startswith(kind + ": "), (path, rejects[path])
    accepted = {f.path for p in probes for f in p.files}
    good = {f"librilight/gen/small/{s}/{b}/{stem}.flac" for s, b, stem, _ in GOOD_FILES}
    assert accepted == good | {"librilight/gen/small/500/odd/stereo44k_00.flac"}


def test_odd_audio_is_accepted_flagged_and_its_vad_clipped(generated_root: Path) -> None:
    (listing,) = [b for b in list_books(str(generated_root), ["gen"]) if b.book.endswith("odd")]
    (file,) = probe_book(str(generated_root), listing).files
    assert (file.sample_rate, file.channels, file.subset) == (44_100, 2, "small")
    assert file.duration_s == pytest.approx(2.0)
    assert file.voice_activity == ((0.1, 1.0), (1.2, 9.0))  # as written: clipped when cut
    (row,) = plan_segments([probe_book(str(generated_root), listing)], 60.0).rows
    assert row["chunks"] == [{"start_s": 0.1, "end_s": 1.0}, {"start_s": 1.2, "end_s": 2.0}]
    assert row["duration_s"] == pytest.approx(1.7)


def test_manifest_rejects_and_summary(generated_root: Path, tmp_path: Path) -> None:
    record = build_segment_manifest(
        str(generated_root), ["gen"], str(tmp_path / "m"), target_len_sec=2.0, val_fraction=0.3
    )
    table = pq.read_table(record.path)
    assert table.schema.remove_metadata().equals(SEGMENT_MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert record.n_segments == len(rows) and record.n_rejects == len(BAD_FILES)
    assert len({r["segment_id"] for r in rows}) == len(rows)
    assert rows == sorted(rows, key=lambda r: r["segment_id"])
    train = {r["speaker"] for r in rows if r["split"] == "train"}
    val = {r["speaker"] for r in rows if r["split"] == "val"}
    assert train and val and not train & val
    for row in rows:
        assert row["duration_s"] == pytest.approx(
            sum(c["end_s"] - c["start_s"] for c in row["chunks"])
        )
    rejects = pq.read_table(record.rejects_path)
    assert rejects.schema.remove_metadata().equals(REJECTS_SCHEMA) and rejects.num_rows == len(
        BAD_FILES
    )
    summary = json.loads(Path(record.summary_path).read_text())
    assert summary["files_seen"] == len(GOOD_FILES) + 1 + len(BAD_FILES)
    assert summary["files_rejected"] == len(BAD_FILES)
    assert summary["rejected_by_reason"]["unreadable audio"] == 2
    assert summary["files_flagged_not_16k_mono"] == 1
    text = format_summary(summary)
    assert "files seen" in text and "truncated audio" in text and len(text.splitlines()) < 25
    # The audio root is stored relative to the manifest, so the run folder can move.
    expected_root = os.path.relpath(generated_root, tmp_path / "m")
    assert table.schema.metadata[MANIFEST_AUDIO_ROOT_KEY] == expected_root.encode()


def test_segments_read_back_mono_at_the_file_rate(generated_root: Path, tmp_path: Path) -> None:
    record = build_segment_manifest(str(generated_root), ["gen"], str(tmp_path), target_len_sec=60)
    rows = {r["source_path"]: r for r in pq.read_table(record.path).to_pylist()}
    odd = rows["librilight/gen/small/500/odd/stereo44k_00.flac"]
    audio = read_segment_audio(str(generated_root), odd)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert len(audio) == int(1.0 * 44_100) - int(0.1 * 44_100) + int(2.0 * 44_100) - int(
        1.2 * 44_100
    )


def test_flac_segments_match_the_references(generated_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(generated_root / "librilight", root / "librilight")
    refs = build_segment_manifest(str(root), ["gen"], str(tmp_path / "refs"), target_len_sec=2.0)
    flacs = build_segment_manifest(
        str(root), ["gen"], str(tmp_path / "flacs"), target_len_sec=2.0, segments_as="flac"
    )
    by_id = {r["segment_id"]: r for r in pq.read_table(refs.path).to_pylist()}
    flac_rows = pq.read_table(flacs.path).to_pylist()
    assert {r["segment_id"] for r in flac_rows} == set(by_id)
    for row in flac_rows[:5]:
        assert row["source_path"].startswith("segments/") and len(row["chunks"]) == 1
        written, rate = sf.read(root / row["source_path"], dtype="float32")
        reference = read_segment_audio(str(root), by_id[row["segment_id"]])
        assert rate == row["sample_rate"]
        np.testing.assert_allclose(written, reference, atol=1 / 32768)
        assert row["duration_s"] == pytest.approx(len(written) / rate)


def test_select_by_hours_spreads_across_speakers_deterministically() -> None:
    files = [
        ProbedFile(
            f"s{s}/f{i}.flac", "small", f"s{s}", "b", 20.0, ((0.0, 360.0),), 16000, 1, 360.0, 1
        )
        for s in range(5)
        for i in range(10)
    ]  # 50 files of 0.1 h
    chosen = select_by_hours(files, 1.0, seed=7)
    assert sum(f.duration_s for f in chosen) / 3600 == pytest.approx(1.0)
    assert {f.speaker for f in chosen} == {f"s{s}" for s in range(5)}  # 2 files from each
    assert chosen == select_by_hours(list(reversed(files)), 1.0, seed=7)
    assert chosen != select_by_hours(files, 1.0, seed=8)
    assert len(select_by_hours(files, None, seed=0)) == 50
    assert len(select_by_hours(files, 100.0, seed=0)) == 50


def test_plan_selects_hours_and_keeps_speakers_disjoint(generated_root: Path) -> None:
    probes = [probe_book(str(generated_root), b) for b in list_books(str(generated_root), ["gen"])]
    plan = plan_segments(probes, target_len_sec=2.0, target_hours=6.0 / 3600, seed=1)
    hours = sum(r["duration_s"] for r in plan.rows) / 3600
    assert 6.0 / 3600 <= hours < 12.0 / 3600
    assert plan.summary["target_hours"] == 6.0 / 3600 and plan.summary["hours"] == pytest.approx(
        hours
    )
    assert plan == plan_segments(list(reversed(probes)), 2.0, 6.0 / 3600, seed=1)


def test_tiny_corpus_manifest(tmp_path: Path) -> None:
    with tarfile.open(TINY_TAR) as tar:
        tar.extractall(tmp_path / "librilight" / "tiny", filter="data")
    record = build_segment_manifest(str(tmp_path), ["tiny"], target_len_sec=5.0, val_fraction=0.2)
    assert record.path == str(tmp_path / "manifest" / "segments.parquet")
    assert (record.n_segments, record.n_speakers, record.n_rejects) == (10, 3, 0)
    assert record.n_val > 0 and record.n_train > 0


def test_no_usable_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "librilight" / "x" / "small" / "1" / "b").mkdir(parents=True)
    (tmp_path / "librilight" / "x" / "small" / "1" / "b" / "a.flac").write_bytes(b"junk")
    with pytest.raises(
        CodecflowError, match=r"no usable Libri-Light files under .*librilight: 1 rejected"
    ):
        build_segment_manifest(str(tmp_path), ["x"])
    assert not (tmp_path / "manifest" / "segments.parquet").exists()
    with pytest.raises(CodecflowError, match="extracted archive not found: .*missing"):
        list_books(str(tmp_path), ["missing"])


# --------------------------------------------------------------------------------------------
# VAD validation
# --------------------------------------------------------------------------------------------

#: stem -> (the raw "voice_activity" JSON, the reason its file is rejected, or the merged VAD).
VAD_CASES: dict[str, tuple[str, str | list[tuple[float, float]]]] = {
    "overlap": ("[[0.0, 4.0], [2.0, 6.0], [1.0, 3.0]]", [(0.0, 6.0)]),
    "unsorted": (
        "[[3.0, 4.0], [0.0, 1.0], [1.0, 2.0], [4.5, 5.0]]",
        [(0.0, 2.0), (3.0, 4.0), (4.5, 5.0)],
    ),
    "nanstring": ('[["NaN", 2.0]]', "interval 0 is not a [start, end] pair of numbers: "),
    "nan": ("[[0.0, 1.0], [NaN, 2.0]]", "interval 1 is not finite: [NaN, 2.0]"),
    "infinite": ("[[0.0, Infinity]]", "interval 0 is not finite"),
    "inverted": ("[[0.0, 1.0], [3.0, 2.0]]", "interval 1 ends before it starts: [3.0, 2.0]"),
    "triple": ("[[0.0, 1.0, 2.0]]", "interval 0 is not a [start, end] pair of numbers"),
    "boolean": ("[[false, 1.0]]", "interval 0 is not a [start, end] pair of numbers"),
    "negative": ("[[-0.5, 1.0]]", "interval 0 starts before 0: [-0.5, 1.0]"),
    "notalist": ('{"0": [0.0, 1.0]}', "voice_activity is dict, not a list"),
}


@pytest.fixture(scope="module")
def vad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vad")
    book = root / "librilight" / "vad" / "small" / "700" / "book"
    book.mkdir(parents=True)
    for stem, (vad, _) in VAD_CASES.items():
        (book / f"{stem}_00.flac").write_bytes(flac_bytes(6.0))
        meta = f'{{"speaker": "700", "book_meta": {{"id": "book"}}, "snr": 9.0, "voice_activity": {vad}}}'
        (book / f"{stem}_00.json").write_text(meta)
    return root


def test_vad_is_sorted_merged_and_rejected_when_invalid(vad_root: Path, tmp_path: Path) -> None:
    (listing,) = list_books(str(vad_root), ["vad"])
    probe = probe_book(str(vad_root), listing)
    rejects = {r.path.rsplit("/", 1)[1]: r.reason for r in probe.rejects}
    accepted = {f.path.rsplit("/", 1)[1]: f.voice_activity for f in probe.files}
    for stem, (_, expected) in VAD_CASES.items():
        if isinstance(expected, list):
            assert accepted[f"{stem}_00.flac"] == tuple(expected)
        else:  # the metadata file is rejected as a whole, with the problem named
            assert rejects[f"{stem}_00.json"].startswith("invalid voice activity: " + expected)
    assert len(rejects) + len(accepted) == len(VAD_CASES)

    record = build_segment_manifest(str(vad_root), ["vad"], str(tmp_path), target_len_sec=60.0)
    rows = {r["source_path"].rsplit("/", 1)[1]: r for r in pq.read_table(record.path).to_pylist()}
    overlap = rows["overlap_00.flac"]
    # 6 s of span is 6 s of segment (the unmerged VAD made it 4 + 4 + 2 = 10 s of repeated audio).
    assert overlap["duration_s"] == pytest.approx(6.0)
    assert len(read_segment_audio(str(vad_root), overlap)) == 6 * 16_000
    assert rows["unsorted_00.flac"]["duration_s"] == pytest.approx(3.5)
    table = {r["path"]: r["reason"] for r in pq.read_table(record.rejects_path).to_pylist()}
    assert {p.rsplit("/", 1)[1] for p in table} == set(rejects)
    summary = json.loads(Path(record.summary_path).read_text())
    assert summary["rejected_by_reason"] == {"invalid voice activity": len(rejects)}


def test_refused_members_are_rejects_listed_by_name(generated_root: Path, tmp_path: Path) -> None:
    refused = [(f"small/9/b/{i:02d}.flac", "symlink (not extracted)") for i in range(11)]
    refused += [("small/" + "d" * 300 + "/x.flac", "name too long (not extracted)")]
    refused += [("small/new\nline\udce9.flac", "control character in name")]
    probes = [probe_book(str(generated_root), b) for b in list_books(str(generated_root), ["gen"])]
    plan = plan_segments([*probes, refused_members_probe("gen", refused)], target_len_sec=2.0)
    record = write_manifest(str(generated_root), str(tmp_path), plan.rows, plan)

    escaped = "librilight/gen/small/new\\nline\\udce9.flac"  # printable, storable as UTF-8
    table = {r["path"]: r["reason"] for r in pq.read_table(record.rejects_path).to_pylist()}
    assert table[escaped] == "refused tar member: control character in name"
    assert sum(r.startswith("refused tar member: ") for r in table.values()) == len(refused)
    summary = json.loads(Path(record.summary_path).read_text())
    assert summary["files_rejected"] == len(BAD_FILES) + len(refused) == record.n_rejects
    assert summary["rejected_by_reason"]["refused tar member"] == len(refused)
    assert len(summary["refused_tar_members"]) == len(refused)
    text = format_summary(summary)
    lines = text.splitlines()
    assert f"refused tar members (not extracted, counted in rejected): {len(refused)}" in lines
    assert "    librilight/gen/small/9/b/00.flac  (symlink (not extracted))" in lines
    assert f"    ... {len(refused) - 10} more in summary.json" in lines
    assert len(lines) < 40 and max(len(line) for line in lines) < 110  # still one screen
    assert "\n".join(lines) == text and "\udce9" not in text  # no raw control or surrogate
