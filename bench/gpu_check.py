"""One GPU check: the post's sizes on one GPU in at most 8 minutes, one JSON and one table.

    uv run python bench/gpu_check.py                        # a machine with one CUDA GPU
    uv run python bench/gpu_check.py --peak-tflops 362      # a GPU the peak table below lacks
    uv run python bench/gpu_check.py --only generate        # some sections only
    uv run python bench/gpu_check.py --tiny --out /tmp/c.json   # the same code on the CPU, tiny

Sections, each with its own wall-clock budget, run one by one in a child process of their own, so
that a failure (an out-of-memory error, a crash, a section past its budget, which is killed) is
recorded with its reason and never loses the others:

- `lm_train_eager`, `lm_train_compiled`: training tokens/s of the post's LM (`train_lm` of
  configs/post-mulaw-1000h.yaml: preset post, 12 x 16 heads x 1 024, block 2 048, dropout 0.1,
  micro-batch 64, mu-law vocabulary 256) on synthetic tokens, stepped as `tasks.train.lm` steps:
  `models.gpt.GPT` under bf16 autocast on CUDA, `level_weighted_loss` on float logits, backward,
  gradient clipping, `tasks.train.lm`'s AdamW (nanoGPT's decay groups), the loss read back every
  step; without and with `torch.compile`. MFU = tokens/s x `models.flops.flops_per_token` (PaLM /
  nanoGPT: 6 N + 12 L H Q T) / the GPU's dense bf16 peak (`PEAK_BF16_TFLOPS` below, or
  `--peak-tflops`). A micro-batch that runs out of memory is halved (recorded in `oom_batches`).
- `generate`: seconds to generate 10 s of 16 kHz mu-law audio, 160 000 tokens, with the KV cache
  (`models.sampling.generate`, as `tasks.evaluate.continuation` calls it; temperature 1, bf16
  weights on CUDA as bench/generate.py) with the same LM. The post's full recompute (nanoGPT's
  sample.py) took 30 minutes for this on an H100. A probe run of two windows gives the rate; when
  all 160 000 tokens do not fit the section's budget (or `--gen-measure-tokens` caps them), the
  longest run that fits is measured and its time scaled linearly to 160 000 tokens:
  `extrapolated_from_tokens` then holds the tokens measured (null when all were generated). The
  scaling is sound for runs of several windows: after the first fill, every 1 024 tokens cost the
  same (one re-prefill of the kept half window and 1 023 single-token steps). Three variants on
  the same model, prompt and seed, each with an equal share of the time left (`variants`):
  `eager` (`GPT.forward` over the cache, a few hundred kernel launches per token), `cuda_graph`
  (the static-shape step of `models.decode_step` captured once per call and replayed per token;
  on a CUDA device only: elsewhere "not run", "needs CUDA") and `compile` (that step through
  `torch.compile(fullgraph=True)`, mode "reduce-overhead" with Inductor on CUDA). Each records
  tokens/s, the seconds for 160 000 tokens, its speed-up over eager, the compile or capture time
  of its first call (`setup_seconds`, outside the timed runs), and the largest difference of the
  log-probabilities it gives eager's tokens, fed to it over one slide of the window
  (`max_logprob_diff_vs_eager`: float rounding, or a bug). The goal: at most 2 minutes.
- `mimi_encode`: Mimi's encode (moshi's real architecture, random weights, `get_mimi(None)`, 8
  levels as `mimi_8_rvq`) in x real time at batch 1, 16 and 64, 10 s of audio per item, median of
  3 after a warm-up; each batch size is recorded or skipped on its own. Then `batching`: the same
  batch sizes over a length-varied set of segments (log-uniform lengths, in random order)
  encoded through the shard writer's `encode_segments` in the manifest's order, in sorted
  pools of 64 and sorted whole (what `tokenize` does), with the padded frames of each
  (bench/tokenizers_rtf.py `--batching` on the CPU).
- `codec_train`: training steps/s of the post's RVQ codec (`train_codec` of
  configs/post-codec-rvq8-10000h.yaml: 397 473 parameters, 128 crops of 4.096 s) through
  `tasks.train.codec`'s own step (bf16 autocast on CUDA), on synthetic audio already on the
  device (the crop loader is not timed).

The JSON (`--out`, default runs/bench/gpu_check.json) is written atomically after each section
and at the end; the table is printed last. `--tiny` runs every section on the CPU with the tiny
twins of the configs (configs/tiny/), a 1 600-token generation, Mimi at batch 1, 2 and 4 on
0.32 s, `torch.compile` with the `aot_eager` backend (Dynamo and AOTAutograd as on the GPU, no
Inductor C++ build, which takes about 26 s for the tiny GPT on a 2-core CPU), one torch thread by
default: about 30 s on an idle 2-core CPU (a minute or more when it is shared). Exit status 1
when a section was skipped (the JSON says why).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from codecflow.models.decode_step import DecodeMode
from codecflow.models.flops import flops_per_token, model_flops_utilization
from codecflow.models.gpt import GPT
from codecflow.models.level_loss import level_weighted_loss
from codecflow.models.losses import codec_loss
from codecflow.models.mimi import MimiTokenizer
from codecflow.models.sampling import GenerationResult, generate
from codecflow.schemas.configs import TrainCodecSettings, TrainLMSettings
from codecflow.tasks.core import storage
from codecflow.tasks.data.lm_windows import model_config
from codecflow.tasks.data.manifest import CODEC_RATE
from codecflow.tasks.train.codec import codec_from_settings
from codecflow.tasks.train.lm import build_optimizer

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "codecflow.gpu_check/1"
SECTIONS = ("lm_train_eager", "lm_train_compiled", "generate", "mimi_encode", "codec_train")
# How `generate` runs each single-token step (models.sampling.generate's `decode`), as the table
# names them; each one's share of the section's time (torch.compile's Inductor build is part of
# its share: tens of seconds for the post's LM).
DECODES: dict[DecodeMode, str] = {
    "eager": "eager",
    "cuda_graph": "CUDA graph",
    "compile": "torch.compile",
}
DECODE_SHARES: dict[DecodeMode, float] = {"eager": 1.0, "cuda_graph": 1.0, "compile": 2.0}
UNFINISHED = "unfinished when the section ended (killed past its budget, or a crash)"
MULAW_VOCAB = 256  # mu-law-256: one level, 256 codes (configs/post-mulaw-1000h.yaml)
TOKENS_PER_AUDIO_SECOND = 16_000  # mu-law at 16 kHz: one token per sample
GENERATE_AUDIO_SECONDS = 10.0
# Kyutai, "Neural audio codecs: how to get audio into LLMs" (2025): generating 10 s of mu-law
# audio with nanoGPT's sample.py (full recompute, no cache) took 30 minutes on an H100.
POST_GENERATE_SECONDS_H100 = 30 * 60.0
MIMI_LEVELS = 8  # mimi_8_rvq, the post's main Mimi tokenizer
# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s: NVIDIA's data sheets give the
# sparse figure, twice the dense one. The first name contained in the device name wins, so the
# more specific names come first ("H100 PCIE" before "H100", "L40S" and "L40" before "L4").
# models.flops maps every H100 to the SXM figure; here the PCIe and NVL cards get their own.
PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIE", 756.0, "NVIDIA H100 data sheet: PCIe 1 513 TFLOPS bf16 with sparsity"),
    ("H100 NVL", 835.0, "NVIDIA H100 data sheet: NVL 1 671 TFLOPS bf16 with sparsity"),
    ("H100", 989.0, "NVIDIA H100 data sheet: SXM 1 979 TFLOPS bf16 with sparsity"),
    ("H200", 989.0, "NVIDIA H200 data sheet: 1 979 TFLOPS bf16 with sparsity (H100 SXM's)"),
    ("A100", 312.0, "NVIDIA A100 data sheet: 312 TFLOPS bf16 dense (624 sparse)"),
    ("L40S", 362.0, "NVIDIA L40S data sheet: 362.05 TFLOPS bf16 dense (733 sparse)"),
    ("L40", 181.0, "NVIDIA L40 data sheet: 181.05 TFLOPS bf16 dense (362.1 sparse)"),
    ("L4", 121.0, "NVIDIA L4 data sheet: 242 TFLOPS bf16 with sparsity"),
)


@dataclass(frozen=True)
class Mode:
    """The sizes one mode runs: the post's on a GPU, or the tiny twins on the CPU."""

    name: str
    lm_config: Path  # a pipeline config whose train_lm section gives the LM and its batch
    codec_config: Path  # ... whose train_codec section gives the codec and its batch
    lm_steps: int  # timed steps at most ...
    lm_seconds: float  # ... or until this many seconds
    compile_backend: str
    gen_tokens: int
    gen_prompt: int
    mimi_batches: tuple[int, ...]
    mimi_seconds: float  # audio per item
    mimi_repeats: int
    mimi_set: tuple[int, float, float]  # the length-varied set: segments, shortest, longest (s)
    codec_steps: int
    codec_seconds: float
    budgets: dict[str, float]  # each section's hard wall-clock limit, its process included
    total_seconds: float  # all sections together


