"""Autoregressive sampling from a `GPT` with a KV cache and a frame-aligned sliding window.

Shape symbols: B batch, P prompt length, N new tokens, V vocabulary, K levels per frame
(`tokens_per_frame`), S cached length.

The token stream interleaves the K codebook levels of each audio frame (K = 1 for mu-law), and
training windows start on frame boundaries, so position p of a window always holds level p % K.
Generation keeps that invariant: every window fed to the model (the initial prefill and each
re-prefill after the cache fills) starts at a multiple of K in the whole prompt + generated
stream. The blog post "Neural audio codecs: how to get audio into LLMs" (Kyutai, 2025) slides its
reference sampler by single tokens (nanoGPT's `idx[:, -block_size:]` at every step), so its
windows can start mid-frame, unlike training, and every token past the context costs a forward
of block_size tokens: that is `window="exact"`. The default `window="frames"` re-prefills half a
context of whole frames when the cache fills, then decodes token by token from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from codecflow.models.decode_step import DECODE_MODES, DecodeMode, StaticDecoder
from codecflow.models.gpt import GPT
from codecflow.models.layouts import TokenLayout

__all__ = ["GenerationResult", "sample_next", "generate", "regenerate"]


@dataclass
class GenerationResult:
    """What `generate` returns."""

    tokens: Tensor  # int64 [B, N], only the new tokens
    n_forward_calls: int  # model forward calls, prefills included
    n_prefills: int  # the initial prefill plus one per slide of the window
    # Start of each prefill window, as a position in the prompt + generated stream; with
    # window="frames" every one is a multiple of tokens_per_frame.
    prefill_starts: list[int] = field(default_factory=list)
    # float [B, N]: log-probability of each new token under the distribution it was drawn (or
    # forced) from, at temperature 1; None unless asked for (`return_logprobs`).
    logprobs: Tensor | None = None
    # Seconds the first static single-token step took, its compile or CUDA graph capture
    # included (device synchronized); None with decode="eager" or when no step ran.
    decode_setup_seconds: float | None = None


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from next-token logits.

    Args:
        logits: float `[B, V]` unnormalised scores.
        temperature: divides the logits; 0 means greedy (argmax, no randomness).
        top_k: keep only the k most likely tokens (nanoGPT's sample.py).
        top_p: nucleus sampling (Holtzman et al., 2020): keep the smallest set of most likely
            tokens whose probabilities sum to at least top_p.
        generator: the random source for `torch.multinomial`, on the logits' device.

    Returns:
        int64 `[B]` token ids in [0, V).
    """
    assert logits.ndim == 2, f"logits must be [B, V], got shape {tuple(logits.shape)}"
    assert temperature >= 0.0, f"temperature must be >= 0, got {temperature}"
    assert top_k is None or top_k >= 1, f"top_k must be >= 1, got {top_k}"
    assert top_p is None or 0.0 < top_p <= 1.0, f"top_p must be in (0, 1], got {top_p}"
    if temperature == 0.0:
        return logits.argmax(dim=-1)  # [B]

    # Softmax in float32 even for half-precision models: small probabilities matter here.
    logits = logits.float()
    if temperature != 1.0:  # x / 1 == x: skip the division
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)  # [B, V]
        # A token is needed while the mass strictly before it is below top_p; the most likely
        # token (mass 0 before it) is always kept.
        mass_before = torch.cumsum(probs, dim=-1) - probs  # [B, V]
        drop_sorted = mass_before >= top_p  # [B, V]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # [B, V]
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    # torch.multinomial(probs, 1)'s own draw, the same samples from the same generator state:
    # argmax(probs / q) with q ~ Exp(1), a Gumbel-max trick (aten/src/ATen/native/
    # Distributions.cpp, `multinomial`), without the checks of `probs` it runs first (max, min
    # and sum reductions, read back with two `.item()` host syncs per call); softmax's
    # probabilities need no checking.
    q = torch.empty_like(probs).exponential_(generator=generator)  # [B, V]
    return probs.div_(q).argmax(dim=-1)  # [B]


