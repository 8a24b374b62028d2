"""The training budget: meta-device counts equal the real model's, memory by hand."""

from __future__ import annotations

import pytest

from codecflow.models.budget import activation_bytes, lm_budget, meta_parameter_counts
from codecflow.models.flops import flops_per_token, non_embedding_params
from codecflow.models.gpt import GPT, GPTConfig

# V 10, T 8, L 1, H 2, C 4: small enough to count by hand.
TINY = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=4, dropout=0.1)


def test_meta_counts_are_the_real_models() -> None:
    nanogpt, total, matrices = meta_parameter_counts(TINY)
    model = GPT(TINY)
    assert nanogpt == model.num_parameters() == non_embedding_params(TINY) == 292
    assert total == model.num_parameters(non_embedding=False) == 292 + 8 * 4
    # Linear weights: c_attn 4 x 12, c_proj 4 x 4, c_fc 4 x 16, mlp c_proj 16 x 4, lm_head 10 x 4.
    assert matrices == 48 + 16 + 64 + 64 + 40


def test_activations_by_hand() -> None:
    s, b, h, a, v = 8, 3, 4, 2, 10
    sbh = s * b * h
    # bf16, dropout: 38 s b h per block (Korthikanti's 34 + fp32 LayerNorm inputs), and either
    # 5 a s^2 b (no flash) or 4 a s b (flash); outside: s b h + 4 s b h + 4 s b v.
    outside = sbh + 4 * sbh + 4 * s * b * v
    assert activation_bytes(TINY, b, True, False, True) == 38 * sbh + 5 * a * s * s * b + outside
    assert activation_bytes(TINY, b, True, True, True) == 38 * sbh + 4 * a * s * b + outside
    # fp32 without dropout: 16 elements of 4 bytes per s b h, the softmax output a s^2 b once.
    plain = 64 * sbh + 4 * a * s * s * b + 8 * sbh + 4 * s * b * v
    assert activation_bytes(TINY, b, False, False, False) == plain


@pytest.mark.parametrize("ranks", [1, 4])
def test_budget_states_and_tokens(ranks: int) -> None:
    budget = lm_budget(TINY, micro_batch=3, grad_accum_steps=2, ranks=ranks, bf16=True)
    total = 324
    memory = budget.memory
    assert (memory.weights, memory.gradients, memory.adamw) == (4 * total, 4 * total, 8 * total)
    assert memory.ddp_buckets == (4 * total if ranks > 1 else 0)
    assert memory.weight_copies == 2 * 232
    assert budget.tokens_per_step == 3 * 8 * 2 * ranks
    assert budget.flops_per_token == flops_per_token(TINY)
    assert memory.total_flash == memory.states + memory.activations_flash
    assert memory.activations_flash < memory.activations_no_flash
