"""Tokenize a segment manifest into sharded token datasets that resume byte-identically.

Plain functions, no Prefect: `tasks.prefect.data_tasks` makes them tasks. Layout of a token
dataset (a local folder or an `s3://` prefix):

    <out>/plan.parquet                      the manifest rows with their shard, sorted
    <out>/shards/train-00000.arrow          Arrow IPC stream, a row per segment (token_shard_schema)
    <out>/shards/train-00000.tar            the same as WebDataset (<key>.codes.npy + <key>.json)
    <out>/shards/train-00000.commit.json    commit marker: plan hash, rows, bytes, sha256, rejects
    <out>/rejects.parquet                   segments that failed to decode, with the reason
    <out>/size_report.json                  size accounting (tasks.tokenize.sizes)
    <out>/README.md                         the dataset card (tasks.tokenize.card)
    <out>/dataset.json                      written last: the dataset is complete when it exists

The plan is a pure function of the manifest and the settings: shards of about `shard_hours` of
audio, per split, in segment-id order. A shard is written under a temporary name and renamed
(local) or uploaded in one PUT (S3), then its marker is written; readers and re-runs trust
shards with a marker only. So after `kill -9` at any moment a re-run redoes at most the shards
without a marker and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from codecflow.schemas.configs import TokenizeSettings
from codecflow.schemas.tables import (
    MANIFEST_AUDIO_ROOT_KEY,
    SPLITS,
)
from codecflow.schemas.tokenizers import parse_tokenizer_name
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.manifest import read_manifest_table, read_texts
from codecflow.tasks.data.records import DatasetInfo
from codecflow.tasks.data.token_dataset import (
    DATASET_COMMITTED,
    DATASET_FORMAT_VERSION,
    DATASET_KIND,
)
from codecflow.tasks.data.token_shards import shard_metadata
from codecflow.tasks.tokenize.mulaw_table import is_mulaw, mulaw_spec

__all__ = [
    "DatasetPlan",
    "PlannedShard",
    "PlannedTasks",
    "check_existing",
    "group_shards",
    "planned_tasks",
    "plan_dataset",
]


@dataclass(frozen=True)
class PlannedShard:
    """A shard of the plan without its rows: what tasks pass around."""

    name: str
    split: str
    n_rows: int
    plan_hash: str
    audio_seconds: float


@dataclass(frozen=True)
class DatasetPlan:
    """The whole plan: identity, tokenizer facts, shards, and the shard groups (one task each)."""

    out: str
    manifest: str
    audio_root: str
    fingerprint: str
    spec: dict[str, Any]
    formats: tuple[str, ...]
    shards: tuple[PlannedShard, ...]
    groups: tuple[tuple[str, ...], ...]
    warn_reject_fraction: float = 0.05
    manifest_sha256: str = ""
    has_text: bool = False  # the manifest has transcripts: the shards carry a `text` column

    @property
    def shard_metadata(self) -> dict[bytes, bytes]:
        """The schema metadata of every shard: the tokenizer's facts and this fingerprint."""
        return shard_metadata(self.spec, self.fingerprint)


def _cut_shards(
    table: pa.Table, shard_hours: float
) -> tuple[pa.Array, list[tuple[str, str, int, int, float]]]:
    """Plan the shards: the row order (split, then segment_id) and the shards as (name, split,
    first position, end position, seconds) over that order:
    greedy runs of about `shard_hours` of audio per split.

    Only the sort keys are sorted, never a copy of the whole manifest: the 3.6 M segments of
    Libri-Light's 60 000 h plan in seconds and well under 2 GB (bench/plan_60k.py)."""
    limit_s = shard_hours * 3600.0
    rank = pc.index_in(table["split"], value_set=pa.array(SPLITS))
    keys = pa.table({"_rank": rank, "segment_id": table["segment_id"]})
    order = pc.sort_indices(keys, sort_keys=[("_rank", "ascending"), ("segment_id", "ascending")])
    ranks = pc.take(rank, order).to_numpy(zero_copy_only=False)  # [N] split index
    durations = pc.take(table["duration_s"], order).to_numpy()  # [N]
    cuts: list[tuple[str, str, int, int, float]] = []
    for rank_of_split, split in enumerate(SPLITS):
        rows = np.flatnonzero(ranks == rank_of_split)
        if rows.size == 0:
            continue
        first, last = int(rows[0]), int(rows[-1]) + 1  # contiguous after the sort
        start, seconds, index = first, 0.0, 0
        for i in range(first, last):
            duration = float(durations[i])
            if i > start and seconds + duration > limit_s:
                cuts.append((f"{split}-{index:05d}", split, start, i, seconds))
                start, seconds, index = i, 0.0, index + 1
            seconds += duration
        cuts.append((f"{split}-{index:05d}", split, start, last, seconds))
    return order, cuts


