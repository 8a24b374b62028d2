"""Token layouts: exact round trips, the post's interleaving, the delay pattern, levels, vocab.

Shape symbols: B batch, K RVQ levels, F frames, N sequence length.
"""

from __future__ import annotations

import pytest
import torch

from codecflow.models.layouts import LAYOUT_NAMES, DelayLayout, FlattenLayout, make_layout

B, K, F, Q = 2, 4, 7, 16


def _codes(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, Q, (B, K, F), generator=g)  # [B, K, F]


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_round_trip_and_vocab(name: str) -> None:
    layout = make_layout(name)
    assert layout.name == name
    codes = _codes()
    seq = layout.to_sequence(codes, Q)  # [B, N]
    assert seq.dtype == torch.long and seq.shape[0] == B
    assert seq.shape[1] % layout.tokens_per_frame(K) == 0
    assert torch.equal(layout.from_sequence(seq, K, Q), codes)
    vocab = layout.vocab_size(Q, K)
    assert 0 <= int(seq.min()) and int(seq.max()) < vocab
    assert (
        vocab
        == {
            "flatten": Q,
            "flatten-offsets": K * Q,
            "delay": Q + 1,
            "delay-offsets": K * Q + 1,
        }[name]
    )


def test_flatten_is_the_posts_interleaving() -> None:
    codes = _codes()
    expected = codes.transpose(1, 2).reshape(B, -1)  # t0·l0, t0·l1, ..., t1·l0, ...
    assert torch.equal(FlattenLayout().to_sequence(codes, Q), expected)
    with_offsets = FlattenLayout(offsets=True).to_sequence(codes, Q)
    offsets = (torch.arange(K) * Q).repeat(F)  # [N]
    assert torch.equal(with_offsets, expected + offsets)


@pytest.mark.parametrize("offsets", [False, True])
def test_delay_places_level_k_at_step_t_plus_k(offsets: bool) -> None:
    layout = DelayLayout(offsets=offsets)
    codes = _codes()
    seq = layout.to_sequence(codes, Q)
    assert seq.shape == (B, (F + K - 1) * K)
    grid = seq.reshape(B, F + K - 1, K)  # [B, S, K]
    pad = layout.pad_id(Q, K)
    assert pad == layout.vocab_size(Q, K) - 1
    for k in range(K):
        shift = k * Q if offsets else 0
        for t in range(F):
            assert torch.equal(grid[:, t + k, k], codes[:, k, t] + shift)
        assert (grid[:, :k, k] == pad).all()  # before level k starts
        assert (grid[:, k + F :, k] == pad).all()  # after it ends
    assert int((seq == pad).sum()) == B * K * (K - 1)


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_level_of_position_matches_where_levels_land(name: str) -> None:
    layout = make_layout(name)
    # Mark every code with its level (code = level), so the sequence shows each level's slots.
    codes = torch.arange(K).view(1, K, 1).expand(B, K, F).contiguous()
    seq = layout.to_sequence(codes, Q)[0]  # [N]
    levels = layout.level_of_position(seq.shape[0], K, n_frames=F)  # [N]
    assert levels.shape == seq.shape and levels.dtype == torch.long
    shift = Q if layout.offsets else 0
    special = levels == -1
    if isinstance(layout, DelayLayout):
        assert torch.equal(special, seq == layout.pad_id(Q, K))
    else:
        assert not special.any()
    assert torch.equal(seq[~special], levels[~special] * (1 + shift))
    for k in range(K):
        assert int((levels == k).sum()) == F
    # Without n_frames (an endless stream) only the leading delay pads are special.
    open_levels = layout.level_of_position(seq.shape[0], K)
    assert torch.equal(open_levels[: F * K], levels[: F * K])


def test_errors() -> None:
    with pytest.raises(ValueError, match="delay-offsets"):
        make_layout("interleave")
    with pytest.raises(AssertionError, match="multiple of K"):
        FlattenLayout().from_sequence(torch.zeros(1, 5, dtype=torch.long), K, Q)
    with pytest.raises(AssertionError, match=r"\[0, 16\)"):
        DelayLayout().to_sequence(torch.full((1, K, 3), Q), Q)
