"""The codec's streaming crops: the same crops as the in-memory loader drew from a 16 kHz corpus,
resampled crops that match a resampled segment, reads of the crops only (never a whole split),
and a worker's unreadable file as one line."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from codecflow.schemas.tables import MANIFEST_AUDIO_ROOT_KEY, SEGMENT_MANIFEST_SCHEMA
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.crops import CropDataset, batches, crop_loader, read_crop_index
from codecflow.tasks.data.manifest import load_split_audio


def _manifest(folder: Path, files: list[tuple[str, int, list[tuple[float, float]]]]) -> str:
    """A train-split manifest of one segment per (file, rate, chunks), audio root `folder`."""
    rows = [
        {
            "segment_id": f"s{i:03d}",
            "subset": "small",
            "speaker": "1",
            "book_id": "1",
            "source_path": name,
            "start_s": chunks[0][0],
            "end_s": chunks[-1][1],
            "duration_s": sum(b - a for a, b in chunks),
            "sample_rate": rate,
            "channels": 1,
            "snr": 30.0,
            "split": "train",
            "chunks": [{"start_s": a, "end_s": b} for a, b in chunks],
        }
        for i, (name, rate, chunks) in enumerate(files)
    ]
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: b"."})
    path = folder / "segments.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def test_streamed_crops_are_the_in_memory_loaders(tiny_manifest: Path) -> None:
    """16 kHz FLAC segments of one or two VAD chunks: crop i is the slice of the whole segment
    that (seed, i) names, sample for sample, and a crop longer than its segment is zero-padded."""
    audio = [clip for _, clip in load_split_audio(str(tiny_manifest), "train")]
    index = read_crop_index(str(tiny_manifest), "train")
    assert index.frames.tolist() == [len(clip) for clip in audio]
    assert (np.diff(index.chunk_start) > 1).any()  # some segments join two chunks
    for crop in (2048, 80_000):  # 80 000 samples: longer than every segment (5 s)
        dataset = CropDataset(index, crop, seed=3)
        for i in range(30):
            segment, start = dataset.draw(i)
            expected = np.zeros(crop, dtype=np.float32)
            piece = audio[segment][start : start + crop]
            expected[: len(piece)] = piece
            np.testing.assert_array_equal(dataset[i][0].numpy(), expected)
    assert CropDataset(index, 2048, seed=3).draw(7) == CropDataset(index, 2048, seed=3).draw(7)
    assert CropDataset(index, 2048, seed=4).draw(7) != CropDataset(index, 2048, seed=3).draw(7)


@pytest.mark.parametrize("rate", [24_000, 44_100])
def test_a_resampled_crop_is_the_resampled_segments(tmp_path: Path, rate: int) -> None:
    """A 24 or 44.1 kHz file: the crop is resampled from its own frames and some context, read
    from a frame that falls on an output sample, so it equals the crop of the whole segment
    resampled, to float32 rounding."""
    t = np.arange(int(rate * 3.0)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)).astype("f4")
    sf.write(tmp_path / "a.wav", tone, rate, subtype="FLOAT")
    manifest = _manifest(tmp_path, [("a.wav", rate, [(0.2, 1.4), (1.6, 2.9)])])
    whole = torch.from_numpy(load_split_audio(manifest, "train")[0][1])  # [T], at 16 kHz
    index = read_crop_index(manifest, "train")
    assert index.frames.tolist() == [len(whole)]
    dataset = CropDataset(index, 4096, seed=0)
    for i in range(20):
        _, start = dataset.draw(i)
        expected = whole[start : start + 4096]
        torch.testing.assert_close(dataset[i][0, : len(expected)], expected, rtol=0, atol=1e-6)


def _sparse_wav(path: Path, frames: int, rate: int = 16_000) -> None:
    """A 16-bit mono WAV of `frames` frames of silence that takes no disk: its data is a hole."""
    data = frames * 2
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux: /proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_the_loader_reads_the_crops_never_the_split(tmp_path: Path) -> None:
    """Four files of 9.3 h each (1 GiB of 16-bit samples apiece, 4 GiB as float32 in memory):
    64 crops of 0.256 s read about 64 x 8 KiB, and the index holds a few numbers per segment."""
    frames = 2**29  # 9.3 h at 16 kHz
    seconds = frames / 16_000
    files = []
    for i in range(4):
        _sparse_wav(tmp_path / f"{i}.wav", frames)
        files.append((f"{i}.wav", 16_000, [(0.0, seconds / 2), (seconds / 2 + 1, seconds)]))
    manifest = _manifest(tmp_path, files)
    index = read_crop_index(manifest, "train")
    assert index.frames.min() > 2**28
    before = _bytes_read()
    loader = crop_loader(index, crop=4096, seed=0, first=0, steps=16, batch_size=4, workers=0)
    shapes = [tuple(batch.shape) for batch in batches(loader)]
    read = _bytes_read() - before
    assert shapes == [(4, 1, 4096)] * 16
    split_bytes = 4 * frames * 2
    assert read < 64 * 4096 * 2 * 8, read  # the crops, headers and read-ahead: < 4 MiB
    assert read < split_bytes / 1000


def test_a_workers_unreadable_file_is_one_line(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(16_000, dtype="f4"), 16_000)
    manifest = _manifest(
        tmp_path, [("a.wav", 16_000, [(0.0, 1.0)]), ("gone.wav", 16_000, [(0, 1)])]
    )
    index = read_crop_index(manifest, "train")
    loader = crop_loader(index, crop=1024, seed=0, first=0, steps=4, batch_size=4, workers=1)
    with pytest.raises(CodecflowError) as refused:
        list(batches(loader))
    assert str(refused.value).startswith("unreadable audio ") and "gone.wav: " in str(refused.value)
    assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
