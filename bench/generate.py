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

Both paths run on the same intra-op threads: `--threads N`, else those codecflow decodes the
model with (`tasks.core.threads.decode_threads`, as the evaluation does: one thread for a model
under 20 M parameters on the CPU, else the thread policy's). One thread is the KV path's faster
setting on the 2-core development machine (a single-token step is hundreds of tiny kernels; two
threads made it 19 ms instead of 2.3 ms there while other jobs ran) and the baseline's slower one
when the machine is idle (its full-window forward is compute-bound), so `--threads 2` there
measures the other corner.

Prints the machine (with its load average), the threads, the rounds, then per path: seconds,
tokens/s, real-time factor (wall seconds per second of audio, 16 000 mu-law tokens per second;
below 1 is faster than real time) and forward calls, then
`tokens_match_before_first_slide: true/false`. Random weights make greedy output nearly constant
(3 distinct tokens in the default run), so that check compares argmaxes of near-uniform logits;
`--temperature 1` samples with equally seeded generators and gives a stronger one (164 distinct
tokens in 400, all equal up to the first slide). Then `kv_speedup: <ratio>` (baseline seconds /
kv seconds), or `kv_speedup_estimate: <ratio>` when the baseline was skipped.

Last, the KV path's throughput on the demo model (`models.presets` "demo", configs/demo.yaml's
shape: 4 layers x 4 heads x 128, block 256, vocab 256) at each `--demo-batches` size (1 and 8):
`--new-tokens` per sequence after a `--prompt-tokens` prompt, best of `--demo-repeats` seeded
runs (which must draw the same tokens), ending with `demo_tokens_per_s_batch<B>: <tokens/s>`
(all B sequences together).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.presets import GPT_PRESETS
from codecflow.models.sampling import generate, sample_next
from codecflow.tasks.core.threads import apply_thread_policy, decode_threads

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
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads of both paths (default: codecflow's decode_threads for the model)",
    )
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
        "--demo-batches",
        type=int,
        nargs="*",
        default=[1, 8],
        help="then KV tokens/s of the demo model at these batch sizes (none: skip)",
    )
    parser.add_argument("--demo-repeats", type=int, default=3, help="demo runs per batch size")
    parser.add_argument(
        "--gpu-10s-mulaw",
        action="store_true",
        help="the post's GPU run: preset post on cuda, 160 000 tokens, bfloat16, no baseline",
    )
    return parser


def _sizes(args: argparse.Namespace) -> GPTConfig:
    sizes: dict[str, Any] = dict(GPT_PRESETS[args.preset] if args.preset else BENCH_MODEL)
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    return GPTConfig(vocab_size=args.vocab, **sizes)


@contextmanager
def _threads(args: argparse.Namespace, model: GPT, device: torch.device) -> Iterator[int]:
    """Both paths' intra-op threads: `--threads`, else what codecflow decodes `model` with
    (`decode_threads`: one thread for a small model on the CPU, else the thread policy's)."""
    if args.threads is None:
        with decode_threads(sum(p.numel() for p in model.parameters()), device) as threads:
            yield threads
        return
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        yield args.threads
    finally:
        torch.set_num_threads(before)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _kv_run(
    args: argparse.Namespace, model: GPT, prompt: Tensor, tokens: int, device: torch.device
) -> PathResult:
    """One whole KV-cache generation of `tokens` new tokens, seeded by `--seed`."""

    def run() -> tuple[Tensor, int, int]:
        gen = torch.Generator(device).manual_seed(args.seed)
        result = generate(
            model, prompt, tokens, tokens_per_frame=1, generator=gen, **_sampling(args)
        )
        return result.tokens, result.n_forward_calls, result.n_prefills

    return timed_path(run, device)


def _baseline_run(
    args: argparse.Namespace,
    model: GPT,
    context: Tensor,
    tokens: int,
    gen: torch.Generator,
    device: torch.device,
) -> PathResult:
    """`tokens` more baseline tokens after `context`, drawing from `gen` (carried across calls)."""

    def run() -> tuple[Tensor, int, int]:
        new, calls = generate_full_recompute(
            model, context, tokens, generator=gen, **_sampling(args)
        )
        return new, calls, calls

    return timed_path(run, device)


