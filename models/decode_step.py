"""A static-shape single-token decode step over the `KVCache`, for CUDA graphs and torch.compile.

Shape symbols (the legend of `codecflow.models`): B batch, D width (n_embd), H heads, E head dim,
S cached positions (here always block_size: the whole buffer, masked), V vocabulary.

Why: generating audio token by token is bound by kernel launches, not by arithmetic. A
single-token step of the post's 12-layer LM (preset `post`, 12 x 16 heads x 1 024) is hundreds of
small kernels (per layer two layer norms, four matmuls, attention, GELU, residual adds and the
cache write), each a few microseconds of GPU work behind a launch from Python. The post's
reference sampler (nanoGPT's sample.py, a full recompute without a cache) took 30 minutes on an
H100 for 10 s of mu-law (160 000 tokens); the KV cache makes each step small, and then the
launches dominate. A CUDA graph replays a whole step's kernels with one launch, and torch.compile
fuses them, but both need every step to have the same shapes and the same memory addresses, and
the eager cached path (`GPT.forward` with a cache) slices the cache to its current length, so its
shapes change at every step.

`StaticDecodeStep` keeps them fixed: the position is an int64 device tensor, not a Python int; the
new key and value are written at it with `index_copy_`; attention runs over all block_size
positions with the mask `arange(block_size) <= pos`; the position embedding is an index by that
tensor. It reads and writes the same buffers as the eager path (`KVCache.kv`), so the eager
prefill, and the eager re-prefill when `models.sampling.generate` slides its window, fill them and
the static step continues. `StaticDecoder` runs it compiled or replayed from a CUDA graph at
`cache.length`, and advances the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from codecflow.models.gpt import GPT, LAYER_NORM_EPS, KVCache, LayerWeights

__all__ = ["DECODE_MODES", "DecodeMode", "StaticDecodeStep", "StaticDecoder"]

DecodeMode = Literal["eager", "cuda_graph", "compile"]
#: How `models.sampling.generate` runs a single-token step: "eager" is `GPT.forward` with the
#: cache, the other two run `StaticDecodeStep` (see `StaticDecoder`).
DECODE_MODES: tuple[DecodeMode, ...] = ("eager", "cuda_graph", "compile")
# Runs on a side stream before a capture, as PyTorch's CUDA graph example: lazy initialisation
# (cuBLAS handles and workspaces, kernel selection) must not happen while capturing.
_WARMUP_RUNS = 3


def _static_block(
    x: Tensor, w: LayerWeights, kv: Tensor, pos: Tensor, mask: Tensor, n_head: int
) -> Tensor:
    """One block for one new token per row: float `[B, D]` -> float `[B, D]`, the token's key and
    value written into the layer's buffer `kv` `[B, 2, H, S, E]` at position `pos` `[1]`."""
    b, c = x.shape
    shape = (b, 3, n_head, 1, c // n_head)  # [B, 3, H, 1, E]: query, key, value of one token
    y = F.layer_norm(x, (c,), w.ln_1_weight, w.ln_1_bias, LAYER_NORM_EPS)  # [B, D]
    qkv = F.linear(y, w.attn_weight, w.attn_bias).view(shape)  # [B, 3, H, 1, E]
    kv.index_copy_(3, pos, qkv[:, 1:])  # the new key and value at pos of [B, 2, H, S, E]
    q, k, v = qkv[:, 0], kv[:, 0], kv[:, 1]  # [B, H, 1, E], then 2 x [B, H, S, E]
    # Keys past pos are masked: stale ones of an earlier window, or zeros (never garbage, see
    # StaticDecodeStep), so they weigh exactly 0.
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, 1, E]
    x = x + F.linear(y.reshape(b, c), w.attn_proj_weight, w.attn_proj_bias)  # [B, D]
    y = F.layer_norm(x, (c,), w.ln_2_weight, w.ln_2_bias, LAYER_NORM_EPS)  # [B, D]
    y = F.gelu(F.linear(y, w.fc_weight, w.fc_bias))  # [B, 4D]
    return x + F.linear(y, w.mlp_proj_weight, w.mlp_proj_bias)  # [B, D]


class StaticDecodeStep:
    """One token per sequence after the cached ones, with the same shapes at every position.

    Holds references to the model's weights (`KVCache.weights`, set by `GPT.new_cache`) and to
    the cache's buffers. Making it zeroes the buffers' unfilled positions (`torch.empty`
    memory may hold NaNs, which a masked attention weight of 0 would still spread); everything
    written there later is a finite key or value.
    """

    def __init__(self, model: GPT, cache: KVCache) -> None:
        assert cache.weights is not None, "the cache must come from GPT.new_cache (its weights)"
        assert cache.capacity == model.config.block_size, (
            f"cache capacity {cache.capacity} != block_size {model.config.block_size}"
        )
        self.layers = tuple(cache.weights)
        self.kv = tuple(cache.kv)  # each [B, 2, H, S, E]
        self.wte = model.wte.weight  # [V, D], tied to lm_head
        self.wpe = model.wpe.weight  # [S, D]
        self.ln_f_weight = model.ln_f.weight  # [D]
        self.ln_f_bias = model.ln_f.bias  # [D] or None
        self.n_head = model.config.n_head
        self.positions = torch.arange(cache.capacity, device=self.wte.device)  # [S]
        for buffer in self.kv:
            buffer[:, :, :, cache.length :].zero_()

    def __call__(self, token: Tensor, pos: Tensor) -> Tensor:
        """Next-token logits after `token` at position `pos`.

        Args:
            token: int64 `[B]` or `[B, 1]`, the newest token of each sequence.
            pos: int64 0-dim or 1-element tensor on the model's device: the token's position,
                the number of positions cached before it (`KVCache.length`, which this does not
                advance).

        Returns:
            float `[B, V]` logits (the parameters' dtype), as `GPT.forward(token[:, None],
            cache=cache).logits[:, -1]` would give.
        """
        assert token.ndim in (1, 2), f"token must be [B] or [B, 1], got shape {tuple(token.shape)}"
        assert pos.numel() == 1, f"pos must hold one position, got shape {tuple(pos.shape)}"
        b = token.shape[0]
        pos = pos.reshape(1)  # [1]
        x = F.embedding(token.reshape(b), self.wte) + F.embedding(pos, self.wpe)  # [B, D]
        mask = (self.positions <= pos)[None]  # [1, S]: the new query sees keys 0..pos
        for w, kv in zip(self.layers, self.kv, strict=True):
            x = _static_block(x, w, kv, pos, mask, self.n_head)  # [B, D]
        x = F.layer_norm(x, x.shape[1:], self.ln_f_weight, self.ln_f_bias, LAYER_NORM_EPS)
        return F.linear(x, self.wte)  # [B, V]