def _plan_hash(fingerprint: str, name: str, segment_ids: Sequence[str]) -> str:
    """A shard's identity: its rows, and the dataset's fingerprint, which its bytes hold
    (`codecflow.dataset_fingerprint`): a shard committed by a run of other settings into the
    same folder is not this plan's, and is written again."""
    return hashlib.sha256("\n".join((fingerprint, name, *segment_ids)).encode()).hexdigest()


def group_shards(names: Sequence[str], max_tasks: int) -> list[tuple[str, ...]]:
    """Consecutive shards grouped so that there are at most `max_tasks` groups (one task each):
    60 000 h in 1 h shards is 60 000 shards, far more task runs than Prefect should track."""
    per_task = max(1, math.ceil(len(names) / max_tasks))
    return [tuple(names[i : i + per_task]) for i in range(0, len(names), per_task)]


@dataclass(frozen=True)
class PlannedTasks:
    """The shards and shard-writing tasks a plan of given split durations will have."""

    shards: int
    groups: int  # write-shards tasks, one per group
    shards_per_group: int


def planned_tasks(
    split_hours: Mapping[str, float], shard_hours: float, max_tasks: int
) -> PlannedTasks:
    """What `plan_dataset` will cut `split_hours` (hours of audio per split) into, before any
    manifest exists: `_cut_shards`' greedy runs of `shard_hours` per split, at least
    `ceil(hours / shard_hours)` each (a run closes before the segment that would pass the limit,
    so a few more when segments are long beside a shard), then `group_shards`."""
    # Rounded first: 10 000 h x 0.99 is 9 900.000000000002 in floats, 9 900 shards, not 9 901.
    counts = [math.ceil(round(h / shard_hours, 6)) for h in split_hours.values() if h > 0]
    names = [f"{i:06d}" for i in range(sum(counts))]
    groups = group_shards(names, max_tasks)
    return PlannedTasks(len(names), len(groups), len(groups[0]) if groups else 0)