def _check_baseline_forward(model: GPT, prompt: Tensor, dtype: torch.dtype) -> None:
    """The baseline's forward is GPT.forward's, logits of the last position only."""
    with torch.inference_mode():
        window = prompt[:, -model.config.block_size :]  # [1, <= block]
        ref = model(window).logits[:, -1].float()  # [1, V]
        ours = last_logits(model, window).float()  # [1, V]
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert torch.allclose(ref, ours, atol=tol, rtol=tol), "baseline forward != GPT.forward"


def _estimate(
    args: argparse.Namespace, model: GPT, kv: PathResult, device: torch.device, n: int
) -> None:
    """--skip-baseline: the baseline estimated from `--estimate-tokens` full-window steps."""
    if args.estimate_tokens <= 0:
        return
    # Steady state of the baseline: every window a full block (as for almost all of a long
    # run), so this slightly overestimates the first block's steps.
    block, vocab = model.config.block_size, model.config.vocab_size
    prompt_gen = torch.Generator().manual_seed(args.seed + 1)
    full = torch.randint(0, vocab, (1, block), generator=prompt_gen).to(device)  # [1, block]
    gen = torch.Generator(device).manual_seed(args.seed)
    _baseline_run(args, model, full, min(args.warmup, args.estimate_tokens), gen, device)
    probe = _baseline_run(args, model, full, args.estimate_tokens, gen, device)
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


def _interleaved(
    args: argparse.Namespace, model: GPT, prompt: Tensor, device: torch.device, n: int
) -> tuple[PathResult, PathResult, list[float]]:
    """`--rounds` rounds of a whole KV generation and the next slice of the baseline's one
    generation, so that both paths meet the same load on a shared machine. Returns the KV path
    (mean of its runs, which must all draw the same tokens), the baseline (sum of its slices)
    and each round's own ratio."""
    rounds = max(1, min(args.rounds, n))
    slices = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    base_gen = torch.Generator(device).manual_seed(args.seed)  # one stream over all slices
    kv_runs: list[PathResult] = []
    base_parts: list[PathResult] = []
    ratios: list[float] = []
    context, done = prompt, 0
    for r, count in enumerate(slices):
        kv_runs.append(_kv_run(args, model, prompt, n, device))
        part = _baseline_run(args, model, context, count, base_gen, device)
        base_parts.append(part)
        context = torch.cat([context, part.tokens], dim=1)  # [1, P + done + count]
        # This round's own ratio: its baseline slice's rate extrapolated to n tokens, over its KV
        # run (the first slice's windows are shorter, so its ratio is low).
        ratios.append(part.seconds / count * n / kv_runs[-1].seconds)
        print(
            f"round {r + 1}/{rounds}: kv {n:,} tokens in {kv_runs[-1].seconds:.2f} s; baseline "
            f"tokens {done:,}..{done + count - 1:,} in {part.seconds:.2f} s "
            f"({part.seconds / count * 1e3:.1f} ms/token); ratio {ratios[-1]:.1f}x",
            flush=True,
        )
        done += count
    first = kv_runs[0]
    assert all(torch.equal(k.tokens, first.tokens) for k in kv_runs), "KV runs differ (seeded)"
    kv_seconds = [k.seconds for k in kv_runs]
    kv = PathResult(first.tokens, sum(kv_seconds) / rounds, first.forward_calls, first.window_calls)
    base = PathResult(
        torch.cat([b.tokens for b in base_parts], dim=1),  # [1, N]
        sum(b.seconds for b in base_parts),
        forward_calls=sum(b.forward_calls for b in base_parts),
        window_calls=sum(b.window_calls for b in base_parts),
    )
    kv_note = f"  (mean of {rounds} runs, {min(kv_seconds):.2f}-{max(kv_seconds):.2f} s)"
    _report("kv", kv, n, kv_note if rounds > 1 else "")
    _report("baseline", base, n, f"  (sum of {rounds} slices)" if rounds > 1 else "")
    return kv, base, ratios


def _agreement(args: argparse.Namespace, kv: PathResult, base: PathResult, block: int) -> bool:
    """Whether the paths drew the same tokens up to the KV window's first slide (printed)."""
    n = kv.tokens.shape[1]
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
    return same