GPU = Mode(
    name="gpu",
    lm_config=REPO / "configs/post-mulaw-1000h.yaml",
    codec_config=REPO / "configs/post-codec-rvq8-10000h.yaml",
    lm_steps=50,
    lm_seconds=15.0,
    compile_backend="inductor",
    gen_tokens=int(GENERATE_AUDIO_SECONDS * TOKENS_PER_AUDIO_SECOND),
    gen_prompt=256,
    mimi_batches=(1, 16, 64),
    mimi_seconds=10.0,
    mimi_repeats=3,
    mimi_set=(256, 0.5, 10.0),
    codec_steps=50,
    codec_seconds=20.0,
    # 465 s in all, under the 8 minutes with this process's own start-up.
    budgets={
        "lm_train_eager": 60.0,
        "lm_train_compiled": 135.0,
        "generate": 140.0,
        "mimi_encode": 70.0,
        "codec_train": 60.0,
    },
    total_seconds=470.0,
)

TINY = Mode(
    name="tiny",
    lm_config=REPO / "configs/tiny/post-mulaw-1000h.yaml",
    codec_config=REPO / "configs/tiny/post-codec-rvq8-10000h.yaml",
    lm_steps=5,
    lm_seconds=1.0,
    compile_backend="aot_eager",
    gen_tokens=1_600,  # 0.1 s of mu-law
    gen_prompt=32,
    mimi_batches=(1, 2, 4),
    mimi_seconds=0.32,  # 4 Mimi frames
    mimi_repeats=2,
    mimi_set=(12, 0.08, 0.4),
    codec_steps=3,
    codec_seconds=1.0,
    budgets={name: 60.0 for name in SECTIONS},
    total_seconds=180.0,
)


