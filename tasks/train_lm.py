"""Train the nanoGPT-style LM on a token dataset; write a safetensors checkpoint.

Plain functions, no Prefect: `tasks.wrappers` makes them tasks. A checkpoint folder holds
`model.safetensors` (weights only: loading never unpickles), `config.json` (the GPT's numbers and
the tokenizer it reads), `metrics.json`, the per-step `train_log.jsonl` and `loss.png`. The folder
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.gpt import GPT, GPTConfig
from models.layouts import TokenLayout, make_layout
from models.level_loss import level_weighted_loss
from models.presets import gpt_config
from schemas.configs import TrainLMSettings
from tasks.errors import CodecflowError
from tasks.io import atomic_dir, fingerprint
from tasks.plots import figure
from tasks.token_reader import TokenReader
from tasks.tokenization import read_dataset_info

__all__ = [
    "CheckpointRecord",
    "Schedule",
    "is_checkpoint_committed",
    "learning_rate_at",
    "load_checkpoint",
    "resolve_device",
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
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = peak * settings.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def _windows(
    reader: TokenReader,
    batch_size: int,
    block_size: int,
    rng: np.random.Generator,
    layout: TokenLayout,
    codebook_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows of block_size + 1 tokens in `layout`, starting on frame boundaries:
    inputs `[B, L]`, targets `[B, L]` and the RVQ level of each target `[L]`.

    Frames are read from the stream, laid out, and the window is cut after the layout's
    lead-in (the delay pattern's first K - 1 steps hold PADs), so that training sees the same
    steady state as a long sequence does.
    """
    k = reader.num_levels
    n_frames = -(-(block_size + 1) // k) + k  # enough whole frames for any layout's lead-in
    flat = torch.from_numpy(reader.random_windows(batch_size, n_frames * k, rng))  # [B, W*K]
    codes = flat.view(batch_size, n_frames, k).transpose(1, 2)  # [B, K, W]
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
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.95))


def is_checkpoint_committed(out: Path) -> bool:
    """True when `out/checkpoint` holds a complete checkpoint."""
    return (Path(out) / "checkpoint" / "metrics.json").is_file()


def train_lm(dataset: Path, out: Path, settings: TrainLMSettings) -> CheckpointRecord:
    """Train a GPT on the flattened token stream of `dataset`; checkpoint to `out/checkpoint`.

    A complete checkpoint already in `out` for the same dataset and settings is returned as is.
    """
    dataset, out = Path(dataset), Path(out)
    info = read_dataset_info(dataset)
    checkpoint = out / "checkpoint"
    identity = {"dataset": info["fingerprint"], "settings": settings.model_dump(mode="json")}
    if is_checkpoint_committed(out):
        metrics = json.loads((checkpoint / "metrics.json").read_text())
        if metrics.get("identity") == identity:
            return _record(checkpoint, metrics)
        raise CodecflowError(
            f"{checkpoint} holds a checkpoint of another dataset or settings; choose another out"
        )
    if settings.preset is None and settings.n_embd % settings.n_head:
        raise CodecflowError(
            f"n_embd={settings.n_embd} is not a multiple of n_head={settings.n_head}"
        )

    with TokenReader(dataset, "train") as train_reader, TokenReader(dataset, "val") as val_reader:
        for split, reader in (("train", train_reader), ("val", val_reader)):
            # A window is block_size + 1 tokens read as whole frames (K tokens each).
            block_size = model_config(settings, 1).block_size
            k = reader.num_levels
            if reader.n_frames < -(-(block_size + 1) // k) + k:  # see _windows
                raise CodecflowError(
                    f"the {split} split of {dataset} has {reader.n_tokens} tokens, fewer than one "
                    f"window of block_size={block_size}"
                )
        return _train(checkpoint, settings, info, identity, train_reader, val_reader)


def _train(
    checkpoint: Path,
    settings: TrainLMSettings,
    info: dict[str, Any],
    identity: dict[str, Any],
    train_reader: TokenReader,
    val_reader: TokenReader,
) -> CheckpointRecord:
    """The training loop, the validation loss and the checkpoint (the readers stay open)."""
    spec = info["tokenizer"]

    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
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
    rng = np.random.default_rng(settings.seed)  # window starts: same seed, same windows
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    log: list[dict[str, Any]] = []
    started = time.perf_counter()
    model.train()
    for step in range(settings.steps):
        lr = learning_rate_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets, target_levels = _windows(
            train_reader, settings.batch_size, config.block_size, rng, layout, codebook_size
        )
        with autocast:
            logits = model(inputs.to(device)).logits  # [B, L, V]
        loss = level_weighted_loss(
            logits.float(), targets.to(device), target_levels.to(device), weights
        )
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        log.append(
            {
                "step": step + 1,
                "loss": loss.total.item(),
                "loss_per_level": loss.per_level,
                "lr": lr,
                "grad_norm": float(grad_norm),
            }
        )
    elapsed = time.perf_counter() - started

    val_loss, val_per_level = _evaluate_loss(
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
        "tokens_per_s": settings.steps * settings.batch_size * config.block_size / elapsed,
        "device": str(device),
    }
    with atomic_dir(checkpoint) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights.pop("wte.weight", None)  # tied to lm_head: stored once
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(
            json.dumps(
                {"gpt": asdict(config), "tokenizer": spec, "layout": settings.layout}, indent=2
            )
            + "\n"
        )
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        _plot_loss(log, val_loss, tmp / "loss.png")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")  # written last
    return _record(checkpoint, metrics)


@torch.no_grad()
def _evaluate_loss(
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
    """Mean weighted loss and mean per-level loss on `eval_batches` fixed random windows."""
    rng = np.random.default_rng(settings.seed + 1)
    model.eval()
    totals, per_level = [], []
    for _ in range(settings.eval_batches):
        inputs, targets, levels = _windows(
            reader, settings.batch_size, block_size, rng, layout, codebook_size
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
    """The GPT of a checkpoint folder (safetensors: no unpickling) and its tokenizer spec."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "metrics.json").is_file():
        raise CodecflowError(f"no complete LM checkpoint at {checkpoint}")
    config = json.loads((checkpoint / "config.json").read_text())
    model = GPT(GPTConfig(**config["gpt"]))
    weights = load_file(str(checkpoint / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"wte.weight"}:
        raise CodecflowError(f"checkpoint {checkpoint} does not match its config.json")
    return model.to(device).eval(), config["tokenizer"]
