"""`layout: audio`: any folder of real speech becomes a segment manifest (plain functions, no
Prefect): formats and rates, speakers by each rule, transcripts to their segments, rejects with
their reasons, Silero's intervals equal to Silero's own, and the VAD cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio
from speech_fixture import MIXED_EXPECTED, librispeech_tree, mixed_folder

import codecflow
from codecflow.schemas.configs import AcquireSettings
from codecflow.tasks.acquire.ingest import build_audio_manifest, resolved_layout
from codecflow.tasks.acquire.vad import VadSettings, voice_activity
from codecflow.tasks.core.errors import CodecflowError


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def ingested(speech: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingest")
    path = codecflow.ingest(str(mixed_folder(speech)), str(root), target_len_sec=5.0)
    assert path == str(root / "manifest" / "segments.parquet")
    return root


def _table(root: Path, name: str) -> list[dict]:
    return pq.read_table(root / "manifest" / name).to_pylist()


def test_every_format_rate_and_channel_count_goes_in(ingested: Path) -> None:
    rows = _table(ingested, "segments.parquet")
    seen = {r["source_path"]: (r["speaker"], r["sample_rate"], r["channels"]) for r in rows}
    assert seen == MIXED_EXPECTED
    assert all(0 < r["duration_s"] <= 5.0 + 1e-6 or len(r["chunks"]) == 1 for r in rows)
    # Whole speakers on either side of the split.
    by_split = {s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "val")}
    assert by_split["train"] and by_split["val"] and not by_split["train"] & by_split["val"]


def test_bad_files_are_rejects_with_their_reason(ingested: Path) -> None:
    rejects = {r["path"]: r["reason"] for r in _table(ingested, "rejects.parquet")}
    assert set(rejects) == {"bob/ghost.txt", "carol/broken.wav", "carol/empty.flac"}
    assert rejects["bob/ghost.txt"].startswith("transcript without audio")
    assert rejects["carol/broken.wav"].startswith("unreadable audio: Error in WAV file")
    assert rejects["carol/empty.flac"] == "empty audio: a zero-length file"
    summary = json.loads((ingested / "manifest" / "summary.json").read_text())
    assert summary["layout"] == "audio" and summary["files_rejected"] == 3


def test_transcripts_reach_the_segments_of_files_cut_once(ingested: Path) -> None:
    texts = {r["segment_id"]: r["text"] for r in _table(ingested, "texts.parquet")}
    assert texts == {
        "alice_two_0000": "the second test sentence",  # .txt sidecar, 4 s: one segment
        "bob_four_0000": "the fourth test sentence",  # .lab sidecar
    }


def test_a_committed_manifest_is_returned_as_it_is(ingested: Path, speech: Path) -> None:
    manifest = ingested / "manifest" / "segments.parquet"
    written = manifest.stat().st_mtime_ns
    again = codecflow.ingest(str(mixed_folder(speech)), str(ingested), target_len_sec=5.0)
    assert again == str(manifest) and manifest.stat().st_mtime_ns == written


def test_vad_is_cached_on_each_files_content(ingested: Path, speech: Path, tmp_path: Path) -> None:
    cached = sorted((ingested / "vad").rglob("*.json"))
    assert len(cached) == len(MIXED_EXPECTED)
    record = json.loads(cached[0].read_text())
    assert record["voice_activity"] and record["vad"]["mode"] == "silero"
    # Another run over a copy of the folder reuses the intervals: same manifest rows.
    settings = AcquireSettings(source=str(mixed_folder(speech)), target_len_sec=5.0)
    other = build_audio_manifest(str(mixed_folder(speech)), str(ingested), settings, str(tmp_path))
    ours, theirs = (
        pq.read_table(p).drop(["snr"])
        for p in (other.path, ingested / "manifest" / "segments.parquet")
    )
    assert ours.equals(theirs)  # (snr is NaN: unknown for such audio, and NaN != NaN)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # silero-vad's importlib.resources
def test_silero_intervals_equal_silero_s_own(speech: Path) -> None:
    """The reference: silero-vad's `get_speech_timestamps` on the same 16 kHz audio."""
    from silero_vad import get_speech_timestamps, load_silero_vad

    audio, rate = sf.read(mixed_folder(speech) / "bob" / "three.ogg", dtype="float32")
    ours = voice_activity(audio, rate, VadSettings("silero", 0.5, 250, 100))
    wav = torchaudio.functional.resample(torch.from_numpy(audio), rate, 16_000)
    theirs = get_speech_timestamps(wav, load_silero_vad(), sampling_rate=16_000)
    assert ours == [[s["start"] / 16_000, s["end"] / 16_000] for s in theirs]
    assert len(ours) >= 2


