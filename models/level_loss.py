"""Cross-entropy weighted by the RVQ level of each target token.

Shape symbols (the legend of `codecflow.models`): B batch, N token positions (inputs and their
next-token targets), V vocabulary, K RVQ levels (len(weights)).

Kyutai's post ("Neural audio codecs: how to get audio into LLMs", 2025) weighs the levels of its
flattened codes in the LM loss (its nanoGPT config's `token_depth_weights`, e.g. 10 for the
semantic level 0 and 0.1 for the others); Moshi (Défossez et al., 2024, section 3.4.4) weighs the
semantic level 100x the acoustic ones and normalizes by the sum of the weights, as here:

    total = sum_i w[level(target_i)] * CE_i / sum_i w[level(target_i)]

over the targets whose level is not -1. The post does not normalise (`normalized=False`): its
loss is the plain mean of w x CE over the targets, sum_i w_i CE_i / N, so with its weights
[10, 0.1 x 7] on 8 levels present equally it is 1.3375x the normalised one (the mean weight),
which matters under gradient clipping (issue 24, row J: the post's train.py with
`token_depth_weights` is not in the stored index; the reading is that issue's).

The post's bug: its code tiles the weights over the INPUT positions (position n gets
w[n % K]) and applies them to the loss at that position, whose target is the NEXT token, of level
(n + 1) % K. So its weight for level 0 lands on level-1 targets (and level K-1's on level 0).
`post_tiled_weights` reproduces that tiling; `level_weighted_loss` takes the levels of the
targets themselves (for a flattened sequence, `layout.level_of_position(T + 1, K)[1:]`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LevelLoss", "level_weighted_loss", "post_tiled_weights"]


@dataclass
class LevelLoss:
    """What `level_weighted_loss` returns."""

    total: Tensor  # scalar weighted mean cross-entropy (differentiable)
    per_level: list[float]  # mean cross-entropy of each level's targets, nan where absent


def level_weighted_loss(
    logits: Tensor,
    targets: Tensor,
    target_levels: Tensor,
    weights: Sequence[float],
    normalized: bool = True,
) -> LevelLoss:
    """The cross-entropy of every target weighted by its RVQ level, normalized by the weights
    (or, with `normalized=False`, averaged over the targets, as the post).

    Args:
        logits: float `[B, N, V]`.
        targets: int64 `[B, N]`, the next token at each position.
        target_levels: int64 `[B, N]` or `[N]` (broadcast over B), the level of each TARGET
            token in [0, K); -1 is ignored (padding, special tokens, no target).
        weights: K non-negative weights, one per level.
        normalized: divide by the sum of the targets' weights (Moshi); False: by their number.

    Returns:
        `LevelLoss`; `total` is nan when no target has a level (or, normalized, all weights are
        zero).
    """
    assert logits.ndim == 3, f"logits must be [B, N, V], got shape {tuple(logits.shape)}"
    b, t, v = logits.shape
    assert targets.shape == (b, t), (
        f"targets must be [B, N] = {(b, t)}, got shape {tuple(targets.shape)}"
    )
    if target_levels.ndim == 1:
        target_levels = target_levels.expand(b, t)
    assert target_levels.shape == (b, t), (
        f"target_levels must be [B, N] = {(b, t)} or [N], got shape {tuple(target_levels.shape)}"
    )
    num_levels = len(weights)
    assert num_levels >= 1 and all(w >= 0 for w in weights), f"bad weights {list(weights)}"
    levels = target_levels.to(device=logits.device, dtype=torch.long)  # [B, N]
    assert int(levels.max()) < num_levels and int(levels.min()) >= -1, (
        f"target levels must be in [-1, {num_levels}), "
        f"got [{int(levels.min())}, {int(levels.max())}]"
    )

    valid = levels >= 0  # [B, N]
    ce = F.cross_entropy(
        logits.reshape(b * t, v),  # [B*N, V]
        torch.where(valid, targets, torch.zeros_like(targets)).reshape(b * t),  # [B*N]
        reduction="none",
    ).view(b, t)  # [B, N]
    ce = torch.where(valid, ce, torch.zeros_like(ce))
    w_table = torch.tensor(list(weights), dtype=ce.dtype, device=ce.device)  # [K]
    w = torch.where(valid, w_table[levels.clamp(min=0)], torch.zeros_like(ce))  # [B, N]
    total = (w * ce).sum() / (w.sum() if normalized else valid.sum())

    per_level: list[float] = []
    with torch.no_grad():
        for k in range(num_levels):
            mask = levels == k
            n = int(mask.sum())
            per_level.append(float(ce[mask].sum()) / n if n else math.nan)
    return LevelLoss(total=total, per_level=per_level)


def post_tiled_weights(n_positions: int, weights: Sequence[float]) -> Tensor:
    """float `[N]`: the post's loss weights, tiled over INPUT positions (position n gets
    w[n % K]).

    Multiplied into the loss at position n, whose target is token n + 1 (level (n + 1) % K in a
    flattened sequence): each weight lands one level late. Kept to document and test that bug.
    """
    k = len(weights)
    assert k >= 1, "weights must not be empty"
    reps = -(-n_positions // k)  # ceil
    return torch.tensor(list(weights), dtype=torch.float32).repeat(reps)[:n_positions]  # [N]
