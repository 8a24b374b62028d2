"""FLOPs per token (PaLM / nanoGPT estimate), MFU and the device-name peak lookup."""

from __future__ import annotations

import pytest
import torch

from codecflow.models.flops import (
    PEAK_BF16_FLOPS,
    flops_per_token,
    model_flops_utilization,
    non_embedding_params,
    peak_flops_for,
)
from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.presets import gpt_config

# V 10, T 8, L 1, H 2, C 4 (Q 2).
TINY = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=4)


def test_hand_checked_tiny_config() -> None:
    # Block: 12 C^2 = 192 weights, 9 C = 36 Linear biases, two LayerNorms of 2 C = 16 -> 244;
    # ln_f 2 C = 8; tied wte V C = 40. N = 292.
    assert non_embedding_params(TINY) == 292
    # 6 N = 1 752; 12 L H Q T = 12 * 1 * 2 * 2 * 8 = 384.
    assert flops_per_token(TINY) == 2136.0


def test_hand_checked_without_bias() -> None:
    cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=4, bias=False)
    # Block 192 + two LayerNorm weights of C = 200; ln_f 4; wte 40. N = 244; 6 N = 1 464.
    assert non_embedding_params(cfg) == 244
    assert flops_per_token(cfg) == 1464.0 + 384.0


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("preset", ["tiny", "demo", "post"])
def test_n_matches_the_model(preset: str, bias: bool) -> None:
    cfg = gpt_config(preset, vocab_size=1024, bias=bias)
    with torch.device("meta"):  # no memory allocated
        model = GPT(cfg)
    assert non_embedding_params(cfg) == model.num_parameters()


def test_post_preset() -> None:
    # N = 152 069 120 (schemas/post.py, no biases); 12 * 12 * 16 * 64 * 2 048 = 301 989 888.
    cfg = gpt_config("post", vocab_size=1024)
    assert flops_per_token(cfg) == 6 * 152_069_120 + 301_989_888


def test_mfu_is_proportional() -> None:
    peak = 1e6
    assert model_flops_utilization(1000.0, TINY, peak) == pytest.approx(1000.0 * 2136.0 / peak)
    assert model_flops_utilization(2000.0, TINY, peak) == pytest.approx(
        2 * model_flops_utilization(1000.0, TINY, peak)
    )
    assert model_flops_utilization(1000.0, TINY, 2 * peak) == pytest.approx(
        model_flops_utilization(1000.0, TINY, peak) / 2
    )
    assert model_flops_utilization(0.0, TINY, peak) == 0.0


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("nvidia a100-pcie-40gb", 312e12),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
        ("", None),
    ],
)
def test_peak_flops_for(name: str, peak: float | None) -> None:
    assert peak_flops_for(name) == peak


def test_peak_table() -> None:
    assert PEAK_BF16_FLOPS == {"H100": 989e12, "H200": 989e12, "A100": 312e12}
