"""The single-token decode step (`models.gpt_decode`): TorchScript's and Python's equal GPT's
full forward, the oneDNN switch is put back.

Shape symbols: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.gpt_decode import decode_token, native_cpu_kernels, scripted_decode

V = 64


def _model(bias: bool = True) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=V, block_size=24, n_layer=3, n_head=4, n_embd=32, bias=bias)
    return GPT(config).eval()


def test_the_step_is_compiled_by_torchscript() -> None:
    assert isinstance(scripted_decode(), torch.jit.ScriptFunction)
    assert scripted_decode() is scripted_decode()  # compiled once per process


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scripted", [True, False])
@torch.inference_mode()
def test_decode_token_equals_the_full_forward(bias: bool, scripted: bool) -> None:
    """Each step's logits equal the full forward's at that position, and the cache holds the
    same keys and values as a multi-token forward writes."""
    model = _model(bias)
    seq = torch.randint(0, V, (3, 12))  # [B, T]
    full = model(seq).logits  # [B, T, V]
    cache, reference = model.new_cache(3), model.new_cache(3)
    model(seq, cache=reference)
    model(seq[:, :4], cache=cache)
    model(seq[:, 4:5], cache=cache)  # the first single-token step lists the weights
    assert cache.decode_weights is not None
    weights, biases = cache.decode_weights
    assert (biases[1] is None) == (not bias)
    decode = scripted_decode() if scripted else decode_token
    for t in range(5, 12):
        logits = decode(
            seq[:, t], model.wte.weight, model.wpe.weight, weights, biases, cache.kv, t, 4, 1e-5
        )  # [B, V]
        cache.advance(1)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
    for ours, theirs in zip(cache.kv, reference.kv, strict=True):
        torch.testing.assert_close(ours[:, :, :, :12], theirs[:, :, :, :12], atol=1e-5, rtol=0)


@torch.inference_mode()
def test_a_hand_made_cache_decodes_the_same() -> None:
    """A cache made without `new_cache` holds no weights: the model lists them at each step."""
    model = _model()
    seq = torch.randint(0, V, (2, 9))
    cache = model.new_cache(2)
    by_hand = model.new_cache(2)
    by_hand.weights, by_hand.decode_weights = None, None
    for c in (cache, by_hand):
        model(seq[:, :8], cache=c)
    one, two = (model(seq[:, 8:], cache=c).logits for c in (cache, by_hand))
    torch.testing.assert_close(one, two, atol=0, rtol=0)


@torch.inference_mode()
def test_weights_replaced_after_the_first_step_are_the_ones_used() -> None:
    """`.to` swaps each parameter's data: the transposed views listed at the first step would
    keep the old weights; the next step lists them again."""
    model = _model()
    seq = torch.randint(0, V, (2, 8))
    cache = model.new_cache(2)
    model(seq[:, :6], cache=cache)
    model(seq[:, 6:7], cache=cache)  # lists the weights
    for p in model.parameters():
        p.data = p.data * 2  # new tensors, as `.to` makes them
    assert cache.decode_weights is not None
    reference = model.new_cache(2)
    model(seq[:, :7], cache=reference)
    cache.kv = [kv.clone() for kv in reference.kv]  # the keys and values of the new weights
    step = model(seq[:, 7:8], cache=cache).logits
    torch.testing.assert_close(step, model(seq).logits[:, 7:8], atol=1e-5, rtol=0)


def test_a_full_cache_refuses_one_more_token() -> None:
    model = _model()
    cache = model.new_cache(1)
    cache.capacity = 4  # as a cache made by hand for 4 positions
    with torch.inference_mode():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
        with pytest.raises(AssertionError, match=r"4 cached \+ 1 new > capacity 4"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_onednn_is_off_only_inside_and_only_for_float32_on_the_cpu() -> None:
    assert torch.backends.mkldnn.enabled
    with native_cpu_kernels(torch.zeros(2)):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError, match="inside"), native_cpu_kernels(torch.zeros(2)):
        raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled  # put back after an error too
    # bfloat16 matmuls on the CPU need oneDNN: left on.
    with native_cpu_kernels(torch.zeros(2, dtype=torch.bfloat16)):
        assert torch.backends.mkldnn.enabled