class StaticDecoder:
    """`StaticDecodeStep` at `cache.length`, compiled or replayed from a CUDA graph.

    Called with int64 `[B]` tokens, it copies them and the position into static input buffers,
    runs the step, advances the cache by one and returns float `[B, V]` logits. With
    "cuda_graph" the logits are the graph's output buffer, overwritten by the next call, and
    with "compile" on CUDA possibly too (CUDA graphs of mode "reduce-overhead"): read them
    before calling again. The first call compiles or captures; `setup_seconds` is how long it
    took (device synchronized), the step itself included.

    Args:
        model: the language model, in eval mode.
        cache: its cache from `GPT.new_cache`; the eager path may reset and refill it between
            calls (the buffers stay where they are, which the graph relies on).
        mode: "cuda_graph" (a CUDA device only) or "compile".
        compile_backend: torch.compile's backend for "compile"; "inductor" on CUDA uses mode
            "reduce-overhead" (its own CUDA graphs); tests pass "eager" to skip Inductor's C++
            build on the CPU.
    """

    def __init__(
        self,
        model: GPT,
        cache: KVCache,
        mode: DecodeMode,
        *,
        compile_backend: str = "inductor",
    ) -> None:
        assert mode in ("cuda_graph", "compile"), f"mode must be cuda_graph or compile: {mode!r}"
        device = cache.kv[0].device
        if mode == "cuda_graph" and device.type != "cuda":
            raise ValueError(f"decode='cuda_graph' needs a CUDA device, the cache is on {device}")
        self.cache = cache
        self.mode = mode
        self.compile_backend = compile_backend
        self.step = StaticDecodeStep(model, cache)
        self.token = torch.zeros(cache.batch_size, dtype=torch.long, device=device)  # [B]
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # [1]
        self.setup_seconds: float | None = None
        self._run: Callable[[], Tensor] | None = None

    def __call__(self, token: Tensor) -> Tensor:
        """int64 `[B]` tokens at position `cache.length` -> float `[B, V]` logits; the cache
        grows by one."""
        assert token.shape == self.token.shape, (
            f"token must be [B] = [{self.cache.batch_size}], got shape {tuple(token.shape)}"
        )
        assert self.cache.length < self.cache.capacity, (
            f"KV cache full: {self.cache.length} of {self.cache.capacity} positions"
        )
        self.token.copy_(token)
        self.pos.fill_(self.cache.length)
        if self._run is None:
            # Built at the first step, not before: the warm-up runs then write this token's key
            # and value at this position, which the step itself writes again, so nothing valid
            # is overwritten.
            _sync(self.token.device)
            started = time.perf_counter()
            self._run = self._capture() if self.mode == "cuda_graph" else self._compile()
            logits = self._run()  # [B, V]
            _sync(self.token.device)
            self.setup_seconds = time.perf_counter() - started
        else:
            logits = self._run()  # [B, V]
        self.cache.advance(1)
        return logits

    def _compile(self) -> Callable[[], Tensor]:
        cuda_graphs = self.token.device.type == "cuda" and self.compile_backend == "inductor"
        if cuda_graphs:
            # The cache is mutated in place: marked static, its buffers become memory of the
            # compiled CUDA graphs instead of inputs copied in (or a reason to skip graphs).
            for buffer in (*self.step.kv, self.step.positions):
                torch._dynamo.mark_static_address(buffer)
        step = torch.compile(
            self.step.__call__,
            fullgraph=True,  # a graph break fails here instead of running slowly
            dynamic=False,
            backend=self.compile_backend,
            mode="reduce-overhead" if cuda_graphs else None,
        )

        def run() -> Tensor:
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return step(self.token, self.pos)  # [B, V]

        return run

    def _capture(self) -> Callable[[], Tensor]:
        """Warm up on a side stream, capture one step, return its replay (PyTorch's recipe,
        torch.cuda.graphs): the graph reads `token` and `pos` and writes the cache in place."""
        device = self.token.device
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(_WARMUP_RUNS):
                    self.step(self.token, self.pos)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self.step(self.token, self.pos)  # [B, V], in the graph's memory

        def replay() -> Tensor:
            graph.replay()
            return logits  # [B, V]

        return replay


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