@dataclass
class Context:
    """What a section runs with: the mode, the device, its soft deadline and the arguments."""

    mode: Mode
    device: torch.device
    deadline: float  # time.time() after which a section stops measuring more
    args: argparse.Namespace
    peak: tuple[float | None, str] = field(default=(None, ""))

    def left(self) -> float:
        return self.deadline - time.time()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# --- Helpers. ----------------------------------------------------------------------------------


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it comes from) for a device, or (None, why not)."""
    if override is not None:
        return override, "--peak-tflops"
    upper = device_name.upper()
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key in upper:
            return tflops, f"table: {key} ({source})"
    return None, f"no known peak for {device_name!r}: pass --peak-tflops"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, times: int = 1) -> float:
    """Seconds for `times` calls of `fn`, the device synchronized before and after."""
    _sync(device)
    started = time.perf_counter()
    for _ in range(times):
        fn()
    _sync(device)
    return time.perf_counter() - started


def _timed_loop(
    step: Callable[[], object], ctx: Context, max_steps: int, seconds: float
) -> tuple[int, float]:
    """(steps, seconds): at least one step, then more until `max_steps`, `seconds`, or until the
    next step (as long as the last) would pass the section's deadline."""
    _sync(ctx.device)
    started = last = time.perf_counter()
    steps = 0
    while True:
        step()
        steps += 1
        _sync(ctx.device)
        now = time.perf_counter()
        elapsed, took, last = now - started, now - last, now
        if steps >= max_steps or elapsed >= seconds or ctx.left() < 1.5 * took:
            return steps, elapsed


def _warm_up(step: Callable[[], object], ctx: Context, steps: int) -> tuple[int, float]:
    """(untimed steps run, the first one's seconds): up to `steps`, fewer when they are so slow
    that the timed steps would not fit the section's deadline. The first step (which compiles,
    autotunes, allocates) does not count for that: a second one always runs."""
    first = _timed(step, ctx.device)
    done, last = 1, 0.0
    while done < steps and ctx.left() > 4 * last:
        last = _timed(step, ctx.device)
        done += 1
    return done, first


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    kind = "out of memory" if _is_oom(exc) else type(exc).__name__
    return f"{kind}: {first}" if first else kind


def _free(device: torch.device) -> None:
    torch._dynamo.reset()  # compiled graphs hold on to the model they were traced from
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _halving_on_oom(run: Callable[[int], dict[str, Any]], batch: int, ctx: Context) -> dict:
    """`run(batch)`, the batch halved after each out-of-memory error (down to 1)."""
    failed: list[int] = []
    while True:
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        try:
            result = run(batch)
        except Exception as exc:
            if not _is_oom(exc) or batch == 1:
                raise
            failed.append(batch)
        else:
            return {**result, "oom_batches": failed}
        _free(ctx.device)  # outside the except block: the traceback's tensors are gone
        batch //= 2


def _peak_memory_gib(ctx: Context) -> float | None:
    return torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.cuda else None


def _section(path: Path, key: str) -> dict[str, Any]:
    with open(path) as f:
        return dict(yaml.safe_load(f)[key])