def _demo_throughput(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype, batches: list[int]
) -> None:
    """KV-cache tokens/s of the demo model (`models.presets` "demo", configs/demo.yaml's shape)
    at each batch size: best of `--demo-repeats` seeded runs of `--new-tokens`, which must all
    draw the same tokens, on the threads codecflow decodes it with (or `--threads`)."""
    config = GPTConfig(vocab_size=args.vocab, **GPT_PRESETS["demo"])
    torch.manual_seed(args.seed)
    model = GPT(config).to(device=device, dtype=dtype).eval()
    n = args.new_tokens
    print(
        f"demo model: {config.n_layer} layers x {config.n_head} heads x {config.n_embd}, block "
        f"{config.block_size}, vocab {config.vocab_size}, {model.num_parameters():,} parameters"
    )
    with _threads(args, model, device) as threads:
        for b in batches:
            gen = torch.Generator().manual_seed(args.seed)
            prompt = torch.randint(0, config.vocab_size, (b, args.prompt_tokens), generator=gen)
            prompt = prompt.to(device)  # [B, P]
            _kv_run(args, model, prompt, min(args.warmup, n), device)
            runs = [_kv_run(args, model, prompt, n, device) for _ in range(args.demo_repeats)]
            assert all(torch.equal(r.tokens, runs[0].tokens) for r in runs), "seeded runs differ"
            best = min(r.seconds for r in runs)
            print(
                f"demo batch {b}: {n:,} new tokens per sequence in {best:.2f} s (best of "
                f"{len(runs)}, {threads} thread(s)): {n / best:,.0f} tokens/s per sequence, "
                f"{b * n / best:,.0f} tokens/s in all"
            )
            print(f"demo_tokens_per_s_batch{b}: {b * n / best:.0f}")


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = _parser()
    args = parser.parse_args()
    if args.gpu_10s_mulaw:
        parser.set_defaults(**GPU_10S_MULAW)
        args = parser.parse_args()  # flags given explicitly still win
    device = torch.device(args.device)
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    config = _sizes(args)
    n, block = args.new_tokens, config.block_size
    assert n >= 1, f"--new-tokens must be >= 1, got {n}"
    assert 1 <= args.prompt_tokens, f"--prompt-tokens must be >= 1, got {args.prompt_tokens}"

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"machine: {platform.machine()} processor {platform.processor() or '?'!r}, "
        f"cpu {_cpu_model()!r}, {os.cpu_count()} cpus, load average {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f}, device {device_name}, torch {torch.__version__}"
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
    sampling = (
        "greedy"
        if args.temperature == 0.0
        else f"temperature {args.temperature:g}, top_k {args.top_k}, top_p {args.top_p}"
    )
    print(
        f"run: {n:,} new tokens ({n / TOKENS_PER_AUDIO_SECOND:g} s of 16 kHz mu-law) after a "
        f"{args.prompt_tokens}-token prompt, {sampling}, seed {args.seed}"
    )
    _check_baseline_forward(model, prompt, dtype)
    with _threads(args, model, device) as threads:
        print(f"threads: {threads} for both paths (--threads, else codecflow's decode_threads)")
        _compare(args, model, prompt, device, n)
    if args.demo_batches:
        _demo_throughput(args, device, dtype, args.demo_batches)


def _compare(
    args: argparse.Namespace, model: GPT, prompt: Tensor, device: torch.device, n: int
) -> None:
    """The two paths (or the KV path and the estimate), warmed up, then measured and reported."""
    if args.warmup > 0:
        _kv_run(args, model, prompt, args.warmup, device)
        if not args.skip_baseline:
            gen = torch.Generator(device).manual_seed(args.seed)
            _baseline_run(args, model, prompt, args.warmup, gen, device)
    if args.skip_baseline:
        kv = _kv_run(args, model, prompt, n, device)
        _report("kv", kv, n)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"peak CUDA memory allocated: {peak:.2f} GiB")
        _estimate(args, model, kv, device, n)
        return
    kv, base, ratios = _interleaved(args, model, prompt, device, n)
    same = _agreement(args, kv, base, model.config.block_size)
    print(
        f"median of the rounds' ratios: {statistics.median(ratios):.1f}x "
        "(robust to a burst of load in one round; the ratio below is over the whole run)"
    )
    print(f"tokens_match_before_first_slide: {str(same).lower()}")
    print(f"kv_speedup: {base.seconds / kv.seconds:.1f}")


if __name__ == "__main__":
    main()
