"""Train the nanoGPT-style LM on a token dataset; write a safetensors checkpoint.

Plain functions, no Prefect: `tasks.prefect.wrappers` makes them tasks. A checkpoint folder holds
`model.safetensors` (weights only: loading never unpickles), `config.json` (the GPT's numbers and
the tokenizer it reads), `metrics.json`, the per-step `train_log.jsonl` and `loss.png`. The folder
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codecflow.models.flops import model_flops_utilization, peak_flops_for
from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.layouts import TokenLayout, make_layout
from codecflow.models.level_loss import level_weighted_loss
from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.progress import StepProgress
from codecflow.tasks.core.runtime import resolve_device
from codecflow.tasks.core.tracking import Tracker, check_log_to
from codecflow.tasks.data.checkpoints import latest_checkpoint
from codecflow.tasks.data.lm_windows import (
    check_windows,
    lm_windows_batch,
    model_config,
    validation_loss,
)
from codecflow.tasks.data.records import DatasetInfo
from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info
from codecflow.tasks.train.distributed import (
    Ranks,
    barrier,
    holding,
    init_distributed,
    write_rank_fingerprint,
)
from codecflow.tasks.train.scaffold import (
    Resumed,
    RunIdentity,
    checkpoint_due,
    json_text,
    plot_log,
    read_identity,
    read_record,
    resume,
    save_checkpoint,
    schedule,
    write_final,
)

__all__ = [
    "CheckpointRecord",
    "LM_RUN_COMMITTED",
    "LM_RUN_HELD_ENV",
    "LM_RUN_KIND",
    "build_optimizer",
    "train_lm",
]


@dataclass(frozen=True)
class CheckpointRecord:
    """What a training run produced: small, picklable, cacheable."""

    path: Path
    fingerprint: str
    steps: int
    n_parameters: int
    train_loss_first: float
    train_loss_last: float
    val_loss: float
    tokens_per_s: float


def build_optimizer(model: GPT, settings: TrainLMSettings) -> torch.optim.AdamW:
    """train-lm's AdamW over `model` (bench/gpu_check.py times the same)."""
    # nanoGPT: decay matrices (>= 2-D), not biases or LayerNorm gains.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, settings.beta2))


#: Settings that do not change what is learnt: a run may resume with other values (resuming on
#: another number of ranks is supported: the sampler position is global). Every other setting,
#: `steps` included (it shapes the cosine schedule), and the dataset define the run: a resume
#: with another value is refused, since its result would match no uninterrupted run.
_RUNTIME_ONLY = {"checkpoint_every", "nproc_per_node", "device", "compile", "log_to"}

#: The kind of folder a train-lm run owns, and what shows one written before ownership markers.
LM_RUN_KIND = "LM run"

LM_RUN_COMMITTED = ("checkpoint/metrics.json", "checkpoints/step-*/COMPLETE")

#: Set by the task that launches torchrun (to `out`): it holds the run's lock, not its ranks.
LM_RUN_HELD_ENV = "CODECFLOW_LM_RUN_HELD"

#: Progress lines (rank 0): inside a Prefect run they reach the run's log (`codecflow.*`).
_LOG = logging.getLogger("codecflow.train-lm")


def _identity(info: DatasetInfo, settings: TrainLMSettings) -> RunIdentity:
    settings_json = settings.model_dump(mode="json", exclude=_RUNTIME_ONLY)
    return RunIdentity(
        LM_RUN_KIND, "checkpoint", "dataset", info.fingerprint, settings_json, added=_ADDED
    )


#: Settings added since runs were recorded, with the value those runs had: a checkpoint of 0.1
#: (no `window_offsets`) resumes as the aligned run it was, and one of before issue 24 as the
#: normalised one.
_ADDED = {"window_offsets": "aligned", "level_weights_normalized": True}


def _resumable_identity(checkpoint: Path, info: DatasetInfo) -> dict[str, Any] | None:
    """The identity a resumable checkpoint records; for one written before identities were
    recorded, its settings (config.json) and, when its tokens match, the requested dataset
    (its fingerprint was not kept: the tokenizer is what can be compared)."""
    recorded = read_identity(checkpoint / "identity.json")
    if recorded is not None:
        return recorded
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    try:
        settings = TrainLMSettings.model_validate(config.get("settings"))
    except ValueError:  # pydantic's ValidationError: settings of an older schema, or none
        return None
    same_tokens = config.get("tokenizer") == info.tokenizer
    return {
        "dataset": info.fingerprint if same_tokens else f"tokens of {config.get('tokenizer')}",
        "settings": settings.model_dump(mode="json", exclude=_RUNTIME_ONLY),
    }


