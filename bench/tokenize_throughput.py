"""Tokenization throughput and bytes, ours beside the post's way, measured side by side in one run.

    uv run python bench/tokenize_throughput.py                  # the embedded tiny corpus
    uv run python bench/tokenize_throughput.py --manifest runs/x/acquire/manifest/segments.parquet

For mu-law 256 and the post's RVQ codec (the `rvq-8` preset, random weights: speed and bytes do
not depend on them), on the CPU, over the same segments of one manifest:

- **post**: what the post's `data/librilight/prepare.py` (kyutai-labs/nanoGPTaudio) does: each
  file loaded by `librosa.load(path)`, i.e. at librosa's default 22 050 Hz, then resampled back
  to 16 kHz (emulated: read with soundfile, resampled 16 kHz -> 22 050 Hz -> 16 kHz with
  torchaudio), tokenized, levels interleaved frame by frame, and appended to one `.bin` file per
  split in the tokenizer's `dtype()` there: int32 for the codec, uint8 for mu-law.
- **ours**: `tasks.tokenize.finalize.tokenize_manifest`, as the tokenize flow runs it: each segment
  read at its native 16 kHz (`tasks.data.manifest.read_segment_audio`), codes stored in the smallest
  unsigned type (uint8 / uint16) in Arrow shards, with commit markers, hashes and the size
  report. The codec is saved as a checkpoint folder so that `codec:<folder>` loads it.

Both load their tokenizer inside the timed part; the two sides alternate. Prints, per tokenizer and
pipeline, the best and median wall time of `--repeats` runs, and from the best: tokens per wall
second, audio hours per wall hour, stored bytes per audio hour; then ours / post. On a shared
machine compare the best times (other processes only ever slow a run down).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchaudio
from safetensors.torch import save_file

from models.codec import CODEC_PRESETS, build_rvq_codec, codec_config_dict
from schemas.configs import TokenizeSettings
from schemas.tables import MANIFEST_AUDIO_ROOT_KEY
from tasks.acquire.extract import extract_tar_safely
from tasks.acquire.manifest import build_segment_manifest
from tasks.core.threads import apply_thread_policy
from tasks.data.manifest import read_manifest, read_segment_audio
from tasks.loaders import load_tokenizer
from tasks.tokenize.finalize import tokenize_manifest
from tasks.tokenize.sizes import reference_token_bytes

REPO = Path(__file__).resolve().parents[1]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
LIBROSA_DEFAULT_RATE = 22_050  # librosa.load(path) resamples to this unless sr= is given
RATE = 16_000


def _tiny_manifest(tmp: Path) -> str:
    """The embedded corpus extracted and cut into segments of at most 5 s."""
    extract_tar_safely(TINY_TAR, tmp / "librilight" / "tiny")
    return build_segment_manifest(str(tmp), ["tiny"], target_len_sec=5.0).path


def _replicate_manifest(manifest: str, audio_root: str, copies: int, dest: Path) -> str:
    """`manifest` with every segment `copies` times (ids `<id>~<i>`): more audio, same files.

    The tiny corpus holds under a minute of speech, too little to see past fixed costs.
    """
    table = pq.read_table(manifest)
    ids = table.column("segment_id").to_pylist()
    where = table.schema.get_field_index("segment_id")
    copied = pa.concat_tables(
        table.set_column(where, "segment_id", pa.array([f"{s}~{i}" for s in ids], pa.string()))
        for i in range(copies)
    )
    metadata = {**(table.schema.metadata or {}), MANIFEST_AUDIO_ROOT_KEY: audio_root.encode()}
    pq.write_table(copied.replace_schema_metadata(metadata), dest)
    return str(dest)


def _codec_checkpoint(folder: Path) -> Path:
    """A `train-codec`-style checkpoint of the `rvq-8` preset with random weights."""
    torch.manual_seed(0)
    codec = build_rvq_codec(**CODEC_PRESETS["rvq-8"])
    folder.mkdir(parents=True)
    weights = {k: v.detach().contiguous() for k, v in codec.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    config = {"codec": codec_config_dict(codec), "sample_rate": RATE}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text("{}")  # load_codec's completeness marker
    return folder


def _post(rows: Sequence[Mapping[str, Any]], audio_root: str, name: str, out: Path) -> dict:
    """The post's way: 22.05 kHz round trip, interleaved codes, one `.bin` per split."""
    tokenizer = load_tokenizer(name)
    dtype = np.uint8 if reference_token_bytes(name) == 1 else np.int32
    out.mkdir(parents=True)
    tokens = 0
    for split in ("train", "val"):
        with open(out / f"{split}.bin", "ab") as sink:
            for row in rows:
                if row["split"] != split:
                    continue
                audio = torch.from_numpy(read_segment_audio(audio_root, row))  # [T] at 16 kHz
                wav = torchaudio.functional.resample(audio, RATE, LIBROSA_DEFAULT_RATE)
                wav = torchaudio.functional.resample(wav, LIBROSA_DEFAULT_RATE, RATE)  # [T']
                with torch.inference_mode():
                    codes = tokenizer.encode(wav.view(1, 1, -1))[0]  # [K, F]
                flat = codes.T.reshape(-1).numpy().astype(dtype)  # [F * K], frame by frame
                flat.tofile(sink)
                tokens += flat.size
    n_bytes = sum(f.stat().st_size for f in out.glob("*.bin"))
    return {"tokens": tokens, "bytes": n_bytes}


