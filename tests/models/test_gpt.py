"""The nanoGPT-style `GPT`: shapes, init, weight tying, KV cache equivalence, training.

Shape symbols: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from codecflow.models.gpt import GPT, GPTConfig, GPTOutput, KVCache

V = 64


def _model(block_size: int = 32, dropout: float = 0.0, seed: int = 0, bias: bool = True) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=V,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=dropout,
        bias=bias,
    )
    return GPT(config).eval()


def test_output_shapes() -> None:
    model = _model()
    idx = torch.randint(0, V, (3, 10))  # [B, T]
    out = model(idx)
    assert isinstance(out, GPTOutput)
    assert out.logits.shape == (3, 10, V)
    assert out.loss is None
    out = model(idx, targets=idx)
    assert out.loss is not None and out.loss.ndim == 0


@torch.no_grad()
def test_loss_is_about_ln_v_at_init() -> None:
    model = _model()
    idx = torch.randint(0, V, (4, 32))
    targets = torch.randint(0, V, (4, 32))
    loss = model(idx, targets=targets).loss
    assert loss is not None
    # Small init (std 0.02) makes the logits nearly uniform: cross-entropy ~ ln V.
    assert abs(float(loss) - math.log(V)) < 0.1


def test_ignore_index_minus_one() -> None:
    model = _model()
    idx = torch.randint(0, V, (2, 8))
    targets = idx.clone()
    targets[:, 4:] = -1
    full = model(idx[:, :4], targets=idx[:, :4]).loss
    masked = model(idx, targets=targets).loss
    assert full is not None and masked is not None
    assert torch.allclose(full, masked, atol=1e-6)  # causal: the first 4 logits are the same


def test_weight_tying() -> None:
    model = _model()
    assert model.lm_head.weight is model.wte.weight
    n_all = model.num_parameters(non_embedding=False)
    assert n_all == sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == n_all - model.config.block_size * model.config.n_embd


def test_residual_projection_init_is_scaled() -> None:
    model = _model()
    std = dict(model.named_parameters())["h.0.attn.c_proj.weight"].std().item()
    expected = 0.02 / math.sqrt(2 * model.config.n_layer)
    assert abs(std - expected) < 0.2 * expected


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("by_hand", [False, True])
@torch.no_grad()
def test_cached_steps_equal_full_recompute(bias: bool, by_hand: bool) -> None:
    model = _model(bias=bias)
    seq = torch.randint(0, V, (2, 20))  # [B, T]
    full = model(seq).logits  # [B, T, V]

    c = model.config
    # A cache made by hand holds no weights: the model looks them up at each call.
    cache = (
        KVCache(c.n_layer, 2, c.n_head, c.block_size, c.n_embd // c.n_head)
        if by_hand
        else model.new_cache(batch_size=2)
    )
    assert (cache.weights is None) == by_hand
    p = 7
    pieces = [model(seq[:, :p], cache=cache).logits]  # prefill
    for t in range(p, seq.shape[1]):
        pieces.append(model(seq[:, t : t + 1], cache=cache).logits)  # one token at a time
    assert cache.length == seq.shape[1]
    cached = torch.cat(pieces, dim=1)  # [B, T, V]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_chunk_after_nonempty_cache_equals_full_recompute() -> None:
    model = _model()
    seq = torch.randint(0, V, (2, 20))
    full = model(seq).logits
    cache = model.new_cache(batch_size=2)
    # Prefill, a single step, then multi-token chunks: chunks need the explicit offset mask.
    bounds = [0, 5, 6, 11, 20]
    pieces = [model(seq[:, a:b], cache=cache).logits for a, b in pairwise(bounds)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_exceeding_block_size_raises() -> None:
    model = _model(block_size=16)
    cache = model.new_cache(batch_size=1)
    model(torch.zeros(1, 12, dtype=torch.long), cache=cache)
    with pytest.raises(AssertionError, match=r"12 cached \+ 5 new = 17 tokens > block_size 16"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    assert cache.length == 12  # the failed call changed nothing
    with pytest.raises(AssertionError, match="block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@torch.no_grad()
def test_cache_needs_eval_mode() -> None:
    model = _model().train()
    with pytest.raises(AssertionError, match="eval"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=model.new_cache(batch_size=1))


@torch.no_grad()
def test_cache_follows_weights_loaded_after_it_was_made() -> None:
    model, other = _model(seed=0), _model(seed=1)
    seq = torch.randint(0, V, (1, 6))
    cache = model.new_cache(batch_size=1)
    model.load_state_dict(other.state_dict())  # in place: the cache's references see it
    torch.testing.assert_close(model(seq, cache=cache).logits, other(seq).logits)


def test_idx_must_be_2d() -> None:
    model = _model()
    with pytest.raises(AssertionError, match=r"\(2, 3, 4\)"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(AssertionError, match=r"\(5,\)"):
        model(torch.zeros(5, dtype=torch.long))


def test_adamw_steps_on_a_repeated_pattern_reduce_the_loss() -> None:
    model = _model(dropout=0.1).train()
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    data = pattern.repeat(5)[None, :33].repeat(4, 1)  # [B, 33]
    x, y = data[:, :-1], data[:, 1:]  # [B, 32] each
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = model(x, targets=y).loss
        assert loss is not None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
