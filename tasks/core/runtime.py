"""The runtime both trainers share: the device a setting names and the learning-rate schedule.

`learning_rate_at` is nanoGPT's linear warm-up then cosine decay to `min_lr` (train.py's
`get_lr`), with the post's `lr_decay_steps` (the schedule may end before the last step).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from codecflow.tasks.core.errors import CodecflowError

__all__ = [
    "Schedule",
    "learning_rate_at",
    "resolve_device",
]


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
    """Linear warm-up then cosine decay to min_lr_ratio of the peak (nanoGPT's schedule).

    The warm-up is the reference's `learning_rate * (it + 1) / (warmup_iters + 1)`
    (nanoGPTaudio's train.py and train_codec.py `get_lr`, at 02520a1, 7ae6e2e and 23354fd):
    step 0 takes 1 / (warmup + 1) of the peak, the last warm-up step warmup / (warmup + 1).
    """
    peak = settings.learning_rate
    if step < settings.warmup_steps:
        return peak * (step + 1) / (settings.warmup_steps + 1)
    # nanoGPT's lr_decay_iters: the cosine may end before the last step (train-lm's
    # lr_decay_steps); configs without the field (train-codec) decay over all steps.
    decay_end = getattr(settings, "lr_decay_steps", None) or settings.steps
    span = max(1, decay_end - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = peak * settings.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
