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

    uv run python bench/tokenizers_rtf.py --batching         # Mimi batched by length, or not

`--batching` measures what `tokenize` gains by batching segments of similar length: Mimi
(`mimi_8_rvq`) encodes every segment of a set through `encode_segments` (the shard writer's
own batching, zero-padded to each batch's longest) at batch 1, 16 and 64, in three orders:
`manifest` (batches filled in the manifest's order), `pools-64` (sorted within each run of 64
segments, what the shard writer did before it sorted each shard) and `sorted` (shortest first
over the whole set, what it does now: each shard is read and encoded shortest first). Per row:
the batches, the padded frames (share of all frames computed) and Mimi's x real time over the
set, best of `--repeats`. Two sets: the embedded corpus cut as the demo cuts it (10 segments
of 1.8 to 4.4 s), and a length-varied set (`--set-count` segments, log-uniform between
`--set-min` and `--set-max` seconds, seed 0, in random order). The audio is noise at the
segments' lengths: Mimi's speed does not depend on what it hears.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from moshi.models.compression import MimiModel

from codecflow.models.codec import CODEC_PRESETS, build_rvq_codec
from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.mimi import MimiTokenizer
from codecflow.models.mulaw import MuLawTokenizer
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.tokenize.shards import batch_plan, encode_segments, padded_frames

#: The orders `--batching` compares (see the docstring).
ORDERS = ("manifest", "pools-64", "sorted")


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


def length_varied_seconds(count: int, low: float, high: float, seed: int = 0) -> list[float]:
    """`count` durations, log-uniform in [low, high], rounded to 10 ms, in random order."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(count, generator=gen, dtype=torch.float64)
    logs = math.log(low) + u * (math.log(high) - math.log(low))
    return [round(math.exp(v), 2) for v in logs.tolist()]


def embedded_corpus_seconds() -> list[float]:
    """The durations of the embedded corpus's segments as the demo cuts them (5 s target)."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    import codecflow

    tar = Path(__file__).resolve().parents[1] / "data/librilight-tiny/librilight-tiny.tar"
    with tempfile.TemporaryDirectory() as root:
        manifest = codecflow.ingest(str(tar), root, target_len_sec=5.0, val_fraction=0.2)
        return [float(d) for d in pq.read_table(manifest).column("duration_s").to_pylist()]


def _order(name: str, frames: list[int]) -> list[int] | None:
    if name == "sorted":
        return None  # batch_plan's own: shortest first
    order = list(range(len(frames)))
    if name == "pools-64":
        order = [
            i
            for p in range(0, len(order), 64)
            for i in sorted(order[p : p + 64], key=frames.__getitem__)
        ]
    return order


def batching_rows(
    tokenizer: AudioTokenizer,
    seconds: list[float],
    batches: list[int],
    repeats: int,
    timer: Callable[[Callable[[], object]], float],
) -> list[dict[str, object]]:
    """Per batch size and order: batches, padded frames and x real time of encoding the set."""
    rate, spf = tokenizer.sample_rate, tokenizer.samples_per_frame
    gen = torch.Generator().manual_seed(0)
    audios = [(0.1 * torch.randn(round(s * rate), generator=gen)).numpy() for s in seconds]
    frames = [max(1, -(-len(a) // spf)) for a in audios]
    rows: list[dict[str, object]] = []
    for batch in batches:
        for name in ORDERS if batch > 1 else ("any",):
            order = _order(name, frames) if batch > 1 else None
            plan = batch_plan(frames, batch, math.inf, order)
            padded = padded_frames(frames, plan)

            def encode(o: list[int] | None = order, b: int = batch) -> object:
                return encode_segments(audios, tokenizer, math.inf, max_batch=b, order=o)

            best = min(timer(encode) for _ in range(repeats))
            rows.append(
                {
                    "batch": batch,
                    "order": name,
                    "batches": len(plan),
                    "padded_frames": padded,
                    "padded_share": padded / (padded + sum(frames)),
                    "seconds": best,
                    "x_realtime": sum(seconds) / best,
                }
            )
    return rows


def _batching(args: argparse.Namespace, device: torch.device) -> None:
    from moshi.models.loaders import get_mimi

    mimi = MimiTokenizer(get_mimi(None, device=str(device), num_codebooks=8), 8).eval()
    sets = {
        "embedded corpus": embedded_corpus_seconds(),
        "length-varied": length_varied_seconds(args.set_count, args.set_min, args.set_max),
    }
    with torch.inference_mode():
        encode_segments([np.zeros(mimi.sample_rate, np.float32)], mimi)  # warm-up
    for label, seconds in sets.items():
        print(
            f"Mimi, {label}: {len(seconds)} segments, {sum(seconds):.1f} s of audio "
            f"({min(seconds):.2f} to {max(seconds):.2f} s), best of {args.repeats}"
        )
        print(f"{'batch':>5} {'order':<9} {'batches':>7} {'padded frames':>14} {'x realtime':>11}")
        timer = lambda fn: _time(fn, device, 1, warmup=False)  # noqa: E731
        for row in batching_rows(mimi, seconds, args.batches, args.repeats, timer):
            print(
                f"{row['batch']:>5} {row['order']:<9} {row['batches']:>7} "
                f"{row['padded_frames']:>6} ({row['padded_share']:>5.1%}) "
                f"{row['x_realtime']:>11.1f}"
            )


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--batches", type=int, nargs="+", help="default 1 8 (1 16 64 with --batching)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mimi-rounds", type=int, default=6, help="interleaved rounds of Mimi against moshi"
    )
    parser.add_argument(
        "--only-mimi-vs-moshi", action="store_true", help="skip the real-time factor table"
    )
    parser.add_argument(
        "--batching", action="store_true", help="Mimi batched by length or not (see above)"
    )
    parser.add_argument("--set-count", type=int, default=96)
    parser.add_argument("--set-min", type=float, default=0.5)
    parser.add_argument("--set-max", type=float, default=6.0)
    args = parser.parse_args()
    args.batches = args.batches or ([] if args.batching else [1, 8])
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.batching:
        args.batches = args.batches or [1, 16, 64]
        _batching(args, device)
        return
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
