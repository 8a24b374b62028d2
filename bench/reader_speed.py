"""Can the token reader feed the LM? Reader and LM throughput, measured side by side in one run.

    uv run python bench/reader_speed.py                       # tokenizes the tiny corpus first
    uv run python bench/reader_speed.py --dataset runs/demo/tokens/mu-law-256
    uv run python bench/reader_speed.py --no-post             # skip the post-scale estimate

Measures, on the CPU and on the same dataset:

- the reader: tokens/s of `TokenReader.random_windows(batch=16, n_tokens=2049)` (the training
  loop's draw for a 2 048-token context), turned into a torch tensor as `tasks.train.lm` does;
  also at the demo's own window (16 x 257) for reference;
- the LM's consumption, tokens/s of full training steps (forward, backward, gradient clipping,
  AdamW) of the demo preset (4 layers, 128 wide, 4 heads, block 256, batch 16), counted as
  `tasks.train.lm` counts them (steps * batch * block / seconds);
- a post-scale estimate (12 layers, 768 wide, 12 heads, block 2 048: GPT-2 small's shape at the
  post's context): one forward pass of batch 1, and training tokens/s estimated as forward
  tokens/s / 3 (backward ~ 2 forwards; optimizer time left out, so the LM side is overstated and
  the ratio understated).

Also the cost of checking shards against their commit markers when a process first opens them
(`tasks.data.shard_check`): the open time with the sha256 (first open), without it
(`CODECFLOW_VERIFY_SHARDS=0`), and a second open (checked already), side by side, with the hash's
throughput so the cost for a larger dataset can be read off.

Prints both rates and their ratio per preset, and PASS when the reader is at least 10x faster than
the demo LM consumes (the goal), FAIL otherwise (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from codecflow.models.gpt import GPT, GPTConfig
from codecflow.tasks.core.storage import sha256_file
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.data.shard_check import VERIFY_ENV, forget_checked
from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info

GOAL_RATIO = 10.0
REPO = Path(__file__).resolve().parents[1]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"


def _tiny_manifest(root: Path) -> Path:
    """The embedded corpus acquired and cut into 5 s segments (the plain functions, no Prefect)."""
    from codecflow.tasks.acquire.download import fetch
    from codecflow.tasks.acquire.extract import extract_tar_safely
    from codecflow.tasks.acquire.manifest import build_segment_manifest

    md5 = TINY_TAR.with_suffix(".tar.md5").read_text().split()[0]
    fetched = fetch(str(TINY_TAR), root / "download" / TINY_TAR.name, md5)
    extract_tar_safely(fetched.path, str(root / "librilight" / "librilight-tiny"))
    manifest = build_segment_manifest(
        str(root), ["librilight-tiny"], target_len_sec=5.0, val_fraction=0.2, seed=0
    )
    return Path(manifest.path)


def _tiny_dataset(root: Path) -> Path:
    """The embedded corpus acquired and tokenized with mu-law (the plain functions, no Prefect)."""
    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    manifest = _tiny_manifest(root)
    return Path(tokenize_manifest(manifest, root / "tokens", TokenizeSettings()).path)


def _rate(fn: Callable[[], int], min_seconds: float, min_calls: int) -> float:
    """Items per second of `fn` (which returns how many items it handled), after one warm-up."""
    fn()
    items, calls = 0, 0
    started = time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        items += fn()
        calls += 1
    return items / (time.perf_counter() - started)


def reader_tokens_per_s(
    reader: TokenReader, batch: int, n_tokens: int, min_seconds: float
) -> float:
    """Tokens/s of seeded random windows, as the training loop draws them (int64 tensors)."""
    rng = np.random.default_rng(0)

    def draw() -> int:
        window = torch.from_numpy(reader.random_windows(batch, n_tokens, rng))  # [B, N]
        # Counted as the model's positions (B * (N - 1)), as train_lm counts B * block_size.
        return int(window.shape[0] * (window.shape[1] - 1))

    return _rate(draw, min_seconds, min_calls=20)


def lm_train_tokens_per_s(reader: TokenReader, config: GPTConfig, batch: int, steps: int) -> float:
    """Tokens/s of full CPU training steps (forward, backward, clip, AdamW), train_lm's way."""
    torch.manual_seed(0)
    model = GPT(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    windows = [
        torch.from_numpy(reader.random_windows(batch, config.block_size + 1, rng))
        for _ in range(steps + 1)
    ]  # drawn beforehand: only the model is timed here

    def step(window: torch.Tensor) -> None:
        loss = model(window[:, :-1], window[:, 1:]).loss
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step(windows[0])  # warm-up
    started = time.perf_counter()
    for window in windows[1:]:
        step(window)
    return steps * batch * config.block_size / (time.perf_counter() - started)


@torch.no_grad()
def lm_forward_tokens_per_s(config: GPTConfig, batch: int, repeats: int) -> float:
    """Tokens/s of forward passes alone (inference mode), one warm-up first."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (batch, config.block_size))  # [B, T]
    model(idx)
    started = time.perf_counter()
    for _ in range(repeats):
        model(idx)
    return repeats * batch * config.block_size / (time.perf_counter() - started)


def _open_seconds(dataset: Path, split: str, verify: bool, forget: bool, repeats: int = 5) -> float:
    """Best wall time of opening `split` (mapping every shard), with or without the sha256."""
    os.environ[VERIFY_ENV] = "1" if verify else "0"
    best = float("inf")
    for _ in range(repeats):
        if forget:
            forget_checked()
        started = time.perf_counter()
        TokenReader(dataset, split).close()
        best = min(best, time.perf_counter() - started)
    os.environ.pop(VERIFY_ENV)
    return best


def verification_cost(dataset: Path, split: str) -> None:
    """Open times with and without the shards' sha256, and the hash's throughput."""
    info = read_dataset_info(dataset)
    size = sum(s.bytes for s in info.shards if s.split == split)
    without = _open_seconds(dataset, split, verify=False, forget=True)
    first = _open_seconds(dataset, split, verify=True, forget=True)
    again = _open_seconds(dataset, split, verify=True, forget=False)
    rate = _sha256_rate()
    print(
        f"open {split} ({size / 1e6:.2f} MB of shards): {without * 1e3:.1f} ms without the "
        f"sha256, {first * 1e3:.1f} ms with it ({first / without:.1f}x), "
        f"{again * 1e3:.1f} ms once checked; sha256 of a 256 MiB shard file (page-cached) at "
        f"{rate:,.0f} MB/s: about {1e6 / rate / 60:.0f} min per TB, once per process"
    )


def _sha256_rate(size: int = 256 << 20) -> float:
    """MB/s of `sha256_file` (what the check runs) over a page-cached file, best of 3."""
    with tempfile.NamedTemporaryFile(prefix="codecflow-sha-") as f:
        f.write(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8).tobytes())
        f.flush()
        sha256_file(Path(f.name))  # into the page cache
        best = min(_timed(lambda: sha256_file(Path(f.name))) for _ in range(3))
    return size / best / 1e6


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _line(name: str, reader_rate: float, lm_rate: float) -> float:
    ratio = reader_rate / lm_rate
    print(
        f"{name:<34} reader {reader_rate:>13,.0f} tok/s   LM {lm_rate:>11,.0f} tok/s   "
        f"ratio {ratio:>9,.1f}x"
    )
    return ratio


def main() -> int:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, help="token dataset folder (default: tiny corpus)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-tokens", type=int, default=2049)
    parser.add_argument("--seconds", type=float, default=2.0, help="reader timing per case")
    parser.add_argument("--steps", type=int, default=5, help="timed demo training steps")
    parser.add_argument("--no-post", action="store_true", help="skip the post-scale estimate")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="codecflow-reader-bench-") as tmp:
        dataset = args.dataset
        if dataset is None:
            print("tokenizing the embedded corpus (mu-law-256) in a temporary folder ...")
            dataset = _tiny_dataset(Path(tmp))
        spec = read_dataset_info(dataset).tokenizer
        vocab = int(spec["codebook_size"])
        verification_cost(Path(dataset), args.split)
        started = time.perf_counter()
        with TokenReader(dataset, args.split) as reader:
            opened = time.perf_counter() - started
            print(f"dataset {dataset} ({spec.get('name', '?')}): {reader}")
            print(f"opened in {opened * 1e3:.1f} ms; CPU, torch threads {torch.get_num_threads()}")
            reader_main = reader_tokens_per_s(reader, args.batch, args.n_tokens, args.seconds)
            reader_demo = reader_tokens_per_s(reader, args.batch, 257, args.seconds)
            print(
                f"reader random_windows({args.batch}, {args.n_tokens}): {reader_main:,.0f} tok/s; "
                f"random_windows({args.batch}, 257): {reader_demo:,.0f} tok/s"
            )
            demo = GPTConfig(vocab_size=vocab, block_size=256, n_layer=4, n_head=4, n_embd=128)
            demo_rate = lm_train_tokens_per_s(reader, demo, args.batch, args.steps)
            ratio = _line("demo 4x128, block 256, batch 16", reader_main, demo_rate)
            _line("  (reader at the demo's 16 x 257)", reader_demo, demo_rate)
            if not args.no_post:
                post = GPTConfig(
                    vocab_size=vocab, block_size=2048, n_layer=12, n_head=12, n_embd=768
                )
                forward = lm_forward_tokens_per_s(post, batch=1, repeats=1)
                print(f"post-scale 12x768, block 2048: forward {forward:,.0f} tok/s (batch 1)")
                _line("post-scale, train est. = fwd / 3", reader_main, forward / 3)
    verdict = "PASS" if ratio >= GOAL_RATIO else "FAIL"
    print(
        f"{verdict}: the reader supplies {ratio:,.1f}x the demo LM's consumption "
        f"(goal >= {GOAL_RATIO:g}x)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
