"""Reading back what the experiment trackers wrote (tasks/core/tracking.py), with their own
readers: TensorBoard's EventAccumulator, and wandb's protobuf records of a `.wandb` run file.

wandb (0.31) ships no Python reader of its run files: `wandb_records` reads the file's framing
(a LevelDB log: a 7-byte file header, 32 KiB blocks of chunks, each with a 7-byte header of
checksum, length and type) and parses each record with wandb's own `Record` message.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "tensorboard_audio",
    "tensorboard_events",
    "tensorboard_scalars",
    "wandb_history",
    "wandb_records",
    "wandb_run",
]

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")  # checksum, length, chunk type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _accumulator(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # size_guidance 0: every event kept (its default samples 10 000 scalars, 4 audio clips).
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "audio": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files in `folder`: tag -> {step: value}."""
    accumulator = _accumulator(folder)
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
    }


def tensorboard_audio(folder: Path) -> dict[str, list[Any]]:
    """Every audio clip of the event files in `folder`: tag -> its AudioEvents."""
    accumulator = _accumulator(folder)
    return {tag: accumulator.Audio(tag) for tag in accumulator.Tags()["audio"]}


def tensorboard_events(path: Path) -> list[Any]:
    """The raw `Event`s of one event file, in order (TensorBoard's own loader)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return list(EventFileLoader(str(path)).Load())


def wandb_run(folder: Path, timeout: float = 60.0) -> Path:
    """The one offline W&B run file under `folder` (`wandb/offline-run-*/run-*.wandb`), once
    complete: `run.finish()` returns before wandb's service has written the file (measured: 4
    of 12 runs had only the 7-byte header right after it), so wait for its `exit` record."""
    import time

    found = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(found) == 1, f"expected one offline W&B run under {folder}, found {found}"
    deadline = time.monotonic() + timeout
    while not _has_exit(found[0]):
        assert time.monotonic() < deadline, f"{found[0]} has no exit record after {timeout} s"
        time.sleep(0.2)
    return found[0]


def _has_exit(path: Path) -> bool:
    from google.protobuf.message import DecodeError

    try:
        return any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path))
    except (AssertionError, DecodeError):  # still being written: a header or a record short
        return False


def wandb_records(path: Path) -> Iterator[Any]:
    """The `wandb_internal_pb2.Record`s of a `.wandb` run file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending = 7, b""
    while position + _HEADER.size <= len(data):
        room = _BLOCK - position % _BLOCK
        if room < _HEADER.size:  # a block's tail too short for a header is padding
            position += room
            continue
        _crc, length, kind = _HEADER.unpack_from(data, position)
        position += _HEADER.size
        chunk = data[position : position + length]
        position += length
        if kind == 0 and length == 0:
            continue  # padding
        pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(path: Path) -> dict[int, dict[str, Any]]:
    """The history rows of a run file by step: {step: {key: value}} (nested keys joined by /)."""
    rows: dict[int, dict[str, Any]] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in record.history.item
        }
        rows[int(row["_step"])] = row
    return rows