def _window_start(stream_len: int, max_len: int, tokens_per_frame: int) -> int:
    """The earliest frame boundary s with stream_len - s <= max_len (and s >= 0)."""
    first = max(0, stream_len - max_len)
    return (
        -(-first // tokens_per_frame) * tokens_per_frame
    )  # round up to a multiple of tokens_per_frame


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    tokens_per_frame: int = 1,
    generator: torch.Generator | None = None,
    forced_tokens: Tensor | None = None,
    forced_mask: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    window: str = "frames",
    return_logprobs: bool = False,
    decode: DecodeMode = "eager",
    compile_backend: str = "inductor",
) -> GenerationResult:
    """Continue `prompt` by `max_new_tokens` tokens, one forward step per token.

    The last tokens of the prompt that fit in block_size, starting on a frame boundary, are
    prefilled into a KV cache; then each new token is one single-token forward. When the cache
    is full, the window slides: the most recent `keep` tokens are re-prefilled into a reset cache,
    where keep is at most (block_size // 2) rounded down to whole frames, and exactly the amount
    that makes the window start on a frame boundary of the whole stream. The model is run in eval
    mode (dropout off) and restored to its previous mode afterwards.

    Args:
        model: the language model.
        prompt: int64 `[B, P]` token ids, P >= 1, on the model's device; position 0 is the start
            of a frame.
        max_new_tokens: N, the number of tokens to generate.
        temperature: see `sample_next`.
        top_k: see `sample_next`.
        top_p: see `sample_next`.
        generator: see `sample_next`.
        tokens_per_frame: K, tokens per audio frame (interleaved codebook levels; 1 for mu-law).
        forced_tokens: int64 `[B, N]`, tokens imposed at the new positions where `forced_mask`
            is true instead of sampled ones (teacher forcing: the fixed levels of `regenerate`).
        forced_mask: bool `[N]`, which new positions take `forced_tokens`.
        progress: called with (tokens done, N) after each new token (per sample; plain ints,
            no device sync): the caller's progress line.
        window: "frames" (the cache slides by re-prefilling half a context of whole frames) or
            "exact" (the post's: past the context, every step reads the last block_size tokens,
            a full forward each).
        return_logprobs: also return each new token's log-probability (`logprobs`).
        decode: how each single-token step runs. "eager": `GPT.forward` over the cache.
            "cuda_graph" (a CUDA device only, else a ValueError): the static-shape step of
            `models.decode_step`, captured once per call as a `torch.cuda.CUDAGraph` and
            replayed for every token. "compile": the same step through
            `torch.compile(fullgraph=True, dynamic=False)` (mode "reduce-overhead" with
            Inductor on CUDA). Both read and write the same cache: prefills and re-prefills on
            a slide stay eager, and sampling runs outside the graph. Same logits as "eager" up
            to float rounding (greedy decoding gives the same tokens).
        compile_backend: torch.compile's backend for decode="compile" (tests and the tiny
            benchmark pass "eager" or "aot_eager" to skip Inductor's C++ build on the CPU).

    Returns:
        `GenerationResult` with int64 `[B, N]` new tokens (an inference-mode tensor) and counts.
    """
    assert prompt.ndim == 2, f"prompt must be [B, P], got shape {tuple(prompt.shape)}"
    assert prompt.shape[1] >= 1, f"prompt must hold a token, got shape {tuple(prompt.shape)}"
    assert max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {max_new_tokens}"
    block_size = model.config.block_size
    # keep must hold at least one whole frame.
    assert 1 <= tokens_per_frame <= block_size // 2, (
        f"tokens_per_frame {tokens_per_frame} must be in [1, block_size // 2 = {block_size // 2}]"
    )
    b, p = prompt.shape
    assert (forced_tokens is None) == (forced_mask is None), (
        "forced_tokens and forced_mask go together"
    )
    if forced_tokens is not None and forced_mask is not None:
        assert forced_tokens.shape == (b, max_new_tokens), (
            f"forced_tokens must be [B, N] = [{b}, {max_new_tokens}], got shape "
            f"{tuple(forced_tokens.shape)}"
        )
        assert forced_mask.shape == (max_new_tokens,), (
            f"forced_mask must be [N] = [{max_new_tokens}], got shape {tuple(forced_mask.shape)}"
        )
        forced_at = forced_mask.tolist()  # one host sync, not one per token
    else:
        forced_at = [False] * max_new_tokens
    assert window in ("frames", "exact"), f"window must be 'frames' or 'exact', got {window!r}"
    assert decode in DECODE_MODES, f"decode must be one of {DECODE_MODES}, got {decode!r}"
    if decode == "cuda_graph" and prompt.device.type != "cuda":
        raise ValueError(
            f"decode='cuda_graph' needs a CUDA device, the prompt is on {prompt.device}"
        )
    if max_new_tokens == 0:
        return GenerationResult(prompt.new_empty((b, 0)), 0, 0, [])  # [B, 0]

    keep_max = (block_size // 2) // tokens_per_frame * tokens_per_frame
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(b, device=prompt.device)
        # The stream (prompt + new tokens) grows by one column per new token.
        stream = torch.empty(
            (b, p + max_new_tokens), dtype=torch.long, device=prompt.device
        )  # [B, P + N]
        stream[:, :p] = prompt

        exact = window == "exact"
        start = max(0, p - block_size) if exact else _window_start(p, block_size, tokens_per_frame)
        logits = model(stream[:, start:p], cache=cache).logits[:, -1]  # [B, V]
        n_forward, prefill_starts = 1, [start]
        decoder = (
            None
            if decode == "eager"
            else StaticDecoder(model, cache, decode, compile_backend=compile_backend)
        )
        logprobs = (
            stream.new_zeros((b, max_new_tokens), dtype=torch.float32) if return_logprobs else None
        )

        for i in range(max_new_tokens):
            if forced_at[i]:
                assert forced_tokens is not None
                token = forced_tokens[:, i].to(prompt.device)  # [B]
            else:
                token = sample_next(
                    logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
                )  # [B]
            if logprobs is not None:
                log_p = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
                logprobs[:, i] = log_p.gather(1, token[:, None])[:, 0]  # [B]
            end = p + i + 1  # stream length with this token
            stream[:, end - 1] = token
            if progress is not None:
                progress(i + 1, max_new_tokens)
            if i == max_new_tokens - 1:
                break  # no need to feed the last token
            if cache.length < block_size and decoder is not None:
                logits = decoder(token)  # [B, V]
            elif cache.length < block_size:
                logits = model(token[:, None], cache=cache).logits[:, -1]  # [B, V]
            else:
                start = (
                    end - block_size if exact else _window_start(end, keep_max, tokens_per_frame)
                )
                cache.reset()
                logits = model(stream[:, start:end], cache=cache).logits[:, -1]  # [B, V]
                prefill_starts.append(start)
            n_forward += 1
    finally:
        model.train(was_training)

    return GenerationResult(
        tokens=stream[:, p:].contiguous(),  # [B, N]
        n_forward_calls=n_forward,
        n_prefills=len(prefill_starts),
        prefill_starts=prefill_starts,
        logprobs=logprobs,
        decode_setup_seconds=None if decoder is None else decoder.setup_seconds,
    )


@torch.inference_mode()
def regenerate(
    model: GPT,
    codes: Tensor,
    keep_levels: int,
    layout: TokenLayout,
    codebook_size: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_first_frame: bool = False,
) -> Tensor:
    """Keep the first `keep_levels` levels of `codes` and let the model generate the others.

    The post's semantic experiment: with Mimi, level 0 is the semantic token, and regenerating the
    acoustic levels from it alone keeps what is said but not the voice. The codes are laid out as
    the model was trained (`layout`); every position holding a kept level (or a delay-pattern PAD)
    is forced to the source's token, every other position is sampled, step by step, with the KV
    cache and frame-aligned sliding of `generate`.

    Args:
        model: the language model trained on `layout` sequences of K-level codes.
        codes: int64 `[B, K, F]` source codes in [0, codebook_size).
        keep_levels: k in [1, K): the levels kept from the source.
        layout, codebook_size: how the model's sequences were made.
        temperature: see `sample_next`.
        top_k: see `sample_next`.
        top_p: see `sample_next`.
        generator: see `sample_next`.
        progress: see `generate` (its N counts the positions after the first free one).
        keep_first_frame: keep every level of frame 0 too, as the post's notebook does
            (regenerate_with_semantic.ipynb starts from the source's whole first frame).

    Returns:
        int64 `[B, K, F]` codes: levels < k equal to the source's, the others sampled (clamped
        to [0, codebook_size): a sampled token may belong to another level's range).
    """
    assert codes.ndim == 3, f"codes must be [B, K, F], got shape {tuple(codes.shape)}"
    b, k, f = codes.shape
    assert 1 <= keep_levels < k, f"keep_levels must be in [1, K = {k}), got {keep_levels}"
    sequence = layout.to_sequence(codes, codebook_size)  # [B, N]
    n = sequence.shape[1]
    levels = layout.level_of_position(n, k, n_frames=f)  # [N]
    forced = levels < keep_levels  # [N], PAD positions (level -1) included
    if keep_first_frame:
        forced = forced | _frame_zero(layout, k, f, forced.device)  # [N]
    first_free = int(torch.nonzero(~forced)[0, 0])  # level keep_levels of the first free frame
    result = generate(
        model,
        sequence[:, :first_free],  # [B, P]
        n - first_free,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        tokens_per_frame=layout.tokens_per_frame(k),
        generator=generator,
        forced_tokens=sequence[:, first_free:],  # [B, N - P]
        forced_mask=forced[first_free:],  # [N - P]
        progress=progress,
    )
    full = torch.cat([sequence[:, :first_free], result.tokens.to(sequence.device)], 1)  # [B, N]
    out = layout.from_sequence(full, k, codebook_size)  # [B, K, F]
    return out.clamp(0, codebook_size - 1)


def _frame_zero(
    layout: TokenLayout, num_levels: int, n_frames: int, device: torch.device
) -> Tensor:
    """bool `[N]`: the sequence positions holding a code of frame 0, for any layout (codes of 1
    at frame 0 and 0 elsewhere, laid out with a codebook of 2: a position's token is odd exactly
    when it holds frame 0; level offsets and PAD ids are even)."""
    marker = torch.zeros(1, num_levels, n_frames, dtype=torch.long, device=device)  # [1, K, F]
    marker[:, :, 0] = 1
    return layout.to_sequence(marker, 2)[0] % 2 == 1  # [N]
