"""Training FLOPs per token of the GPT and model FLOPs utilization (MFU).

The estimate is PaLM's (Chowdhery et al., 2022, appendix B, "Model FLOPs utilization") as
nanoGPT's `GPT.estimate_mfu` (model.py) writes it: a training step costs `6 N` FLOPs per token for
the matmuls with the N weights (2 forward, 4 backward: one multiply-add each for the input and the
weight gradients) plus `12 L H Q T` for attention's two score/value matmuls over a context of T
(forward 2 * 2 * H * Q * T per layer, backward twice that). N is nanoGPT's parameter count,
`GPT.num_parameters()`: every parameter but the position embedding (the token embedding is tied to
lm_head, whose matmul is real work). Attention is counted over the full context T (block_size),
without halving for the causal mask, as PaLM and nanoGPT do.

MFU is achieved FLOP/s over the device's peak: tokens/s * FLOPs per token / peak FLOP/s.
"""

from __future__ import annotations

from codecflow.models.gpt import GPTConfig

__all__ = [
    "PEAK_BF16_FLOPS",
    "flops_per_token",
    "model_flops_utilization",
    "non_embedding_params",
    "peak_flops_for",
]

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in FLOP/s from NVIDIA's data sheets: H100 SXM
# 989.4 TFLOPS (the PCIe card is 756), H200 the same compute as H100 SXM, A100 312 TFLOPS
# (nanoGPT's `flops_promised`).
PEAK_BF16_FLOPS: dict[str, float] = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def non_embedding_params(config: GPTConfig) -> int:
    """N of the estimate: `GPT(config).num_parameters()` (all but wpe), computed from the sizes.

    Per block (C = n_embd): attention c_attn 3C^2 and c_proj C^2, MLP c_fc 4C^2 and c_proj 4C^2,
    i.e. 12C^2 weights; with biases 3C + C + 4C + C = 9C bias terms and two LayerNorms of 2C,
    without biases two LayerNorm weights of C. Plus the final LayerNorm and the tied V x C
    token embedding / lm_head.
    """
    c = config.n_embd
    ln = 2 * c if config.bias else c  # one LayerNorm: weight (+ bias)
    linear_bias = 9 * c if config.bias else 0
    block = 12 * c * c + linear_bias + 2 * ln
    return config.n_layer * block + ln + config.vocab_size * c


def flops_per_token(config: GPTConfig) -> float:
    """Training (forward + backward) FLOPs per token: `6 N + 12 L H Q T` (PaLM app. B, nanoGPT).

    L n_layer, H n_head, Q head dim (n_embd / n_head), T block_size, N `non_embedding_params`.
    """
    n = non_embedding_params(config)
    layers, heads, q, t = (
        config.n_layer,
        config.n_head,
        config.n_embd // config.n_head,
        config.block_size,
    )
    return float(6 * n + 12 * layers * heads * q * t)


def model_flops_utilization(tokens_per_s: float, config: GPTConfig, peak_flops: float) -> float:
    """The fraction of `peak_flops` (FLOP/s) that training at `tokens_per_s` achieves."""
    assert peak_flops > 0, f"peak_flops must be positive, got {peak_flops}"
    return tokens_per_s * flops_per_token(config) / peak_flops


def peak_flops_for(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s for a CUDA device name (`torch.cuda.get_device_name()`, e.g.
    "NVIDIA H100 80GB HBM3"), or None for a device not in `PEAK_BF16_FLOPS` (a CPU, say)."""
    name = device_name.upper()
    for model, peak in PEAK_BF16_FLOPS.items():
        if model in name:
            return peak
    return None