def _lm_settings(ctx: Context) -> TrainLMSettings:
    return TrainLMSettings.model_validate(_section(ctx.mode.lm_config, "train_lm"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# --- Sections. ---------------------------------------------------------------------------------


def lm_train(ctx: Context, compiled: bool) -> dict[str, Any]:
    """Training tokens/s and MFU of the LM, as `tasks.train.lm` steps (one micro-batch a step)."""
    settings = _lm_settings(ctx)
    batch = ctx.args.lm_batch or settings.batch_size
    result = _halving_on_oom(lambda b: _lm_train_at(ctx, settings, b, compiled), batch, ctx)
    return {"config": _rel(ctx.mode.lm_config), **result}


def _lm_train_at(
    ctx: Context, settings: TrainLMSettings, batch: int, compiled: bool
) -> dict[str, Any]:
    config = model_config(settings, MULAW_VOCAB)
    torch.manual_seed(settings.seed)
    model = GPT(config).to(ctx.device).train()
    optimizer = build_optimizer(model, settings)
    backend = ctx.mode.compile_backend
    trained = torch.compile(model, backend=backend) if compiled else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.cuda)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (batch, config.block_size + 1), generator=gen)
    x, y = tokens[:, :-1].to(ctx.device), tokens[:, 1:].to(ctx.device)  # [B, T] each
    levels = torch.zeros(config.block_size, dtype=torch.long, device=ctx.device)  # [T]: 1 level

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = trained(x).logits  # [B, T, V]
        loss = level_weighted_loss(logits.float(), y, levels, [1.0])
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        loss.total.item()  # train_lm reads the loss back every micro-batch (a host sync)

    warmup, first_step = _warm_up(step, ctx, 3)
    steps, seconds = _timed_loop(step, ctx, ctx.mode.lm_steps, ctx.mode.lm_seconds)
    tokens_per_s = steps * batch * config.block_size / seconds
    peak, _ = ctx.peak
    mfu = model_flops_utilization(tokens_per_s, config, peak * 1e12) if peak else None
    return {
        "preset": settings.preset,
        "shape": f"{config.n_layer} layers x {config.n_head} heads x {config.n_embd}",
        "block_size": config.block_size,
        "vocab_size": config.vocab_size,
        "dropout": config.dropout,
        "parameters": model.num_parameters(),
        "precision": "bf16 autocast" if ctx.cuda else "float32",
        "compile": compiled,
        "compile_backend": backend if compiled else None,
        "batch": batch,
        "first_step_s": first_step,
        "warmup_steps": warmup,
        "steps": steps,
        "seconds": seconds,
        "tokens_per_step": batch * config.block_size,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token(config),
        "achieved_tflops": tokens_per_s * flops_per_token(config) / 1e12,
        "mfu": mfu,
        "peak_memory_gib": _peak_memory_gib(ctx),
    }


def generate_audio(ctx: Context) -> dict[str, Any]:
    """Seconds to generate 10 s of mu-law (160 000 tokens) with the KV cache, or an
    extrapolation from the longest run that fits, for each way of running the single-token step
    (`DECODES`) on the same model, prompt and seed, each with its share of the time left
    (`DECODE_SHARES`). What is measured is recorded before each variant starts, so that a kill
    past the budget (a compile slower than foreseen) keeps it."""
    settings = _lm_settings(ctx)
    config = model_config(settings, MULAW_VOCAB)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32  # sample.py runs bf16 on a GPU
    torch.manual_seed(settings.seed)
    model = GPT(config).to(device=ctx.device, dtype=dtype).eval()
    target = ctx.args.gen_tokens or ctx.mode.gen_tokens
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (1, ctx.mode.gen_prompt), generator=gen)
    prompt = prompt.to(ctx.device)  # [1, P]
    # Past one slide of the window: the re-prefill writes the buffers the static step reads.
    check_tokens = min(target, ctx.args.gen_measure_tokens or target, config.block_size + 64)
    reference = _generate(ctx, model, prompt, check_tokens, "eager", return_logprobs=True)[1]
    variants: list[dict[str, Any]] = []
    report = {
        "config": _rel(ctx.mode.lm_config),
        "preset": settings.preset,
        "parameters": model.num_parameters(),
        "block_size": config.block_size,
        "dtype": str(dtype).removeprefix("torch."),
        "sampling": "temperature 1.0, KV cache (models.sampling.generate)",
        "prompt_tokens": ctx.mode.gen_prompt,
        "target_tokens": target,
        "audio_seconds": target / TOKENS_PER_AUDIO_SECOND,
        "check_tokens": check_tokens,
        "variants": variants,
        "post_full_recompute_seconds_h100": POST_GENERATE_SECONDS_H100,
    }
    runnable = [d for d in DECODES if _not_run(ctx, d) is None]
    for decode in DECODES:
        if (not_run := _not_run(ctx, decode)) is not None:
            variants.append(not_run)
            continue
        _record_partial(ctx, report)
        shares = [DECODE_SHARES[d] for d in runnable[runnable.index(decode) :]]
        deadline = time.time() + ctx.left() * shares[0] / sum(shares)
        try:
            row = _generate_variant(ctx, model, prompt, decode, deadline)
            row["max_logprob_diff_vs_eager"] = _logprob_diff(ctx, model, prompt, decode, reference)
            eager = variants[0] if variants else row
            if eager["status"] == "ok":
                row["speedup_vs_eager"] = eager["seconds_for_target"] / row["seconds_for_target"]
        except Exception as exc:  # a failed capture or compile: the other variants still count
            traceback.print_exc()
            row = {"status": "skipped", "reason": _reason(exc)}
        variants.append({"decode": decode, **row})
        _free(ctx.device)
    return {**report, "peak_memory_gib": _peak_memory_gib(ctx)}


def _not_run(ctx: Context, decode: DecodeMode) -> dict[str, Any] | None:
    """The row of a variant this device cannot run (CUDA graphs off CUDA), else None."""
    if decode == "cuda_graph" and not ctx.cuda:
        return {"decode": decode, "status": "not run", "reason": "needs CUDA"}
    return None


