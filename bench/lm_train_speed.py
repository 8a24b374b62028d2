"""Is our GPT at least as fast to train as a plain one? Training tokens/s side by side in one run.

    uv run python bench/lm_train_speed.py                                  # demo preset, CPU
    uv run python bench/lm_train_speed.py --device cuda --preset post --batch 8 --steps 20
    uv run python bench/lm_train_speed.py --device cuda --preset post --batch 8 --steps 20 --compile

Compares, on the same device, batch and number of steps:

- ours: `models.gpt.GPT` (attention through `F.scaled_dot_product_attention`) trained as
  `tasks.train.lm` does it: `logits = model(x).logits`, cross-entropy on `logits.float()`,
  backward, gradient clipping to 1.0, AdamW (betas 0.9, 0.95);
- a reference GPT of the same shape written here the plain way: nanoGPT's model.py without its
  flash path (explicit `q @ k^T`, a `tril` causal mask, softmax, `@ v`), same embeddings, blocks,
  tied lm_head and init, trained by the same step.

Each model gets `--warmup` untimed steps, then `--rounds` timed rounds of `--steps` steps, the
order alternating between rounds (ours first, then the reference first, ...) so that drift in
clocks or thermals hits both. Tokens are counted as train_lm counts them: batch * block_size per
step. On CUDA the forward runs under bf16 autocast (as `tasks.train.lm`), `--compile` compiles our
model only (`torch.compile`; the reference stays the plain eager baseline), and MFU is printed for
both (PaLM / nanoGPT FLOPs per token, `models.flops`, over the card's dense bf16 peak).

Prints tokens/s of both per round and over all rounds, and PASS when the median of the rounds'
ratios (ours / reference; robust to a load burst on a shared machine hitting one slice) is at least
1.0x (the goal), FAIL otherwise (exit status 1).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecflow.models.flops import flops_per_token, model_flops_utilization, peak_flops_for
from codecflow.models.gpt import GPT, GPTConfig, GPTOutput
from codecflow.models.presets import GPT_PRESETS, gpt_config
from codecflow.tasks.core.threads import apply_thread_policy

GOAL_RATIO = 1.0


# --- The reference: nanoGPT's model.py, non-flash attention path, written out plainly. ---------


class RefAttention(nn.Module):
    """Causal self-attention with an explicit `[T, T]` lower-triangular mask (nanoGPT, no SDPA)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        self.mask: Tensor  # [1, 1, block_size, block_size], 1 where query i may see key j <= i
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        h, d = self.n_head, c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x [B, T, C]
        q = q.view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        k = k.view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        v = v.view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))  # [B, H, T, T]
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # [B, H, T, D]
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # [B, T, C]
        return self.c_proj(y)


class RefBlock(nn.Module):
    """Pre-LN block with a 4x GELU MLP, as GPT-2 / nanoGPT."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        c = config.n_embd
        self.ln_1 = nn.LayerNorm(c, bias=config.bias)
        self.attn = RefAttention(config)
        self.ln_2 = nn.LayerNorm(c, bias=config.bias)
        self.mlp = nn.Sequential(
            nn.Linear(c, 4 * c, bias=config.bias),
            nn.GELU(),
            nn.Linear(4 * c, c, bias=config.bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    """The plain GPT: token + position embeddings, blocks, final LayerNorm, tied lm_head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([RefBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for m in self.modules():  # nanoGPT's N(0, 0.02) init
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor) -> Tensor:
        """int64 `[B, T]` -> logits float `[B, T, V]`."""
        pos = torch.arange(idx.shape[1], device=idx.device)  # [T]
        x = self.wte(idx) + self.wpe(pos)  # [B, T, C]
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # [B, T, V]


# --- Timing. -------------------------------------------------------------------------------------


def make_step(
    forward: Callable[[Tensor], Tensor],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    device: torch.device,
) -> Callable[[], None]:
    """One training step of `model` on the fixed batch: forward under the device's autocast,
    cross-entropy on float logits, backward, clip to 1.0, AdamW (as `tasks.train.lm`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            logits = forward(x)  # [B, T, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps, the device synchronized before and after."""
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - started


def main() -> int:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", choices=sorted(GPT_PRESETS))
    parser.add_argument("--vocab", type=int, help="vocabulary (default 1024 for post, else 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, order alternating")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA)")
    args = parser.parse_args()

    device = torch.device(args.device)
    vocab = args.vocab or (1024 if args.preset == "post" else 256)
    config = gpt_config(args.preset, vocab_size=vocab)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"preset {args.preset} ({config.n_layer} layers x {config.n_head} heads x "
        f"{config.n_embd}, block {config.block_size}, vocab {vocab}), batch {args.batch}, "
        f"device {name}"
        + (f", torch threads {torch.get_num_threads()}" if name == "cpu" else "")
        + (", bf16 autocast" if device.type == "cuda" else ", float32")
    )

    torch.manual_seed(0)
    ours = GPT(config).to(device).train()
    ref = RefGPT(config).to(device).train()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ours == n_ref, f"shapes differ: ours {n_ours} parameters, reference {n_ref}"
    print(f"parameters: {n_ours:,} each; {flops_per_token(config) / 1e9:.3f} GFLOPs/token")

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (args.batch, config.block_size + 1), generator=gen)
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)  # [B, T] each, the same for both

    ours_forward: Callable[[Tensor], GPTOutput] = ours
    if args.compile:
        compiled = torch.compile(ours)
        ours_forward = compiled
        print("compiling our model (torch.compile); the reference stays eager")

    steps = {
        "ours": make_step(lambda idx: ours_forward(idx).logits, ours, x, y, device),
        "reference": make_step(ref, ref, x, y, device),
    }
    for label, step in steps.items():
        warm = timed(step, args.warmup, device)
        print(f"warm-up {label}: {args.warmup} steps in {warm:.2f} s")

    seconds = {label: 0.0 for label in steps}
    round_ratios: list[float] = []
    round_tokens = args.steps * args.batch * config.block_size
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        this_round = {label: timed(steps[label], args.steps, device) for label in order}
        for label, s in this_round.items():
            seconds[label] += s
        round_ratios.append(this_round["reference"] / this_round["ours"])
        print(
            f"round {r + 1}/{args.rounds} ({' then '.join(order)}): "
            + ", ".join(f"{label} {round_tokens / s:,.0f} tok/s" for label, s in this_round.items())
            + f", ratio {round_ratios[-1]:.2f}x"
        )
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak CUDA memory allocated: {peak_mem:.1f} GiB")

    n_tokens = args.rounds * round_tokens
    peak = peak_flops_for(name) if device.type == "cuda" else None
    rates = {label: n_tokens / s for label, s in seconds.items()}
    for label, rate in rates.items():
        mfu = (
            f"MFU {model_flops_utilization(rate, config, peak):6.1%}"
            if peak is not None
            else "MFU n/a (no known peak for this device)"
        )
        tag = " (compiled)" if label == "ours" and args.compile else ""
        print(
            f"{label + tag:<16} {rate:>12,.0f} tok/s   {seconds[label]:7.2f} s for "
            f"{args.rounds} x {args.steps} steps   {mfu}"
        )
    total_ratio = rates["ours"] / rates["reference"]
    ratio = statistics.median(round_ratios)
    verdict = "PASS" if ratio >= GOAL_RATIO else "FAIL"
    print(
        f"{verdict}: ours is {ratio:.2f}x the reference's tokens/s, median of the rounds' ratios "
        f"(goal >= {GOAL_RATIO:g}x; over all rounds {total_ratio:.2f}x)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