def train_lm(dataset: str | Path, out: Path, settings: TrainLMSettings) -> CheckpointRecord:
    """Train a GPT on the token stream of `dataset` (a folder, or a URL such as `s3://b/tokens`:
    see `TokenReader`); checkpoint to the local folder `out/checkpoint`.

    Resumes from the newest complete checkpoint in `out/checkpoints` (after a kill, the step,
    the optimizer, the RNG and the sampler position continue). Under torchrun (WORLD_SIZE > 1)
    every rank calls this: DDP with NCCL on GPUs, gloo on the CPU; rank 0 writes. A complete
    final checkpoint for the same dataset and settings is returned as is.
    """
    dataset, out = storage.location(dataset), Path(out)
    info = read_dataset_info(dataset)
    if settings.preset is None and settings.n_embd % settings.n_head:
        raise CodecflowError(
            f"n_embd={settings.n_embd} is not a multiple of n_head={settings.n_head}"
        )
    check_windows(dataset, settings)
    check_log_to(settings.log_to)
    with holding(out, LM_RUN_KIND, "train-lm", LM_RUN_COMMITTED, LM_RUN_HELD_ENV):
        return _train_owned(dataset, out, settings, info)


def _train_owned(
    dataset: str | Path, out: Path, settings: TrainLMSettings, info: DatasetInfo
) -> CheckpointRecord:
    """train_lm once `out` is ours and locked: the committed checkpoint, or resume, or start."""
    identity = _identity(info, settings)
    metrics = identity.committed(out)
    if metrics is not None:
        return read_record(CheckpointRecord, out / "checkpoint", metrics)
    resumed = latest_checkpoint(out)
    if resumed is not None:
        identity.check_resumable(out, _resumable_identity(resumed, info), resumed.name)
    with TokenReader(dataset, "train") as train_reader, TokenReader(dataset, "val") as val_reader:
        return _train(out, settings, info, identity, train_reader, val_reader)


def _weights(model: GPT) -> dict[str, torch.Tensor]:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights.pop("wte.weight", None)  # tied to lm_head: stored once
    return weights


@dataclass(frozen=True)
class _Run:
    """One rank's share of a run: where it runs, the model and its optimizer, the tokens."""

    device: torch.device
    ranks: Ranks
    layout: TokenLayout
    codebook_size: int
    level_weights: list[float]
    config: GPTConfig
    model: GPT
    optimizer: torch.optim.AdamW
    autocast: torch.autocast
    # What loading needs (the GPT's numbers, the tokens, their layout) and what an evaluation
    # needs to repeat the training's validation loss (the settings): in every checkpoint.
    config_json: dict[str, Any]


