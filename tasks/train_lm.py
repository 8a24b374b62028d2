"""Train the nanoGPT-style LM on a token dataset; write a safetensors checkpoint.

Plain functions, no Prefect: `tasks.wrappers` makes them tasks. A checkpoint folder holds
`model.safetensors` (weights only: loading never unpickles), `config.json` (the GPT's numbers and
the tokenizer it reads), `metrics.json`, the per-step `train_log.jsonl` and `loss.png`. The folder
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file

from models.flops import model_flops_utilization, peak_flops_for
from models.gpt import GPT, GPTConfig
from models.layouts import TokenLayout, make_layout
from models.level_loss import level_weighted_loss
from models.presets import gpt_config
from schemas.configs import TrainLMSettings
from tasks import storage
from tasks.checkpoints import (
    latest_checkpoint,
    load_training_state,
    load_weights,
    read_checkpoint_json,
    read_log,
    save_resumable,
)
from tasks.errors import CodecflowError
from tasks.io import atomic_dir, fingerprint
from tasks.plots import figure
from tasks.token_reader import TokenReader
from tasks.tokenization import read_dataset_info

__all__ = [
    "LM_RUN_COMMITTED",
    "LM_RUN_HELD_ENV",
    "LM_RUN_KIND",
    "CheckpointRecord",
    "Schedule",
    "is_checkpoint_committed",
    "learning_rate_at",
    "load_checkpoint",
    "newest_checkpoint",
    "resolve_device",
    "train_lm",
    "validation_loss",
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


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else the CPU; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CodecflowError("device 'cuda' was asked for but no CUDA GPU is visible")
    return torch.device(device)


class Schedule(Protocol):
    """The fields of a training config that shape its learning rate."""

    @property
    def steps(self) -> int: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def min_lr_ratio(self) -> float: ...


def learning_rate_at(step: int, settings: Schedule) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio of the peak (nanoGPT's schedule)."""
    peak = settings.learning_rate
    if step < settings.warmup_steps:
        return peak * (step + 1) / settings.warmup_steps
    # nanoGPT's lr_decay_iters: the cosine may end before the last step (train-lm's
    # lr_decay_steps); configs without the field (train-codec) decay over all steps.
    decay_end = getattr(settings, "lr_decay_steps", None) or settings.steps
    span = max(1, decay_end - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = peak * settings.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def _window_frames(block_size: int, levels: int) -> int:
    """Whole frames read per window: block_size + 1 tokens plus any layout's lead-in."""
    return -(-(block_size + 1) // levels) + levels


def _window_starts(indices: np.ndarray, n_frames: int, window_frames: int, seed: int) -> list[int]:
    """The start frame of each global window index: a pure function of (seed, index).

    Rank r of W takes the indices consumed + r*B .. consumed + (r+1)*B - 1 at every step, and
    the checkpoint stores `consumed`: so a run resumed on another number of ranks neither
    repeats nor skips a window.
    """
    high = n_frames - window_frames + 1
    return [int(np.random.default_rng([seed, int(i)]).integers(0, high)) for i in indices]


def _windows(
    reader: TokenReader,
    indices: np.ndarray,
    block_size: int,
    seed: int,
    layout: TokenLayout,
    codebook_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The windows `indices` in `layout`: inputs `[B, L]`, targets `[B, L]`, target levels `[L]`.

    Whole frames are read from the stream, laid out, and the window is cut after the layout's
    lead-in (the delay pattern's first K - 1 steps hold PADs), so that training sees the same
    steady state as a long sequence does.
    """
    k = reader.num_levels
    n_frames = _window_frames(block_size, k)
    starts = _window_starts(indices, reader.n_frames, n_frames, seed)
    flat = np.stack([reader.tokens(start, n_frames) for start in starts]).astype(np.int64)
    codes = torch.from_numpy(flat).view(len(starts), n_frames, k).transpose(1, 2)  # [B, K, W]
    sequence = layout.to_sequence(codes, codebook_size)  # [B, N]
    levels = layout.level_of_position(sequence.shape[1], k, n_frames=n_frames)  # [N]
    start = 0
    while bool((levels[start : start + k] < 0).any()):
        start += k  # skip whole steps until every level is present
    window = sequence[:, start : start + block_size + 1]  # [B, L+1]
    target_levels = levels[start + 1 : start + block_size + 1]  # [L]
    return window[:, :-1], window[:, 1:], target_levels


def model_config(settings: TrainLMSettings, vocab_size: int) -> GPTConfig:
    """The GPT's shape: the preset's when one is named, else the explicit fields."""
    if settings.preset is not None:
        return gpt_config(settings.preset, vocab_size, dropout=settings.dropout)
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=settings.block_size,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_embd=settings.n_embd,
        dropout=settings.dropout,
    )


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


def is_checkpoint_committed(out: Path) -> bool:
    """True when `out/checkpoint` holds a complete checkpoint."""
    return (Path(out) / "checkpoint" / "metrics.json").is_file()


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


def _identity(info: dict[str, Any], settings: TrainLMSettings) -> dict[str, Any]:
    return {
        "dataset": info["fingerprint"],
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


def _resumable_identity(checkpoint: Path, info: Mapping[str, Any]) -> dict[str, Any] | None:
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
    same_tokens = config.get("tokenizer") == info["tokenizer"]
    return {
        "dataset": info["fingerprint"] if same_tokens else f"tokens of {config.get('tokenizer')}",
        "settings": settings.model_dump(mode="json", exclude=_RUNTIME_ONLY),
    }


def _check_resumable(out: Path, identity: Mapping[str, Any], info: Mapping[str, Any]) -> None:
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
    return storage.owned_output(out, LM_RUN_KIND, "train-lm", LM_RUN_COMMITTED)


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
    _check_windows(dataset, settings)
    with _holding(out):
        return _train_owned(dataset, out, settings, info)


def _train_owned(
    dataset: Path, out: Path, settings: TrainLMSettings, info: dict[str, Any]
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


def _check_windows(dataset: Path, settings: TrainLMSettings) -> None:
    """Both splits hold at least one training window (before `out` is claimed: bad input
    creates no folder)."""
    block_size = model_config(settings, 1).block_size
    for split in ("train", "val"):
        with TokenReader(dataset, split) as reader:
            if reader.n_frames < _window_frames(block_size, reader.num_levels):
                raise CodecflowError(
                    f"the {split} split of {dataset} has {reader.n_tokens} tokens, fewer than one "
                    f"window of block_size={block_size}"
                )


@dataclass(frozen=True)
class _Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Ranks:
    """torchrun's environment -> a process group (NCCL on GPUs, gloo on the CPU), or one rank."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Ranks(0, 1, 0)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def _barrier(ranks: _Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _weights(model: GPT) -> dict[str, torch.Tensor]:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights.pop("wte.weight", None)  # tied to lm_head: stored once
    return weights


def _train(
    out: Path,
    settings: TrainLMSettings,
    info: dict[str, Any],
    identity: dict[str, Any],
    train_reader: TokenReader,
    val_reader: TokenReader,
) -> CheckpointRecord:
    """The training loop, the validation loss and the checkpoints (the readers stay open)."""
    spec = info["tokenizer"]
    device = resolve_device(settings.device)
    ranks = _init_distributed(device)
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
            inputs, targets, target_levels = _windows(
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
        _barrier(ranks)
    elapsed = time.perf_counter() - started

    if ranks.world > 1:
        _write_rank_fingerprint(out, ranks, model)
    if not ranks.main:
        _barrier(ranks)
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
    _barrier(ranks)
    return _record(checkpoint, metrics)


def _write_rank_fingerprint(out: Path, ranks: _Ranks, model: GPT) -> None:
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


@torch.no_grad()
def validation_loss(
    model: GPT,
    reader: TokenReader,
    settings: TrainLMSettings,
    device: torch.device,
    autocast: torch.autocast,
    layout: TokenLayout,
    codebook_size: int,
    block_size: int,
    weights: list[float],
) -> tuple[float, list[float]]:
    """Mean weighted loss and mean per-level loss on `eval_batches` fixed validation windows.

    The windows depend on the settings' batch_size, eval_batches and seed only, so an evaluation
    given the training's settings repeats the numbers training reported.
    """
    model.eval()
    totals, per_level = [], []
    for b in range(settings.eval_batches):
        indices = b * settings.batch_size + np.arange(settings.batch_size)
        inputs, targets, levels = _windows(
            reader, indices, block_size, settings.seed + 1, layout, codebook_size
        )
        with autocast:
            logits = model(inputs.to(device)).logits  # [B, L, V]
        loss = level_weighted_loss(logits.float(), targets.to(device), levels.to(device), weights)
        totals.append(loss.total.item())
        per_level.append(loss.per_level)
    model.train()
    return float(np.mean(totals)), [float(x) for x in np.nanmean(np.array(per_level), axis=0)]


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


def load_checkpoint(checkpoint: Path, device: torch.device) -> tuple[GPT, dict[str, Any]]:
    """The GPT of a checkpoint folder (safetensors: no unpickling) and its tokenizer spec.

    Either the final `checkpoint/` or a resumable `checkpoints/step-N/` written while training.
    """
    checkpoint = Path(checkpoint)
    complete = (checkpoint / "metrics.json").is_file() or (checkpoint / "COMPLETE").is_file()
    if not complete or not (checkpoint / "config.json").is_file():
        raise CodecflowError(f"no complete LM checkpoint at {checkpoint}")
    config = read_checkpoint_json(checkpoint / "config.json")
    try:
        model = GPT(GPTConfig(**config["gpt"]))
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise CodecflowError(
            f"checkpoint {checkpoint}: config.json has no valid GPT ({err!r})"
        ) from None
    weights = load_weights(checkpoint / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"wte.weight"}:
        raise CodecflowError(f"checkpoint {checkpoint} does not match its config.json")
    return model.to(device).eval(), config["tokenizer"]


def newest_checkpoint(run: Path) -> Path:
    """The newest checkpoint of a train-lm run folder: the final one when training has ended,
    else the newest resumable one. What a scheduled evaluation of a running training reads."""
    run = Path(run)
    if is_checkpoint_committed(run):
        return run / "checkpoint"
    latest = latest_checkpoint(run)
    if latest is None or not (latest / "config.json").is_file():
        raise CodecflowError(f"train-lm run {run} has no checkpoint yet")
    return latest
