"""Prefect tasks: thin wrappers over the plain functions of the stages (`tasks.acquire`,
`tasks.tokenize`, `tasks.train`, `tasks.evaluate`), adding caching and retries. The data stages'
tasks are in `tasks.prefect.data_tasks` (torch-free, so that their flows start without it); this
module holds the training and evaluation tasks.

Each task is cached on its parameters, the source of the code it runs, and the content hashes of
the files it reads (`tasks.prefect.caching.content_key`), with results persisted under PREFECT_HOME
so a second run of the same inputs is a cache hit in a new process. Flows pass `refresh_cache=True`
when a task's committed output has gone missing, so a cache hit never points at deleted files.
Only network errors (a dropped connection, a timeout, an HTTP 5xx, an S3 hiccup: named in
`tasks.core.errors.is_transient`) are retried with back-off; bad input, a full disk or a bug fail at
once.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from prefect import task

import codecflow.tasks.data
import codecflow.tasks.evaluate
import codecflow.tasks.train
from codecflow.schemas.configs import (
    CompareCodecsSettings,
    EvalCodecSettings,
    EvaluateSettings,
    TrainCodecSettings,
    TrainLMSettings,
)
from codecflow.tasks import loaders
from codecflow.tasks.core import runtime
from codecflow.tasks.evaluate import codec as eval_codec
from codecflow.tasks.evaluate import compare as compare_codecs
from codecflow.tasks.evaluate import lm as evaluate_lm
from codecflow.tasks.prefect.caching import content_key
from codecflow.tasks.prefect.data_tasks import CACHED
from codecflow.tasks.train import codec as train_codec
from codecflow.tasks.train import lm as train_lm
from codecflow.tasks.train.torchrun import run_codec_torchrun, run_torchrun

__all__ = [
    "compare_codecs_task",
    "eval_codec_task",
    "evaluate_task",
    "train_codec_task",
    "train_lm_task",
]


@task(
    name="train-lm",
    cache_key_fn=content_key(
        "dataset/dataset.json", code=(codecflow.tasks.train, codecflow.tasks.data)
    ),
    **CACHED,
)
def train_lm_task(
    dataset: str | Path, out: Path, settings: TrainLMSettings
) -> train_lm.CheckpointRecord:
    """Train the GPT on the dataset's tokens and checkpoint it.

    With `nproc_per_node > 1` it launches torchrun (one process per GPU or CPU rank) as a
    subprocess, streams its output into the Prefect log, and reads the checkpoint back.
    """
    from prefect.concurrency.sync import concurrency

    on_gpu = runtime.resolve_device(settings.device).type == "cuda"
    # The `gpu` global concurrency limit (created by the server set-up) keeps two GPU flows off
    # one device; without the limit on the server this is a no-op (strict=False).
    with (
        concurrency("gpu", occupy=settings.nproc_per_node, strict=False)
        if on_gpu
        else nullcontext()
    ):
        if settings.nproc_per_node == 1:
            return train_lm.train_lm(dataset, out, settings)
        return run_torchrun(dataset, out, settings)


@task(
    name="evaluate",
    cache_key_fn=content_key(
        "checkpoint/model.safetensors",
        "checkpoint/config.json",
        "dataset/dataset.json",
        "settings.prompt",
        "settings.regenerate_source",
        code=(codecflow.tasks.evaluate, codecflow.tasks.data, loaders),
    ),
    **CACHED,
)
def evaluate_task(
    checkpoint: Path, dataset: str | Path, out: Path, settings: EvaluateSettings
) -> evaluate_lm.ReportRecord:
    """Sample continuations of the prompt and write the HTML report."""
    return evaluate_lm.evaluate(checkpoint, dataset, out, settings)


@task(
    name="train-codec",
    cache_key_fn=content_key("manifest", code=(codecflow.tasks.train, codecflow.tasks.data)),
    **CACHED,
)
def train_codec_task(
    manifest: str, out: Path, settings: TrainCodecSettings
) -> train_codec.CodecCheckpointRecord:
    """Train the RVQ codec (resuming from the newest checkpoint in `out`).

    With `nproc_per_node > 1` it launches torchrun (one process per GPU or CPU rank) as a
    subprocess, streams its output into the Prefect log, and reads the checkpoint back.
    """
    from prefect.concurrency.sync import concurrency

    on_gpu = runtime.resolve_device(settings.device).type == "cuda"
    with (
        concurrency("gpu", occupy=settings.nproc_per_node, strict=False)
        if on_gpu
        else nullcontext()
    ):
        if settings.nproc_per_node == 1:
            return train_codec.train_codec(manifest, out, settings)
        return run_codec_torchrun(manifest, out, settings)


@task(
    name="eval-codec",
    cache_key_fn=content_key(
        "checkpoint/model.safetensors",
        "manifest",
        code=(codecflow.tasks.evaluate, codecflow.tasks.data, loaders),
    ),
    **CACHED,
)
def eval_codec_task(
    checkpoint: Path, manifest: str, out: Path, settings: EvalCodecSettings
) -> eval_codec.CodecReportRecord:
    """Tabulate reconstruction losses by number of levels on the validation split."""
    return eval_codec.eval_codec(checkpoint, manifest, out, settings)


# Not cached by Prefect: the tokenizers' codec weights are named inside `settings`, which the
# content key cannot hash; the committed comparison.json (its identity holds the weights'
# fingerprints) is what a second run returns without computing.
@task(name="compare-codecs")
def compare_codecs_task(
    manifest: str, out: Path, settings: CompareCodecsSettings
) -> compare_codecs.ComparisonRecord:
    """Every tokenizer on the same held-out segments: one table, one plot, one player each."""
    return compare_codecs.compare_codecs(manifest, out, settings)
