"""A Hugging Face dataset saved with `save_to_disk` (`layout: hf`), with an `Audio` column.

Its audio (the bytes `save_to_disk` embeds, or the files it points at) is written once into
`<root>/audio/hf/`, one file per row named by its row number and the format's suffix, beside a
metadata table (`path`, and `speaker` and `text` from the first of the dataset's columns that
name them); then it is any folder of audio (`tasks.acquire.ingest`): VAD, segments, texts. The
Hugging Face splits are read together: codecflow's own split is by speaker. `datasets` is
imported here only (`pip install datasets`).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import exists, join, open_atomic_write

__all__ = ["materialize_hf"]

_TEXT = ("text", "transcription", "sentence", "normalized_text")
_SPEAKER = ("speaker", "speaker_id", "client_id")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise CodecflowError("layout 'hf' needs datasets: pip install datasets") from None
    return datasets


def _splits(source: str) -> list[Any]:
    datasets = _datasets()
    if not os.path.isdir(source):
        raise CodecflowError(f"Hugging Face dataset not found: {source}")
    try:
        loaded = datasets.load_from_disk(source)
    except FileNotFoundError as err:
        raise CodecflowError(f"{source} is not a dataset saved by save_to_disk: {err}") from None
    return list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]


def _audio_column(split: Any, source: str) -> str:
    datasets = _datasets()
    for name, feature in split.features.items():
        if isinstance(feature, datasets.Audio):
            return str(name)
    raise CodecflowError(f"Hugging Face dataset {source} has no Audio column")


def _first(names: tuple[str, ...], columns: Any) -> str | None:
    return next((n for n in names if n in columns), None)


def materialize_hf(source: str, root: str) -> tuple[str, str, bool]:
    """Write the dataset's audio under `<root>/audio/hf/` (files already there are kept) and its
    metadata table; (the audio folder, the table's path, whether it names speakers)."""
    datasets = _datasets()
    folder = join(root, "audio", "hf")
    rows, row, has_speaker = [], 0, False
    for split in _splits(source):
        column = _audio_column(split, source)
        text, speaker = _first(_TEXT, split.column_names), _first(_SPEAKER, split.column_names)
        has_speaker = has_speaker or speaker is not None
        raw = split.cast_column(column, datasets.Audio(decode=False))
        for item in raw:
            audio = item[column]
            suffix = posixpath.splitext(audio.get("path") or "")[1] or ".wav"
            name = f"{row:08d}{suffix.lower()}"
            data = audio.get("bytes")
            if data is None and audio.get("path") and os.path.isfile(audio["path"]):
                with open(audio["path"], "rb") as f:
                    data = f.read()
            row += 1
            if data is None:
                continue  # no audio: the table names it, and it becomes a reject
            if not exists(join(folder, name)):
                with open_atomic_write(join(folder, name)) as out:
                    out.write(data)
            record = {"path": name, "text": item.get(text) if text else None}
            record["speaker"] = str(item[speaker]) if speaker else None
            rows.append(record)
    table = join(root, "audio", "hf-metadata.jsonl")
    with open_atomic_write(table) as out:
        out.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    return folder, table, has_speaker