def _build(settings: TrainLMSettings, spec: Mapping[str, Any]) -> _Run:
    """The device and ranks, then the model (seeded: the same initial weights on every rank)."""
    device = resolve_device(settings.device)
    ranks = init_distributed(device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(settings.seed)
    layout = make_layout(settings.layout)
    num_levels = int(spec["num_levels"])
    codebook_size = int(spec["codebook_size"])
    config = model_config(settings, layout.vocab_size(codebook_size, num_levels))
    weights = settings.level_weights or [1.0] * num_levels
    if len(weights) != num_levels:
        raise CodecflowError(
            f"level_weights has {len(weights)} values; the dataset has {num_levels} levels"
        )
    model = GPT(config).to(device)
    config_json = {
        "gpt": asdict(config),
        "tokenizer": spec,
        "layout": settings.layout,
        # The fields set, not every default: a preset and an explicit shape exclude each
        # other, so a full dump would not validate again.
        "settings": settings.model_dump(mode="json", exclude_unset=True),
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    optimizer = build_optimizer(model, settings)
    return _Run(
        device, ranks, layout, codebook_size, weights, config, model, optimizer, autocast,
        config_json,
    )  # fmt: skip


def _wrapped(run: _Run, settings: TrainLMSettings) -> Any:
    """The model as the steps call it: compiled when asked, in DDP over several ranks."""
    trained: Any = run.model
    if settings.compile:
        trained = torch.compile(run.model)
    if run.ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [run.device.index] if run.device.type == "cuda" else None
        trained = DistributedDataParallel(run.model, device_ids=device_ids)
    return trained


def _train(
    out: Path,
    settings: TrainLMSettings,
    info: DatasetInfo,
    identity: RunIdentity,
    train_reader: TokenReader,
    val_reader: TokenReader,
) -> CheckpointRecord:
    """The training loop, the validation loss and the checkpoints (the readers stay open)."""
    run = _build(settings, info.tokenizer)
    resumed = resume(out, run.model, run.optimizer, tied={"wte.weight"}, write_log=run.ranks.main)
    trained = _wrapped(run, settings)
    with _tracker(out, settings, run, resumed) as tracker:
        started = time.perf_counter()
        _loop(out, settings, identity, run, trained, train_reader, resumed, val_reader, tracker)
        elapsed = time.perf_counter() - started
        if run.ranks.world > 1:
            write_rank_fingerprint(out / "ranks", run.ranks, run.model)
        if not run.ranks.main:
            barrier(run.ranks)
            return _record_placeholder(out, settings)
        metrics = _metrics(settings, identity, run, resumed, elapsed, val_reader)
        tracker.scalars(settings.steps, _final_scalars(metrics))
    log = resumed.log
    val_loss = float(metrics["val_loss"])

    def plot(path: Path) -> None:
        reference = (val_loss, f"val (end) {val_loss:.3f}")
        plot_log(log.rows, path, {"loss": "train"}, ylabel=_YLABEL, reference=reference)

    final = write_final(out, _weights(run.model), run.config_json, metrics, log, plot)
    barrier(run.ranks)
    return read_record(CheckpointRecord, final, metrics)


_YLABEL = "cross-entropy (nats/token)"


def _tracker(out: Path, settings: TrainLMSettings, run: _Run, resumed: Resumed) -> Tracker:
    """The run's trackers (`log_to`), on rank 0 only: it logs for all ranks, as it writes."""
    config = {**run.config_json, "out": str(out), "ranks": run.ranks.world}
    log_to = settings.log_to if run.ranks.main else []
    return Tracker(out, f"train-lm {out.name}", config, log_to, resumed_step=resumed.step)


def _step_scalars(
    record: Mapping[str, Any], tokens_per_s: float, mfu: float | None
) -> dict[str, Any]:
    """What a tracker receives of a step: its log line's numbers, and the step's throughput
    (tokens/s of all ranks over its forward, backward and update; MFU where known)."""
    kept = ("loss", "loss_per_level", "lr", "grad_norm", "val_loss", "val_loss_per_level")
    return {
        **{key: record[key] for key in kept if key in record},
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
    }


def _final_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The end of the run: the validation loss at the last step, the whole run's throughput."""
    return {
        "val_loss": metrics["val_loss"],
        "val_loss_per_level": metrics["val_loss_per_level"],
        "run/tokens_per_s": metrics["tokens_per_s"],
        "run/mfu": metrics["mfu"],
    }


def _loop(
    out: Path,
    settings: TrainLMSettings,
    identity: RunIdentity,
    run: _Run,
    trained: Any,
    reader: TokenReader,
    resumed: Resumed,
    val_reader: TokenReader,
    tracker: Tracker,
) -> None:
    """The steps from the resumed one to the last; rank 0 logs and checkpoints, and at each
    checkpoint logs the validation loss too (the evaluation report's validation curve)."""
    consumed = int(resumed.state.get("windows_consumed", 0))
    step_windows = run.ranks.world * settings.batch_size * settings.grad_accum_steps
    files = {
        "config.json": json_text(run.config_json),
        # What the run is (dataset, settings): a resume compares it first.
        "identity.json": identity.text(),
    }
    # Rank 0 speaks for all: tokens/s counts every rank's windows.
    tokens_per_step = step_windows * run.config.block_size
    meter = StepProgress(
        _LOG, "train-lm", settings.steps, "tokens", tokens_per_step, start=resumed.step
    )
    peak = _peak_flops(run)
    run.model.train()
    for step, lr in schedule(run.optimizer, resumed.step, settings):
        started = time.perf_counter()
        total, per_level, grad_norm = _step(settings, run, trained, reader, consumed)
        seconds = time.perf_counter() - started
        record = {
            "step": step + 1,
            "loss": total,
            "loss_per_level": [float(x) for x in per_level],
            "lr": lr,
            "grad_norm": grad_norm,
            "windows": [consumed, consumed + step_windows],
            "ranks": run.ranks.world,
        }
        consumed += step_windows
        if run.ranks.main:
            if checkpoint_due(step + 1, settings):
                record.update(_validate(settings, run, val_reader))
            resumed.log.append(record)
            meter.update(step + 1, loss=total)
            tokens_per_s = tokens_per_step / max(seconds, 1e-9)
            mfu = model_flops_utilization(tokens_per_s, run.config, peak) if peak else None
            tracker.scalars(step + 1, _step_scalars(record, tokens_per_s, mfu))
            if checkpoint_due(step + 1, settings):
                state = {"windows_consumed": consumed}
                weights = _weights(run.model)
                save_checkpoint(out, step + 1, weights, run.optimizer, state, files)
        barrier(run.ranks)


def _peak_flops(run: _Run) -> float | None:
    """The peak FLOP/s of all ranks together (MFU's denominator): known on CUDA devices only."""
    if run.device.type != "cuda":
        return None
    peak = peak_flops_for(torch.cuda.get_device_name(run.device))
    return peak * run.ranks.world if peak else None


def _validate(settings: TrainLMSettings, run: _Run, val_reader: TokenReader) -> dict[str, Any]:
    """`val_loss` and `val_loss_per_level` on the fixed validation windows (rank 0's model; the
    windows draw no random numbers, so training goes on exactly as without it)."""
    with torch.no_grad():
        total, per_level = validation_loss(
            run.model,
            val_reader,
            settings,
            run.device,
            run.autocast,
            run.layout,
            run.codebook_size,
            run.config.block_size,
            run.level_weights,
        )
    return {"val_loss": total, "val_loss_per_level": per_level}


def _step(
    settings: TrainLMSettings, run: _Run, trained: Any, reader: TokenReader, consumed: int
) -> tuple[float, np.ndarray, float]:
    """One optimizer step over `grad_accum_steps` micro-batches: loss, per level, grad norm."""
    ranks, batch, accum = run.ranks, settings.batch_size, settings.grad_accum_steps
    run.optimizer.zero_grad(set_to_none=True)
    total, per_level = 0.0, np.zeros(len(run.level_weights))
    for micro in range(accum):
        # Rank r's windows of this micro-batch: a contiguous block of the global sequence.
        first = consumed + (micro * ranks.world + ranks.rank) * batch
        inputs, targets, target_levels = lm_windows_batch(
            reader,
            first + np.arange(batch),
            run.config.block_size,
            settings.seed,
            run.layout,
            run.codebook_size,
            settings.window_offsets,
        )
        # DDP all-reduces on the last micro-batch only (no_sync before it).
        sync = ranks.world == 1 or micro == accum - 1
        with contextlib.nullcontext() if sync else trained.no_sync(), run.autocast:
            logits = trained(inputs.to(run.device)).logits  # [B, L, V]
        loss = level_weighted_loss(
            logits.float(),
            targets.to(run.device),
            target_levels.to(run.device),
            run.level_weights,
            normalized=settings.level_weights_normalized,
        )
        with contextlib.nullcontext() if sync else trained.no_sync():
            (loss.total / accum).backward()  # DDP averages the gradients over ranks
        total += loss.total.item() / accum
        per_level += np.array(loss.per_level) / accum
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), settings.grad_clip)
    run.optimizer.step()
    return total, per_level, float(grad_norm)


