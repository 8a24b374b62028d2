"""Level-weighted cross-entropy, and the post's off-by-one tiling of its level weights.

Shape symbols: B batch, T positions, V vocabulary, K RVQ levels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from codecflow.models.layouts import FlattenLayout
from codecflow.models.level_loss import level_weighted_loss, post_tiled_weights

B, K, FR, Q = 2, 4, 5, 8


def _flat_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flattened K-level sequence: inputs, targets (inputs shifted by one), their levels."""
    torch.manual_seed(0)
    layout = FlattenLayout()
    seq = layout.to_sequence(torch.randint(0, Q, (B, K, FR)), Q)  # [B, N]
    inputs, targets = seq[:, :-1], seq[:, 1:]  # [B, T]
    t = inputs.shape[1]
    target_levels = layout.level_of_position(t + 1, K)[1:]  # [T]
    logits = torch.randn(B, t, Q, requires_grad=True)  # [B, T, V]
    return logits, inputs, targets, target_levels


def test_uniform_weights_equal_plain_cross_entropy() -> None:
    logits, _, targets, levels = _flat_batch()
    out = level_weighted_loss(logits, targets, levels, [1.0] * K)
    plain = F.cross_entropy(logits.reshape(-1, Q), targets.reshape(-1))
    torch.testing.assert_close(out.total, plain)
    ce = F.cross_entropy(logits.reshape(-1, Q), targets.reshape(-1), reduction="none")
    ce = ce.detach().view(B, -1)
    for k in range(K):
        assert out.per_level[k] == pytest.approx(float(ce[:, levels == k].mean()), rel=1e-5)
    out.total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_weights_by_target_level_and_ignore() -> None:
    logits, _, targets, levels = _flat_batch()
    levels = levels.clone()
    levels[levels == 3] = -1  # level 3 absent (ignored)
    w = [2.0, 0.5, 1.0, 7.0]
    out = level_weighted_loss(logits, targets, levels.expand(B, -1), w)
    ce = F.cross_entropy(logits.reshape(-1, Q), targets.reshape(-1), reduction="none")
    ce = ce.view(B, -1)
    wt = torch.tensor([w[k] if k >= 0 else 0.0 for k in levels.tolist()]).expand(B, -1)
    torch.testing.assert_close(out.total, (wt * ce).sum() / wt.sum())
    assert math.isnan(out.per_level[3]) and not math.isnan(out.per_level[0])
    with pytest.raises(AssertionError, match="target levels"):
        level_weighted_loss(logits, targets, torch.full_like(levels, K), w)


def test_posts_tiling_puts_level_0_weight_on_level_1_targets() -> None:
    _, inputs, targets, target_levels = _flat_batch()
    t = inputs.shape[1]
    weights = (100.0, 1.0, 1.0, 1.0)
    input_levels = FlattenLayout().level_of_position(t, K)  # [T]
    assert torch.equal(target_levels, (input_levels + 1) % K)  # the one-token shift
    # The post: weights tiled over input positions, applied to the loss of the next token.
    post = post_tiled_weights(t, weights)  # [T]
    assert torch.equal(post, torch.tensor(weights)[input_levels])
    assert set(target_levels[post == 100].tolist()) == {1}
    # Ours: the weight follows the level of the target itself.
    ours = torch.tensor(weights)[target_levels]  # [T]
    assert set(target_levels[ours == 100].tolist()) == {0}
    # And level_weighted_loss follows ours, not the post's tiling.
    logits = torch.randn(B, t, Q)
    ce = F.cross_entropy(logits.reshape(-1, Q), targets.reshape(-1), reduction="none")
    ce = ce.view(B, t)
    out = level_weighted_loss(logits, targets, target_levels, weights)
    torch.testing.assert_close(out.total, (ours * ce).sum() / (ours.sum() * B))
    assert not torch.allclose(out.total, (post * ce).sum() / (post.sum() * B))


def test_the_posts_unnormalised_loss_is_the_plain_mean_of_weight_times_ce() -> None:
    """Issue 24, row J: the post's weights [10, 0.1 x 7] without the division by their sum."""
    torch.manual_seed(1)
    k, n = 8, 8 * 6  # every level present 6 times: the mean weight is 1.3375
    logits = torch.randn(B, n, Q)  # [B, N, V]
    targets = torch.randint(0, Q, (B, n))  # [B, N]
    levels = torch.arange(n) % k  # [N]
    weights = [10.0] + [0.1] * 7
    ce = F.cross_entropy(logits.reshape(-1, Q), targets.reshape(-1), reduction="none").view(B, n)
    w = torch.tensor(weights)[levels]  # [N]
    post = level_weighted_loss(logits, targets, levels, weights, normalized=False)
    ours = level_weighted_loss(logits, targets, levels, weights)
    torch.testing.assert_close(post.total, (w * ce).mean())  # sum w CE / N
    torch.testing.assert_close(ours.total, (w * ce).sum() / w.expand(B, n).sum())
    assert float(post.total / ours.total) == pytest.approx(1.3375, rel=1e-6)
    # Ignored targets (-1) count in neither sum.
    masked = levels.clone()
    masked[:8] = -1
    post = level_weighted_loss(logits, targets, masked, weights, normalized=False)
    torch.testing.assert_close(post.total, (w[8:] * ce[:, 8:]).mean())
