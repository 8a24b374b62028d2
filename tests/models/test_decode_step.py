"""`StaticDecodeStep` and `StaticDecoder`: the same logits as `GPT.forward` over the same cache,
at every position, after a slide, with garbage in the unfilled buffer; one graph for all steps.

Shape symbols: B batch, N tokens, V vocabulary. CUDA graphs need a GPU: here only their refusal on
the CPU is tested, and the CUDA test runs where a GPU is.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from codecflow.models.decode_step import StaticDecoder, StaticDecodeStep
from codecflow.models.gpt import GPT, GPTConfig, KVCache

V = 48
BLOCK = 16


def _model(bias: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, bias=bias)
    return GPT(config).eval()


def _tokens(b: int, n: int, seed: int = 1) -> Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))  # [B, N]


def _prefilled(model: GPT, seq: Tensor, p: int) -> tuple[KVCache, KVCache]:
    """Two caches holding the same first p tokens of `seq`: one for eager, one static."""
    caches = (model.new_cache(seq.shape[0]), model.new_cache(seq.shape[0]))
    for cache in caches:
        model(seq[:, :p], cache=cache)
    return caches


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("p", [1, 6, BLOCK - 1])
@torch.inference_mode()
def test_every_step_equals_the_eager_forward(bias: bool, b: int, p: int) -> None:
    model = _model(bias)
    seq = _tokens(b, BLOCK)  # [B, N]
    eager, static = _prefilled(model, seq, p)
    step = StaticDecodeStep(model, static)
    for t in range(p, BLOCK):
        expected = model(seq[:, t : t + 1], cache=eager).logits[:, -1]  # [B, V]
        # The position as a 0-dim tensor, the token as [B] and [B, 1] in turn.
        token = seq[:, t] if t % 2 else seq[:, t : t + 1]
        logits = step(token, torch.tensor(static.length))  # [B, V]
        static.advance(1)
        assert logits.shape == (b, V)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    for eager_kv, static_kv in zip(eager.kv, static.kv, strict=True):
        torch.testing.assert_close(static_kv, eager_kv, atol=1e-6, rtol=0)


@torch.inference_mode()
def test_after_a_slide_the_stale_positions_are_masked() -> None:
    """generate's slide: reset, re-prefill fewer tokens into the same buffers (the old keys stay
    past them), then single steps; the static step must not see the old keys."""
    model = _model()
    seq = _tokens(2, 2 * BLOCK)  # [B, N]
    eager, static = _prefilled(model, seq, BLOCK)
    step = StaticDecodeStep(model, static)  # made on a full cache: nothing to zero
    start, end = BLOCK // 2, BLOCK + 3
    for cache in (eager, static):
        cache.reset()
        model(seq[:, start:end], cache=cache)  # the re-prefill, eager
    pos = torch.zeros(1, dtype=torch.long)  # [1], updated in place as a graph would need
    for t in range(end, end + 4):
        expected = model(seq[:, t : t + 1], cache=eager).logits[:, -1]  # [B, V]
        logits = step(seq[:, t], pos.fill_(static.length))  # [B, V]
        static.advance(1)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_garbage_in_the_unfilled_buffer_is_ignored() -> None:
    """`torch.empty` may hold NaN: a masked position weighs 0, but 0 x NaN is NaN, so the step
    zeroes the unfilled positions when it is made."""
    model = _model()
    seq = _tokens(2, 8)  # [B, N]
    eager, static = _prefilled(model, seq, 4)
    for kv in static.kv:
        kv[:, :, :, 4:] = float("nan")
    step = StaticDecodeStep(model, static)
    expected = model(seq[:, 4:5], cache=eager).logits[:, -1]  # [B, V]
    logits = step(seq[:, 4], torch.tensor([4]))  # [B, V]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_compiled_decoder_is_one_graph_for_every_position() -> None:
    """fullgraph=True fails on a graph break; a recompile (a position baked in as a constant,
    a shape that changes) fails under error_on_recompile."""
    torch._dynamo.reset()
    model = _model()
    seq = _tokens(3, BLOCK)  # [B, N]
    eager, static = _prefilled(model, seq, 3)
    decoder = StaticDecoder(model, static, "compile", compile_backend="eager")
    assert decoder.setup_seconds is None
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(3, BLOCK):
            expected = model(seq[:, t : t + 1], cache=eager).logits[:, -1]  # [B, V]
            logits = decoder(seq[:, t])  # [B, V]
            assert static.length == eager.length == t + 1
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert decoder.setup_seconds is not None and decoder.setup_seconds > 0
    with pytest.raises(AssertionError, match="KV cache full: 16 of 16 positions"):
        decoder(seq[:, 0])
    torch._dynamo.reset()


@torch.inference_mode()
def test_cuda_graph_needs_cuda_and_shapes_are_checked() -> None:
    model = _model()
    cache = model.new_cache(2)
    model(_tokens(2, 3), cache=cache)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="decode='cuda_graph' needs a CUDA device"):
            StaticDecoder(model, cache, "cuda_graph")
    step = StaticDecodeStep(model, cache)
    with pytest.raises(AssertionError, match=r"token must be \[B\] or \[B, 1\], got shape"):
        step(torch.zeros(2, 1, 1, dtype=torch.long), torch.tensor(3))
    with pytest.raises(AssertionError, match="pos must hold one position"):
        step(torch.zeros(2, dtype=torch.long), torch.tensor([3, 4]))
    c = model.config
    by_hand = KVCache(c.n_layer, 2, c.n_head, c.block_size, c.n_embd // c.n_head)
    with pytest.raises(AssertionError, match="GPT.new_cache"):
        StaticDecodeStep(model, by_hand)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.inference_mode()
def test_cuda_graph_replays_equal_the_eager_forward() -> None:
    model = _model().cuda()
    seq = _tokens(3, BLOCK).cuda()  # [B, N]
    eager, static = _prefilled(model, seq, 5)
    decoder = StaticDecoder(model, static, "cuda_graph")
    for t in range(5, BLOCK):
        expected = model(seq[:, t : t + 1], cache=eager).logits[:, -1]  # [B, V]
        torch.testing.assert_close(decoder(seq[:, t]), expected, atol=1e-4, rtol=0)
