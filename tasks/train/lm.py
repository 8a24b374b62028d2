"""Train the nanoGPT-style LM on a token dataset; write a safetensors checkpoint.

Plain functions, no Prefect: `tasks.prefect.wrappers` makes them tasks. A checkpoint folder holds
`model.safetensors` (weights only: loading never unpickles), `config.json` (the GPT's numbers and
the tokenizer it reads), `metrics.json`, the per-step `train_log.jsonl` and `loss.png`. The folder
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from models.flops import model_flops_utilization, peak_flops_for
from models.gpt import GPT
from models.layouts import make_layout
from models.level_loss import level_weighted_loss
from schemas.configs import TrainLMSettings
from tasks.core import outputs
from tasks.core.errors import CodecflowError
from tasks.core.plots import figure
from tasks.core.runtime import learning_rate_at, resolve_device
from tasks.core.storage import atomic_dir, fingerprint
from tasks.data.checkpoints import (
    is_checkpoint_committed,
    latest_checkpoint,
    load_training_state,
    load_weights,
    read_log,
    save_resumable,
)
from tasks.data.lm_windows import check_windows, lm_windows_batch, model_config, validation_loss
from tasks.data.records import DatasetInfo
from tasks.data.token_dataset import TokenReader, read_dataset_info
from tasks.train.distributed import Ranks, barrier, init_distributed

__all__ = [
    "CheckpointRecord",
    "LM_RUN_COMMITTED",
    "LM_RUN_HELD_ENV",
    "LM_RUN_KIND",
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


def _optimizer(model: GPT, settings: TrainLMSettings) -> torch.optim.AdamW:
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
_RUNTIME_ONLY = {"checkpoint_every", "nproc_per_node", "device", "compile"}


#: The kind of folder a train-lm run owns, and what shows one written before ownership markers.
LM_RUN_KIND = "LM run"


LM_RUN_COMMITTED = ("checkpoint/metrics.json", "checkpoints/step-*/COMPLETE")


#: Set by the task that launches torchrun (to `out`): it holds the run's lock, not its ranks.
LM_RUN_HELD_ENV = "CODECFLOW_LM_RUN_HELD"


def _identity(info: DatasetInfo, settings: TrainLMSettings) -> dict[str, Any]:
    return {
        "dataset": info.fingerprint,
        "settings": settings.model_dump(mode="json", exclude=_RUNTIME_ONLY),
    }


def _differences(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """'learning_rate 0.001 in the checkpoint, 0.003 asked for' per field that differs."""
    old = {"dataset": recorded.get("dataset"), **recorded.get("settings", {})}
    new = {"dataset": asked.get("dataset"), **asked.get("settings", {})}
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = (_shown(v) for v in (old.get(key), new.get(key)))
            lines.append(f"{key} {a} in the checkpoint, {b} asked for")
    return lines


def _shown(value: Any) -> str:
    # A sha256 fingerprint: its first 12 hex digits tell two datasets apart on one line.
    if isinstance(value, str) and len(value) == 64:
        return f"fingerprint {value[:12]}"
    return str(value)


def _resumable_identity(checkpoint: Path, info: DatasetInfo) -> dict[str, Any] | None:
    """The identity a resumable checkpoint records; for one written before identities were
    recorded, its settings (config.json) and, when its tokens match, the requested dataset
    (its fingerprint was not kept: the tokenizer is what can be compared)."""
    recorded = checkpoint / "identity.json"
    if recorded.is_file():
        identity: dict[str, Any] = json.loads(recorded.read_text())
        return identity
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


def _check_resumable(out: Path, identity: Mapping[str, Any], info: DatasetInfo) -> None:
    """Refuse to resume a checkpoint of another dataset or settings (it would load its weights
    and record the new settings as if they had been used from step 0)."""
    resumed = latest_checkpoint(out)
    if resumed is None:
        return
    recorded = _resumable_identity(resumed, info)
    if recorded is not None and recorded != identity:
        raise CodecflowError(
            f"{out} holds an unfinished LM run ({resumed.name}) of another dataset or settings: "
            + "; ".join(_differences(recorded, identity))
            + "; resume with the same ones or choose another out"
        )


def _holding(out: Path) -> contextlib.AbstractContextManager[Any]:
    """The lock and ownership of `out`, taken by the process that launched the run: a plain
    call, or the task that starts torchrun (which tells its ranks through LM_RUN_HELD_ENV). A
    torchrun started by hand has no launcher of ours: its rank 0 takes them."""
    held = os.environ.get(LM_RUN_HELD_ENV)
    if held and Path(held).resolve() == out.resolve():
        return contextlib.nullcontext()
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return outputs.owned_output(out, LM_RUN_KIND, "train-lm", LM_RUN_COMMITTED)


def train_lm(dataset: Path, out: Path, settings: TrainLMSettings) -> CheckpointRecord:
    """Train a GPT on the token stream of `dataset`; checkpoint to `out/checkpoint`.

    Resumes from the newest complete checkpoint in `out/checkpoints` (after a kill, the step,
    the optimizer, the RNG and the sampler position continue). Under torchrun (WORLD_SIZE > 1)
    every rank calls this: DDP with NCCL on GPUs, gloo on the CPU; rank 0 writes. A complete
    final checkpoint for the same dataset and settings is returned as is.
    """
    dataset, out = Path(dataset), Path(out)
    info = read_dataset_info(dataset)
    if settings.preset is None and settings.n_embd % settings.n_head:
        raise CodecflowError(
            f"n_embd={settings.n_embd} is not a multiple of n_head={settings.n_head}"
        )
    check_windows(dataset, settings)
    with _holding(out):
        return _train_owned(dataset, out, settings, info)


def _train_owned(
    dataset: Path, out: Path, settings: TrainLMSettings, info: DatasetInfo
) -> CheckpointRecord:
    """train_lm once `out` is ours and locked: the committed checkpoint, or resume, or start."""
    checkpoint = out / "checkpoint"
    identity = _identity(info, settings)
    if is_checkpoint_committed(out):
        metrics = json.loads((checkpoint / "metrics.json").read_text())
        if metrics.get("identity") == identity:
            return _record(checkpoint, metrics)
        raise CodecflowError(
            f"{checkpoint} holds a checkpoint of another dataset or settings ("
            + "; ".join(_differences(metrics.get("identity") or {}, identity))
            + "); choose another out"
        )
    _check_resumable(out, identity, info)
    with TokenReader(dataset, "train") as train_reader, TokenReader(dataset, "val") as val_reader:
        return _train(out, settings, info, identity, train_reader, val_reader)


def _weights(model: GPT) -> dict[str, torch.Tensor]:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights.pop("wte.weight", None)  # tied to lm_head: stored once
    return weights


def _train(
    out: Path,
    settings: TrainLMSettings,
    info: DatasetInfo,
    identity: dict[str, Any],
    train_reader: TokenReader,
    val_reader: TokenReader,
) -> CheckpointRecord:
    """The training loop, the validation loss and the checkpoints (the readers stay open)."""
    spec = info.tokenizer
    device = resolve_device(settings.device)
    ranks = init_distributed(device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(settings.seed)  # the same initial weights on every rank
    layout = make_layout(settings.layout)
    levels = int(spec["num_levels"])
    codebook_size = int(spec["codebook_size"])
    config = model_config(settings, layout.vocab_size(codebook_size, levels))
    weights = settings.level_weights or [1.0] * levels
    if len(weights) != levels:
        raise CodecflowError(
            f"level_weights has {len(weights)} values; the dataset has {levels} levels"
        )
    model = GPT(config).to(device)
    optimizer = _optimizer(model, settings)
    # What loading needs (the GPT's numbers, the tokens, their layout) and what an evaluation
    # needs to repeat the training's validation loss (the settings): in every checkpoint.
    config_json = (
        json.dumps(
            {
                "gpt": asdict(config),
                "tokenizer": spec,
                "layout": settings.layout,
                # The fields set, not every default: a preset and an explicit shape exclude each
                # other, so a full dump would not validate again.
                "settings": settings.model_dump(mode="json", exclude_unset=True),
            },
            indent=2,
        )
        + "\n"
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    step, consumed = 0, 0
    resumed = latest_checkpoint(out)
    if resumed is not None:
        missing, _ = model.load_state_dict(
            load_weights(resumed / "model.safetensors"), strict=False
        )
        assert set(missing) <= {"wte.weight"}, missing
        state = load_training_state(resumed / "training_state.pt")
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, consumed = int(state["step"]), int(state["windows_consumed"])
    trained: Any = model
    if settings.compile:
        trained = torch.compile(model)
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    log_path = out / "train_log.jsonl"
    log = read_log(log_path, upto=step) if ranks.main else []
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(r) + "\n" for r in log))
    resumed_from = step
    batch = settings.batch_size
    started = time.perf_counter()
    model.train()
    while step < settings.steps:
        lr = learning_rate_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        accum = settings.grad_accum_steps
        optimizer.zero_grad(set_to_none=True)
        total, per_level = 0.0, np.zeros(levels)
        for micro in range(accum):
            # Rank r's windows of this micro-batch: a contiguous block of the global sequence.
            first = consumed + (micro * ranks.world + ranks.rank) * batch
            inputs, targets, target_levels = lm_windows_batch(
                train_reader,
                first + np.arange(batch),
                config.block_size,
                settings.seed,
                layout,
                codebook_size,
            )
            # DDP all-reduces on the last micro-batch only (no_sync before it).
            sync = ranks.world == 1 or micro == accum - 1
            with contextlib.nullcontext() if sync else trained.no_sync(), autocast:
                logits = trained(inputs.to(device)).logits  # [B, L, V]
            loss = level_weighted_loss(
                logits.float(), targets.to(device), target_levels.to(device), weights
            )
            with contextlib.nullcontext() if sync else trained.no_sync():
                (loss.total / accum).backward()  # DDP averages the gradients over ranks
            total += loss.total.item() / accum
            per_level += np.array(loss.per_level) / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        step_windows = ranks.world * batch * accum
        record = {
            "step": step + 1,
            "loss": total,
            "loss_per_level": [float(x) for x in per_level],
            "lr": lr,
            "grad_norm": float(grad_norm),
            "windows": [consumed, consumed + step_windows],
            "ranks": ranks.world,
        }
        step, consumed = step + 1, consumed + step_windows
        if ranks.main:
            log.append(record)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if step % settings.checkpoint_every == 0 and step < settings.steps:
                save_resumable(
                    out,
                    step,
                    _weights(model),
                    {
                        "windows_consumed": consumed,
                        "optimizer": optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                    },
                    files={
                        "config.json": config_json,
                        # What the run is (dataset, settings): a resume compares it first.
                        "identity.json": json.dumps(identity, indent=2, sort_keys=True) + "\n",
                    },
                )
        barrier(ranks)
    elapsed = time.perf_counter() - started

    if ranks.world > 1:
        _write_rank_fingerprint(out, ranks, model)
    if not ranks.main:
        barrier(ranks)
        return _record_placeholder(out, settings)
    tokens_per_s = (
        (settings.steps - resumed_from)
        * ranks.world
        * batch
        * settings.grad_accum_steps
        * config.block_size
        / elapsed
    )
    peak = peak_flops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    # Model FLOPs utilisation (PaLM appendix B), over all ranks: known on CUDA devices only.
    mfu = model_flops_utilization(tokens_per_s, config, peak * ranks.world) if peak else None
    val_loss, val_per_level = validation_loss(
        model,
        val_reader,
        settings,
        device,
        autocast,
        layout,
        codebook_size,
        config.block_size,
        weights,
    )
    metrics = {
        "identity": identity,
        "steps": settings.steps,
        "n_parameters": model.num_parameters(),
        "train_loss_first": log[0]["loss"],
        "train_loss_last": log[-1]["loss"],
        "val_loss": val_loss,
        "val_loss_per_level": val_per_level,
        "train_loss_per_level_last": log[-1]["loss_per_level"],
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "resumed_from": resumed_from,
        "ranks": ranks.world,
        "device": str(device),
    }
    checkpoint = out / "checkpoint"
    with atomic_dir(checkpoint) as tmp:
        save_file(_weights(model), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(config_json)
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        _plot_loss(log, val_loss, tmp / "loss.png")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")  # written last
    barrier(ranks)
    return _record(checkpoint, metrics)


def _write_rank_fingerprint(out: Path, ranks: Ranks, model: GPT) -> None:
    """Each rank's sha256 of its parameters (`out/ranks/rank-<r>.json`): DDP keeps them equal,
    and the multi-process test checks it."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    folder = out / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{ranks.rank}.json").write_text(json.dumps({"sha256": digest.hexdigest()}))


def _record_placeholder(out: Path, settings: TrainLMSettings) -> CheckpointRecord:
    """What a non-zero rank returns: rank 0 writes and reports the checkpoint."""
    return CheckpointRecord(out / "checkpoint", "", settings.steps, 0, 0.0, 0.0, 0.0, 0.0)


def _plot_loss(log: list[dict[str, Any]], val_loss: float, path: Path) -> None:
    with figure(path) as ax:
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], label="train")
        ax.axhline(val_loss, color="tab:orange", linestyle="--", label=f"val (end) {val_loss:.3f}")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.legend()


def _record(checkpoint: Path, metrics: dict[str, Any]) -> CheckpointRecord:
    return CheckpointRecord(
        path=checkpoint,
        fingerprint=fingerprint(checkpoint / "model.safetensors"),
        steps=int(metrics["steps"]),
        n_parameters=int(metrics["n_parameters"]),
        train_loss_first=float(metrics["train_loss_first"]),
        train_loss_last=float(metrics["train_loss_last"]),
        val_loss=float(metrics["val_loss"]),
        tokens_per_s=float(metrics["tokens_per_s"]),
    )
