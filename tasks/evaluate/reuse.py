"""One evaluation per report identity at a time, and a committed report reused from any folder.

A report's identity (`tasks.evaluate.lm.report_identity`: the weights, the dataset, the prompt
files and the settings) says what question it answers. Under a Prefect server the same
checkpoint is asked for several times at once: the pipeline's own evaluate sub-flow, the
schedule, a trigger, each into its own `out`. In the machine-local cache
(`tasks.core.storage.cache_root()`):

    evaluations/<identity sha256>.lock   flock held by the one evaluation of that identity that
                                         runs; the others wait for it (and say so in their log)
    evaluations/<identity sha256>.json   CommittedReports: the folders holding a committed report
                                         of it, each with its summary.json's sha256

The second evaluation then copies the committed report into its own `out` (hard links where the
file system allows, summary.json written last with `reused_from`) instead of computing it again.
An entry whose folder is gone, or whose summary.json changed or answers another identity, is
stale: skipped, and dropped at the next registration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.records import CommittedReport, CommittedReports, EvaluationSummary
from codecflow.tasks.evaluate.trackers import TRACKER_FOLDERS

__all__ = [
    "copy_report",
    "identity_key",
    "one_at_a_time",
    "register",
    "registered_report",
    "registry_folder",
]

_LOG = logging.getLogger("codecflow.evaluate")


def identity_key(identity: Mapping[str, Any]) -> str:
    """The sha256 of the identity's canonical JSON: one lock and one registry file per question."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def registry_folder() -> Path:
    """`<cache>/evaluations`: machine-local, like the locks it holds (flock is per machine)."""
    return storage.cache_root() / "evaluations"


@contextlib.contextmanager
def one_at_a_time(key: str, out: Path) -> Iterator[None]:
    """Hold the lock of identity `key` for the block, waiting while another evaluation of the
    same identity holds it (the kernel drops a dead holder's lock, even after `kill -9`)."""

    def waiting(holder: str) -> None:
        _LOG.info(
            "evaluate: the same checkpoint, data, prompts and settings are being evaluated by "
            "%s; waiting for its report",
            holder,
        )

    lock = registry_folder() / key
    with outputs.exclusive_lock(lock, f"evaluate into {out}", wait=True, on_wait=waiting):
        yield


def _read_registry(key: str) -> list[CommittedReport]:
    path = registry_folder() / f"{key}.json"
    try:
        return list(CommittedReports.read(path).reports)
    except FileNotFoundError:
        return []
    except CodecflowError as err:  # a broken registry file only costs a recomputation
        _LOG.warning("evaluate: %s; ignored", err)
        return []


def _summary_if_valid(entry: CommittedReport, identity: Mapping[str, Any]) -> bytes | None:
    """The bytes of the entry's summary.json when they are still those recorded and answer
    `identity`; None for a stale entry."""
    try:
        data = (Path(entry.path) / "summary.json").read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != entry.summary_sha256:
        return None
    try:
        summary = EvaluationSummary.from_json(json.loads(data), entry.path)
    except (ValueError, CodecflowError):
        return None
    return data if summary.identity == identity else None


def registered_report(key: str, identity: Mapping[str, Any]) -> tuple[Path, bytes] | None:
    """The first folder the registry of `key` lists whose report is still committed and
    unchanged, with its summary.json's bytes; None when there is none. Call under the lock."""
    for entry in _read_registry(key):
        data = _summary_if_valid(entry, identity)
        if data is not None:
            return Path(entry.path), data
    return None


def register(key: str, identity: Mapping[str, Any], out: Path) -> None:
    """Add `out`'s committed report to the registry of `key` (stale entries dropped), written
    atomically. Call under the lock, so that no registration is lost."""
    out = out.resolve()
    entries = [
        e
        for e in _read_registry(key)
        if Path(e.path) != out and _summary_if_valid(e, identity) is not None
    ]
    summary = storage.sha256_file(out / "summary.json")
    entries.append(CommittedReport(path=str(out), summary_sha256=summary))
    record = CommittedReports(identity_sha256=key, reports=entries)
    storage.atomic_write_json(registry_folder() / f"{key}.json", record.to_json())


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link (a report's files are never rewritten in place: a new report replaces the
    whole folder), or a copy across file systems or where links are refused."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def copy_report(source: Path, tmp: Path) -> None:
    """Every file of the report in `source` into the (empty) folder `tmp`, but summary.json,
    which the caller writes last, and the trackers' folders (the copy is logged anew)."""
    left_out = ["summary.json", *TRACKER_FOLDERS]
    shutil.copytree(
        source,
        tmp,
        ignore=lambda folder, _: left_out if Path(folder) == source else [],
        copy_function=_link_or_copy,
        dirs_exist_ok=True,
    )
