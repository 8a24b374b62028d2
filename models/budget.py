"""What training the GPT costs before it runs: parameters, FLOPs and memory per GPU.

The model is built on PyTorch's `meta` device (shapes, no storage), so the post's 151 M-parameter
LM is counted in milliseconds and without memory; `models.flops` gives the FLOPs per token.

Memory per GPU, in bytes, for AdamW training under `torch.autocast` (bf16 on CUDA, as
`tasks/train/lm.py`; fp32 on the CPU). P is every parameter (position embedding included):

- weights 4 P: the parameters stay fp32 under autocast;
- gradients 4 P (fp32, like the parameters);
- AdamW state 8 P: `exp_avg` and `exp_avg_sq`, two fp32 moments per parameter (Loshchilov and
  Hutter, 2019; `torch.optim.AdamW`). Weights, gradients and state make the 16 bytes per
  parameter of mixed-precision Adam that ZeRO counts (Rajbhandari et al., 2020, section 3.1);
- bf16 weight copies 2 P' (P' the Linear weights): autocast casts each weight once per forward and
  the backward keeps the copy (PyTorch's autocast weight cache);
- DDP gradient buckets 4 P on more than one rank (`DistributedDataParallel` copies gradients
  into its all-reduce buckets; `gradient_as_bucket_view=False` is its default);
- activations of one micro-batch (gradient accumulation frees them between micro-batches), after
  Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models",
  section 4.1, equation 1: one GPT block stores `s b h (34 + 5 a s / h)` bytes with 16-bit
  activations and dropout, s the sequence (block_size), b the micro-batch, h the width, a the
  heads. Its terms in elements (e bytes each) and 1-byte dropout masks: attention 5 s b h (input,
  Q, K, V, output projection input) + the a s^2 b softmax output, + a s^2 b dropout output and
  a s^2 b + s b h masks with dropout; MLP 9 s b h (input, GELU input 4 s b h and output
  4 s b h) + s b h mask; two LayerNorm inputs 2 s b h. At e = 2 with dropout that is their
  34 s b h + 5 a s^2 b. Two changes for PyTorch: under autocast the residual stream and the
  LayerNorms stay fp32 (autocast's op lists), so the two LayerNorm inputs take 4 bytes each
  (38 s b h at bf16); and with flash attention (`F.scaled_dot_product_attention`'s flash kernel,
  what the GPT gets on CUDA: Dao et al., 2022) no s^2 term is kept, only the fp32 log-sum-exp
  of each query, 4 a s b, and the dropout mask is regenerated, not stored. Outside the blocks
  (Korthikanti et al., section 4.3): the embedding dropout mask s b h, the final LayerNorm and
  lm_head inputs 2 s b h elements and the fp32 logits of the cross-entropy, 4 s b v.

Not counted: the CUDA context and kernels' workspaces (about 0.5 to 1 GiB), the allocator's
fragmentation, the data loader's pinned buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from codecflow.models.flops import flops_per_token
from codecflow.models.gpt import GPT, GPTConfig

__all__ = [
    "LMBudget",
    "MemoryEstimate",
    "activation_bytes",
    "lm_budget",
    "meta_parameter_counts",
]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU at the peak of a training step (see the module docstring)."""

    weights: int
    gradients: int
    adamw: int
    weight_copies: int  # autocast's bf16 copies of the matrices (0 in fp32)
    ddp_buckets: int  # 0 on one rank
    activations_flash: int
    activations_no_flash: int

    @property
    def states(self) -> int:
        """Everything but the activations."""
        return self.weights + self.gradients + self.adamw + self.weight_copies + self.ddp_buckets

    @property
    def total_flash(self) -> int:
        return self.states + self.activations_flash

    @property
    def total_no_flash(self) -> int:
        return self.states + self.activations_no_flash


@dataclass(frozen=True)
class LMBudget:
    """The cost of a GPT training run per step and per GPU."""

    config: GPTConfig
    parameters_nanogpt: int  # nanoGPT's `num_parameters()`: all but the position embedding
    parameters_total: int
    flops_per_token: float  # training (forward + backward), `models.flops`
    micro_batch: int  # sequences per micro-batch per rank
    grad_accum_steps: int
    ranks: int
    bf16: bool
    tokens_per_step: int  # batch x block x grad_accum x ranks
    memory: MemoryEstimate


def meta_parameter_counts(config: GPTConfig) -> tuple[int, int, int]:
    """(nanoGPT's count, total, matrices) of `GPT(config)`, built on the meta device."""
    with torch.device("meta"):
        model = GPT(config)
    # What autocast casts to bf16: the Linear weights (lm_head's is the tied token embedding);
    # embedding lookups stay fp32.
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return model.num_parameters(), model.num_parameters(non_embedding=False), matrices


def activation_bytes(
    config: GPTConfig, micro_batch: int, bf16: bool, flash: bool, train_dropout: bool
) -> int:
    """Activation bytes one micro-batch keeps for its backward (Korthikanti et al., 2022, eq. 1,
    with the PyTorch changes of the module docstring)."""
    s, b, h = config.block_size, micro_batch, config.n_embd
    a, v, layers = config.n_head, config.vocab_size, config.n_layer
    e = 2 if bf16 else 4  # bytes per activation element
    mask = 1 if train_dropout else 0  # bytes per dropout-mask element
    sbh, as2b = s * b * h, a * s * s * b
    per_layer = sbh * (14 * e + 2 * 4 + 2 * mask)  # 5 + 9 elements, fp32 LayerNorm inputs
    if flash:
        per_layer += 4 * a * s * b  # fp32 log-sum-exp per query and head
    else:
        per_layer += as2b * (e * (1 + mask) + mask)  # softmax out (+ dropout out and mask)
    outside = mask * sbh + 2 * e * sbh + 4 * s * b * v
    return layers * per_layer + outside


def lm_budget(
    config: GPTConfig, micro_batch: int, grad_accum_steps: int, ranks: int, bf16: bool
) -> LMBudget:
    """Parameters, FLOPs per token, tokens per step and memory per GPU of a training run."""
    nanogpt, total, matrices = meta_parameter_counts(config)
    memory = MemoryEstimate(
        weights=4 * total,
        gradients=4 * total,
        adamw=8 * total,
        weight_copies=2 * matrices if bf16 else 0,
        ddp_buckets=4 * total if ranks > 1 else 0,
        activations_flash=activation_bytes(config, micro_batch, bf16, True, config.dropout > 0),
        activations_no_flash=activation_bytes(config, micro_batch, bf16, False, config.dropout > 0),
    )
    return LMBudget(
        config=config,
        parameters_nanogpt=nanogpt,
        parameters_total=total,
        flops_per_token=flops_per_token(config),
        micro_batch=micro_batch,
        grad_accum_steps=grad_accum_steps,
        ranks=ranks,
        bf16=bf16,
        tokens_per_step=micro_batch * config.block_size * grad_accum_steps * ranks,
        memory=memory,
    )
