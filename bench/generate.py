"""KV-cache generation against full recompute of the window, side by side in one run.

    uv run python bench/generate.py                          # 4 000 new tokens, CPU, both paths
    uv run python bench/generate.py --new-tokens 400         # a quick check
    uv run python bench/generate.py --device cuda            # the same on a GPU
    uv run python bench/generate.py --gpu-10s-mulaw          # 10 s of mu-law audio on a GPU

Both paths sample from the same model (random weights from `--seed`: speed does not depend on
training), continue the same random mu-law prompt and draw with equally seeded generators:

- kv: `models.sampling.generate`, the prompt prefilled into a KV cache, then one single-token
  forward per new token; when the cache is full the window slides by half a block and the kept
  tokens are re-prefilled;
- baseline: what the reference `sample.py` of Kyutai's post "Neural audio codecs: how to get audio
  into LLMs" (2025) does, i.e. nanoGPT's `GPT.generate`: for every new token, run the model without
  a cache on the whole window (the last block_size tokens, sliding by single tokens), take the last
  position's logits (nanoGPT applies lm_head to that position only, and so does this baseline),
  sample, append.

Defaults: the post's 4 000 new tokens, on the CPU, float32, greedy decoding (temperature 0) so that
the two paths must agree token for token until the KV window first slides (after that the KV path
sees a shorter, re-prefilled context than the baseline's single-token slide, and outputs may
legitimately differ). The default model is 6 layers x 8 heads x 256 wide with a 512-token context
and a 256-entry (mu-law) vocabulary, 4.8 M parameters: a sensible mid-size LM whose full-recompute
baseline still fits in about 2.5-3 minutes on a 2-core CPU (measured there: about 41 ms per
full-window forward, so about 165 s for 4 000 tokens; a 1 024-token context doubles that).
The baseline's cost grows with the context (each token reruns the whole window) while a cached
step's does not, so a larger block only widens the gap.

`--gpu-10s-mulaw` is the post's GPU setting: its LM (`models.presets` "post": 12 layers x 16 heads
x 1 024, context 2 048) on `cuda`, 160 000 new tokens (10 s at 16 kHz; the post's full recompute
took 30 minutes on an H100 for this), bfloat16, baseline skipped. When the baseline is skipped it is
estimated instead from `--estimate-tokens` full-window steps (clearly labelled as an estimate).
Other flags given on the command line override what `--gpu-10s-mulaw` sets.

The two are measured in `--rounds` interleaved rounds (4 by default), as in
`bench/lm_train_speed.py`: each round runs one whole KV generation, then the next quarter of the
baseline's single generation (which carries on from the tokens it drew before, with the same
random generator). The KV time is the mean of its runs and the baseline's the sum of its slices,
so that a burst of load on a shared machine hits both paths alike (measured on the 2-core
development machine while other jobs ran: a KV step goes from about 1.6 ms to 19 ms and a
full-window step from about 41 ms to 200 ms, so a path timed alone during a burst skews the ratio
either way). Every KV run draws the same tokens (same seed), which is checked. Each round's own
ratio (its slice's baseline rate extrapolated to all tokens, over its KV run) is printed too, with
their median, which a burst in one round does not move much.

Prints the machine, the rounds, then per path: seconds, tokens/s, real-time factor (wall seconds
per second of audio, 16 000 mu-law tokens per second; below 1 is faster than real time) and
forward calls, then `tokens_match_before_first_slide: true/false`. Random weights make greedy
output nearly constant (3 distinct tokens in the default run), so that check compares argmaxes of
near-uniform logits; `--temperature 1` samples with equally seeded generators and gives a stronger
one (164 distinct tokens in 400, all equal up to the first slide). The last line is
`kv_speedup: <ratio>` (baseline seconds / kv seconds), or `kv_speedup_estimate: <ratio>` when the
baseline was skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.gpt import GPT, GPTConfig
from models.presets import GPT_PRESETS
from models.sampling import generate, sample_next
from tasks.core.threads import apply_thread_policy

TOKENS_PER_AUDIO_SECOND = 16_000  # mu-law at 16 kHz: one token per sample
# The default model (see the module docstring for why this size).
BENCH_MODEL: dict[str, Any] = dict(
    n_layer=6, n_head=8, n_embd=256, block_size=512, dropout=0.0, bias=True
)
# What --gpu-10s-mulaw sets (explicit flags still override it).
GPU_10S_MULAW: dict[str, Any] = dict(
    device="cuda", preset="post", new_tokens=160_000, skip_baseline=True, dtype="bfloat16"
)


@dataclass
class PathResult:
    """One generation path's tokens and timing."""

    tokens: Tensor  # int64 [B, N]
    seconds: float
    forward_calls: int
    window_calls: int  # forward calls over a whole window (prefills; every baseline call)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def last_logits(model: GPT, idx: Tensor) -> Tensor:
    """nanoGPT's inference forward without a cache: int64 `[B, T]` -> float `[B, V]`, the logits
    of the last position only (nanoGPT's `lm_head(x[:, [-1], :])`), over the same modules as
    `GPT.forward`."""
    t = idx.shape[1]
    pos = torch.arange(t, dtype=torch.long, device=idx.device)  # [T]
    x = model.drop(model.wte(idx) + model.wpe(pos))  # [B, T, C]
    for block in model.h:
        x = block(x)  # [B, T, C]
    x = model.ln_f(x)
    return model.lm_head(x[:, -1])  # [B, V]


