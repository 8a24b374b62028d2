"""Prefect tasks: thin wrappers over the plain functions of `tasks.*`, adding caching and retries.

Each task is cached on its parameters, the source of the code it runs, and the content hashes of
the files it reads (`tasks.caching.content_key`), with results persisted under PREFECT_HOME so a
second run of the same inputs is a cache hit in a new process. Flows pass `refresh_cache=True`
when a task's committed output has gone missing, so a cache hit never points at deleted files.
Bad input (`CodecflowError`) is never retried; anything else (a dropped connection, an S3
hiccup) is retried with back-off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from schemas.configs import EvaluateSettings, TokenizeSettings, TrainLMSettings
from tasks import download, evaluate, extract, segments, tokenization, train_lm
from tasks.caching import content_key
from tasks.errors import CodecflowError

__all__ = [
    "evaluate_task",
    "extract_task",
    "fetch_task",
    "manifest_task",
    "tokenize_task",
    "train_lm_task",
]


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except CodecflowError:
        return False
    except Exception:
        return True
    return True


_CACHED: dict[str, Any] = {"persist_result": True}


@task(
    name="fetch",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retry_unless_bad_input,
    cache_key_fn=content_key(code=(download,)),
    **_CACHED,
)
def fetch_task(source: str, dest: Path, md5: str | None) -> download.FetchRecord:
    """Download `source` to `dest` (resuming a `.part`), verifying its md5."""
    return download.fetch(source, dest, md5)


@task(name="extract", cache_key_fn=content_key(code=(extract,)), **_CACHED)
def extract_task(archive: download.FetchRecord, dest: Path) -> extract.ExtractRecord:
    """Extract the downloaded tar safely (keyed on the tar's md5, not re-hashed)."""
    return extract.extract_tar_safely(archive.path, dest)


@task(name="segment-manifest", cache_key_fn=content_key(code=(segments,)), **_CACHED)
def manifest_task(
    extracted: extract.ExtractRecord,
    out: Path,
    target_len_sec: float,
    val_fraction: float,
    seed: int,
) -> segments.ManifestRecord:
    """Cut the extracted audio by VAD into segments and write the split manifest."""
    return segments.build_segment_manifest(
        extracted.root, out, target_len_sec=target_len_sec, val_fraction=val_fraction, seed=seed
    )


@task(name="tokenize", cache_key_fn=content_key("manifest", code=(tokenization,)), **_CACHED)
def tokenize_task(
    manifest: Path, out: Path, settings: TokenizeSettings
) -> tokenization.DatasetRecord:
    """Tokenize the manifest's segments into Arrow shards plus a size report."""
    return tokenization.tokenize_manifest(manifest, out, settings)


@task(
    name="train-lm",
    cache_key_fn=content_key("dataset/dataset.json", code=(train_lm, tokenization)),
    **_CACHED,
)
def train_lm_task(dataset: Path, out: Path, settings: TrainLMSettings) -> train_lm.CheckpointRecord:
    """Train the GPT on the dataset's tokens and checkpoint it."""
    return train_lm.train_lm(dataset, out, settings)


@task(
    name="evaluate",
    cache_key_fn=content_key(
        "checkpoint/model.safetensors",
        "checkpoint/metrics.json",
        "dataset/dataset.json",
        "settings.prompt",
        code=(evaluate,),
    ),
    **_CACHED,
)
def evaluate_task(
    checkpoint: Path, dataset: Path, out: Path, settings: EvaluateSettings
) -> evaluate.ReportRecord:
    """Sample continuations of the prompt and write the HTML report."""
    return evaluate.evaluate(checkpoint, dataset, out, settings)