def _ours(manifest: str, name: str, out: Path) -> dict:
    printed = io.StringIO()  # its size table, kept for the end (printing it is timed too)
    with contextlib.redirect_stdout(printed):
        record = tokenize_manifest(manifest, out, TokenizeSettings(tokenizer=name))
    return {"tokens": record.n_tokens, "bytes": record.n_bytes, "printed": printed.getvalue()}


def _timed(fn: Any, *args: Any) -> tuple[float, dict]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", help="segment manifest (default: the tiny corpus)")
    parser.add_argument(
        "--copies",
        type=int,
        help="take every segment this many times (default: 8 for the tiny corpus, else 1)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per pipeline (best kept)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="codecflow-bench-") as tmp_name:
        tmp = Path(tmp_name)
        manifest = args.manifest or _tiny_manifest(tmp / "acquire")
        copies = args.copies or (1 if args.manifest else 8)
        if copies > 1:
            _, audio_root = read_manifest(manifest)
            manifest = _replicate_manifest(manifest, audio_root, copies, tmp / "segments.parquet")
        rows, audio_root = read_manifest(manifest)
        seconds = sum(r["duration_s"] for r in rows)
        hours = seconds / 3600.0
        checkpoint = _codec_checkpoint(tmp / "codec-rvq-8")
        print(
            f"manifest {manifest} (x{copies}): {len(rows)} segments, {seconds:.1f} s of audio; "
            f"CPU, {torch.get_num_threads()} torch threads, best of {args.repeats} runs"
        )
        header = (
            f"{'tokenizer':<12} {'pipeline':<33} {'best s':>7} {'median s':>8} {'tokens/s':>10} "
            f"{'audio h/wall h':>14} {'bytes/audio h':>14}"
        )
        print(header)
        size_tables: list[str] = []
        for label, name in (("mu-law-256", "mu-law-256"), ("codec rvq-8", f"codec:{checkpoint}")):
            ours_dtype = "uint8" if label == "mu-law-256" else "uint16"
            post_dtype = "uint8" if reference_token_bytes(name) == 1 else "int32"
            # Warm-up (first-call allocations, resampling kernels), not timed.
            _post(rows[:1], audio_root, name, tmp / "warm" / label / "post")
            times: dict[str, list[float]] = {"post": [], "ours": []}
            results: dict[str, dict] = {}
            for i in range(args.repeats):
                # Alternate the order so that neither side always runs on a warmer machine.
                order = ("post", "ours") if i % 2 == 0 else ("ours", "post")
                for side in order:
                    out = tmp / "runs" / label / side / str(i)
                    if side == "post":
                        wall, result = _timed(_post, rows, audio_root, name, out)
                    else:
                        wall, result = _timed(_ours, manifest, name, out)
                    times[side].append(wall)
                    results[side] = result
            rates = {}
            for side, what in (
                ("post", f"post: 22.05 kHz trip, {post_dtype} .bin"),
                ("ours", f"ours: 16 kHz, {ours_dtype} Arrow"),
            ):
                wall = min(times[side])  # the least disturbed run: the machine may be shared
                r = results[side]
                rates[side] = {
                    "tokens_per_s": r["tokens"] / wall,
                    "audio_h_per_wall_h": hours / (wall / 3600.0),
                    "bytes_per_audio_h": r["bytes"] / hours,
                }
                print(
                    f"{label:<12} {what:<33} {wall:>7.2f} {statistics.median(times[side]):>8.2f} "
                    f"{rates[side]['tokens_per_s']:>10,.0f} "
                    f"{rates[side]['audio_h_per_wall_h']:>14,.1f} "
                    f"{rates[side]['bytes_per_audio_h']:>14,.0f}"
                )
            size_tables.append(results["ours"]["printed"].strip())
            ours, post = rates["ours"], rates["post"]
            print(
                f"{label:<12} {'ours / post':<33} {'':>7} {'':>8} "
                f"{ours['tokens_per_s'] / post['tokens_per_s']:>9.2f}x "
                f"{ours['audio_h_per_wall_h'] / post['audio_h_per_wall_h']:>13.2f}x "
                f"{ours['bytes_per_audio_h'] / post['bytes_per_audio_h']:>13.2f}x"
            )
        for table in size_tables:
            print(f"\nsize report of ours (what the tokenize flow prints):\n{table}")


if __name__ == "__main__":
    main()
