"""A GPT-2 style decoder-only transformer, after Karpathy's nanoGPT (model.py), with a KV cache.

Shape symbols: B batch, T new tokens in one call, S cached length (keys/values attended to,
including the new ones), H heads, D head dim, C embedding width (n_embd), V vocabulary.

Architecture as GPT-2 (Radford et al., 2019) and nanoGPT: learned token and position embeddings,
pre-LayerNorm blocks, causal self-attention, a 4x GELU MLP, a final LayerNorm and an lm_head tied
to the token embedding. The KV cache is not in nanoGPT; it follows the usual preallocated layout
(one `[B, H, block_size, D]` buffer per layer for keys and one for values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPTConfig", "GPTOutput", "KVCache", "GPT"]


@dataclass
class GPTConfig:
    """The model's sizes; a plain record of numbers (parsing configs happens elsewhere)."""

    vocab_size: int
    block_size: int  # the longest sequence the position embedding covers
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    # Biases in Linear and LayerNorm, as GPT-2; nanoGPT notes that False is a bit faster.
    bias: bool = True

    def __post_init__(self) -> None:
        assert self.n_embd % self.n_head == 0, (
            f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}"
        )
        assert min(self.vocab_size, self.block_size, self.n_layer, self.n_head) >= 1, (
            f"sizes must be positive: {self}"
        )
        assert 0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"


@dataclass
class GPTOutput:
    """What `GPT.forward` returns."""

    logits: Tensor  # float [B, T, V]
    loss: Tensor | None  # scalar mean cross-entropy when targets were given


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    Each layer has a key and a value buffer of shape `[B, H, block_size, D]`, allocated once;
    `length` is the number of positions filled (the same for every layer between calls). The cache
    is meant for inference (no autograd): `GPT.forward` writes into it in place.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        capacity: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (batch_size, n_head, capacity, head_dim)  # [B, H, block_size, D]
        self.keys: list[Tensor] = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)
        ]
        self.values: list[Tensor] = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)
        ]
        self.batch_size = batch_size
        self.capacity = capacity
        self.length = 0

    def reset(self) -> None:
        """Forget every cached position (the buffers are reused, not cleared)."""
        self.length = 0

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys/values `[B, H, T, D]` of `layer` after the cached ones.

        Returns views of all keys and values of the layer, `[B, H, S, D]` with S = length + T.
        `length` itself is advanced once per forward, by `advance`, after all layers wrote.
        """
        t = k.shape[2]
        end = self.length + t
        assert end <= self.capacity, (
            f"KV cache overflow: {self.length} cached + {t} new = {end} > capacity {self.capacity}"
        )
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # [B, H, S, D]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled."""
        assert self.length + n <= self.capacity, (
            f"KV cache overflow: {self.length} cached + {n} new > capacity {self.capacity}"
        )
        self.length += n


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention` (nanoGPT)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # Key, query and value projections for all heads in one matmul, as nanoGPT.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """float `[B, T, C]` -> float `[B, T, C]`; with `cache`, attends over cached positions."""
        b, t, c = x.shape
        h, d = self.n_head, c // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x [B, T, C]
        q = q.view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        k = k.view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        v = v.view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        dropout_p = self.dropout if self.training else 0.0

        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.write(layer, k, v)  # [B, H, S, D], S = past + T
        if past == 0:
            # Square case: is_causal's mask is exactly "query i sees keys 0..i".
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif t == 1:
            # One new token may see every cached key and itself: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # A chunk after a non-empty cache: is_causal would align the mask to the top-left
            # (query i sees keys 0..i), hiding most of the cache. New query i is at absolute
            # position past + i and may see keys 0..past + i, so build that mask explicitly.
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(
                diagonal=past
            )  # [T, S]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # [B, T, C]
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: 4x expansion with GELU (GPT-2, nanoGPT)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """float `[B, T, C]` -> float `[B, T, C]`."""
        x = self.gelu(self.c_fc(x))  # [B, T, 4C]
        return self.dropout(self.c_proj(x))  # [B, T, C]


class Block(nn.Module):
    """A pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (GPT-2, nanoGPT)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """float `[B, T, C]` -> float `[B, T, C]`."""
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The language model over a flat token stream (codec levels interleaved by the caller)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017), as GPT-2 and nanoGPT: one [V, C] matrix both embeds
        # tokens and scores them.
        self.wte.weight = self.lm_head.weight

        # nanoGPT's init: N(0, 0.02) for Linear and Embedding weights, zero biases ...
        self.apply(self._init_weights)
        # ... and the residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2 paper, section
        # 2.3: each block adds two residual contributions, attention and MLP).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Number of parameters; by default without the position embedding, as nanoGPT.

        The token embedding is counted (once): it is tied to lm_head, whose weights do work.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields tied weights once
        if non_embedding:
            n -= self.wpe.weight.numel()
        return n

    def new_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for `batch_size` sequences, on the model's device and dtype by
        default."""
        param = self.lm_head.weight
        c = self.config
        return KVCache(
            n_layer=c.n_layer,
            batch_size=batch_size,
            n_head=c.n_head,
            capacity=c.block_size,
            head_dim=c.n_embd // c.n_head,
            device=param.device if device is None else device,
            dtype=param.dtype if dtype is None else dtype,
        )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> GPTOutput:
        """Next-token logits for every position, and the loss when targets are given.

        Args:
            idx: int64 `[B, T]` token ids in [0, V).
            targets: int64 `[B, T]`, the next token at each position; -1 is ignored (nanoGPT).
            cache: a `KVCache` holding S0 earlier positions of these B sequences: `idx` is
                appended at positions S0..S0 + T - 1, attends over the cache, and the cache
                grows by T. S0 + T must not exceed block_size.

        Returns:
            `GPTOutput` with float `[B, T, V]` logits (the parameters' dtype) and, with targets,
            the scalar mean cross-entropy.
        """
        assert idx.ndim == 2, f"idx must be [B, T], got shape {tuple(idx.shape)}"
        b, t = idx.shape
        assert t >= 1, f"idx must hold at least one token, got shape {tuple(idx.shape)}"
        past = 0
        if cache is not None:
            past = cache.length
            assert cache.batch_size == b, (
                f"cache holds {cache.batch_size} sequences, idx has shape {tuple(idx.shape)}"
            )
        assert past + t <= self.config.block_size, (
            f"sequence too long: {past} cached + {t} new = {past + t} tokens "
            f"> block_size {self.config.block_size}"
        )
        # Positions continue after the cached ones, so a step sees the same position embedding
        # as in a full forward over the whole sequence.
        pos = torch.arange(past, past + t, dtype=torch.long, device=idx.device)  # [T]
        x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, C]
        for layer, block in enumerate(self.h):
            x = block(x, cache, layer)  # [B, T, C]
        x = self.ln_f(x)
        logits = self.lm_head(x)  # [B, T, V]
        if cache is not None:
            cache.advance(t)

        loss = None
        if targets is not None:
            assert targets.shape == idx.shape, (
                f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
            loss = F.cross_entropy(
                logits.reshape(b * t, -1),  # [B*T, V]
                targets.reshape(b * t),  # [B*T]
                ignore_index=-1,
            )
        return GPTOutput(logits=logits, loss=loss)