def test_vad_none_cuts_at_the_quietest_frames(speech: Path) -> None:
    audio, rate = sf.read(mixed_folder(speech) / "bob" / "three.ogg", dtype="float32")
    pieces = voice_activity(audio, rate, VadSettings("none", target_len_sec=4.0))
    assert pieces[0][0] == 0.0 and pieces[-1][1] == pytest.approx(len(audio) / rate)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous
    assert all(3.0 <= e - s <= 4.0 for s, e in pieces[:-1])
    # Each cut sits in a quiet frame: quieter than the piece's median 20 ms frame.
    frame = int(0.02 * rate)
    energy = np.convolve(audio**2, np.ones(frame) / frame, mode="same")
    for _, cut in pieces[:-1]:
        assert energy[int(cut * rate)] < np.median(energy)


def test_librispeech_trees_give_speakers_and_transcripts(speech: Path, tmp_path: Path) -> None:
    tree = librispeech_tree(speech)
    manifest = codecflow.ingest(
        str(tree), str(tmp_path), speaker_from="grandparent", target_len_sec=30.0
    )
    rows = pq.read_table(manifest).to_pylist()
    assert {r["speaker"] for r in rows} == {"198", "3436", "5703"}
    assert {r["book_id"] for r in rows} == {"209", "172162", "47212"}
    texts = {r["segment_id"]: r["text"] for r in _table(tmp_path, "texts.parquet")}
    assert texts == {f"{s}_{s}-{c}-0000_0000": f"TEST WORDS OF {s}" for s, c in
                     (("198", "209"), ("3436", "172162"), ("5703", "47212"))}  # fmt: skip


def test_speakers_from_a_regex_a_table_or_each_file(speech: Path, tmp_path: Path) -> None:
    folder = mixed_folder(speech)
    by_regex = codecflow.ingest(
        str(folder), str(tmp_path / "re"), speaker_from="regex",
        speaker_regex=r"^(?P<speaker>[a-z])", target_len_sec=5.0,
    )  # fmt: skip
    assert {r["speaker"] for r in pq.read_table(by_regex).to_pylist()} == {"a", "b", "d", "e"}
    table = tmp_path / "meta.csv"
    table.write_text("path,speaker,text\nalice/two.flac,A1,from the table\ndave/five.wav,D1,\n")
    by_table = codecflow.ingest(
        str(folder), str(tmp_path / "tab"), speaker_from="table", metadata=str(table),
        target_len_sec=5.0,
    )  # fmt: skip
    rows = pq.read_table(by_table).to_pylist()
    assert {r["speaker"] for r in rows} == {"A1", "D1"}
    texts = {r["text"] for r in _table(tmp_path / "tab", "texts.parquet")}
    assert texts == {"from the table"}
    rejects = {r["path"]: r["reason"] for r in _table(tmp_path / "tab", "rejects.parquet")}
    assert rejects["bob/three.ogg"].startswith("no speaker")
    by_file = codecflow.ingest(
        str(folder), str(tmp_path / "file"), speaker_from="file", target_len_sec=5.0
    )
    assert len({r["speaker"] for r in pq.read_table(by_file).to_pylist()}) == 6
    summary = json.loads((tmp_path / "file" / "manifest" / "summary.json").read_text())
    assert summary["speakers_note"] == "no speaker known: each file is its own speaker"


def test_layout_auto_and_bad_settings(tmp_path: Path) -> None:
    assert resolved_layout(AcquireSettings(source=str(tmp_path))) == "audio"
    assert resolved_layout(AcquireSettings(source="small")) == "librilight"
    assert resolved_layout(AcquireSettings(source="https://x.org/a.tar.gz")) == "librilight"
    with pytest.raises(ValueError, match="speaker_regex needs a"):
        AcquireSettings(speaker_from="regex", speaker_regex="(\\w+)")
    with pytest.raises(CodecflowError, match="needs a metadata table"):
        codecflow.ingest(str(tmp_path), str(tmp_path / "r0"), speaker_from="table")
    with pytest.raises(CodecflowError, match="audio source not found"):
        codecflow.ingest(str(tmp_path / "nowhere"), str(tmp_path / "r"))
    (tmp_path / "silent").mkdir()
    sf.write(tmp_path / "silent" / "s.wav", np.zeros(16_000, dtype="float32"), 16_000)
    with pytest.raises(CodecflowError, match=r"no usable audio files under .*: 1 rejected"):
        codecflow.ingest(str(tmp_path / "silent"), str(tmp_path / "r2"))


