"""`generate` and `sample_next`: sliding frame-aligned windows, greedy, seeds, top-k, top-p.

Shape symbols: B batch, P prompt length, N new tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from codecflow.models.gpt import GPT, GPTConfig, GPTOutput, KVCache
from codecflow.models.layouts import LAYOUT_NAMES, make_layout
from codecflow.models.sampling import generate, regenerate, sample_next

V = 48


def _model(block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).eval()


def _prompt(b: int, p: int, seed: int = 1) -> Tensor:
    return torch.randint(0, V, (b, p), generator=torch.Generator().manual_seed(seed))  # [B, P]


@dataclass
class Call:
    idx: Tensor  # [B, T] what the model was fed
    past: int  # cache length before the call


def _spy(model: GPT, monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Record every forward call of `model` (generate calls the module, which calls forward)."""
    calls: list[Call] = []
    forward: Callable[..., GPTOutput] = model.forward

    def spy(idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None) -> GPTOutput:
        assert cache is not None, "generate must use the KV cache"
        calls.append(Call(idx.clone(), cache.length))
        return forward(idx, targets, cache)

    monkeypatch.setattr(model, "forward", spy)
    return calls


def _window_starts(calls: list[Call], p: int) -> list[tuple[int, int]]:
    """(call index, stream start) of every prefill. Call j always ends at stream position
    p + j: the initial prefill ends with the prompt, then each call feeds the newest token."""
    return [(j, p + j - c.idx.shape[1]) for j, c in enumerate(calls) if c.past == 0]


@pytest.mark.parametrize("p", [1, 5, 16, 20, 23])
def test_long_generation_slides_on_frame_boundaries(
    p: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(block_size=16)
    calls = _spy(model, monkeypatch)
    prompt = _prompt(2, p)
    n, frame = 50, 3
    gen = torch.Generator().manual_seed(0)
    result = generate(model, prompt, n, tokens_per_frame=frame, generator=gen)

    assert result.tokens.shape == (2, n) and result.tokens.dtype == torch.int64
    assert int(result.tokens.min()) >= 0 and int(result.tokens.max()) < V
    assert result.n_forward_calls == len(calls) == n
    stream = torch.cat([prompt, result.tokens], dim=1)  # [B, P + N]

    starts = _window_starts(calls, p)
    assert result.n_prefills == len(starts) > 1  # 50 tokens cannot fit in 16: it slid
    assert result.prefill_starts == [s for _, s in starts]
    for k, (j, start) in enumerate(starts):
        window = calls[j].idx
        assert start % frame == 0, f"window {k} starts mid-frame at {start}"
        assert torch.equal(window, stream[:, start : start + window.shape[1]])
        assert window.shape[1] <= 16
        if k == 0:
            # The initial prefill holds the last prompt tokens that fit (less than a frame short).
            assert window.shape[1] == p - start and window.shape[1] > min(p, 16) - frame
        else:
            assert window.shape[1] <= (16 // 2) // frame * frame  # keep: half, whole frames
            assert calls[j - 1].past + calls[j - 1].idx.shape[1] == 16  # slid only when full
    # Between prefills, one token per call.
    assert all(c.idx.shape[1] == 1 for c in calls if c.past > 0)


def test_greedy_is_deterministic_and_equals_full_recompute() -> None:
    model = _model(block_size=32)
    prompt = _prompt(2, 5)
    first = generate(model, prompt, 8, temperature=0.0)
    second = generate(model, prompt, 8, temperature=0.0)
    assert torch.equal(first.tokens, second.tokens)
    assert first.n_prefills == 1

    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            nxt = model(seq).logits[:, -1].argmax(dim=-1)  # [B]
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert torch.equal(first.tokens, seq[:, 5:])


def test_greedy_with_sliding_equals_recompute_on_each_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model(block_size=16)
    calls = _spy(model, monkeypatch)
    prompt, p = _prompt(1, 9), 9
    result = generate(model, prompt, 30, temperature=0.0, tokens_per_frame=2)
    monkeypatch.undo()
    stream = torch.cat([prompt, result.tokens], dim=1)  # [B, P + N]
    start = 0
    with torch.no_grad():
        for j, call in enumerate(calls):
            end = p + j
            if call.past == 0:
                start = end - call.idx.shape[1]
            # After a prefill at `start` and steps, the cache equals a forward over the window.
            expected = model(stream[:, start:end]).logits[:, -1].argmax(dim=-1)  # [B]
            assert torch.equal(stream[:, end], expected), f"token {j}"


def test_same_seed_same_sample_different_seed_different_sample() -> None:
    model = _model()
    prompt = _prompt(2, 4)

    def run(seed: int) -> Tensor:
        return generate(model, prompt, 24, generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_top_k_one_and_tiny_top_p_equal_greedy() -> None:
    model = _model()
    prompt = _prompt(2, 6)
    greedy = generate(model, prompt, 20, temperature=0.0).tokens
    gen = torch.Generator().manual_seed(0)
    top_k = generate(model, prompt, 20, top_k=1, generator=gen).tokens
    top_p = generate(model, prompt, 20, top_p=1e-6, generator=gen).tokens
    assert torch.equal(top_k, greedy)
    assert torch.equal(top_p, greedy)


def test_sample_next_filters() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]])  # [1, V]
    logits = probs.log().repeat(2000, 1)  # [2000, V]
    gen = torch.Generator().manual_seed(0)

    def support(**kwargs: float | int) -> set[int]:
        return set(sample_next(logits, generator=gen, **kwargs).tolist())  # type: ignore[arg-type]

    assert support() == {0, 1, 2, 3, 4}
    assert support(top_k=2) == {1, 3}
    assert support(top_p=0.7) == {1, 3}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert support(top_p=0.5) == {1}  # the most likely token alone already has 0.5
    assert support(top_p=0.85) == {0, 1, 3}
    assert sample_next(logits[:3], temperature=0.0).tolist() == [1, 1, 1]
    assert sample_next(logits[:1]).dtype == torch.int64