def _record_partial(ctx: Context, report: dict[str, Any]) -> None:
    """Write the variants measured so far as the section's result, the others as unfinished:
    what the parent reads if this process is killed or crashes before the section's own result."""
    if ctx.args.section_out is None:  # not a child process (a test calling the section)
        return
    later = [
        _not_run(ctx, d) or {"decode": d, "status": "skipped", "reason": UNFINISHED}
        for d in list(DECODES)[len(report["variants"]) :]
    ]
    variants = [*report["variants"], *later]
    storage.write_json(ctx.args.section_out, {"status": "ok", **report, "variants": variants})


def _generate(
    ctx: Context, model: GPT, prompt: torch.Tensor, n: int, decode: DecodeMode, **kwargs: Any
) -> tuple[float, GenerationResult]:
    """(seconds, result) of one `generate` call, seeded the same for every variant."""
    sampler = torch.Generator(ctx.device).manual_seed(0)
    backend = ctx.mode.compile_backend
    results: list[GenerationResult] = []

    def call() -> None:
        kwargs.update(decode=decode, compile_backend=backend, generator=sampler)
        results.append(generate(model, prompt, n, temperature=1.0, **kwargs))

    return _timed(call, ctx.device), results[0]


def _generate_variant(
    ctx: Context, model: GPT, prompt: torch.Tensor, decode: DecodeMode, deadline: float
) -> dict[str, Any]:
    """One decode variant: a warm-up (which compiles or captures), a probe of two windows for
    the rate, then the longest run that fits before `deadline`, scaled to the target."""
    target = ctx.args.gen_tokens or ctx.mode.gen_tokens
    cap = ctx.args.gen_measure_tokens or target
    _, first = _generate(ctx, model, prompt, 8, decode)
    probe_tokens = min(target, cap, 2 * model.config.block_size)  # slides the window at least once
    probe_seconds, result = _generate(ctx, model, prompt, probe_tokens, decode)
    fits = int(probe_tokens / probe_seconds * max(0.0, deadline - time.time()) * 0.8)
    n = min(target, cap, fits)
    if n > probe_tokens:
        measured, result = _generate(ctx, model, prompt, n, decode)
    else:  # no time for a longer run: the probe is the measurement
        n, measured = probe_tokens, probe_seconds
    full = measured if n == target else measured * target / n
    audio = target / TOKENS_PER_AUDIO_SECOND
    compiled = decode == "compile"
    return {
        "status": "ok",
        "compile_backend": ctx.mode.compile_backend if compiled else None,
        "compile_mode": ("reduce-overhead" if ctx.cuda else "default") if compiled else None,
        # The first call's compile or capture (and its first step); not in the times below.
        "setup_seconds": first.decode_setup_seconds,
        # Each call captures again (or re-records the compiled graphs on new cache buffers):
        # that is in the times below.
        "setup_seconds_per_call": result.decode_setup_seconds,
        "probe_tokens": probe_tokens,
        "probe_seconds": probe_seconds,
        "measured_tokens": n,
        "measured_seconds": measured,
        "extrapolated_from_tokens": None if n == target else n,
        "seconds_for_target": full,
        "tokens_per_s": n / measured,
        "x_realtime": audio / full,
    }


def _logprob_diff(
    ctx: Context, model: GPT, prompt: torch.Tensor, decode: DecodeMode, reference: GenerationResult
) -> float | None:
    """The largest difference of the log-probabilities of eager's tokens, fed (forced) to this
    variant: whether it computes what eager does (float rounding apart); None for eager."""
    if decode == "eager":
        return None
    assert reference.logprobs is not None
    n = reference.tokens.shape[1]
    forced = torch.ones(n, dtype=torch.bool, device=ctx.device)  # [N]
    kwargs = {"forced_tokens": reference.tokens, "forced_mask": forced, "return_logprobs": True}
    _, result = _generate(ctx, model, prompt, n, decode, **kwargs)
    assert result.logprobs is not None
    return float((result.logprobs - reference.logprobs).abs().max())


def mimi_encode(ctx: Context) -> dict[str, Any]:
    """Mimi's encode in x real time at each batch size (random weights: the speed is the same)."""
    from moshi.models.loaders import get_mimi

    model = get_mimi(None, device=str(ctx.device), num_codebooks=MIMI_LEVELS)
    tokenizer = MimiTokenizer(model, MIMI_LEVELS)
    seconds = ctx.args.mimi_seconds or ctx.mode.mimi_seconds
    rows: list[dict[str, Any]] = []
    for batch in ctx.args.mimi_batches or ctx.mode.mimi_batches:
        if ctx.left() <= 0:
            rows.append({"batch": batch, "status": "skipped", "reason": "section budget spent"})
            continue
        try:
            rows.append(_mimi_batch(ctx, tokenizer, batch, seconds))
        except Exception as exc:  # one batch size (64 running out of memory, say) only
            rows.append({"batch": batch, "status": "skipped", "reason": _reason(exc)})
        _free(ctx.device)
    batching = _mimi_batching(ctx, tokenizer)
    param = next(model.parameters())
    return {
        "levels": MIMI_LEVELS,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "weights": "random (moshi get_mimi(None)); the speed does not depend on them",
        "audio_seconds_per_item": seconds,
        "repeats": ctx.mode.mimi_repeats,
        "batches": rows,
        "batching": batching,
        "peak_memory_gib": _peak_memory_gib(ctx),
    }


