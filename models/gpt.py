"""A GPT-2 style decoder-only transformer, after Karpathy's nanoGPT (model.py), with a KV cache.

Shape symbols (the legend of `codecflow.models`): B batch, N token positions (the new tokens of
one call), S cached positions (keys/values attended to, the new ones included), H heads, E head
dim, D width (n_embd), V vocabulary.

Architecture as GPT-2 (Radford et al., 2019) and nanoGPT: learned token and position embeddings,
pre-LayerNorm blocks, causal self-attention, a 4x GELU MLP, a final LayerNorm and an lm_head tied
to the token embedding. The KV cache is not in nanoGPT; it follows the usual preallocated layout
(one `[B, 2, H, block_size, E]` buffer per layer, keys then values, written in place).

Inference over a cache (`GPT.forward` with `cache`) runs the same layers on the same weights
through plain functional calls (`_cached_block`) instead of the modules: a single-token step of a
small model is a few hundred tiny kernels, so `nn.Module.__call__`, the identity dropouts, the
position `arange` and ~150 `nn.Module.__getattr__` look-ups of the weights per step were a
measurable share of it (profiled with torch.profiler and cProfile, bench/generate.py). The cache
holds references to the weight tensors, taken once when `GPT.new_cache` makes it. A single new
token goes through `models.gpt_decode` instead: the same layers in fewer ops, compiled by
TorchScript, with oneDNN off on the CPU (see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecflow.models.gpt_decode import (
    DECODE_WEIGHTS_PER_LAYER,
    native_cpu_kernels,
    scripted_decode,
)

__all__ = ["LAYER_NORM_EPS", "GPTConfig", "GPTOutput", "KVCache", "LayerWeights", "GPT"]

#: nn.LayerNorm's default epsilon, as GPT-2 and nanoGPT; the cached path uses the same.
LAYER_NORM_EPS = 1e-5


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

    logits: Tensor  # float [B, N, V]
    loss: Tensor | None  # scalar mean cross-entropy when targets were given


class LayerWeights(NamedTuple):
    """One block's parameter tensors (references, not copies), for `_cached_block`."""

    ln_1_weight: Tensor  # [D]
    ln_1_bias: Tensor | None  # [D]
    attn_weight: Tensor  # [3C, C]
    attn_bias: Tensor | None  # [3C]
    attn_proj_weight: Tensor  # [D, D]
    attn_proj_bias: Tensor | None  # [D]
    ln_2_weight: Tensor  # [D]
    ln_2_bias: Tensor | None  # [D]
    fc_weight: Tensor  # [4C, C]
    fc_bias: Tensor | None  # [4C]
    mlp_proj_weight: Tensor  # [D, 4D]
    mlp_proj_bias: Tensor | None  # [D]


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    Each layer has one buffer of shape `[B, 2, H, block_size, E]` (index 0 of dim 1 the keys,
    1 the values), allocated once; `length` is the number of positions filled (the same for every
    layer between calls). The cache is meant for inference (no autograd): `GPT.forward` writes
    into it in place, one copy per layer and call. `weights`, set by `GPT.new_cache`, are the
    model's per-block parameter tensors, looked up once instead of at every step.
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
        weights: list[LayerWeights] | None = None,
    ) -> None:
        shape = (batch_size, 2, n_head, capacity, head_dim)  # [B, 2, H, block_size, E]
        # Never cleared: only the first `length` positions are ever read.
        self.kv: list[Tensor] = [
            torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)
        ]
        self.batch_size = batch_size
        self.capacity = capacity
        self.length = 0
        assert weights is None or len(weights) == n_layer, (
            f"{n_layer} layers but weights for {len(weights or [])}"
        )
        self.weights = weights
        # The model's parameters as `models.gpt_decode.decode_token` takes them, listed by the
        # model at the first single-token step (and again if its tensors were replaced).
        self.decode_weights: tuple[list[Tensor], list[Tensor | None]] | None = None

    def reset(self) -> None:
        """Forget every cached position (the buffers are reused, not cleared)."""
        self.length = 0

    def write(self, layer: int, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys and values `[B, 2, H, N, E]` of `layer` after the cached ones.

        Returns views of all keys and of all values of the layer, each `[B, H, S, E]` with
        S = length + N. `length` itself is advanced once per forward, by `advance`, after all
        layers wrote.
        """
        t = kv.shape[3]
        end = self.length + t
        assert end <= self.capacity, (
            f"KV cache overflow: {self.length} cached + {t} new = {end} > capacity {self.capacity}"
        )
        buffer = self.kv[layer]  # [B, 2, H, block_size, E]
        buffer[:, :, :, self.length : end] = kv
        return buffer[:, 0, :, :end], buffer[:, 1, :, :end]  # 2 x [B, H, S, E]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled."""
        assert self.length + n <= self.capacity, (
            f"KV cache overflow: {self.length} cached + {n} new > capacity {self.capacity}"
        )
        self.length += n


def _attend(q: Tensor, k: Tensor, v: Tensor, past: int, dropout_p: float = 0.0) -> Tensor:
    """Causal attention of N new queries `[B, H, N, E]` over S = past + N keys and values
    `[B, H, S, E]` (the first `past` of them cached); returns `[B, H, N, E]`."""
    t = q.shape[2]
    if past == 0:
        # Square case: is_causal's mask is exactly "query i sees keys 0..i".
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if t == 1:
        # One new token may see every cached key and itself: no mask needed.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # A chunk after a non-empty cache: is_causal would align the mask to the top-left (query i
    # sees keys 0..i), hiding most of the cache. New query i is at absolute position past + i and
    # may see keys 0..past + i, so build that mask explicitly.
    mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)  # [N, S]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _cached_block(
    x: Tensor, w: LayerWeights, cache: KVCache, layer: int, shape: tuple[int, int, int]
) -> Tensor:
    """`Block.forward` for inference over `cache`, by functional calls on the block's weights:
    float `[B*N, D]` -> float `[B*N, D]`, with `shape` = (B, N, H); the cache's keys and values
    of `layer` grow by N (its `length` is advanced by the caller)."""
    b, t, h = shape
    c = x.shape[1]
    y = F.layer_norm(x, (c,), w.ln_1_weight, w.ln_1_bias, LAYER_NORM_EPS)  # [B*N, D]
    qkv = F.linear(y, w.attn_weight, w.attn_bias).view(b, t, 3, h, c // h)  # [B, N, 3, H, E]
    past = cache.length
    k, v = cache.write(layer, qkv[:, :, 1:].permute(0, 2, 3, 1, 4))  # 2 x [B, H, S, E]
    q = qkv[:, :, 0].transpose(1, 2)  # [B, H, N, E]
    y = _attend(q, k, v, past).transpose(1, 2).reshape(b * t, c)  # [B*N, D]; a view if T = 1
    x = x + F.linear(y, w.attn_proj_weight, w.attn_proj_bias)  # [B*N, D]
    y = F.layer_norm(x, (c,), w.ln_2_weight, w.ln_2_bias, LAYER_NORM_EPS)  # [B*N, D]
    y = F.gelu(F.linear(y, w.fc_weight, w.fc_bias))  # [B*N, 4D]
    return x + F.linear(y, w.mlp_proj_weight, w.mlp_proj_bias)  # [B*N, D]


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

    def forward(self, x: Tensor) -> Tensor:
        """float `[B, N, D]` -> float `[B, N, D]`, causal over these N positions."""
        b, t, c = x.shape
        h, d = self.n_head, c // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x [B, N, D]
        q = q.view(b, t, h, d).transpose(1, 2)  # [B, H, N, E]
        k = k.view(b, t, h, d).transpose(1, 2)  # [B, H, N, E]
        v = v.view(b, t, h, d).transpose(1, 2)  # [B, H, N, E]
        y = _attend(q, k, v, 0, self.dropout if self.training else 0.0)  # [B, H, N, E]
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # [B, N, D]
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
        """float `[B, N, D]` -> float `[B, N, D]`."""
        x = self.gelu(self.c_fc(x))  # [B, N, 4D]
        return self.dropout(self.c_proj(x))  # [B, N, D]


class Block(nn.Module):
    """A pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (GPT-2, nanoGPT)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        """float `[B, N, D]` -> float `[B, N, D]`."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def weights(self) -> LayerWeights:
        """References to this block's parameter tensors, for `_cached_block`."""
        a, m = self.attn, self.mlp
        return LayerWeights(
            self.ln_1.weight,
            self.ln_1.bias,
            a.c_attn.weight,
            a.c_attn.bias,
            a.c_proj.weight,
            a.c_proj.bias,
            self.ln_2.weight,
            self.ln_2.bias,
            m.c_fc.weight,
            m.c_fc.bias,
            m.c_proj.weight,
            m.c_proj.bias,
        )


class GPT(nn.Module):
    """The language model over a flat token stream (codec levels interleaved by the caller)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017), as GPT-2 and nanoGPT: one [V, D] matrix both embeds
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
        default, holding references to the blocks' weights (`KVCache.weights`): made for this
        model as it is now (`load_state_dict` and `.to` update those tensors in place)."""
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
            weights=self._layer_weights(),
        )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> GPTOutput:
        """Next-token logits for every position, and the loss when targets are given.

        Args:
            idx: int64 `[B, N]` token ids in [0, V).
            targets: int64 `[B, N]`, the next token at each position; -1 is ignored (nanoGPT).
            cache: a `KVCache` holding S0 earlier positions of these B sequences: `idx` is
                appended at positions S0..S0 + N - 1, attends over the cache, and the cache
                grows by N. S0 + N must not exceed block_size.

        Returns:
            `GPTOutput` with float `[B, N, V]` logits (the parameters' dtype) and, with targets,
            the scalar mean cross-entropy.
        """
        assert idx.ndim == 2, f"idx must be [B, N], got shape {tuple(idx.shape)}"
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
        if cache is not None:
            assert not self.training, "the KV cache is for inference: call model.eval() first"
            logits = self._cached_logits(idx, cache)  # [B, N, V]
        else:
            pos = torch.arange(t, dtype=torch.long, device=idx.device)  # [N]
            x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, N, D]
            for block in self.h:
                x = block(x)  # [B, N, D]
            logits = self.lm_head(self.ln_f(x))  # [B, N, V]

        loss = None
        if targets is not None:
            assert targets.shape == idx.shape, (
                f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
            loss = F.cross_entropy(
                logits.reshape(b * t, -1),  # [B*N, V]
                targets.reshape(b * t),  # [B*N]
                ignore_index=-1,
            )
        return GPTOutput(logits=logits, loss=loss)

    def _layer_weights(self) -> list[LayerWeights]:
        return [cast(Block, block).weights() for block in self.h]

    def _cached_logits(self, idx: Tensor, cache: KVCache) -> Tensor:
        """int64 `[B, N]` tokens after the `cache.length` cached ones -> float `[B, N, V]`
        logits, by `_cached_block`, or for one token by `models.gpt_decode` (see the module
        docstring); the cache grows by N."""
        b, t = idx.shape
        past = cache.length
        weights = cache.weights
        if weights is None:  # a cache made by hand, not by new_cache
            weights = self._layer_weights()
        if t == 1:
            assert past < cache.capacity, (
                f"KV cache overflow: {past} cached + 1 new > capacity {cache.capacity}"
            )
            flat = cache.decode_weights
            if flat is None or flat[0][1].data_ptr() != weights[0].attn_weight.data_ptr():
                # The first step, or the model's tensors were replaced since (`.to` swaps a
                # parameter's data, and the transposed views listed here would keep the old).
                flat = cache.decode_weights = self._decode_weights(weights)
            ws, bs = flat
            decode = scripted_decode()
            with native_cpu_kernels(self.wte.weight):
                logits = decode(
                    idx[:, 0],
                    self.wte.weight,
                    self.wpe.weight,
                    ws,
                    bs,
                    cache.kv,
                    past,
                    self.config.n_head,
                    LAYER_NORM_EPS,
                )  # [B, V]
            cache.advance(1)
            return logits.view(b, 1, -1)  # [B, 1, V]
        # Positions continue after the cached ones, so a step sees the same position embedding
        # as in a full forward over the whole sequence; a slice of the table, not a gather.
        x = F.embedding(idx, self.wte.weight) + self.wpe.weight[past : past + t]  # [B, N, D]
        x = x.view(b * t, -1)  # [B*N, D]
        shape = (b, t, self.config.n_head)
        for layer, w in enumerate(weights):
            x = _cached_block(x, w, cache, layer, shape)  # [B*N, D]
        cache.advance(t)
        x = torch.layer_norm(x, x.shape[1:], self.ln_f.weight, self.ln_f.bias, LAYER_NORM_EPS)
        return F.linear(x, self.lm_head.weight).view(b, t, -1)  # [B, N, V]

    def _decode_weights(
        self, weights: list[LayerWeights]
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        """The blocks' and the final LayerNorm's parameters as `models.gpt_decode.decode_token`
        takes them: 6 weights and 6 biases per layer (`DECODE_WEIGHTS_PER_LAYER`, the Linear
        weights as transposed views), then ln_f's."""
        flat_weights: list[Tensor] = []
        flat_biases: list[Tensor | None] = []
        for w in weights:
            for name in DECODE_WEIGHTS_PER_LAYER:
                weight = getattr(w, f"{name}_weight")
                flat_weights.append(weight.t() if weight.ndim == 2 else weight)  # Linear: [in, out]
                flat_biases.append(getattr(w, f"{name}_bias"))
        return flat_weights + [self.ln_f.weight], flat_biases + [self.ln_f.bias]