def test_edge_cases() -> None:
    model = _model(block_size=16)
    prompt = _prompt(2, 3)
    empty = generate(model, prompt, 0)
    assert empty.tokens.shape == (2, 0) and empty.n_forward_calls == 0
    with pytest.raises(AssertionError, match="tokens_per_frame 9"):
        generate(model, prompt, 4, tokens_per_frame=9)
    with pytest.raises(AssertionError, match=r"\(3,\)"):
        generate(model, torch.zeros(3, dtype=torch.long), 4)
    model.train()
    generate(model, prompt, 2)
    assert model.training  # the mode is restored


def test_forced_positions_take_the_forced_tokens_and_feed_the_cache() -> None:
    model = _model(block_size=32)
    prompt = _prompt(2, 4)
    forced = _prompt(2, 12, seed=5)  # [B, N]
    mask = torch.tensor([True, False, False, True] * 3)  # [N]
    result = generate(model, prompt, 12, temperature=0.0, forced_tokens=forced, forced_mask=mask)
    assert torch.equal(result.tokens[:, mask], forced[:, mask])
    # Each free token is the argmax of a full forward over everything before it, forced ones
    # included: the cache saw the forced tokens, not what the model would have sampled there.
    stream = torch.cat([prompt, result.tokens], dim=1)  # [B, P + N]
    with torch.no_grad():
        for i in torch.nonzero(~mask)[:, 0].tolist():
            expected = model(stream[:, : 4 + i]).logits[:, -1].argmax(dim=-1)  # [B]
            assert torch.equal(stream[:, 4 + i], expected), f"free token {i}"


