"""Typed records of the JSON files the stages hand each other: a shard's commit marker, a token
dataset's `dataset.json` and an evaluation's `summary.json`.

Each record is a frozen pydantic model: `to_json()` gives the object the file holds and
`from_json(data, source)` (or `read(path)`) checks one, raising a one-line `CodecflowError` that
names the file when it is not a valid record. The JSON is byte-for-byte what the dictionaries of
earlier versions were (tests/tasks/data/test_records.py): field names and order are the file's
keys, numbers keep their JSON type (`Number`: an int stays an int), optional keys a file may
lack are left out again, so old datasets read as before and dataset fingerprints do not move.

Parts whose keys are open-ended (the tokenizer spec, per-sample metrics, settings) are plain
mappings, documented per field; "frozen" is shallow there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError

__all__ = [
    "COMPARISON_KIND",
    "CodecComparison",
    "CodecComparisonRow",
    "CommittedReport",
    "CommittedReports",
    "DatasetInfo",
    "DatasetTotals",
    "EvaluationSummary",
    "Number",
    "PromptRoundtrip",
    "Regeneration",
    "Reject",
    "ShardEntry",
    "ShardFile",
    "SUMMARY_KIND",
    "ShardMarker",
    "WEBDATASET_KIND",
    "WebDatasetIndex",
    "WebDatasetShard",
]

#: A JSON number that keeps its type: `float` alone would turn a marker's `0` into `0.0`.
Number = int | float


class _Record(BaseModel):
    """Frozen, no unknown keys (a key this version does not know would be lost on rewrite)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    #: The file, in error messages: "not a valid <what>".
    what: ClassVar[str] = "record"

    def to_json(self) -> dict[str, Any]:
        """The object the file holds (python mode: floats, NaN included, are left as they are)."""
        return self.model_dump(by_alias=True, exclude_none=False)

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> Self:
        """`data` (parsed JSON) as a record; a CodecflowError naming `source` when it is none."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "top level"
            raise CodecflowError(
                f"{source} is not a valid {cls.what}: {where}: {first['msg']}"
                f" ({err.error_count()} problem(s))"
            ) from None

    @classmethod
    def read(cls, url: str | Path) -> Self:
        """The record in the JSON file `url` (local or remote)."""
        try:
            data = storage.read_json(url)
        except (ValueError, UnicodeDecodeError) as err:
            raise CodecflowError(f"{url} is not a valid {cls.what}: not JSON ({err})") from None
        return cls.from_json(data, url)


# -- shard commit markers: <out>/shards/<name>.commit.json --------------------------------------


class ShardFile(_Record):
    """One file of a shard as committed: its size and sha256."""

    bytes: int
    sha256: str


class Reject(_Record):
    """A segment that could not be encoded, and why (a row of rejects.parquet)."""

    path: str
    reason: str


class ShardMarker(_Record):
    """The commit marker of one shard: written after its files, trusted by re-runs and readers."""

    what: ClassVar[str] = "shard commit marker"

    name: str
    split: str
    plan_hash: str  # the shard's rows in the plan: a marker of another plan is not ours
    rows: int
    frames: int
    tokens: int
    audio_seconds: Number
    files: dict[str, ShardFile]  # by format: "arrow", and "webdataset" when written
    rejects: tuple[Reject, ...]


# -- dataset.json -------------------------------------------------------------------------------


def _absent_if_none(value: Any) -> bool:
    return value is None


class ShardEntry(_Record):
    """A committed shard as `dataset.json` lists it (what `TokenReader` maps)."""

    name: str
    split: str
    file: str  # relative to the dataset folder
    rows: int
    frames: int
    tokens: int
    bytes: int
    sha256: str
    audio_seconds: Number
    webdataset_file: str | None = Field(default=None, exclude_if=_absent_if_none)
    webdataset_bytes: int | None = Field(default=None, exclude_if=_absent_if_none)

    @classmethod
    def from_marker(cls, marker: ShardMarker) -> ShardEntry:
        arrow, tar = marker.files["arrow"], marker.files.get("webdataset")
        return cls(
            name=marker.name,
            split=marker.split,
            file=f"shards/{marker.name}.arrow",
            rows=marker.rows,
            frames=marker.frames,
            tokens=marker.tokens,
            bytes=arrow.bytes,
            sha256=arrow.sha256,
            audio_seconds=marker.audio_seconds,
            webdataset_file=f"shards/{marker.name}.tar" if tar else None,
            webdataset_bytes=tar.bytes if tar else None,
        )


class DatasetTotals(_Record):
    """The size report's `total` (`tasks.tokenize.sizes.size_report`): the counts the later stages
    read are typed; the report's other figures (rates, projections, ...) are kept as
    they are, so that the size report may grow without a change here."""

    model_config = ConfigDict(extra="allow")

    segments: int
    audio_hours: Number
    frames: int
    tokens: int
    bytes: int


class DatasetInfo(_Record):
    """`<dataset>/dataset.json`, written last by tokenize: the dataset is complete when it exists.

    `tokenizer` is the tokenizer's spec (`tasks.loaders.tokenizer_spec`: name, num_levels,
    codebook_size, frame_rate, token_dtype, ... and `checkpoint_sha256` for a trained codec):
    its keys follow the tokenizer kinds, so it stays a mapping; a checkpoint is trained on the
    tokens of exactly this spec.
    """

    what: ClassVar[str] = "token dataset info (dataset.json)"

    fingerprint: str
    format_version: int
    manifest: str
    tokenizer: dict[str, Any]
    dtype: str
    formats: tuple[str, ...]
    layout: str
    arrow_schema: str = Field(alias="schema")  # `schema` is a BaseModel method name
    shards: tuple[ShardEntry, ...]
    n_rejects: int = 0  # absent from datasets written before rejects were counted
    totals: DatasetTotals

    @property
    def num_levels(self) -> int:
        return int(self.tokenizer["num_levels"])


# -- shards/webdataset.json: the WebDataset twins' facts -----------------------------------------

#: `kind` of a token dataset's `shards/webdataset.json`.
WEBDATASET_KIND = "codecflow-webdataset"


class WebDatasetShard(_Record):
    """One tar of the WebDataset twins. `url` and `nsamples` are the names wids' shard lists
    use (webdataset's indexed reader), so a split's list can be handed to it as it is."""

    url: str  # the tar, relative to the index file: its name (`train-00000.tar`)
    nsamples: int
    bytes: int
    sha256: str


class WebDatasetIndex(_Record):
    """`<dataset>/shards/webdataset.json`, beside the tars, written by finalize before
    `dataset.json`: what the codes are (the tokenizer's facts, as in each sample's JSON and the
    Arrow shards' metadata) and each split's tars, for readers without codecflow."""

    what: ClassVar[str] = "WebDataset index (shards/webdataset.json)"

    kind: str  # WEBDATASET_KIND
    format_version: int
    dataset_fingerprint: str
    tokenizer: str
    num_levels: int
    codebook_size: int
    sample_rate: int
    frame_rate: Number
    dtype: str
    codes_shape: tuple[str, ...]  # the JSON keys that size `codes.npy`'s axes: [K, F]
    codes_layout: str
    sample: dict[str, str]  # a sample's members (`codes.npy`, `json`): what each holds
    tokenizer_spec: dict[str, Any]
    splits: dict[str, tuple[WebDatasetShard, ...]]


# -- summary.json -------------------------------------------------------------------------------


class PromptRoundtrip(_Record):
    """How close the tokenizer's round trip of the prompt comes to it (`tasks.evaluate.quality`).

    PESQ-WB, STOI and the spectral loss are absent from reports written before issue 15, and
    absent (None) when the prompt is too short or silent for them."""

    si_sdr_db: Number
    mel_l1: Number
    spectral_loss: Number | None = Field(default=None, exclude_if=_absent_if_none)
    pesq_wb: Number | None = Field(default=None, exclude_if=_absent_if_none)
    stoi: Number | None = Field(default=None, exclude_if=_absent_if_none)


class Regeneration(_Record):
    """The regeneration experiment: its source recording and one run per `keep_levels`.

    A run is `{"keep_levels", "skipped"}` plus, when done, `files` and the speech metrics of
    `tasks.evaluate.speech_metrics.regeneration_metrics`: open-ended, so plain mappings."""

    source: str
    seconds: Number
    runs: list[dict[str, Any]]


#: summary.json's `kind`: what tells an evaluation's summary from the other summary.json files.
SUMMARY_KIND = "codecflow-evaluation"


class EvaluationSummary(_Record):
    """`<report>/summary.json`, written last by an evaluation (`tasks.evaluate.lm`); the report
    pages, the runs index and the evaluate flow read it.

    Open-ended parts: `samples` (per continuation, `tasks.evaluate.acoustics.acoustic_stats`),
    `speech` (`tasks.evaluate.speech_metrics.speech_metrics`, or `{"skipped": why}`),
    `settings` (the EvaluateSettings) and `identity` (what a reused report must match).
    """

    what: ClassVar[str] = "evaluation summary (summary.json)"

    kind: str
    tokenizer: str
    num_levels: int
    codebook_size: int
    frame_rate: Number
    layout: str
    level_weights: list[Number] | None = None
    checkpoint: str
    checkpoint_step: int
    train_loss_first: Number | None
    train_loss_last: Number | None
    n_parameters: int | None
    dataset: str
    audio_hours: Number
    n_segments: int
    n_tokens: int
    dataset_bytes: int
    val_loss: Number
    val_loss_per_level: list[Number]
    val_perplexity_per_level: list[Number]
    val_bits_per_audio_second: Number
    context_tokens: int
    context_seconds: Number
    prompt: str
    prompt_seconds: Number
    prompt_roundtrip: PromptRoundtrip
    num_samples: int
    generated_seconds: Number
    generated_tokens: int
    generation_seconds: Number
    generation_tokens_per_s: Number
    # Written before issue 15 only: audio seconds generated per compute second (over the batch),
    # the inverse of the usual real-time factor. Read it through `rtf`.
    real_time_factor: Number | None = Field(default=None, exclude_if=_absent_if_none)
    # The usual real-time factor: compute seconds per second of audio generated (over the
    # batch); below 1 is faster than real time. Absent before issue 15.
    compute_seconds_per_audio_second: Number | None = Field(
        default=None, exclude_if=_absent_if_none
    )
    n_prefills: int
    # The intra-op threads generation ran on (tasks.core.threads); absent before issue 17.
    decode_threads: int | None = Field(default=None, exclude_if=_absent_if_none)
    samples: list[dict[str, Any]]
    # The recording's own continuation of the prompt when the prompt is cut from a longer file
    # (`prompt_seconds`): {"file", "seconds", "stats"} (stats: `acoustic_stats`), and "speech"
    # (its voice similarity to the prompt and transcript) with speech metrics on; else absent.
    true_continuation: dict[str, Any] | None = Field(default=None, exclude_if=_absent_if_none)
    speech: dict[str, Any]
    regeneration: Regeneration
    # The loss-curve pictures in the report folder: {"total": "loss.png", "per_level": ...};
    # absent before issue 15.
    loss_curves: dict[str, str] | None = Field(default=None, exclude_if=_absent_if_none)
    settings: dict[str, Any]
    identity: dict[str, Any]
    # The folder whose committed report of the same identity this one copies (tasks.evaluate.
    # reuse); absent in a report computed here.
    reused_from: str | None = Field(default=None, exclude_if=_absent_if_none)

    @property
    def rtf(self) -> float | None:
        """Compute seconds per second of audio generated, from either version's field."""
        if self.compute_seconds_per_audio_second is not None:
            return float(self.compute_seconds_per_audio_second)
        if self.real_time_factor:
            return 1.0 / float(self.real_time_factor)
        return None

    @property
    def n_flagged_samples(self) -> int:
        return sum(1 for s in self.samples if s["flags"])

    def dumps(self) -> str:
        """The file's text: indented, in field order (summary.json is not key-sorted)."""
        return json.dumps(self.to_json(), indent=2) + "\n"


# -- comparison.json: compare-codecs' table, written last ---------------------------------------


class CodecComparisonRow(_Record):
    """One tokenizer of a codec comparison: its rates, and the means over the segments of how
    close its round trip comes (`tasks.evaluate.quality`; a metric no segment allowed is None),
    and how fast it encodes and decodes (x real time: audio seconds per compute second)."""

    tokenizer: str
    num_levels: int
    codebook_size: int
    sample_rate: int
    frame_rate: Number
    bitrate_kbps: Number  # levels x log2(codebook) bits per frame x frames per second / 1000
    tokens_per_second: Number  # frames per second x levels
    si_sdr_db: Number
    pesq_wb: Number | None
    stoi: Number | None
    mel_l1: Number
    spectral_loss: Number
    encode_x_realtime: Number
    decode_x_realtime: Number
    trained: bool  # False for an untrained codec preset (its codes carry no information)
    audio: str  # the first segment through the tokenizer, relative to the report folder


#: comparison.json's `kind`.
COMPARISON_KIND = "codecflow-codec-comparison"


class CodecComparison(_Record):
    """`<report>/comparison.json`, written last by compare-codecs (`tasks.evaluate.compare`):
    the report is complete when it exists, and answers the same `identity` again."""

    what: ClassVar[str] = "codec comparison (comparison.json)"

    kind: str
    manifest: str
    segments: list[str]  # the held-out segment ids, the same for every row
    audio_seconds: Number  # their total duration
    original: str  # the first segment as it is, relative to the report folder
    rows: list[CodecComparisonRow]
    identity: dict[str, Any]  # the manifest, settings and codec weights compared

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"


# -- the registry of committed evaluation reports: <cache>/evaluations/<identity hash>.json ----


class CommittedReport(_Record):
    """One folder holding a committed report, and the sha256 of its summary.json then: a
    summary changed since (or gone) makes the entry stale."""

    path: str  # absolute
    summary_sha256: str


class CommittedReports(_Record):
    """The folders that hold a committed report of one identity (weights, dataset, prompts,
    settings), oldest first (`tasks.evaluate.reuse`): where a second evaluation copies from."""

    what: ClassVar[str] = "registry of committed evaluation reports"

    format: int = 1
    identity_sha256: str
    reports: list[CommittedReport]
