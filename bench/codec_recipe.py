"""The post's codec training against codecflow's earlier recipe, side by side in one run (issue
24, rows B-E), and the post's level ordering at small scale.

    .venv/bin/python bench/codec_recipe.py                  # 2 codecs of 400 steps: ~10 min here
    .venv/bin/python bench/codec_recipe.py --steps 800 --json out.json

Both codecs have the post's architecture (`arch: post`), narrowed to train on a CPU: 3 stages
(8x down-sampling), 16 channels, 4 residual blocks per stage, 8 levels of 64 codes, no quantizer
dropout (the post trains all levels at every step), batches of 4 crops of 0.256 s, peak lr 3e-3
after 5 warm-up steps, on the embedded corpus's train split (`tasks.train.codec.train_codec`).
They differ only in the four settings of the recipe:

    post        spectral_loss post,   commitment post, codebooks post, input_audio mu-law
    codecflow   spectral_loss l1-log, commitment mean, codebooks data, input_audio pcm

Each is then evaluated on the held-out speakers (`tasks.evaluate.codec.eval_codec`, up to 32
segments of 5 s) at 1, 2, 4 and 8 levels: the post's spectral loss, the l1-log one, SI-SDR and
log-mel L1; and its codebooks' health as the post logs it (codec.py `get_codebook_entropy`:
the EMA usage's entropy over log Q, and `get_fraction_unused_codes`: usage under 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from codecflow.models.losses import multi_scale_spectral_loss
from codecflow.schemas.configs import EvalCodecSettings, TrainCodecSettings
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.evaluate.codec import eval_codec
from codecflow.tasks.loaders import load_codec
from codecflow.tasks.train.codec import train_codec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader_speed import _tiny_manifest  # noqa: E402  (bench/ is no package)

RECIPES: dict[str, dict[str, str]] = {
    "post": {
        "spectral_loss": "post",
        "commitment": "post",
        "codebooks": "post",
        "input_audio": "mu-law",
    },
    "codecflow": {
        "spectral_loss": "l1-log",
        "commitment": "mean",
        "codebooks": "data",
        "input_audio": "pcm",
    },
}
LEVELS = [1, 2, 4, 8]


def settings(recipe: str, steps: int) -> TrainCodecSettings:
    """The small `arch: post` codec of this benchmark, trained with `recipe`."""
    return TrainCodecSettings(
        arch="post", num_levels=8, codebook_size=64, channels=16, latent_dim=16, res_depth=4,
        n_blocks=3, quantizer_dropout=False, crop_seconds=0.256, batch_size=4, steps=steps,
        learning_rate=3e-3, warmup_steps=5, checkpoint_every=steps, loader_workers=0,
        device="cpu", **RECIPES[recipe],
    )  # fmt: skip


def codebook_health(checkpoint: Path) -> dict[str, float]:
    """The post's two codebook numbers, averaged over the levels (codec.py)."""
    usage = load_codec(checkpoint).quantizer.cluster_usage.double()  # [K, Q]
    p = usage / usage.sum(dim=1, keepdim=True)
    entropy = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=1)  # [K]
    return {
        "codebook_entropy": float((entropy / math.log(usage.shape[1])).mean()),
        "fraction_unused_codes": float((usage < 1).double().mean()),
    }


def l1_log_by_levels(report: Path) -> dict[int, float]:
    """The l1-log spectral loss of the report's written reconstructions, per level count."""
    out: dict[int, list[float]] = {}
    for original in sorted(report.glob("*_original.wav")):
        ref, _ = sf.read(original, dtype="float32")
        stem = original.name[: -len("_original.wav")]
        for k in LEVELS:
            rec, _ = sf.read(report / f"{stem}_levels{k}.wav", dtype="float32")
            n = min(len(ref), len(rec))
            pair = [torch.from_numpy(a[:n]).view(1, 1, -1) for a in (ref, rec)]
            out.setdefault(k, []).append(float(multi_scale_spectral_loss(pair[1], pair[0])))
    return {k: float(np.mean(v)) for k, v in out.items()}


def run(recipe: str, steps: int, manifest: Path, root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    trained = train_codec(str(manifest), root / recipe, settings(recipe, steps))
    seconds = time.perf_counter() - started
    report = eval_codec(
        trained.path, str(manifest), root / f"{recipe}-eval",
        EvalCodecSettings(levels=LEVELS, n_wavs=4, device="cpu"),
    )  # fmt: skip
    rows = json.loads(report.table.read_text())
    l1_log = l1_log_by_levels(report.path)
    return {
        "train_seconds": seconds,
        "train_loss_first": trained.train_loss_first,
        "train_loss_last": trained.train_loss_last,
        **codebook_health(trained.path),
        "levels": [
            {
                "levels": r["levels"],
                "spectral_post": r["spectral_loss"],
                "spectral_l1_log_4wavs": l1_log.get(r["levels"]),
                "si_sdr_db": r["si_sdr_db"],
                "mel_l1": r["mel_l1"],
            }
            for r in rows
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    apply_thread_policy()
    results: dict[str, Any] = {"steps": args.steps, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="codecflow-recipe-bench-") as tmp:
        manifest = _tiny_manifest(Path(tmp))
        for recipe in args.recipes:
            results[recipe] = run(recipe, args.steps, manifest, Path(tmp))
    print(f"{args.steps} steps each, {results['torch_threads']} torch threads")
    print(
        f"{'recipe':10} {'K':>2} {'spec(post)':>10} {'spec(l1log)':>11} "
        f"{'SI-SDR dB':>9} {'mel L1':>7}"
    )
    for recipe in args.recipes:
        for row in results[recipe]["levels"]:
            print(
                f"{recipe:10} {row['levels']:>2} {row['spectral_post']:>10.4f} "
                f"{row['spectral_l1_log_4wavs']:>11.3f} {row['si_sdr_db']:>9.2f} "
                f"{row['mel_l1']:>7.3f}"
            )
        r = results[recipe]
        print(
            f"{recipe:10} codebook entropy {r['codebook_entropy']:.3f}, unused "
            f"{r['fraction_unused_codes']:.3f}, loss {r['train_loss_first']:.4g} -> "
            f"{r['train_loss_last']:.4g}, {r['train_seconds']:.0f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