@torch.inference_mode()
def generate_full_recompute(
    model: GPT,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, int]:
    """The baseline (nanoGPT's `GPT.generate`, the post's sample.py): each new token reruns the
    model on the last block_size tokens. Returns int64 `[B, N]` new tokens and the forward calls.
    """
    block_size = model.config.block_size
    b, p = prompt.shape
    # Preallocated rather than nanoGPT's torch.cat per token: the same windows, no slower.
    stream = torch.empty((b, p + max_new_tokens), dtype=torch.long, device=prompt.device)
    stream[:, :p] = prompt
    for i in range(max_new_tokens):
        end = p + i
        window = stream[:, max(0, end - block_size) : end]  # [B, <= block_size]
        logits = last_logits(model, window)  # [B, V]
        stream[:, end] = sample_next(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
    return stream[:, p:], max_new_tokens


def timed_path(run: Callable[[], tuple[Tensor, int, int]], device: torch.device) -> PathResult:
    """Run one path with the device synchronized before and after."""
    _sync(device)
    started = time.perf_counter()
    tokens, calls, window_calls = run()
    _sync(device)
    seconds = time.perf_counter() - started
    return PathResult(tokens, seconds, forward_calls=calls, window_calls=window_calls)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _report(label: str, r: PathResult, n_tokens: int, note: str = "") -> None:
    audio = n_tokens / TOKENS_PER_AUDIO_SECOND
    print(
        f"{label:<9} {r.seconds:9.2f} s  {n_tokens / r.seconds:10,.1f} tok/s  "
        f"RTF {r.seconds / audio:9.2f}  ({audio / r.seconds:.4f}x realtime)  "
        f"forward calls {r.forward_calls:,} ({r.window_calls:,} over a whole window){note}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=4000, help="the post's 4 000 by default")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="random mu-law prompt")
    parser.add_argument("--preset", choices=sorted(GPT_PRESETS), help="a models.presets size")
    parser.add_argument("--n-layer", type=int)
    parser.add_argument("--n-head", type=int)
    parser.add_argument("--n-embd", type=int)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--vocab", type=int, default=256, help="256 for mu-law")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="model weights and cache; auto: bfloat16 on CUDA (as sample.py), else float32",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0, help="weights, prompt and sampling")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed tokens per path first")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="interleaved rounds: a whole KV run, then the next 1/rounds of the baseline",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--estimate-tokens",
        type=int,
        default=200,
        help="with --skip-baseline: full-window baseline steps timed to estimate it (0: none)",
    )
    parser.add_argument(
        "--gpu-10s-mulaw",
        action="store_true",
        help="the post's GPU run: preset post on cuda, 160 000 tokens, bfloat16, no baseline",
    )
    return parser


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = _parser()
    args = parser.parse_args()
    if args.gpu_10s_mulaw:
        parser.set_defaults(**GPU_10S_MULAW)
        args = parser.parse_args()  # flags given explicitly still win

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)

    sizes: dict[str, Any] = dict(GPT_PRESETS[args.preset] if args.preset else BENCH_MODEL)
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    config = GPTConfig(vocab_size=args.vocab, **sizes)
    n, block = args.new_tokens, config.block_size
    assert n >= 1, f"--new-tokens must be >= 1, got {n}"
    assert 1 <= args.prompt_tokens, f"--prompt-tokens must be >= 1, got {args.prompt_tokens}"

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"machine: {platform.machine()} processor {platform.processor() or '?'!r}, "
        f"cpu {_cpu_model()!r}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
        f"device {device_name}, torch {torch.__version__}"
    )

    torch.manual_seed(args.seed)
    model = GPT(config).to(device=device, dtype=dtype).eval()
    print(
        f"model: {args.preset or 'bench default'} {config.n_layer} layers x {config.n_head} heads "
        f"x {config.n_embd}, block {block}, vocab {config.vocab_size}, "
        f"{model.num_parameters():,} parameters, {dtype_name}"
    )
    prompt_gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), generator=prompt_gen)
    prompt = prompt.to(device)  # [1, P]
    audio = n / TOKENS_PER_AUDIO_SECOND
    sampling = (
        "greedy"
        if args.temperature == 0.0
        else f"temperature {args.temperature:g}, top_k {args.top_k}, top_p {args.top_p}"
    )
    print(
        f"run: {n:,} new tokens ({audio:g} s of 16 kHz mu-law) after a {args.prompt_tokens}-token "
        f"prompt, {sampling}, seed {args.seed}"
    )

    def kv_run(tokens: int) -> PathResult:
        def run() -> tuple[Tensor, int, int]:
            gen = torch.Generator(device).manual_seed(args.seed)
            result = generate(
                model,
                prompt,
                tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                frame_size=1,
                generator=gen,
            )
            return result.tokens, result.n_forward_calls, result.n_prefills

        return timed_path(run, device)

    def baseline_run(context: Tensor, tokens: int, gen: torch.Generator) -> PathResult:
        def run() -> tuple[Tensor, int, int]:
            new, calls = generate_full_recompute(
                model,
                context,
                tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                generator=gen,
            )
            return new, calls, calls

        return timed_path(run, device)

    with torch.inference_mode():
        # The baseline's forward is GPT.forward's, logits of the last position only.
        window = prompt[:, -block:]
        ref = model(window).logits[:, -1].float()  # [1, V]
        ours = last_logits(model, window).float()  # [1, V]
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        assert torch.allclose(ref, ours, atol=tol, rtol=tol), "baseline forward != GPT.forward"

    if args.warmup > 0:
        kv_run(args.warmup)
        if not args.skip_baseline:
            baseline_run(prompt, args.warmup, torch.Generator(device).manual_seed(args.seed))

    if args.skip_baseline:
        kv = kv_run(n)
        _report("kv", kv, n)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"peak CUDA memory allocated: {peak:.2f} GiB")
        if args.estimate_tokens <= 0:
            return
        # Steady state of the baseline: every window a full block (as for almost all of a long
        # run), so this slightly overestimates the first block's steps.
        full = torch.randint(0, config.vocab_size, (1, block), generator=prompt_gen).to(device)
        gen = torch.Generator(device).manual_seed(args.seed)
        baseline_run(full, min(args.warmup, args.estimate_tokens), gen)
        probe = baseline_run(full, args.estimate_tokens, gen)
        per_token = probe.seconds / args.estimate_tokens
        estimate = PathResult(probe.tokens, per_token * n, forward_calls=n, window_calls=n)
        _report(
            "baseline*",
            estimate,
            n,
            f"  (* ESTIMATE, not measured: {args.estimate_tokens} full-window steps timed, "
            f"{per_token * 1e3:.2f} ms each, times {n:,})",
        )
        print(f"kv_speedup_estimate: {estimate.seconds / kv.seconds:.1f}")
        return

    # Interleaved rounds: a whole KV generation, then the next slice of the baseline's one
    # generation, and so on, so that both paths meet the same load on a shared machine.
    rounds = max(1, min(args.rounds, n))
    slices = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    base_gen = torch.Generator(device).manual_seed(args.seed)  # one stream over all slices
    kv_runs: list[PathResult] = []
    base_parts: list[PathResult] = []
    round_ratios: list[float] = []
    context, done = prompt, 0
    for r, count in enumerate(slices):
        kv_runs.append(kv_run(n))
        part = baseline_run(context, count, base_gen)
        base_parts.append(part)
        context = torch.cat([context, part.tokens], dim=1)  # [1, P + done + count]
        # This round's own ratio: its baseline slice's rate extrapolated to n tokens, over its KV
        # run (the first slice's windows are shorter, so its ratio is low).
        round_ratios.append(part.seconds / count * n / kv_runs[-1].seconds)
        print(
            f"round {r + 1}/{rounds}: kv {n:,} tokens in {kv_runs[-1].seconds:.2f} s; baseline "
            f"tokens {done:,}..{done + count - 1:,} in {part.seconds:.2f} s "
            f"({part.seconds / count * 1e3:.1f} ms/token); ratio {round_ratios[-1]:.1f}x"
        )
        done += count

    kv_seconds = [k.seconds for k in kv_runs]
    kv = PathResult(
        kv_runs[0].tokens,
        sum(kv_seconds) / rounds,
        forward_calls=kv_runs[0].forward_calls,
        window_calls=kv_runs[0].window_calls,
    )
    assert all(torch.equal(k.tokens, kv.tokens) for k in kv_runs), "KV runs differ (seeded)"
    base = PathResult(
        torch.cat([b.tokens for b in base_parts], dim=1),  # [1, N]
        sum(b.seconds for b in base_parts),
        forward_calls=sum(b.forward_calls for b in base_parts),
        window_calls=sum(b.window_calls for b in base_parts),
    )
    kv_note = f"  (mean of {rounds} runs, {min(kv_seconds):.2f}-{max(kv_seconds):.2f} s)"
    _report("kv", kv, n, kv_note if rounds > 1 else "")
    _report("baseline", base, n, f"  (sum of {rounds} slices)" if rounds > 1 else "")

    # The KV path prefills min(P, block) prompt tokens; it first slides (re-prefills) when the
    # cache is full, which makes its token block - min(P, block) + 1 the first that may differ.
    # Up to there both paths see exactly the same context.
    n_check = min(n, block - min(args.prompt_tokens, block) + 1)
    same = torch.equal(kv.tokens[:, :n_check], base.tokens[:, :n_check])
    differ = (kv.tokens != base.tokens).nonzero()
    first_diff = int(differ[0, 1]) if len(differ) else n
    distinct = int(base.tokens[:, :n_check].unique().numel())
    print(
        f"checked the first {n_check:,} tokens (before the KV window first slides; "
        f"{distinct} distinct tokens there); the paths agree on the first {first_diff:,} of {n:,}"
    )
    print(
        f"median of the rounds' ratios: {statistics.median(round_ratios):.1f}x "
        "(robust to a burst of load in one round; the ratio below is over the whole run)"
    )
    print(f"tokens_match_before_first_slide: {str(same).lower()}")
    print(f"kv_speedup: {base.seconds / kv.seconds:.1f}")


if __name__ == "__main__":
    main()