def _metrics(
    settings: TrainLMSettings,
    identity: RunIdentity,
    run: _Run,
    resumed: Resumed,
    elapsed: float,
    val_reader: TokenReader,
) -> dict[str, Any]:
    """metrics.json: the losses, the throughput, and the identity a rerun compares."""
    ranks, device, config, log = run.ranks, run.device, run.config, resumed.log.rows
    windows = (settings.steps - resumed.step) * ranks.world * settings.batch_size
    tokens_per_s = windows * settings.grad_accum_steps * config.block_size / elapsed
    peak = _peak_flops(run)
    # Model FLOPs utilisation (PaLM appendix B), over all ranks: known on CUDA devices only.
    mfu = model_flops_utilization(tokens_per_s, config, peak) if peak else None
    val_loss, val_per_level = validation_loss(
        run.model,
        val_reader,
        settings,
        device,
        run.autocast,
        run.layout,
        run.codebook_size,
        config.block_size,
        run.level_weights,
    )
    return {
        "identity": identity.to_json(),
        "steps": settings.steps,
        "n_parameters": run.model.num_parameters(),
        "train_loss_first": log[0]["loss"],
        "train_loss_last": log[-1]["loss"],
        "val_loss": val_loss,
        "val_loss_per_level": val_per_level,
        "train_loss_per_level_last": log[-1]["loss_per_level"],
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "resumed_from": resumed.step,
        "ranks": ranks.world,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),  # per rank (tasks.core.threads)
    }


def _record_placeholder(out: Path, settings: TrainLMSettings) -> CheckpointRecord:
    """What a non-zero rank returns: rank 0 writes and reports the checkpoint."""
    return CheckpointRecord(out / "checkpoint", "", settings.steps, 0, 0.0, 0.0, 0.0, 0.0)
