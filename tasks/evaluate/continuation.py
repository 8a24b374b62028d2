"""The prompt-continuation experiment of an evaluation: the LM continues a spoken prompt
(`num_samples` samples, with a KV cache), timed; and the tokenizer's round trip of the prompt.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from codecflow.models.gpt import GPT
from codecflow.models.layouts import TokenLayout
from codecflow.models.sampling import generate
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.schemas.configs import EvaluateSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.progress import StepProgress
from codecflow.tasks.core.threads import decode_threads
from codecflow.tasks.evaluate.quality import quality

__all__ = ["continue_prompt", "cut_prompt", "roundtrip"]

#: Generation progress: inside a Prefect run it reaches the run's log (`codecflow.*` loggers).
_LOG = logging.getLogger("codecflow.evaluate")


def roundtrip(
    tokenizer: AudioTokenizer, wav: torch.Tensor, codes: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float | None]]:
    """The decoding of `codes` `[1, K, F]`, the tokenizer's encoding of `wav` `[1, 1, T]`, and
    how close it comes to `wav` (SI-SDR, mel L1, spectral loss, PESQ-WB, STOI)."""
    with torch.inference_mode():
        back = tokenizer.decode(codes)[..., : wav.shape[-1]]  # [1, 1, T]
    return back, quality(wav[0, 0].numpy(), back[0, 0].numpy(), tokenizer.sample_rate)


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def continue_prompt(
    model: GPT,
    tokenizer: AudioTokenizer,
    layout: TokenLayout,
    prompt_codes: torch.Tensor,
    settings: EvaluateSettings,
    device: torch.device,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Sample `num_samples` continuations of the prompt; their audio and the speed numbers."""
    num_levels, codebook_size = tokenizer.num_levels, tokenizer.codebook_size
    prompt_frames = prompt_codes.shape[-1]  # prompt_codes: [1, K, F_p]
    # The prompt's sequence up to its last whole step: the delay pattern's trailing PAD steps
    # would put PADs mid-stream, which training never shows the model.
    prompt_tokens = layout.to_sequence(prompt_codes, codebook_size)[
        :, : prompt_frames * num_levels
    ]  # [1, P]
    prompt_batch = prompt_tokens.repeat(settings.num_samples, 1).to(device)  # [B, P]
    new_frames = max(1, round(settings.seconds * tokenizer.frame_rate))
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    n_new = new_frames * num_levels
    # tokens/s over the batch: each step draws one token of every sample.
    meter = StepProgress(
        _LOG, "evaluate: generating", n_new, "tokens", settings.num_samples, step_name="token"
    )
    started = time.perf_counter()
    with decode_threads(_parameters(model), device) as threads:
        result = generate(
            model,
            prompt_batch,
            n_new,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            tokens_per_frame=layout.tokens_per_frame(num_levels),
            generator=generator,
            progress=meter,
            window=settings.sampling_window,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    new_tokens = result.tokens.cpu()  # [B, new_frames * K]
    full = torch.cat([prompt_batch.cpu(), new_tokens], dim=1)  # [B, P + new_frames * K]
    all_codes = layout.from_sequence(full, num_levels, codebook_size)  # [B, K, F]
    # Sampling may put a PAD or another level's range where a code belongs: clamp to the codebook.
    codes = all_codes[:, :, prompt_frames:].clamp(0, codebook_size - 1)  # [B, K, F_new]
    with torch.inference_mode():
        generated = tokenizer.decode(codes)  # [B, 1, F_new * samples_per_frame]
    generated_seconds = codes.shape[-1] / tokenizer.frame_rate
    speed = {
        "generated_seconds": generated_seconds,
        "generated_tokens": new_tokens.numel(),
        "generation_seconds": elapsed,
        "generation_tokens_per_s": new_tokens.numel() / elapsed,
        # The usual real-time factor: compute time over the audio generated (all samples).
        "compute_seconds_per_audio_second": elapsed / (generated_seconds * settings.num_samples),
        "n_prefills": result.n_prefills,
        "decode_threads": threads,
    }
    return [generated[i, 0].numpy() for i in range(settings.num_samples)], speed


def cut_prompt(
    whole: torch.Tensor, tokenizer: AudioTokenizer, settings: EvaluateSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt `[1, 1, T]` (the first `prompt_seconds` of `whole`, in whole frames) and the
    recording's next `seconds` `[1, 1, T_true]` (as far as the file goes; None when nothing
    follows, or `prompt_seconds` is not set)."""
    if settings.prompt_seconds is None:
        return whole, None
    spf = tokenizer.samples_per_frame
    cut = max(1, int(settings.prompt_seconds * tokenizer.frame_rate)) * spf
    if cut > whole.shape[-1]:
        raise CodecflowError(
            f"prompt {settings.prompt} is {whole.shape[-1] / tokenizer.sample_rate:.3g} s long: "
            f"shorter than prompt_seconds ({settings.prompt_seconds:g})"
        )
    new_samples = max(1, round(settings.seconds * tokenizer.frame_rate)) * spf  # as generated
    truth = whole[..., cut : cut + new_samples]
    return whole[..., :cut], truth if truth.shape[-1] else None
