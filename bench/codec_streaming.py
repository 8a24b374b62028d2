"""Streaming codec crops against the in-memory loader they replace: peak memory and samples/s.

Run: uv run python bench/codec_streaming.py [--minutes 10] [--steps 16] [--rounds 4] [--workers 2]

It writes a synthetic Libri-Light-like corpus (16 kHz mono FLAC, 60 s files cut into 10 s
segments of two VAD chunks each) and its segment manifest at 1x and at 20x the length (20 times
the files), then measures, side by side in this one run:

1. Peak RSS of `train_codec` (the real trainer: streaming crops, its loader workers) on the 1x
   and the 20x manifest, each in a fresh subprocess (ru_maxrss of the trainer; of its largest
   loader worker apart), and the same for the in-memory loader (`load_split_audio` + random
   crops, what train-codec did before) for contrast; the median of `--repeats` runs (the
   allocator makes one run's peak vary by about 5 %). Goal: streaming 20x / 1x within 10 %.
2. Training samples/s on the 1x manifest with streaming crops and with the in-memory loader: the
   same codec, optimizer and step (`tasks.train.codec._step`), only the batches' source differs;
   the two alternate in rounds so that a machine shared with other jobs slows both alike.
   Goal: streaming >= 0.9x. The time a step waits for its batch is printed too: it does not
   depend on what else the machine runs.

Every process trains on one intra-op thread (the loader workers take the other cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from codecflow.schemas.configs import TrainCodecSettings  # noqa: E402
from codecflow.schemas.tables import MANIFEST_AUDIO_ROOT_KEY, SEGMENT_MANIFEST_SCHEMA  # noqa: E402

__all__ = ["in_memory_batches", "write_corpus"]

RATE = 16_000
FILE_SECONDS = 60
SEGMENT_SECONDS = 10

#: The codec of the speed measurement: the Jukebox-like `rvq-8` at the post's rates (7 stages,
#: 128x, 8 x 1 024 codes), a batch of 8 crops of 1 s (the post: 128 of 4.1 s on a GPU).
SPEED = {
    "arch": "jukebox", "num_levels": 8, "codebook_size": 1024, "channels": 32, "latent_dim": 32,
    "res_depth": 1, "n_blocks": 7, "crop_seconds": 1.024, "batch_size": 8, "warmup_steps": 2,
    "device": "cpu",
}  # fmt: skip
#: A smaller codec for the memory measurement (its activations are the same in every run).
MEMORY = {**SPEED, "channels": 16, "latent_dim": 16, "n_blocks": 5, "steps": 12}


def write_corpus(folder: Path, files: int, seed: int = 0) -> str:
    """`files` FLAC files of 60 s of speech-like noise (bursts of shaped noise) and their
    manifest (train split only); returns the manifest's path."""
    rng = np.random.default_rng(seed)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for f in range(files):
        noise = rng.standard_normal(RATE * FILE_SECONDS)
        envelope = np.repeat(rng.uniform(0.0, 0.3, FILE_SECONDS * 5), RATE // 5)  # 200 ms
        audio = (np.convolve(noise, np.ones(8) / 8, mode="same") * envelope).astype("f4")
        name = f"audio/{f:05d}.flac"
        sf.write(folder / name, audio, RATE)
        for s in range(FILE_SECONDS // SEGMENT_SECONDS):
            a = s * SEGMENT_SECONDS
            chunks = [(a, a + 4.5), (a + 5.0, a + SEGMENT_SECONDS)]
            rows.append(_row(f"{f:05d}_{s:02d}", name, chunks))
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: b"."})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "segments.parquet")
    return str(folder / "segments.parquet")


def _row(segment_id: str, name: str, chunks: list[tuple[float, float]]) -> dict[str, Any]:
    return {
        "segment_id": segment_id, "subset": "small", "speaker": segment_id[:5],
        "book_id": "1", "source_path": name, "start_s": chunks[0][0], "end_s": chunks[-1][1],
        "duration_s": sum(b - a for a, b in chunks), "sample_rate": RATE, "channels": 1,
        "snr": 30.0, "split": "train", "chunks": [{"start_s": a, "end_s": b} for a, b in chunks],
    }  # fmt: skip


def in_memory_batches(manifest: str, settings: TrainCodecSettings, steps: int) -> Any:
    """The loader train-codec had before streaming: the whole split in memory, random crops."""
    from codecflow.tasks.data.manifest import load_split_audio
    from codecflow.tasks.train.codec import _crop_samples

    audio = [clip for _, clip in load_split_audio(manifest, "train")]
    crop, gen = _crop_samples(settings), torch.Generator().manual_seed(settings.seed)
    for _ in range(steps):
        batch = torch.zeros(settings.batch_size, 1, crop)  # [B, 1, T]
        picks = torch.randint(0, len(audio), (settings.batch_size,), generator=gen)
        for i, pick in enumerate(picks.tolist()):
            clip = audio[pick]
            start = int(torch.randint(0, max(1, len(clip) - crop + 1), (1,), generator=gen))
            piece = torch.from_numpy(clip[start : start + crop])  # [<= T]
            batch[i, 0, : len(piece)] = piece
        yield batch


