"""Training windows of the LM over a token dataset's stream, and the validation loss on them.

Shape symbols: B batch, K levels, L block size (positions of one window), V vocabulary.

Shared by the LM trainer and the evaluation, so that an evaluation given the training's settings
draws the same validation windows and repeats the numbers training reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.layouts import TokenLayout
from codecflow.models.level_loss import level_weighted_loss
from codecflow.models.presets import gpt_config
from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.token_dataset import TokenReader

__all__ = [
    "check_windows",
    "lm_windows_at",
    "lm_windows_batch",
    "model_config",
    "token_offsets",
    "validation_loss",
    "window_frames",
    "window_starts",
]


def window_frames(block_size: int, levels: int) -> int:
    """Whole frames read per window: block_size + 1 tokens plus any layout's lead-in."""
    return -(-(block_size + 1) // levels) + levels


def window_starts(
    indices: np.ndarray | Sequence[int], n_frames: int, frames: int, seed: int
) -> list[int]:
    """The start frame of each global window index: a pure function of (seed, index).

    Rank r of W takes the indices consumed + r*B .. consumed + (r+1)*B - 1 at every step, and
    the checkpoint stores `consumed`: so a run resumed on another number of ranks neither
    repeats nor skips a window.
    """
    high = n_frames - frames + 1
    return [int(np.random.default_rng([seed, int(i)]).integers(0, high)) for i in indices]


def token_offsets(indices: np.ndarray | Sequence[int], levels: int, seed: int) -> list[int]:
    """A token offset in [0, K) for each window index, a pure function of (seed, index): where
    a window starts inside its first frame when `window_offsets` is 'any'."""
    return [int(np.random.default_rng([seed, int(i), 1]).integers(0, levels)) for i in indices]


def lm_windows_batch(
    reader: TokenReader,
    indices: np.ndarray,
    block_size: int,
    seed: int,
    layout: TokenLayout,
    codebook_size: int,
    offsets: str = "aligned",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The windows `indices` in `layout`: inputs `[B, L]`, targets `[B, L]`, target levels `[L]`
    (`[B, L]` with `offsets="any"`).

    Window i starts at frame `window_starts([i], ...)`, drawn from (seed, i) alone (see
    `lm_windows_at`), and with `offsets="any"` at token `token_offsets([i], ...)` of it.
    """
    n_frames = window_frames(block_size, reader.num_levels)
    starts = window_starts(indices, reader.n_frames, n_frames, seed)
    shifts = token_offsets(indices, reader.num_levels, seed) if offsets == "any" else None
    return lm_windows_at(reader, starts, block_size, layout, codebook_size, shifts)


def lm_windows_at(
    reader: TokenReader,
    starts: list[int],
    block_size: int,
    layout: TokenLayout,
    codebook_size: int,
    shifts: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The windows that start at the frames `starts`, in `layout`: inputs `[B, L]`, targets
    `[B, L]` (int64), target levels `[L]`, or `[B, L]` when `shifts` (a token offset per window,
    in [0, K)) moves each window's start inside its first frame.

    `window_frames(block_size, K)` whole frames are read from the stream, laid out, and the
    window is cut after the layout's lead-in (the delay pattern's first K - 1 steps hold PADs),
    so that training sees the same steady state as a long sequence does. The frames read hold
    K more tokens than an aligned window takes: room for any shift.
    """
    k = reader.num_levels
    n_frames = window_frames(block_size, k)
    flat = np.stack([reader.tokens(start, n_frames) for start in starts]).astype(np.int64)
    codes = torch.from_numpy(flat).view(len(starts), n_frames, k).transpose(1, 2)  # [B, K, W]
    sequence = layout.to_sequence(codes, codebook_size)  # [B, N]
    levels = layout.level_of_position(sequence.shape[1], k, n_frames=n_frames)  # [N]
    start = 0
    while bool((levels[start : start + k] < 0).any()):
        start += k  # skip whole steps until every level is present
    if shifts is not None:
        rows = [sequence[b, start + s : start + s + block_size + 1] for b, s in enumerate(shifts)]
        window = torch.stack(rows)  # [B, L+1]
        per_row = [levels[start + s + 1 : start + s + block_size + 1] for s in shifts]
        return window[:, :-1], window[:, 1:], torch.stack(per_row)  # [B, L] each
    window = sequence[:, start : start + block_size + 1]  # [B, L+1]
    target_levels = levels[start + 1 : start + block_size + 1]  # [L]
    return window[:, :-1], window[:, 1:], target_levels


def check_windows(dataset: str | Path, settings: TrainLMSettings) -> None:
    """Both splits hold at least one training window (before `out` is claimed: bad input
    creates no folder)."""
    block_size = model_config(settings, 1).block_size
    for split in ("train", "val"):
        with TokenReader(dataset, split) as reader:
            if reader.n_frames < window_frames(block_size, reader.num_levels):
                raise CodecflowError(
                    f"the {split} split of {dataset} has {reader.n_tokens} tokens, fewer than one "
                    f"window of block_size={block_size}"
                )


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
        inputs, targets, levels = lm_windows_batch(
            reader, indices, block_size, settings.seed + 1, layout, codebook_size,
            settings.window_offsets,
        )  # fmt: skip
        with autocast:
            logits = model(inputs.to(device)).logits  # [B, L, V]
        loss = level_weighted_loss(
            logits.float(),
            targets.to(device),
            levels.to(device),
            weights,
            normalized=settings.level_weights_normalized,
        )
        totals.append(loss.total.item())
        per_level.append(loss.per_level)
    model.train()
    return float(np.mean(totals)), [float(x) for x in np.nanmean(np.array(per_level), axis=0)]


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