def _tokenizer_identity(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    identity = dict(spec)
    parsed = parse_tokenizer_name(name)
    if parsed.kind == "codec" and parsed.checkpoint is not None and spec.get("trained", True):
        # The name holds a path; the dataset is defined by the weights behind it (a preset's
        # untrained weights come from its name and a fixed seed).
        identity["checkpoint_sha256"] = storage.sha256(
            storage.join(parsed.checkpoint, "model.safetensors")
        )
    return identity


def _fingerprint(
    manifest_sha256: str, identity: Mapping[str, Any], settings: TokenizeSettings
) -> str:
    return hashlib.sha256(
        json.dumps(
            {
                "manifest_sha256": manifest_sha256,
                "tokenizer": identity,
                "shard_hours": settings.shard_hours,
                "formats": sorted(settings.formats),
                "format_version": DATASET_FORMAT_VERSION,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


def _tokenizer_spec(name: str) -> dict[str, Any]:
    """The tokenizer's spec; mu-law's without building the model (no torch: a small run starts
    in under a second, bench/tokenize_throughput.py), every other one from the loaded model."""
    if is_mulaw(name):
        return mulaw_spec(name)
    from codecflow.tasks.loaders import (  # torch, moshi: seconds to import
        load_tokenizer,
        tokenizer_spec,
    )

    return tokenizer_spec(name, load_tokenizer(name))


def check_existing(out: str, fingerprint: str) -> DatasetInfo | None:
    """The dataset.json committed in `out` when it is this plan's; None when there is none."""
    info_url = storage.join(out, "dataset.json")
    if not storage.exists(info_url):
        return None
    data = storage.read_json(info_url)
    # The fingerprint first: another dataset (or another program's dataset.json) is refused
    # as such, whatever else it holds.
    found = data.get("fingerprint") if isinstance(data, dict) else None
    if found != fingerprint:
        raise CodecflowError(
            f"{out} already holds another token dataset (fingerprint {found}); "
            "choose another output folder"
        )
    return DatasetInfo.from_json(data, info_url)


def plan_dataset(manifest: str | Path, out: str | Path, settings: TokenizeSettings) -> DatasetPlan:
    """Plan the shards and write `plan.parquet` (the manifest rows with their shard)."""
    manifest, out = str(manifest), str(out)
    table, audio_root = read_manifest_table(manifest)
    spec = _tokenizer_spec(settings.tokenizer)
    identity = _tokenizer_identity(settings.tokenizer, spec)
    if spec.get("trained") is False:
        logging.getLogger("codecflow.tokenize").warning(
            "codec preset %s has no trained weights: its codes carry no information; train one "
            "with `codecflow train-codec`",
            parse_tokenizer_name(settings.tokenizer).checkpoint,
        )
    manifest_sha256 = storage.sha256(manifest)
    texts = read_texts(manifest)
    if texts is not None:
        # Transcripts travel with the codes; a changed transcript is another dataset.
        by_id, texts_sha256 = texts
        ids = table["segment_id"].to_pylist()
        table = table.append_column("text", pa.array([by_id.get(i) for i in ids], pa.string()))
        identity = {**identity, "texts_sha256": texts_sha256}
    fingerprint = _fingerprint(manifest_sha256, identity, settings)
    check_existing(out, fingerprint)
    if table.num_rows == 0:
        raise CodecflowError(f"segment manifest {manifest} has no segments")
    # The inputs are valid: only now is `out` created (or refused when it is not ours). The
    # caller holds the dataset's lock, so the temporaries found there are a dead run's.
    outputs.claim_output(out, DATASET_KIND, DATASET_COMMITTED)
    outputs.remove_stale_temporaries(out)
    order, cuts = _cut_shards(table, settings.shard_hours)
    plan_url = storage.join(out, "plan.parquet")
    if not _same_plan(plan_url, fingerprint):
        metadata = {
            b"codecflow.fingerprint": fingerprint.encode(),
            MANIFEST_AUDIO_ROOT_KEY: audio_root.encode(),
        }
        _write_plan(plan_url, table, order, cuts, metadata)
    ids = pc.take(table["segment_id"], order)  # Arrow strings in plan order, not Python ones
    planned = tuple(
        PlannedShard(
            name,
            split,
            b - a,
            _plan_hash(fingerprint, name, ids.slice(a, b - a).to_pylist()),
            seconds,
        )
        for name, split, a, b, seconds in cuts
    )
    del ids
    return DatasetPlan(
        out=out,
        manifest=manifest,
        audio_root=audio_root,
        fingerprint=fingerprint,
        spec={**spec, **identity},
        formats=tuple(sorted(settings.formats)),
        shards=planned,
        groups=tuple(group_shards([s.name for s in planned], settings.max_tasks)),
        warn_reject_fraction=settings.warn_reject_fraction,
        manifest_sha256=manifest_sha256,
        has_text=texts is not None,
    )


def _write_plan(
    url: str,
    table: pa.Table,
    order: pa.Array,
    cuts: Sequence[tuple[str, str, int, int, float]],
    metadata: dict[bytes, bytes],
    block: int = 1 << 18,
) -> None:
    """plan.parquet: the manifest rows in plan order with their shard, written block by block
    so that no sorted copy of the whole manifest is ever held."""
    names = np.repeat(np.array([c[0] for c in cuts]), [c[3] - c[2] for c in cuts])
    schema = table.schema.append(pa.field("shard", pa.string())).with_metadata(metadata)
    with storage.open_atomic_write(url) as f, pq.ParquetWriter(f, schema) as writer:
        for start in range(0, len(order), block):
            rows = table.take(order.slice(start, block))
            shard = pa.array(names[start : start + block], pa.string())
            writer.write_table(rows.append_column("shard", shard).replace_schema_metadata(metadata))


def _same_plan(plan_url: str, fingerprint: str) -> bool:
    if not storage.exists(plan_url):
        return False
    fs, path = storage.url_to_fs(plan_url)
    metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    return metadata.get(b"codecflow.fingerprint") == fingerprint.encode()
