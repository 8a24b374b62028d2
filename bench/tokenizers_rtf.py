"""Encode and decode speed of every tokenizer, measured side by side in one run.

    uv run python bench/tokenizers_rtf.py                    # CPU, batch 1 and 8, 10 s of audio
    uv run python bench/tokenizers_rtf.py --device cuda      # the same on a GPU

Prints, per tokenizer and batch size, the real-time factor (wall seconds per second of audio;
below 1 is faster than real time) and the speed-up over real time, for encode and decode. The
models have random weights: speed does not depend on them. Mimi is moshi's real architecture
(79 M parameters), built with `get_mimi(None, ...)`; the codec is the post's `rvq-8` preset.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from models.codec import CODEC_PRESETS, build_rvq_codec
from models.codec_tokenizer import CodecTokenizer
from models.mimi import MimiTokenizer
from models.mulaw import MuLawTokenizer
from models.tokenizer import AudioTokenizer
from tasks.core.threads import apply_thread_policy


def _tokenizers(device: torch.device) -> dict[str, AudioTokenizer]:
    from moshi.models.loaders import get_mimi

    codec = build_rvq_codec(**CODEC_PRESETS["rvq-8"])
    return {
        "mu-law-256": MuLawTokenizer(16_000),
        "codec rvq-8": CodecTokenizer(codec, 8),
        "mimi_8_rvq": MimiTokenizer(get_mimi(None, device=str(device), num_codebooks=8), 8),
    }


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, cuDNN autotuning)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, {args.seconds:g} s of audio per item, median of {args.repeats}")
    print(
        f"{'tokenizer':<14} {'batch':>5} {'encode RTF':>11} {'x realtime':>11}"
        f" {'decode RTF':>11} {'x realtime':>11}"
    )
    for name, tokenizer in _tokenizers(device).items():
        tokenizer = tokenizer.to(device).eval()
        for batch in args.batches:
            wav = 0.1 * torch.randn(
                batch, 1, int(args.seconds * tokenizer.sample_rate), device=device
            )
            with torch.inference_mode():
                codes = tokenizer.encode(wav)
                encode = _time(lambda: tokenizer.encode(wav), device, args.repeats)  # noqa: B023
                decode = _time(lambda: tokenizer.decode(codes), device, args.repeats)  # noqa: B023
            audio = batch * args.seconds
            print(
                f"{name:<14} {batch:>5} {encode / audio:>11.2e} {audio / encode:>11.1f} "
                f"{decode / audio:>11.2e} {audio / decode:>11.1f}"
            )


if __name__ == "__main__":
    main()
