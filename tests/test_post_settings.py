"""The post's settings in every `configs/post-*.yaml` (the files as they are), against its code.

The learning rate at steps 0, 2 000, 301 000 and 1 000 000, against the post's own schedule
written out from its formula: nanoGPTaudio's `train.py` (get_lr, at 02520a1 and 7ae6e2e) warms up
linearly as `learning_rate * (it + 1) / (warmup_iters + 1)`, then follows a cosine from
`learning_rate` to `min_lr` over `lr_decay_iters`, and from 7ae6e2e on sets
`lr_decay_iters = max_iters` right after reading the config (issue 24, row A: codecflow decayed
the 1 M-step runs over 600 000 steps). And the Mimi configs' regeneration (row I): the post's
notebook samples at 0.8 from the source's whole first frame."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import REPO

from codecflow.cli.config import load_config
from codecflow.schemas.configs import PipelineConfig
from codecflow.schemas.post import POST_REGENERATION
from codecflow.tasks.core.runtime import learning_rate_at

CONFIGS = sorted((REPO / "configs").glob("post-*.yaml"))
STEPS = (0, 2_000, 301_000, 1_000_000)


def posts_lr(it: int, learning_rate: float, min_lr: float, warmup: int, max_iters: int) -> float:
    """get_lr of the post's train.py, with lr_decay_iters = max_iters."""
    if it < warmup:
        return learning_rate * (it + 1) / (warmup + 1)
    if it > max_iters:
        return min_lr
    ratio = (it - warmup) / (max_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_post_config_follows_the_posts_schedule(path: Path) -> None:
    config = load_config(PipelineConfig, str(path), [])
    assert isinstance(config, PipelineConfig)
    lm = config.train_lm
    peak, floor = lm.learning_rate, lm.learning_rate * lm.min_lr_ratio
    for step in STEPS:
        want = posts_lr(step, peak, floor, lm.warmup_steps, lm.steps)
        assert learning_rate_at(step, lm) == pytest.approx(want, rel=1e-12), (path.stem, step)


def test_the_mulaw_and_mimi_runs_decay_over_all_their_steps() -> None:
    """The numbers the issue measured: 1e-4 peak, 1e-5 floor, 2 000 warm-up, 1 M steps."""
    for name in ("post-mulaw-1000h", "post-mimi-8"):
        lm = load_config(PipelineConfig, str(REPO / "configs" / f"{name}.yaml"), []).train_lm  # type: ignore[attr-defined]
        assert lm.lr_decay_steps in (None, lm.steps) and lm.steps == 1_000_000
        assert learning_rate_at(0, lm) == pytest.approx(1e-4 / 2001)
        assert learning_rate_at(2_000, lm) == pytest.approx(1e-4)
        assert learning_rate_at(301_000, lm) == pytest.approx(8.15e-5, rel=1e-3)  # 600 k: 5.5e-5
        assert learning_rate_at(600_000, lm) == pytest.approx(4.12e-5, rel=1e-2)  # 600 k: 1.0e-5
        assert learning_rate_at(1_000_000, lm) == pytest.approx(1e-5)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("post-mimi-*.yaml")), ids=str)
def test_the_mimi_configs_regenerate_as_the_posts_notebook(path: Path) -> None:
    evaluate = load_config(PipelineConfig, str(path), []).evaluate  # type: ignore[attr-defined]
    assert evaluate.regenerate_temperature == POST_REGENERATION.temperature == 0.8
    assert evaluate.regenerate_first_frame == POST_REGENERATION.first_frame == "kept"
    assert 1 in evaluate.regenerate_levels  # the semantic level alone, as the notebook