def _many_files(speech: Path) -> Path:
    """36 files under 4 speakers, each with its own content (the mixed folder's clips at 12
    gains: the VAD cache, keyed on content, reuses none): an ingest of a few seconds."""
    folder = speech / "many"
    if folder.is_dir():
        return folder
    source = mixed_folder(speech)
    for i in range(12):
        for name in ("alice/two.flac", "bob/three.ogg", "dave/five.wav"):
            audio, rate = sf.read(source / name, dtype="float32")
            target = folder / f"spk{i % 4}" / f"{i:02d}_{Path(name).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, audio * (1.0 - 0.02 * i), rate)
    return folder


def test_a_killed_ingest_resumes_to_the_same_manifest(speech: Path, tmp_path: Path) -> None:
    """SIGKILL while VAD runs, then the same call again: the manifest of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = _many_files(speech)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    code = (
        "import codecflow, sys; "
        "codecflow.ingest(sys.argv[1], sys.argv[2], target_len_sec=5.0, speaker_from='parent')"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(folder), str(killed)])
    deadline = time.monotonic() + 120
    while len(list((killed / "vad").rglob("*.json"))) < 2 and time.monotonic() < deadline:
        assert child.poll() is None, "the ingest ended before it could be killed"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "manifest" / "segments.parquet").exists()
    done_before = len(list((killed / "vad").rglob("*.json")))
    assert 2 <= done_before < 36  # killed in the middle of the VAD
    resumed = codecflow.ingest(str(folder), str(killed), target_len_sec=5.0)
    reference = codecflow.ingest(str(folder), str(whole), target_len_sec=5.0)
    assert pq.read_table(resumed).drop(["snr"]).equals(pq.read_table(reference).drop(["snr"]))
    # No temporary of the killed run is left behind.
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]


def test_transcripts_travel_into_the_token_shards(ingested: Path, tmp_path: Path) -> None:
    """Tokenized, the segments carry their text: in the shards (schema metadata says so), the
    reader, the torch datasets and the card; the others are null."""
    import pyarrow as pa

    from codecflow.schemas.tables import TEXT_METADATA_KEY

    dataset = codecflow.tokenize(
        str(ingested / "manifest" / "segments.parquet"), str(tmp_path / "tokens"),
        tokenizer="mu-law-256",
    )  # fmt: skip
    ds = codecflow.open_dataset(dataset)
    found = {}
    for split in ds.splits:
        segments = ds.segments(split)
        found.update({segments[i]["segment_id"]: segments[i]["text"] for i in range(len(segments))})
        batch = codecflow.collate_segments([segments[i] for i in range(len(segments))])
        assert len(batch["text"]) == len(segments)
    assert {k: v for k, v in found.items() if v} == {
        "alice_two_0000": "the second test sentence",
        "bob_four_0000": "the fourth test sentence",
    }
    assert sum(v is None for v in found.values()) == len(found) - 2
    shard = next((tmp_path / "tokens" / "shards").glob("*.arrow"))
    with pa.memory_map(str(shard)) as source:
        schema = pa.ipc.open_stream(source).schema
    assert schema.names[-1] == "text" and schema.metadata[TEXT_METADATA_KEY] == b"1"
    card = (tmp_path / "tokens" / "README.md").read_text()
    assert "## Transcripts" in card and "| words |" in card
    # A transcript changed is another dataset (its fingerprint covers the texts).
    texts = ingested / "manifest" / "texts.parquet"
    table = pq.read_table(texts)
    changed = tmp_path / "changed"
    (changed / "manifest").mkdir(parents=True)
    segments = pq.read_table(ingested / "manifest" / "segments.parquet")
    key = b"codecflow.audio_root"
    audio_root = (ingested / "manifest" / segments.schema.metadata[key].decode()).resolve()
    pq.write_table(
        segments.replace_schema_metadata({key: str(audio_root).encode()}),
        changed / "manifest" / "segments.parquet",
    )
    pq.write_table(
        table.set_column(1, "text", pa.array(["other words"] * table.num_rows)),
        changed / "manifest" / "texts.parquet",
    )
    other = codecflow.open_dataset(
        codecflow.tokenize(
            str(changed / "manifest" / "segments.parquet"), str(tmp_path / "t2"),
            tokenizer="mu-law-256",
        )
    )  # fmt: skip
    assert other.info.fingerprint != ds.info.fingerprint


def test_a_dataset_without_transcripts_has_no_text_column(tiny_dataset: Path) -> None:
    import pyarrow as pa

    shard = next((tiny_dataset / "shards").glob("*.arrow"))
    with pa.memory_map(str(shard)) as source:
        assert "text" not in pa.ipc.open_stream(source).schema.names
    item = codecflow.open_dataset(tiny_dataset).segments("train")[0]
    assert item["text"] is None


def test_a_webdataset_tar_of_audio(speech: Path, tmp_path: Path) -> None:
    """WebDataset's layout (`<key>.flac` + `<key>.json` with speaker and text, flat in a tar),
    written by webdataset's own TarWriter, acquired as an archive."""
    import webdataset as wds

    folder = mixed_folder(speech)
    archive = tmp_path / "shard-000000.tar"
    with wds.TarWriter(str(archive)) as sink:
        for i, (name, speaker) in enumerate((("alice/two.flac", "A"), ("dave/five.wav", "D"))):
            suffix = Path(name).suffix[1:]
            sink.write(
                {"__key__": f"sample{i:03d}", suffix: (folder / name).read_bytes(),
                 "json": {"speaker": speaker, "text": f"text {i}"}}
            )  # fmt: skip
    manifest = codecflow.ingest(
        str(archive), str(tmp_path / "run"), layout="audio", speaker_from="sidecar",
        target_len_sec=5.0,
    )  # fmt: skip
    rows = pq.read_table(manifest).to_pylist()
    assert {r["speaker"] for r in rows} == {"A", "D"}
    assert all(r["source_path"].startswith("sample") for r in rows)
    texts = {r["text"] for r in _table(tmp_path / "run", "texts.parquet")}
    assert "text 0" in texts  # sample000 (4 s) is one segment


