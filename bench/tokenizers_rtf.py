"""Encode and decode speed of every tokenizer, measured side by side in one run.

    uv run python bench/tokenizers_rtf.py                    # CPU, batch 1 and 8, 10 s of audio
    uv run python bench/tokenizers_rtf.py --device cuda      # the same on a GPU

Prints, per tokenizer and batch size, the real-time factor (wall seconds per second of audio;
below 1 is faster than real time) and the speed-up over real time, for encode and decode. The
models have random weights: speed does not depend on them. Mimi is moshi's real architecture
(79 M parameters), built with `get_mimi(None, ...)`; the codec is the post's `rvq-8` preset.

Then Mimi through codecflow against moshi's own encode, side by side: `MimiTokenizer.encode`
and the `MimiModel.encode` of the same model (the one `get_mimi` returns, set to the same 8
codebooks) on the same audio and batch, both under `torch.inference_mode` (which
`MimiTokenizer.encode` enters by itself anyway), in `--mimi-rounds` interleaved rounds, each
alternating which goes first, after checking that the codes are equal. Per batch it prints both
throughputs (x real time, best of the rounds, and their ratio), each round's own ratio (moshi's
seconds over ours) and `mimi_vs_moshi_batch<B>: <median of the rounds' ratios>` (goal: >= 0.95):
each round pairs the two under the same load, so a burst in one round does not move it much.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from moshi.models.compression import MimiModel

from codecflow.models.codec import CODEC_PRESETS, build_rvq_codec
from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.mimi import MimiTokenizer
from codecflow.models.mulaw import MuLawTokenizer
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.tasks.core.threads import apply_thread_policy


def _random_codebooks(model: MimiModel) -> MimiModel:
    """Fill Mimi's codebooks with small random vectors (as tests/models/test_mimi.py does):
    `get_mimi(None)`'s are all zeros, so every code would be 0 and comparing codes would prove
    nothing. The same shapes, so the same cost."""
    from moshi.quantization.core_vq import EuclideanCodebook

    for codebook in model.modules():
        if isinstance(codebook, EuclideanCodebook):
            # embedding = embedding_sum / cluster_usage (moshi/quantization/core_vq.py).
            codebook.embedding_sum.copy_(torch.randn(codebook.embedding_sum.shape) * 0.01)
            codebook.cluster_usage.fill_(1.0)
            codebook._initialized.fill_(1.0)
            codebook.register_buffer("_embedding", None, persistent=False)  # drop the cache
    return model


def _tokenizers(device: torch.device) -> dict[str, AudioTokenizer]:
    from moshi.models.loaders import get_mimi

    codec = build_rvq_codec(**CODEC_PRESETS["rvq-8"])
    mimi = _random_codebooks(get_mimi(None, device=str(device), num_codebooks=8))
    return {
        "mu-law-256": MuLawTokenizer(16_000),
        "codec rvq-8": CodecTokenizer(codec, 8),
        "mimi_8_rvq": MimiTokenizer(mimi, 8),
    }


def _time(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True
) -> float:
    if warmup:
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


def _mimi_vs_moshi(
    tokenizer: MimiTokenizer, device: torch.device, batches: list[int], seconds: float, rounds: int
) -> None:
    """codecflow's Mimi encode against moshi's own on the same model, audio and batch."""
    model = tokenizer.model
    print(
        f"Mimi encode, codecflow vs moshi's MimiModel.encode, best of {rounds} interleaved rounds"
    )
    for batch in batches:
        wav = 0.1 * torch.randn(batch, 1, int(seconds * tokenizer.sample_rate), device=device)
        with torch.inference_mode():
            ours = tokenizer.encode(wav)  # [B, K, F]
            model.set_num_codebooks(tokenizer.encode_depth)
            theirs = model.encode(wav)  # [B, K, F]
            assert torch.equal(ours, theirs.to(torch.int64)), "codecflow's Mimi codes != moshi's"
            encoders = {
                "moshi": lambda w=wav: model.encode(w),
                "codecflow": lambda w=wav: tokenizer.encode(w),
            }
            times: dict[str, list[float]] = {name: [] for name in encoders}
            for fn in encoders.values():
                fn()  # warm-up
            for r in range(rounds):
                # Alternate which goes first (ABBA), so that neither always runs warmer.
                for name in sorted(encoders, reverse=r % 2 == 1):
                    times[name].append(_time(encoders[name], device, 1, warmup=False))
        audio = batch * seconds
        best = {name: min(t) for name, t in times.items()}
        each = [m / c for m, c in zip(times["moshi"], times["codecflow"], strict=True)]
        print(
            f"batch {batch}: codecflow {audio / best['codecflow']:.1f}x realtime, moshi "
            f"{audio / best['moshi']:.1f}x realtime (best of each: ratio "
            f"{best['moshi'] / best['codecflow']:.3f}); the rounds' ratios "
            + " ".join(f"{r:.3f}" for r in each)
        )
        # The median of paired rounds: each pair met the same load (best-of-each can pair a
        # quiet moment of one with a burst of the other on a shared machine).
        print(f"mimi_vs_moshi_batch{batch}: {statistics.median(each):.3f}")


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mimi-rounds", type=int, default=6, help="interleaved rounds of Mimi against moshi"
    )
    parser.add_argument(
        "--only-mimi-vs-moshi", action="store_true", help="skip the real-time factor table"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, {args.seconds:g} s of audio per item, median of {args.repeats}")
    print(
        f"{'tokenizer':<14} {'batch':>5} {'encode RTF':>11} {'x realtime':>11}"
        f" {'decode RTF':>11} {'x realtime':>11}"
    )
    tokenizers = _tokenizers(device)
    for name, tokenizer in tokenizers.items():
        if args.only_mimi_vs_moshi:
            break
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

    mimi = tokenizers["mimi_8_rvq"]
    assert isinstance(mimi, MimiTokenizer)
    _mimi_vs_moshi(mimi, device, args.batches, args.seconds, args.mimi_rounds)


if __name__ == "__main__":
    main()