def _streaming_batches(manifest: str, settings: TrainCodecSettings, steps: int) -> Any:
    from codecflow.tasks.data.crops import batches, crop_loader, read_crop_index
    from codecflow.tasks.train.codec import _crop_samples

    loader = crop_loader(
        read_crop_index(manifest, "train"),
        crop=_crop_samples(settings),
        seed=settings.seed,
        first=0,
        steps=steps,
        batch_size=settings.batch_size,
        workers=settings.loader_workers,
        prefetch=settings.prefetch_batches,
    )
    return batches(loader)


def _child_memory(manifest: str, loader: str, out: str, workers: int) -> dict[str, Any]:
    """In a fresh process: train, then this process's peak RSS and its workers' largest."""
    settings = TrainCodecSettings(**{**MEMORY, "loader_workers": workers})
    if loader == "streaming":
        from codecflow.tasks.train.codec import train_codec

        train_codec(manifest, Path(out), settings)
    else:
        _train_steps(settings, in_memory_batches(manifest, settings, settings.steps + 1))
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rss_mib": self_kb / 1024, "worker_rss_mib": children_kb / 1024}


def _train_steps(settings: TrainCodecSettings, source: Any) -> tuple[float, float]:
    """train-codec's step on each batch of `source`: (seconds from the second batch asked for
    to the last step's end, seconds of it spent waiting for batches). The first step, which
    builds the codebooks while the loader workers start, is not timed."""
    from codecflow.tasks.core.runtime import learning_rate_at
    from codecflow.tasks.train.codec import _build, _levels_generator, _step

    run = _build(settings)
    run.codec.train()
    batches, started, waited = iter(source), 0.0, 0.0
    for step in range(settings.steps + 1):
        asked = time.perf_counter()
        if step == 1:
            started = asked
        batch = next(batches)
        if step >= 1:
            waited += time.perf_counter() - asked
        lr, levels = learning_rate_at(step, settings), _levels_generator(settings.seed, step)
        _step(run, batch, settings.grad_clip, lr, levels)
    return time.perf_counter() - started, waited


def _child_speed(manifest: str, loader: str, steps: int, workers: int) -> dict[str, Any]:
    settings = TrainCodecSettings(**{**SPEED, "steps": steps, "loader_workers": workers})
    make = _streaming_batches if loader == "streaming" else in_memory_batches
    seconds, waited = _train_steps(settings, make(manifest, settings, steps + 1))
    return {"samples_per_s": steps * settings.batch_size / seconds, "waiting": waited / seconds}


def _in_subprocess(*args: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10, help="audio of the 1x corpus")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per speed round")
    parser.add_argument("--rounds", type=int, default=4, help="speed rounds (each loader once)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per peak RSS measurement")
    parser.add_argument("--workers", type=int, default=2, help="streaming loader workers")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        kind, manifest, loader, *rest = args.child
        if kind == "memory":
            print(json.dumps(_child_memory(manifest, loader, rest[0], int(rest[1]))))
        else:
            print(json.dumps(_child_speed(manifest, loader, int(rest[0]), int(rest[1]))))
        return
    _bench(args)


def _bench(args: argparse.Namespace) -> None:
    files = max(1, args.minutes * 60 // FILE_SECONDS)
    with tempfile.TemporaryDirectory(prefix="codec-streaming-") as tmp:
        started = time.perf_counter()
        one = write_corpus(Path(tmp) / "x1", files)
        twenty = write_corpus(Path(tmp) / "x20", 20 * files, seed=1)
        print(f"corpus: {files} min (1x) and {20 * files} min (20x) of 16 kHz FLAC, written in "
              f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"\n1. peak RSS of codec training, MiB: trainer (its largest loader worker); "
              f"median of {args.repeats} runs")  # fmt: skip
        for loader in ("streaming", "in-memory"):
            peaks = {}
            for name, manifest in (("1x", one), ("20x", twenty)):
                runs = [
                    _in_subprocess(
                        "memory", manifest, loader, str(Path(tmp) / f"{loader}-{name}-{i}"),
                        str(args.workers),
                    )
                    for i in range(args.repeats)
                ]  # fmt: skip
                peaks[name] = float(np.median([m["rss_mib"] for m in runs]))
                each = ", ".join(f"{m['rss_mib']:.0f} ({m['worker_rss_mib']:.0f})" for m in runs)
                print(f"   {loader:9s} {name:3s}  {peaks[name]:6.0f}   runs: {each}")
            print(f"   {loader:9s} 20x / 1x = {peaks['20x'] / peaks['1x']:.3f}")
        shape = f"{args.rounds} rounds of {args.steps} steps, batch 8 x 1.024 s"
        print(f"\n2. training samples/s on the 1x manifest ({shape})")
        speeds: dict[str, list[float]] = {"streaming": [], "in-memory": []}
        for r in range(args.rounds):
            order = ("streaming", "in-memory") if r % 2 == 0 else ("in-memory", "streaming")
            for loader in order:
                s = _in_subprocess("speed", one, loader, str(args.steps), str(args.workers))
                speeds[loader].append(s["samples_per_s"])
                waiting = f"{100 * s['waiting']:.1f} % of the time waiting for batches"
                print(
                    f"   round {r + 1} {loader:9s} {s['samples_per_s']:6.2f} samples/s, {waiting}"
                )
        ratio = float(np.median(speeds["streaming"]) / np.median(speeds["in-memory"]))
        print(f"   streaming / in-memory = {ratio:.3f} (medians)")
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
