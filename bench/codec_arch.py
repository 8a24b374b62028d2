"""The post's codec against the Jukebox-like variant: parameters and CPU training-step time.

Run: uv run python bench/codec_arch.py [--steps 3] [--batch 8] [--seconds 1.0]
Both at the post's sizes (7 stages, channels 32, 8 levels of 1 024 codes): one optimizer step of
MSE + spectral + commitment (models/losses.py codec_loss) on random crops, median of the steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from codecflow.models.codec import CODEC_PRESETS, build_rvq_codec
from codecflow.models.losses import codec_loss
from codecflow.tasks.core.threads import apply_thread_policy

__all__ = ["step_seconds"]


def step_seconds(preset: str, steps: int, batch: int, samples: int) -> tuple[int, float]:
    """(parameters, median seconds per training step) of codec `preset` on the CPU."""
    torch.manual_seed(0)
    codec = build_rvq_codec(**CODEC_PRESETS[preset]).train()
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-4)
    wav = torch.randn(batch, 1, samples) * 0.1  # [B, 1, T]
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        out = codec(wav)
        loss = codec_loss(out.reconstruction, wav, out.commitment_loss)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sum(p.numel() for p in codec.parameters()), statistics.median(times[1:])


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    samples = int(args.seconds * 16_000) // 128 * 128
    for preset in ("post", "rvq-8"):
        params, seconds = step_seconds(preset, args.steps, args.batch, samples)
        print(f"{preset:6s} {params:>9,} parameters  {seconds:.3f} s per step")


if __name__ == "__main__":
    main()
