"""The two sliding windows of generation past the context, side by side in one run (issue 24,
row G): tokens/s, and how well each predicts held-out speech beyond its context.

    .venv/bin/python bench/sliding_window.py               # about 3 minutes on 2 CPU cores
    .venv/bin/python bench/sliding_window.py --json out.json

- `frames` (codecflow's default until measured): when the KV cache fills, half a context of
  whole frames is re-prefilled, then tokens are decoded one by one from the cache, so the
  context swings between block/2 and block tokens;
- `exact` (the post's sampler, nanoGPT's `idx[:, -block_size:]`): past the context, every step
  reads the last block_size tokens, one full forward per token.

Two LMs trained here on the embedded corpus's mu-law tokens (`tasks.train.lm.train_lm`): the
demo's shape (4 layers x 128, context 256 tokens) and the same with a 64-token context. For
each, on the validation split: the mean NLL (nats per token) of the true continuation of a
prompt, teacher-forced through each window (`generate` with every position forced, returning
log-probabilities), over windows well past the context; and the tokens/s of free sampling.
The model, data and tokens are the same for both windows; the wall times are of this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from codecflow.models.sampling import generate
from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.data.token_dataset import TokenReader
from codecflow.tasks.loaders import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader_speed import _tiny_dataset  # noqa: E402  (bench/ is no package)

WINDOWS = ("frames", "exact")


def _train(dataset: Path, out: Path, block_size: int, steps: int) -> Path:
    from codecflow.tasks.train.lm import train_lm

    settings = TrainLMSettings(
        n_layer=4, n_head=4, n_embd=128, block_size=block_size, batch_size=16, steps=steps,
        warmup_steps=20, eval_batches=2, device="cpu",
    )  # fmt: skip
    return train_lm(dataset, out, settings).path


def held_out_nll(model: torch.nn.Module, tokens: torch.Tensor, prompt: int, window: str) -> float:
    """Mean NLL of tokens[prompt:] given everything before, through `window`."""
    n = tokens.shape[1] - prompt
    forced = generate(
        model, tokens[:, :prompt], n, forced_tokens=tokens[:, prompt:],
        forced_mask=torch.ones(n, dtype=torch.bool), window=window, return_logprobs=True,
    )  # fmt: skip
    assert forced.logprobs is not None
    return float(-forced.logprobs.mean())


def tokens_per_s(model: torch.nn.Module, prompt: torch.Tensor, n: int, window: str) -> float:
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    generate(model, prompt, n, window=window, generator=generator)
    return prompt.shape[0] * n / (time.perf_counter() - started)


def measure(steps: int, n_tokens: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="codecflow-window-bench-") as tmp:
        dataset = _tiny_dataset(Path(tmp))
        with TokenReader(dataset, "val") as reader:
            stream = torch.from_numpy(reader.tokens(0, reader.n_frames)).long()[None]  # [1, N]
        for block in (256, 64):
            checkpoint = _train(dataset, Path(tmp) / f"lm{block}", block, steps)
            model, _ = load_checkpoint(checkpoint, torch.device("cpu"))
            tokens = stream[:, : block + n_tokens]  # [1, block + n]
            prompt = stream[:, :block].repeat(2, 1)  # [2, block]: the context full at once
            for window in WINDOWS:
                results[f"block {block}, {window}"] = {
                    "held_out_nll": held_out_nll(model, tokens, block, window),
                    "tokens_per_s": tokens_per_s(model, prompt, n_tokens, window),
                }
    return results


def main(argv: list[str] | None = None) -> int:
    apply_thread_policy()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of each LM")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens past the context")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = measure(args.steps, args.tokens)
    print(f"{'':24} {'held-out NLL (nats/token)':>26} {'tokens/s':>10}")
    for name, row in results.items():
        print(f"{name:24} {row['held_out_nll']:26.4f} {row['tokens_per_s']:10,.0f}")
    for block in (256, 64):
        frames, exact = results[f"block {block}, frames"], results[f"block {block}, exact"]
        print(
            f"block {block}: frames' NLL is {frames['held_out_nll'] / exact['held_out_nll']:.4f}x "
            f"the exact window's, at {frames['tokens_per_s'] / exact['tokens_per_s']:.1f}x its "
            "speed"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
