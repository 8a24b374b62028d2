"""Token layouts: RVQ codes `[B, K, F]` to the language model's 1-D token sequence and back.

Shape symbols (the legend of `codecflow.models`): B batch, K RVQ levels (codebooks), F frames
(codec time steps), U sequence steps (F for flatten, F + K - 1 for delay), N token positions
(U * K), Q codes per level (codebook size).

A layout fixes where each level's code of each frame lands in the sequence, and the vocabulary the
LM sees. Both layouts here interleave the levels within a step (step s holds K consecutive
tokens, level 0 first), as the post's flattening does:

- `FlattenLayout`: Kyutai's post ("Neural audio codecs: how to get audio into LLMs", 2025) flattens
  the codes frame by frame, t0·l0, t0·l1, ..., t0·l(K-1), t1·l0, ... (`codes.transpose(1, 2)
  .reshape(B, -1)`), with one vocabulary of Q codes shared by all levels.
- `DelayLayout`: MusicGen's delay pattern (Copet et al., 2023, "Simple and Controllable Music
  Generation", section 2.2): level k is delayed by k steps, so step s holds level k of frame
  s - k; the sequence has F + K - 1 steps, and positions before a level starts or after it ends
  hold a PAD token, the last id of the vocabulary.

With `offsets=True` level k's codes are shifted by k * Q, giving each level its own block of the
vocabulary (K * Q ids, plus PAD for delay) so that the embedding tells the levels apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["TokenLayout", "FlattenLayout", "DelayLayout", "LAYOUT_NAMES", "make_layout"]


class TokenLayout(ABC):
    """Maps codes `[B, K, F]` to a token sequence `[B, N]` and back (see the module docstring).

    `codebook_size` (Q) is passed to the methods that need it: the layouts are stateless apart
    from `offsets`, so one instance serves every codec.
    """

    kind: str  # the layout's name without "-offsets"

    def __init__(self, offsets: bool = False) -> None:
        self.offsets = offsets

    @property
    def name(self) -> str:
        """The name `make_layout` knows this layout by."""
        return f"{self.kind}-offsets" if self.offsets else self.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(offsets={self.offsets})"

    @abstractmethod
    def vocab_size(self, codebook_size: int, num_levels: int) -> int:
        """The number of token ids the LM needs for K levels of Q codes."""

    def tokens_per_frame(self, num_levels: int) -> int:
        """Tokens per sequence step (one per level for both layouts here)."""
        return num_levels

    @abstractmethod
    def to_sequence(self, codes: Tensor, codebook_size: int) -> Tensor:
        """int64 codes `[B, K, F]` in [0, Q) -> int64 tokens `[B, N]` in [0, vocab_size)."""

    @abstractmethod
    def from_sequence(self, seq: Tensor, num_levels: int, codebook_size: int) -> Tensor:
        """int64 tokens `[B, N]` (N a multiple of K) -> int64 codes `[B, K, F]`.

        The inverse of `to_sequence`: offsets are removed and special positions dropped. Tokens
        are not range-checked (a sampled sequence may hold a wrong level's id); check the codes
        against [0, Q) where that matters.
        """

    @abstractmethod
    def level_of_position(
        self, n_positions: int, num_levels: int, n_frames: int | None = None
    ) -> Tensor:
        """int64 `[N]`: the RVQ level held at each of the first `n_positions` positions.

        -1 marks special (PAD) positions. `n_frames` is F of the sequence the positions belong
        to; None means a stream without end (no trailing padding). For targets that are the
        inputs shifted by one, take `level_of_position(N + 1, K)[1:]`.
        """

    def _level_offsets(self, num_levels: int, codebook_size: int, device: torch.device) -> Tensor:
        """int64 `[K, 1]`: what is added to level k's codes (k * Q with offsets, else 0)."""
        scale = codebook_size if self.offsets else 0
        return (torch.arange(num_levels, device=device, dtype=torch.long) * scale)[:, None]

    @staticmethod
    def _check_codes(codes: Tensor, codebook_size: int) -> None:
        assert codes.ndim == 3, f"codes must be [B, K, F], got shape {tuple(codes.shape)}"
        assert codes.dtype == torch.long, f"codes must be int64, got {codes.dtype}"
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            assert 0 <= lo and hi < codebook_size, (
                f"codes must be in [0, {codebook_size}), got [{lo}, {hi}]"
            )

    @staticmethod
    def _check_seq(seq: Tensor, num_levels: int) -> None:
        assert seq.ndim == 2, f"seq must be [B, N], got shape {tuple(seq.shape)}"
        assert num_levels >= 1, f"num_levels must be positive, got {num_levels}"
        assert seq.shape[1] % num_levels == 0, (
            f"seq length {seq.shape[1]} is not a multiple of K = {num_levels} (shape "
            f"{tuple(seq.shape)})"
        )


class FlattenLayout(TokenLayout):
    """The post's flattening: frame by frame, levels interleaved; N = F * K."""

    kind = "flatten"

    def vocab_size(self, codebook_size: int, num_levels: int) -> int:
        return num_levels * codebook_size if self.offsets else codebook_size

    def to_sequence(self, codes: Tensor, codebook_size: int) -> Tensor:
        self._check_codes(codes, codebook_size)
        b = codes.shape[0]
        shifted = codes + self._level_offsets(codes.shape[1], codebook_size, codes.device)
        return shifted.transpose(1, 2).reshape(b, -1)  # [B, F, K] -> [B, N]

    def from_sequence(self, seq: Tensor, num_levels: int, codebook_size: int) -> Tensor:
        self._check_seq(seq, num_levels)
        b = seq.shape[0]
        codes = seq.reshape(b, -1, num_levels).transpose(1, 2)  # [B, K, F]
        return (codes - self._level_offsets(num_levels, codebook_size, seq.device)).contiguous()

    def level_of_position(
        self, n_positions: int, num_levels: int, n_frames: int | None = None
    ) -> Tensor:
        if n_frames is not None:
            assert n_positions <= n_frames * num_levels, (
                f"{n_positions} positions > {n_frames} frames x {num_levels} levels"
            )
        return torch.arange(n_positions, dtype=torch.long) % num_levels  # [N]


class DelayLayout(TokenLayout):
    """MusicGen's delay pattern, interleaved per step; N = (F + K - 1) * K, PAD = vocab - 1."""

    kind = "delay"

    def vocab_size(self, codebook_size: int, num_levels: int) -> int:
        return (num_levels * codebook_size if self.offsets else codebook_size) + 1

    def pad_id(self, codebook_size: int, num_levels: int) -> int:
        """The PAD token: the last id of the vocabulary."""
        return self.vocab_size(codebook_size, num_levels) - 1

    def to_sequence(self, codes: Tensor, codebook_size: int) -> Tensor:
        self._check_codes(codes, codebook_size)
        b, k, f = codes.shape
        shifted = codes + self._level_offsets(k, codebook_size, codes.device)  # [B, K, F]
        grid = torch.full(
            (b, k, f + k - 1), self.pad_id(codebook_size, k), dtype=torch.long, device=codes.device
        )  # [B, K, U]
        for level in range(k):
            grid[:, level, level : level + f] = shifted[:, level]  # level k starts at step k
        return grid.transpose(1, 2).reshape(b, -1)  # [B, U, K] -> [B, N]

    def from_sequence(self, seq: Tensor, num_levels: int, codebook_size: int) -> Tensor:
        self._check_seq(seq, num_levels)
        b, n = seq.shape
        steps = n // num_levels
        f = steps - num_levels + 1
        assert f >= 0, f"{steps} steps hold no frame of {num_levels} delayed levels"
        grid = seq.reshape(b, steps, num_levels).transpose(1, 2)  # [B, K, U]
        codes = torch.stack(
            [grid[:, level, level : level + f] for level in range(num_levels)], dim=1
        )  # [B, K, F]
        return codes - self._level_offsets(num_levels, codebook_size, seq.device)

    def level_of_position(
        self, n_positions: int, num_levels: int, n_frames: int | None = None
    ) -> Tensor:
        pos = torch.arange(n_positions, dtype=torch.long)  # [N]
        step, level = pos // num_levels, pos % num_levels
        valid = step >= level  # before level k starts (step < k): PAD
        if n_frames is not None:
            assert n_positions <= (n_frames + num_levels - 1) * num_levels, (
                f"{n_positions} positions > ({n_frames} + {num_levels} - 1) steps x {num_levels}"
            )
            valid &= step < level + n_frames  # after level k ends: PAD
        return torch.where(valid, level, torch.full_like(level, -1))


_LAYOUTS: dict[str, tuple[type[TokenLayout], bool]] = {
    "flatten": (FlattenLayout, False),
    "flatten-offsets": (FlattenLayout, True),
    "delay": (DelayLayout, False),
    "delay-offsets": (DelayLayout, True),
}
LAYOUT_NAMES: tuple[str, ...] = tuple(_LAYOUTS)


def make_layout(name: str) -> TokenLayout:
    """The layout called `name`: one of `LAYOUT_NAMES`; ValueError names the choices otherwise."""
    if name not in _LAYOUTS:
        raise ValueError(f"unknown token layout {name!r}; choose one of {list(LAYOUT_NAMES)}")
    cls, offsets = _LAYOUTS[name]
    return cls(offsets=offsets)