def test_a_hugging_face_dataset_saved_by_datasets(speech: Path, tmp_path: Path) -> None:
    """`save_to_disk` of a dataset with an Audio column (written by `datasets` itself): its
    embedded audio, speakers and transcripts."""
    import datasets

    folder = mixed_folder(speech)
    files = ["alice/two.flac", "dave/five.wav", "bob/three.ogg"]
    ds = datasets.Dataset.from_dict(
        {"audio": [str(folder / f) for f in files], "transcription": ["t two", "t five", None],
         "speaker_id": ["A", "D", "B"]}
    ).cast_column("audio", datasets.Audio())  # fmt: skip
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(saved))
    assert resolved_layout(AcquireSettings(source=str(saved))) == "hf"
    manifest = codecflow.ingest(str(saved), str(tmp_path / "run"), target_len_sec=5.0)
    rows = pq.read_table(manifest).to_pylist()
    assert {r["speaker"] for r in rows} == {"A", "D", "B"}
    assert {r["sample_rate"] for r in rows} == {22_050, 16_000, 44_100}
    texts = {r["text"] for r in _table(tmp_path / "run", "texts.parquet")}
    assert texts == {"t two", "t five"} or texts == {"t two"}  # five.wav (4 s): one segment
    assert "t two" in texts


def test_a_hugging_face_audiofolder_and_its_metadata(speech: Path, tmp_path: Path) -> None:
    """An `audiofolder` (audio + metadata.csv with `file_name`): read as any folder, its table
    used without being named."""
    import shutil

    folder = tmp_path / "audiofolder"
    folder.mkdir()
    for name in ("alice/two.flac", "dave/five.wav"):
        shutil.copy(mixed_folder(speech) / name, folder / Path(name).name)
    (folder / "metadata.csv").write_text(
        "file_name,transcription,speaker_id\ntwo.flac,hello two,S2\nfive.wav,hello five,S5\n"
    )
    manifest = codecflow.ingest(
        str(folder), str(tmp_path / "run"), speaker_from="table", target_len_sec=5.0
    )
    rows = pq.read_table(manifest).to_pylist()
    assert {r["speaker"] for r in rows} == {"S2", "S5"}
    assert "hello two" in {r["text"] for r in _table(tmp_path / "run", "texts.parquet")}


def test_a_second_file_with_the_same_speaker_and_name_is_a_reject(
    speech: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dups"
    for chapter in ("x", "y"):
        (folder / "spk" / chapter).mkdir(parents=True)
        (folder / "spk" / chapter / "one.wav").write_bytes(
            (mixed_folder(speech) / "dave" / "five.wav").read_bytes()
        )
    codecflow.ingest(str(folder), str(tmp_path / "run"), speaker_from="grandparent")
    rejects = {r["path"]: r["reason"] for r in _table(tmp_path / "run", "rejects.parquet")}
    assert rejects == {"spk/y/one.wav": "duplicate: same speaker and name as spk/x/one.wav"}