def test_forced_arguments_are_checked() -> None:
    model = _model()
    prompt = _prompt(1, 2)
    with pytest.raises(AssertionError, match="go together"):
        generate(model, prompt, 3, forced_tokens=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(AssertionError, match=r"\[1, 3\]"):
        generate(
            model,
            prompt,
            3,
            forced_tokens=torch.zeros(1, 4, dtype=torch.long),
            forced_mask=torch.ones(3, dtype=torch.bool),
        )


@pytest.mark.parametrize("layout_name", LAYOUT_NAMES)
@pytest.mark.parametrize("keep", [1, 2])
def test_regenerate_keeps_the_first_levels_and_samples_the_rest(
    layout_name: str, keep: int
) -> None:
    layout = make_layout(layout_name)
    k, q, f = 3, 8, 20
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=layout.vocab_size(q, k), block_size=24, n_layer=1, n_head=2, n_embd=16
    )
    model = GPT(config).eval()
    codes = torch.randint(0, q, (2, k, f), generator=torch.Generator().manual_seed(3))  # [B,K,F]
    gen = torch.Generator().manual_seed(0)
    out = regenerate(model, codes, keep, layout, q, generator=gen)
    assert out.shape == codes.shape and out.dtype == torch.long
    assert torch.equal(out[:, :keep], codes[:, :keep])
    assert not torch.equal(out[:, keep:], codes[:, keep:])  # sampled, not copied
    assert int(out.min()) >= 0 and int(out.max()) < q
    again = regenerate(model, codes, keep, layout, q, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


@pytest.mark.parametrize("layout_name", LAYOUT_NAMES)
def test_regenerate_can_keep_the_whole_first_frame_as_the_posts_notebook(layout_name: str) -> None:
    """regenerate_with_semantic.ipynb starts from the source's first frame, every level: with
    `keep_first_frame` frame 0 is copied whole, levels < k everywhere, the rest sampled."""
    layout = make_layout(layout_name)
    k, q, f = 3, 8, 12
    config = GPTConfig(
        vocab_size=layout.vocab_size(q, k), block_size=24, n_layer=1, n_head=2, n_embd=16
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    codes = torch.randint(0, q, (2, k, f), generator=torch.Generator().manual_seed(3))  # [B,K,F]
    out = regenerate(
        model, codes, 1, layout, q, generator=torch.Generator().manual_seed(0),
        keep_first_frame=True,
    )  # fmt: skip
    assert torch.equal(out[:, :, 0], codes[:, :, 0])  # the whole first frame
    assert torch.equal(out[:, :1], codes[:, :1])  # the kept level, every frame
    assert not torch.equal(out[:, 1:, 1:], codes[:, 1:, 1:])  # the others sampled
    plain = regenerate(model, codes, 1, layout, q, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(plain[:, 1:, 0], codes[:, 1:, 0])  # without it, frame 0 is sampled


def test_regenerate_rejects_keeping_every_level() -> None:
    model = _model()
    codes = torch.zeros(1, 2, 4, dtype=torch.long)
    with pytest.raises(AssertionError, match="keep_levels must be in"):
        regenerate(model, codes, 2, make_layout("flatten"), V)


def test_progress_is_told_every_token_and_changes_nothing() -> None:
    model, prompt = _model(), _prompt(2, 5)
    seen: list[tuple[int, int]] = []
    gen = torch.Generator().manual_seed(0)
    told = generate(model, prompt, 30, generator=gen, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(i, 30) for i in range(1, 31)]  # past the slides too (block 16)
    plain = generate(model, prompt, 30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(told.tokens, plain.tokens)
    # regenerate passes it on, with its own count of the positions it fills
    layout = make_layout("flatten")
    codes = torch.randint(0, V // 2, (1, 2, 6), generator=torch.Generator().manual_seed(3))
    seen.clear()
    regenerate(model, codes, 1, layout, V // 2, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(i, 11) for i in range(1, 12)]  # 12 positions, the first one is given


@pytest.mark.parametrize("b", [1, 5])
def test_sample_next_draws_what_torch_multinomial_draws(b: int) -> None:
    # The same generator state gives the same samples as torch.multinomial (which sample_next
    # reimplements without its validation syncs), so seeded runs stay reproducible.
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i in range(200):
        logits = 3 * torch.randn(b, V, generator=torch.Generator().manual_seed(i))  # [B, V]
        expected = torch.multinomial(torch.softmax(logits, -1), 1, generator=theirs)  # [B, 1]
        got = sample_next(logits, temperature=1.0, generator=ours)  # [B]
        assert torch.equal(got, expected.squeeze(-1)), f"draw {i}"


def test_the_exact_window_is_nanogpts_crop_at_every_step() -> None:
    """`window="exact"` (issue 24, row G): greedy decoding equals the post's loop, which feeds
    `idx[:, -block_size:]` to the model at every step; the log-probabilities are those of the
    tokens under that loop's logits."""
    model, block = _model(block_size=8), 8
    prompt = _prompt(2, 5)
    result = generate(model, prompt, 20, temperature=0.0, window="exact", return_logprobs=True)
    idx, expected = prompt.clone(), []
    with torch.inference_mode():
        for _ in range(20):
            logits = model(idx[:, -block:]).logits[:, -1]  # [B, V]
            token = logits.argmax(-1)  # [B]
            expected.append(torch.log_softmax(logits, -1).gather(1, token[:, None])[:, 0])
            idx = torch.cat([idx, token[:, None]], 1)
    assert torch.equal(result.tokens, idx[:, 5:])
    assert result.logprobs is not None
    assert torch.allclose(result.logprobs, torch.stack(expected, 1), atol=1e-5)
    assert result.prefill_starts[1:] == list(range(1, 17))  # a full window per fed token past 8
    frames = generate(model, prompt, 20, temperature=0.0)
    assert frames.n_prefills < result.n_prefills  # the default slides by half a context


@pytest.mark.slow  # Inductor's C++ build of the step: 12-16 s on a 2-core CPU
def test_compiled_decode_gives_eagers_greedy_tokens() -> None:
    """decode="compile" with the default Inductor backend, over several slides of the window."""
    torch._dynamo.reset()
    model = _model(block_size=16)
    prompt = _prompt(2, 5)
    eager = generate(model, prompt, 60, temperature=0.0, tokens_per_frame=2)
    compiled = generate(model, prompt, 60, temperature=0.0, tokens_per_frame=2, decode="compile")
    torch._dynamo.reset()
    assert torch.equal(compiled.tokens, eager.tokens)
    assert compiled.prefill_starts == eager.prefill_starts and compiled.n_prefills > 3
    assert compiled.n_forward_calls == eager.n_forward_calls
    assert eager.decode_setup_seconds is None
    assert compiled.decode_setup_seconds is not None and compiled.decode_setup_seconds > 0


@pytest.mark.parametrize("window", ["frames", "exact"])
def test_static_decode_steps_are_not_forward_calls_and_match_eager(
    window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled static step (torch.compile's "eager" backend: Dynamo's graph, fullgraph,
    without Inductor's build) replaces the single-token forwards; prefills stay eager. Forced
    tokens and log-probabilities go through it as through eager's steps."""
    torch._dynamo.reset()
    model = _model(block_size=16)
    prompt = _prompt(3, 7)
    forced = _prompt(3, 40, seed=5)  # [B, N]
    mask = torch.arange(40) % 3 == 0  # [N]
    kwargs: dict[str, Any] = {"temperature": 0.0, "tokens_per_frame": 2, "window": window}
    kwargs |= {"forced_tokens": forced, "forced_mask": mask, "return_logprobs": True}
    eager = generate(model, prompt, 40, **kwargs)
    calls = _spy(model, monkeypatch)
    static = generate(model, prompt, 40, decode="compile", compile_backend="eager", **kwargs)
    torch._dynamo.reset()
    assert torch.equal(static.tokens, eager.tokens)
    assert static.logprobs is not None and eager.logprobs is not None
    torch.testing.assert_close(static.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    assert len(calls) == static.n_prefills < static.n_forward_calls
    assert all(c.past == 0 for c in calls)  # only prefills call forward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decode_gives_eagers_greedy_tokens() -> None:
    model = _model(block_size=16).cuda()
    prompt = _prompt(2, 5).cuda()
    eager = generate(model, prompt, 60, temperature=0.0, tokens_per_frame=2)
    graph = generate(model, prompt, 60, temperature=0.0, tokens_per_frame=2, decode="cuda_graph")
    assert torch.equal(graph.tokens, eager.tokens) and graph.n_prefills > 3
    assert graph.decode_setup_seconds is not None and graph.decode_setup_seconds > 0


def test_decode_is_checked() -> None:
    model = _model()
    prompt = _prompt(1, 2)
    with pytest.raises(
        ValueError, match="decode='cuda_graph' needs a CUDA device, the prompt is on cpu"
    ):
        generate(model, prompt, 4, decode="cuda_graph")
    with pytest.raises(AssertionError, match="decode must be one of"):
        generate(model, prompt, 4, decode="graph")  # type: ignore[arg-type]
