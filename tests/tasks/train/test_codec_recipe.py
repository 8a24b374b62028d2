"""The post's codec training at small scale (issue 24, rows B-E): its spectral loss falls from 1
to 8 levels on held-out speech, as the post shows, and its restarts fire when its formula says.

The setting is bench/codec_recipe.py's (the post's architecture narrowed for a CPU: 3 stages,
16 channels, 4 residual blocks, 8 levels of 64 codes, no quantizer dropout, 4 crops of 0.256 s,
lr 3e-3 after 5 warm-up steps); the closing note of issue 24 gives its table at 400, 800, 1 200
and 3 000 steps and the earlier recipe's beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from codecflow.schemas.configs import EvalCodecSettings, TrainCodecSettings
from codecflow.tasks.evaluate.codec import eval_codec
from codecflow.tasks.train.codec import train_codec

pytestmark = pytest.mark.slow

#: Measured (bench/codec_recipe.py, this 2-core VM): at 400 and 600 steps the codec has not
#: converged and the ordering does not hold; at 800 it holds by 0.4 % between 1 and 2 levels
#: (0.6692, 0.6666, 0.6648, 0.6366); at 1 200 by 10 % a step (0.4924, 0.4438, 0.4057, 0.3657).
STEPS = 1200


def _post_recipe(steps: int) -> TrainCodecSettings:
    return TrainCodecSettings(
        arch="post", num_levels=8, codebook_size=64, channels=16, latent_dim=16, res_depth=4,
        n_blocks=3, quantizer_dropout=False, crop_seconds=0.256, batch_size=4, steps=steps,
        learning_rate=3e-3, warmup_steps=5, checkpoint_every=steps, loader_workers=0,
        device="cpu",
    )  # fmt: skip


def test_the_posts_spectral_loss_falls_from_1_to_8_levels(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    settings = _post_recipe(STEPS)
    assert (settings.spectral_loss, settings.commitment, settings.codebooks) == ("post",) * 3
    assert settings.input_audio == "mu-law"  # the defaults are the post's recipe
    trained = train_codec(str(tiny_manifest), tmp_path / "codec", settings)
    report = eval_codec(
        trained.path, str(tiny_manifest), tmp_path / "eval",
        EvalCodecSettings(levels=[1, 2, 4, 8], n_wavs=0, device="cpu"),
    )  # fmt: skip
    losses = report.spectral_loss
    print("the post's spectral loss at 1, 2, 4, 8 levels:", [round(x, 4) for x in losses])
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), losses
    rows = json.loads(report.table.read_text())
    assert rows[-1]["si_sdr_db"] > rows[0]["si_sdr_db"]

    # A code never chosen decays as 0.99^n from its count of 1: under the post's 0.1 after the
    # 230th EMA step, so the first restart comes at iteration 230 (logged as step 231).
    first = math.ceil(math.log(0.1) / math.log(1 - settings.update_speed))  # 230
    log = [json.loads(x) for x in (trained.path / "train_log.jsonl").read_text().splitlines()]
    restarts = [r["step"] for r in log if r["restarted_codes"] > 0]
    assert first == 230 and restarts[0] == first + 1