def _mimi_batching(ctx: Context, tokenizer: MimiTokenizer) -> dict[str, Any]:
    """The length-varied set at each batch size, by order (bench/tokenizers_rtf.py's rows)."""
    from tokenizers_rtf import batching_rows, length_varied_seconds  # bench/, beside this file

    count, low, high = ctx.mode.mimi_set
    seconds = length_varied_seconds(count, low, high)
    if ctx.left() <= 0:
        return {"status": "skipped", "reason": "section budget spent"}
    try:
        timer = lambda fn: _timed(fn, ctx.device)  # noqa: E731
        batches = list(ctx.args.mimi_batches or ctx.mode.mimi_batches)
        rows = batching_rows(tokenizer, seconds, batches, 1, timer)
    except Exception as exc:  # out of memory at batch 64, say: the uniform rows still stand
        return {"status": "skipped", "reason": _reason(exc)}
    finally:
        _free(ctx.device)
    return {"status": "ok", "segments": count, "audio_seconds": sum(seconds), "rows": rows}


def _mimi_batch(
    ctx: Context, tokenizer: MimiTokenizer, batch: int, seconds: float
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(batch)
    samples = int(seconds * tokenizer.sample_rate)
    wav = (0.1 * torch.randn(batch, 1, samples, generator=gen)).to(ctx.device)  # [B, 1, T]
    with torch.inference_mode():
        codes = tokenizer.encode(wav)  # warm-up; [B, K, F]
        times = [
            _timed(lambda: tokenizer.encode(wav), ctx.device) for _ in range(ctx.mode.mimi_repeats)
        ]
    median = statistics.median(times)
    return {
        "batch": batch,
        "status": "ok",
        "frames": int(codes.shape[-1]),
        "seconds": median,
        "x_realtime": batch * seconds / median,
    }


def codec_train(ctx: Context) -> dict[str, Any]:
    """Training steps/s of the post's RVQ codec through `tasks.train.codec`'s step."""
    settings = TrainCodecSettings.model_validate(_section(ctx.mode.codec_config, "train_codec"))
    batch = ctx.args.codec_batch or settings.batch_size
    result = _halving_on_oom(lambda b: _codec_train_at(ctx, settings, b), batch, ctx)
    return {"config": _rel(ctx.mode.codec_config), **result}


def _codec_train_at(ctx: Context, settings: TrainCodecSettings, batch: int) -> dict[str, Any]:
    hop = 2**settings.n_blocks
    crop = max(hop, int(settings.crop_seconds * CODEC_RATE) // hop * hop)  # as train_codec
    torch.manual_seed(settings.seed)
    codec = codec_from_settings(settings).to(ctx.device).train()
    optimizer = torch.optim.AdamW(
        codec.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.cuda)
    gen = torch.Generator().manual_seed(0)
    wav = (0.1 * torch.randn(batch, 1, crop, generator=gen)).to(ctx.device)  # [B, 1, T]

    def step() -> None:
        # train-codec's step (tasks/train/codec.py): the post's loss, clipping, AdamW.
        with autocast:
            result = codec(wav)
        loss = codec_loss(result.reconstruction.float(), wav, result.commitment_loss.float())
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), settings.grad_clip)
        optimizer.step()

    warmup, _ = _warm_up(step, ctx, 2)
    steps, seconds = _timed_loop(step, ctx, ctx.mode.codec_steps, ctx.mode.codec_seconds)
    return {
        "arch": settings.arch,
        "parameters": sum(p.numel() for p in codec.parameters()),
        "num_levels": settings.num_levels,
        "codebook_size": settings.codebook_size,
        "precision": "bf16 autocast" if ctx.cuda else "float32",
        "batch": batch,
        "crop_samples": crop,
        "crop_seconds": crop / CODEC_RATE,
        "warmup_steps": warmup,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "samples_per_s": steps * batch / seconds,
        "audio_x_realtime": steps * batch * crop / CODEC_RATE / seconds,
        "peak_memory_gib": _peak_memory_gib(ctx),
    }


SECTION_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "lm_train_eager": lambda ctx: lm_train(ctx, compiled=False),
    "lm_train_compiled": lambda ctx: lm_train(ctx, compiled=True),
    "generate": generate_audio,
    "mimi_encode": mimi_encode,
    "codec_train": codec_train,
}


# --- One section in this process (the child). ----------------------------------------------------


def _set_threads(args: argparse.Namespace, mode: Mode) -> None:
    # Tiny mode shares a small machine (2 cores here, with other jobs): one thread unless told.
    threads = args.threads or (1 if mode.name == "tiny" else None)
    if threads:
        torch.set_num_threads(threads)


