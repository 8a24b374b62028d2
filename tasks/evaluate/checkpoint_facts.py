"""What an evaluation reads from a checkpoint before generating: its name (`checkpoint_id`),
step, training settings and losses, and the held-out loss per level on the dataset's val split.

Plain functions, no Prefect. A checkpoint is a final one (`metrics.json`) or a mid-training one
(`COMPLETE` holding its step, the losses read from the run's `train_log.jsonl`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codecflow.models.gpt import GPT
from codecflow.models.layouts import TokenLayout
from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.core.storage import fingerprint
from codecflow.tasks.data.checkpoints import read_log
from codecflow.tasks.data.lm_windows import validation_loss
from codecflow.tasks.data.token_dataset import TokenReader

__all__ = [
    "checkpoint_id",
    "checkpoint_step",
    "held_out_loss",
    "train_settings",
    "training_summary",
]


def checkpoint_id(checkpoint: Path) -> str:
    """`step-<N>-<first 8 hex of the weights' sha256>`: names a checkpoint's report, so that a
    scheduled evaluation recognises a checkpoint it has already evaluated."""
    checkpoint = Path(checkpoint)
    digest = fingerprint(checkpoint / "model.safetensors")[:8]
    return f"step-{checkpoint_step(checkpoint):06d}-{digest}"


def checkpoint_step(checkpoint: Path) -> int:
    if (checkpoint / "metrics.json").is_file():
        return int(json.loads((checkpoint / "metrics.json").read_text())["steps"])
    return int((checkpoint / "COMPLETE").read_text().strip())


def train_settings(checkpoint: Path) -> TrainLMSettings:
    config = json.loads((checkpoint / "config.json").read_text())
    if "settings" in config:
        return TrainLMSettings.model_validate(config["settings"])
    # Checkpoints written before config.json carried the settings: metrics.json's identity.
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    return TrainLMSettings.model_validate(metrics["identity"]["settings"])


def training_summary(checkpoint: Path) -> dict[str, Any]:
    """Steps and losses of the training that wrote `checkpoint` (final or mid-training)."""
    if (checkpoint / "metrics.json").is_file():
        metrics = json.loads((checkpoint / "metrics.json").read_text())
        return {
            "checkpoint_step": int(metrics["steps"]),
            "train_loss_first": metrics["train_loss_first"],
            "train_loss_last": metrics["train_loss_last"],
            "n_parameters": metrics["n_parameters"],
        }
    step = checkpoint_step(checkpoint)
    log = read_log(checkpoint.parent.parent / "train_log.jsonl", upto=step)
    return {
        "checkpoint_step": step,
        "train_loss_first": log[0]["loss"] if log else None,
        "train_loss_last": log[-1]["loss"] if log else None,
        "n_parameters": None,
    }


def held_out_loss(
    model: GPT,
    dataset: str | Path,
    settings: TrainLMSettings,
    device: torch.device,
    layout: TokenLayout,
    spec: dict[str, Any],
) -> dict[str, Any]:
    """Per-level loss on the held-out split, with the training's windows and weights."""
    num_levels, codebook_size = int(spec["num_levels"]), int(spec["codebook_size"])
    weights = settings.level_weights or [1.0] * num_levels
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with TokenReader(dataset, "val") as reader:
        total, per_level = validation_loss(
            model,
            reader,
            settings,
            device,
            autocast,
            layout,
            codebook_size,
            model.config.block_size,
            weights,
        )
    tokens_per_second = float(spec["frame_rate"]) * num_levels
    unweighted = float(np.mean(per_level))
    return {
        "val_loss": total,
        "val_loss_per_level": per_level,
        "val_perplexity_per_level": [math.exp(x) for x in per_level],
        # nats per token -> bits per second of audio: comparable across tokenizers.
        "val_bits_per_audio_second": unweighted / math.log(2) * tokens_per_second,
    }
