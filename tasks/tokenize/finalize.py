"""Finishing a token dataset: rejects, the size report, the WebDataset twins' index
(`shards/webdataset.json`), the dataset card and its page, then `dataset.json` (the commit); and
`tokenize_manifest`, the whole stage without Prefect.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from codecflow.schemas.configs import TokenizeSettings
from codecflow.schemas.tables import (
    REJECTS_SCHEMA,
    token_shard_schema,
)
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.faults import kill_point
from codecflow.tasks.data.records import (
    WEBDATASET_KIND,
    DatasetInfo,
    DatasetTotals,
    ShardEntry,
    ShardMarker,
    WebDatasetIndex,
    WebDatasetShard,
)
from codecflow.tasks.data.token_dataset import (
    DATASET_FORMAT_VERSION,
    DatasetRecord,
    record_from_info,
    shard_marker_url,
)
from codecflow.tasks.data.token_shards import (
    CODES_LAYOUT,
    CODES_SHAPE,
    WEBDATASET_INDEX,
    tokenizer_facts,
)
from codecflow.tasks.tokenize.card import write_dataset_card
from codecflow.tasks.tokenize.plan import DatasetPlan, check_existing, plan_dataset
from codecflow.tasks.tokenize.shards import write_shard_group
from codecflow.tasks.tokenize.sizes import format_size_report, size_report

__all__ = [
    "finalize_dataset",
    "format_rejects",
    "tokenize_manifest",
    "webdataset_index",
]


def _source_bytes(plan: DatasetPlan) -> int | None:
    """Bytes of the distinct source files the dataset was cut from (for the compression ratio)."""
    plan_url = storage.join(plan.out, "plan.parquet")
    sources = set(storage.read_parquet(plan_url, ["source_path"])["source_path"].to_pylist())
    root_fs, root = storage.url_to_fs(plan.audio_root)
    try:
        return sum(int(root_fs.size(posixpath.join(root, s))) for s in sources)
    except FileNotFoundError:
        return None


def webdataset_index(plan: DatasetPlan, markers: Sequence[ShardMarker]) -> WebDatasetIndex:
    """`shards/webdataset.json` of the dataset of `plan` whose shards committed `markers`: the
    tokenizer's facts (as each sample's JSON has them) and each split's tars, named relative to
    the index (it lies beside them), in shard order."""
    splits: dict[str, list[WebDatasetShard]] = {}
    for marker in markers:
        tar = marker.files["webdataset"]
        shard = WebDatasetShard(
            url=f"{marker.name}.tar", nsamples=marker.rows, bytes=tar.bytes, sha256=tar.sha256
        )
        splits.setdefault(marker.split, []).append(shard)
    return WebDatasetIndex(
        kind=WEBDATASET_KIND,
        format_version=DATASET_FORMAT_VERSION,
        dataset_fingerprint=plan.fingerprint,
        **tokenizer_facts(plan.spec),
        codes_shape=CODES_SHAPE,
        codes_layout=CODES_LAYOUT,
        sample={
            "codes.npy": "the segment's codes: a numpy array [K, F] (codes_shape) of dtype, "
            "codes[k, f] is level k's code at frame f",
            "json": "segment_id, speaker, book_id, split, n_frames (F), text when the source "
            "has a transcript, and tokenizer, num_levels (K), codebook_size, sample_rate, "
            "frame_rate, dtype, format_version and codes_shape as here",
        },
        tokenizer_spec=dict(plan.spec),
        splits={split: tuple(shards) for split, shards in splits.items()},
    )


def finalize_dataset(plan: DatasetPlan, markers: Sequence[ShardMarker]) -> DatasetRecord:
    """Write rejects.parquet, size_report.json, the WebDataset index (with WebDataset twins),
    the card (README.md) and its page (index.html), then dataset.json (the commit)."""
    existing = check_existing(plan.out, plan.fingerprint)
    if existing is not None:
        return record_from_info(plan.out, existing)
    shards = tuple(ShardEntry.from_marker(m) for m in markers)
    rejects = [r.to_json() for m in markers for r in m.rejects]
    rejects_url = storage.join(plan.out, "rejects.parquet")
    storage.write_parquet(rejects_url, pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA))
    _check_rejects(plan, markers, len(rejects), rejects_url)
    report = size_report([s.to_json() for s in shards], plan.spec, _source_bytes(plan))
    storage.write_json(storage.join(plan.out, "size_report.json"), report)
    dtype = plan.spec["token_dtype"]
    info = DatasetInfo(
        fingerprint=plan.fingerprint,
        format_version=DATASET_FORMAT_VERSION,
        manifest=plan.manifest
        if storage.is_remote(plan.manifest)
        else str(Path(plan.manifest).resolve()),
        tokenizer=plan.spec,
        dtype=dtype,
        formats=plan.formats,
        layout=CODES_LAYOUT,
        arrow_schema=token_shard_schema(
            pa.from_numpy_dtype(np.dtype(dtype)), with_text=plan.has_text
        ).to_string(),
        shards=shards,
        n_rejects=len(rejects),
        totals=DatasetTotals.model_validate(report["total"]),
    )
    if "webdataset" in plan.formats:
        index = webdataset_index(plan, markers)
        storage.write_json(storage.join(plan.out, WEBDATASET_INDEX), index.to_json())
    write_dataset_card(plan, info, report)
    kill_point("before-dataset-commit")  # crash tests: the card written, dataset.json not yet
    storage.write_json(storage.join(plan.out, "dataset.json"), info.to_json())  # last: the commit
    return record_from_info(plan.out, info)


def _check_rejects(
    plan: DatasetPlan, markers: Sequence[ShardMarker], n_rejects: int, rejects_url: str
) -> None:
    """Refuse to commit a dataset without a segment; warn above the set fraction of rejects."""
    total = n_rejects + sum(m.rows for m in markers)
    if n_rejects and n_rejects == total:
        # The shard markers hold no row: removed (we wrote them), so that a run after the audio
        # is restored encodes the shards again instead of trusting empty ones.
        for shard in plan.shards:
            fs, path = storage.url_to_fs(shard_marker_url(plan.out, shard.name))
            if fs.exists(path):
                fs.rm(path)
        raise CodecflowError(
            f"every segment of {plan.manifest} was rejected ({n_rejects} of {total}; the "
            f"reasons are in {rejects_url}): nothing committed to {plan.out}"
        )
    if total and n_rejects / total > plan.warn_reject_fraction:
        _log_warning(
            "%d of %d segments (%.1f%%) were rejected, more than warn_reject_fraction=%g: see %s",
            n_rejects,
            total,
            100 * n_rejects / total,
            plan.warn_reject_fraction,
            rejects_url,
        )


def _log_warning(message: str, *args: Any) -> None:
    """A warning on the `codecflow.tokenize` logger (inside a Prefect run, Prefect sends the
    `codecflow` loggers to the run's log: `extra_loggers` in pyproject.toml)."""
    logging.getLogger("codecflow.tokenize").warning(message, *args)


def format_rejects(record: DatasetRecord) -> str:
    """The closing line about rejected segments ('' when there were none)."""
    if not record.n_rejects:
        return ""
    rejects = storage.join(str(record.path), "rejects.parquet")
    return f"rejected: {record.n_rejects} segments that could not be decoded (see {rejects})"


def tokenize_manifest(
    manifest: str | Path, out: str | Path, settings: TokenizeSettings
) -> DatasetRecord:
    """Plan, write every shard group in turn and finalize, holding the dataset's lock.

    The Prefect flow runs the same steps with the groups fanned out as tasks.
    """
    out = str(out)
    with outputs.exclusive_lock(out, f"tokenize {settings.tokenizer}"):
        plan = plan_dataset(manifest, out, settings)
        existing = check_existing(out, plan.fingerprint)
        if existing is not None:
            return record_from_info(out, existing)
        markers = [m for group in plan.groups for m in write_shard_group(plan, group)]
        record = finalize_dataset(plan, markers)
    print(format_size_report(storage.read_json(storage.join(out, "size_report.json"))), flush=True)
    if record.n_rejects:
        print(format_rejects(record), flush=True)
    return record
