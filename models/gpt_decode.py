"""One new token per sequence through `GPT`'s layers over its KV cache, compiled by TorchScript.

Shape symbols (the legend of `codecflow.models`): B batch, D width (n_embd), H heads, E head dim,
S cached positions, V vocabulary.

This is `GPT.forward(token[:, None], cache=cache)`'s work for a single token, the step that
`models.sampling.generate` repeats thousands of times. On a CPU that step is bound by reading
the weights and the cache (19 MB and ~5 MB a token for bench/generate.py's 4.8 M-parameter
model) plus a fixed cost per op, so it is written with the fewest ops (the new key and value are
one slice of `qkv` copied in place; the output of attention is already `[B, D]` in memory), and
it is compiled by `torch.jit.script`, whose interpreter calls the ops without Python's argument
parsing: 5 % faster a token at 1 and at 2 threads (bench/generate.py's model, measured on the
2-core development VM side by side in one run: 1.20 -> 1.15 ms at 1 thread, 0.81 -> 0.77 ms at
2). `torch.compile` was measured too: 16 s to compile and no faster a step (1.17 ms at 1 thread),
the step being bound by memory, not by the ops' launches.

No `from __future__ import annotations` here: TorchScript reads the annotations themselves.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DECODE_WEIGHTS_PER_LAYER", "decode_token", "native_cpu_kernels", "scripted_decode"]

#: `decode_token` takes each layer's parameters as 6 weights and 6 biases, in this order (the
#: `LayerWeights` fields NAME_weight and NAME_bias; `GPT._decode_weights` lists them so).
DECODE_WEIGHTS_PER_LAYER = ("ln_1", "attn", "attn_proj", "ln_2", "fc", "mlp_proj")


def decode_token(
    token: Tensor,
    wte: Tensor,
    wpe: Tensor,
    weights: list[Tensor],
    biases: list[Tensor | None],
    kv: list[Tensor],
    past: int,
    n_head: int,
    eps: float,
) -> Tensor:
    """One new token per sequence through the whole model: int64 `[B]` -> float `[B, V]` logits.

    `wte` `[V, D]` is the token table (tied to lm_head), `wpe` `[block_size, D]` the position
    table. Layer l's parameters are `weights[6 l : 6 l + 6]` and `biases[6 l : 6 l + 6]`
    (`DECODE_WEIGHTS_PER_LAYER`; a Linear's weight transposed, `[in, out]`, a view; a bias may be
    None), the final LayerNorm's the last of each; its
    cache is `kv[l]` `[B, 2, H, S_max, E]`, of which `past` positions are filled. The token's key
    and value are written at position `past` of every layer (the caller advances the length).
    """
    # The position continues after the cached ones, as in a full forward over the sequence.
    x = wte[token] + wpe[past]  # [B, D]
    b, c = x.shape[0], x.shape[1]
    end = past + 1  # cached positions with the new one
    for layer in range(len(kv)):
        buffer = kv[layer]
        j = 6 * layer
        y = _layer_norm(x, weights[j], biases[j], eps)  # [B, D]
        qkv = _linear(y, weights[j + 1], biases[j + 1])  # [B, 3D]
        qkv = qkv.view(b, 3, n_head, 1, c // n_head)  # [B, 3, H, 1, E]
        # narrow and select, not indexing: TorchScript dispatches every `:` of an index as an op.
        buffer.narrow(3, past, 1).copy_(qkv.narrow(1, 1, 2))  # [B, 2, H, 1, E] at position past
        cached = buffer.narrow(3, 0, end)  # [B, 2, H, S, E]
        # One query sees every cached key and itself: no mask.
        y = F.scaled_dot_product_attention(
            qkv.select(1, 0), cached.select(1, 0), cached.select(1, 1)
        )
        y = y.reshape(b, c)  # [B, D]
        x = x + _linear(y, weights[j + 2], biases[j + 2])  # [B, D]
        y = _layer_norm(x, weights[j + 3], biases[j + 3], eps)  # [B, D]
        y = F.gelu(_linear(y, weights[j + 4], biases[j + 4]))  # [B, 4D]
        x = x + _linear(y, weights[j + 5], biases[j + 5])  # [B, D]
    x = _layer_norm(x, weights[-1], biases[-1], eps)  # [B, D]
    return torch.mm(x, wte.t())  # [B, V]


def _linear(x: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    """`F.linear(x, weight_t.t(), bias)`: the same addmm on the same memory, without the
    transpose op F.linear runs at each call (the weight comes transposed, a view made once)."""
    if bias is None:
        return torch.mm(x, weight_t)
    return torch.addmm(bias, x, weight_t)


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """`torch.layer_norm` over the last dim, one dispatch fewer (its kernel, directly)."""
    return torch.native_layer_norm(x, [x.shape[1]], weight, bias, eps)[0]


@cache
def scripted_decode() -> Callable[..., Tensor]:
    """`decode_token` compiled by `torch.jit.script`, once per process (about 5 ms)."""
    scripted: Callable[..., Tensor] = torch.jit.script(decode_token)
    return scripted


@contextmanager
def native_cpu_kernels(x: Tensor) -> Iterator[None]:
    """oneDNN off while a float32 step runs on the CPU. PyTorch sends a contiguous float32 GELU to
    oneDNN there, which costs ~5 us a call for the 4D values of one token against ~1.4 us for
    PyTorch's own kernel, and with two threads on a busy 2-core machine it measured 389 us a call
    (the development VM, torch 2.9.1; the two kernels' values differ by at most 1.4e-6). float32
    matmuls use MKL either way; bfloat16 ones need oneDNN, so other dtypes keep it. The switch is
    PyTorch's global flag: another thread's ops in the meantime also run without oneDNN."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.enabled:
        yield
        return
    # A ContextProp to type checkers; at run time a settable flag (torch.backends.mkldnn).
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