def run_section(args: argparse.Namespace, mode: Mode) -> None:
    """Run `args.section` and write its result (or why it was skipped) to `args.section_out`."""
    _set_threads(args, mode)
    device = torch.device(args.device)
    ctx = Context(
        mode, device, args.deadline, args, peak_tflops(_device_name(device), args.peak_tflops)
    )
    started = time.perf_counter()
    try:
        result = {"status": "ok", **SECTION_FUNCTIONS[args.section](ctx)}
    except Exception as exc:
        traceback.print_exc()
        result = {"status": "skipped", "reason": _reason(exc)}
    result["wall_s"] = time.perf_counter() - started
    storage.write_json(args.section_out, result)


# --- All sections, each in a child process (the parent). ----------------------------------------


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine(args: argparse.Namespace, mode: Mode) -> dict[str, Any]:
    device = torch.device(args.device)
    name = _device_name(device)
    peak, source = peak_tflops(name, args.peak_tflops)
    return {
        "device": str(device),
        "device_name": name,
        "peak_bf16_tflops": peak,
        "peak_source": source,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": args.threads or (1 if mode.name == "tiny" else torch.get_num_threads()),
    }


def _child(name: str, limit: float, args: argparse.Namespace) -> dict[str, Any]:
    """Run one section in a child process, killed (with its process group) after `limit` s."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        out = Path(tmp) / "section.json"
        # The soft deadline leaves a tenth of the budget (at least 3 s) to finish and write.
        deadline = time.time() + limit - max(3.0, 0.1 * limit)
        command = [
            *[sys.executable, str(Path(__file__).resolve()), *args.argv],
            *["--section", name, "--section-out", str(out), "--deadline", str(deadline)],
        ]
        # Its own process group, so that a kill also ends compile workers it started.
        proc = subprocess.Popen(command, stdout=sys.stderr, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            wall = time.perf_counter() - started
            reason = f"killed past its time budget of {limit:.0f} s"
            if out.exists():  # what a section recording as it goes (generate) measured
                return {**json.loads(out.read_text()), "wall_s": wall, "killed": reason}
            return {"status": "skipped", "reason": reason, "wall_s": wall}
        if out.exists():
            return dict(json.loads(out.read_text()))
    wall = time.perf_counter() - started
    return {"status": "skipped", "reason": f"exit status {rc} without a result", "wall_s": wall}


def run_all(args: argparse.Namespace, mode: Mode) -> dict[str, Any]:
    """Every section in turn within the total budget; the JSON rewritten after each one."""
    started = time.perf_counter()
    budgets = {**mode.budgets, **dict(args.budget or [])}
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode.name,
        "machine": _machine(args, mode),
        "budgets_s": {name: budgets[name] for name in args.only},
        "total_budget_s": mode.total_seconds,
        "sections": {},
    }
    for name in args.only:
        left = mode.total_seconds - (time.perf_counter() - started)
        limit = min(budgets[name], left)
        print(f"[gpu_check] {name}: budget {limit:.0f} s", file=sys.stderr, flush=True)
        if left < 5.0:
            result: dict[str, Any] = {"status": "skipped", "reason": "total time budget spent"}
        else:
            result = _child(name, limit, args)
        report["sections"][name] = result
        report["wall_s"] = time.perf_counter() - started
        storage.write_json(args.out, report)
        detail = result.get("reason", f"{result.get('wall_s', 0.0):.1f} s")
        print(f"[gpu_check] {name}: {result['status']} ({detail})", file=sys.stderr, flush=True)
    return report


# --- The table. ----------------------------------------------------------------------------------


def _lm_row(label: str, r: dict[str, Any]) -> tuple[str, str, str]:
    mfu = f"MFU {r['mfu']:.1%}" if r.get("mfu") is not None else "MFU n/a (no peak)"
    compiled = f", compile {r['compile_backend']} {r['first_step_s']:.0f} s" if r["compile"] else ""
    detail = (
        f"{r['preset'] or r['shape']}, block {r['block_size']}, batch {r['batch']}, "
        f"{r['precision']}, {r['steps']} steps in {r['seconds']:.1f} s{compiled}"
    )
    return label, f"{r['tokens_per_s']:,.0f} tokens/s  {mfu}", detail


def _generate_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for v in r["variants"]:
        label = f"generate {r['audio_seconds']:g} s mu-law (KV), {DECODES[v['decode']]}"
        if v["status"] != "ok":
            rows.append((label, "NOT RUN" if v["status"] == "not run" else "SKIPPED", v["reason"]))
            continue
        value = f"{v['seconds_for_target']:,.1f} s for {r['target_tokens']:,} tokens"
        if v["extrapolated_from_tokens"] is None:
            how = f"measured: all {r['target_tokens']:,} tokens"
        else:
            how = (
                f"EXTRAPOLATED from {v['extrapolated_from_tokens']:,} tokens measured in "
                f"{v['measured_seconds']:.1f} s"
            )
        speedup = v.get("speedup_vs_eager")
        versus = f", {speedup:.2f}x eager" if speedup is not None and v["decode"] != "eager" else ""
        if v["decode"] == "compile":
            versus += f", compile {v['compile_backend']} {v['setup_seconds']:.1f} s once"
        elif v["decode"] == "cuda_graph":
            versus += f", capture {v['setup_seconds']:.2f} s"
        if v["decode"] == "eager":
            post = r["post_full_recompute_seconds_h100"] / 60
            how += f" (the post: {post:.0f} min on an H100, no cache)"
        else:
            how += f", max |logprob - eager's| {v['max_logprob_diff_vs_eager']:.1e}"
        detail = (
            f"{v['tokens_per_s']:,.0f} tokens/s, {v['x_realtime']:.3f}x real time{versus}, {how}"
        )
        rows.append((label, value, detail))
    return rows


def _section_rows(name: str, r: dict[str, Any]) -> list[tuple[str, str, str]]:
    if name.startswith("lm_train"):
        return [_lm_row("LM train, " + ("torch.compile" if r["compile"] else "eager"), r)]
    if name == "generate":
        return _generate_rows(r)
    if name == "mimi_encode":
        rows = []
        for b in r["batches"]:
            label = f"Mimi encode, batch {b['batch']}"
            if b["status"] != "ok":
                rows.append((label, "SKIPPED", b["reason"]))
                continue
            detail = f"{r['audio_seconds_per_item']:g} s per item, median of {r['repeats']}"
            rows.append((label, f"{b['x_realtime']:,.1f}x real time", detail))
        batching = r["batching"]
        if batching["status"] != "ok":
            return [*rows, ("Mimi encode, length-varied", "SKIPPED", batching["reason"])]
        for b in batching["rows"]:
            label = f"Mimi encode, varied, batch {b['batch']} {b['order']}"
            detail = f"{b['padded_share']:.1%} padded frames, {b['batches']} batches"
            rows.append((label, f"{b['x_realtime']:,.1f}x real time", detail))
        return rows
    detail = (
        f"{r['arch']} codec, {r['parameters']:,} parameters, batch {r['batch']} x "
        f"{r['crop_seconds']:g} s, {r['precision']}, {r['steps']} steps in {r['seconds']:.1f} s"
    )
    return [("codec train", f"{r['steps_per_s']:.2f} steps/s", detail)]


def format_table(report: dict[str, Any]) -> str:
    """The report as a readable table: one row per measurement, skipped ones with their reason."""
    m = report["machine"]
    peak = (
        f"{m['peak_bf16_tflops']:g} TFLOP/s ({m['peak_source']})"
        if m["peak_bf16_tflops"]
        else m["peak_source"]
    )
    lines = [
        f"GPU check ({report['mode']}): {m['device_name']} ({m['device']}), torch {m['torch']}, "
        f"CUDA {m['cuda']}, {m['cpus']} cpus ({m['cpu']})",
        f"MFU peak: {peak}",
    ]
    rows: list[tuple[str, str, str]] = [("measurement", "result", "detail")]
    for name, r in report["sections"].items():
        if r["status"] != "ok":
            rows.append((name, "SKIPPED", r["reason"]))
        else:
            rows.extend(_section_rows(name, r))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
    lines.insert(3, "-" * (width[0] + width[1] + 4 + max(len(row[2]) for row in rows)))
    return "\n".join(lines)


# --- Command line. -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _budget(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in SECTIONS or not seconds:
        raise argparse.ArgumentTypeError(f"SECTION=SECONDS with a section of {SECTIONS}")
    return name, float(seconds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the suite)")
    parser.add_argument("--out", default="runs/bench/gpu_check.json", help="the JSON report")
    parser.add_argument("--device", help="default: cuda (cpu with --tiny)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--budget",
        type=_budget,
        action="append",
        metavar="SECTION=SECONDS",
        help="another wall-clock budget for a section (repeatable)",
    )
    parser.add_argument("--threads", type=_positive, help="torch threads (default 1 with --tiny)")
    parser.add_argument("--lm-batch", type=_positive, help="LM micro-batch (default: the config's)")
    parser.add_argument("--codec-batch", type=_positive, help="codec batch (default: the config's)")
    parser.add_argument("--gen-tokens", type=_positive, help="tokens to generate (default 160 000)")
    parser.add_argument(
        "--gen-measure-tokens", type=_positive, help="measure at most this many, then extrapolate"
    )
    parser.add_argument("--mimi-batches", type=_positive, nargs="+", help="default 1 16 64")
    parser.add_argument("--mimi-seconds", type=float, help="audio per item (default 10)")
    # Internal: one section in a child process.
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--section-out", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    mode = TINY if args.tiny else GPU
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.section is not None:
        run_section(args, mode)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: --tiny runs the check on the CPU at tiny sizes")
    report = run_all(args, mode)
    print(format_table(report))
    print(f"report: {args.out}")
    return 0 if all_ok(report) else 1


def all_ok(report: dict[str, Any]) -> bool:
    """Whether every section (every Mimi batch size, every decode variant a CUDA device is not
    missing for) was measured."""
    for result in report["sections"].values():
        if result["status"] != "ok":
            return False
        if any(row["status"] != "ok" for row in result.get("batches", [])):
            return False
        if any(row["status"] == "skipped" for row in result.get("variants", [])):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
