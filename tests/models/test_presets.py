"""GPT presets: parameter counts (the post's ~151 M on the meta device) and overrides."""

from __future__ import annotations

import pytest
import torch

from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.presets import GPT_PRESETS, gpt_config


def test_post_preset_parameter_count() -> None:
    cfg = gpt_config("post", vocab_size=1024)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 16, 1024, 2048)
    assert cfg.dropout == 0.1 and cfg.bias is False  # nanoGPTaudio train.py and its configs
    with torch.device("meta"):  # no memory allocated
        model = GPT(cfg)
    assert model.num_parameters(non_embedding=False) == 152_069_120 + 2048 * 1024  # + wpe
    assert model.num_parameters() == 152_069_120  # nanoGPT's count, without wpe
    blocks = sum(p.numel() for p in model.h.parameters())
    assert blocks == 151_019_520 == 12 * (12 * 1024**2 + 2 * 1024)


@pytest.mark.parametrize(
    ("preset", "total"),
    [
        # 2 blocks of 12C^2 + 13C, wte V*C, wpe block*C, ln_f 2C (C = 64, V = 256).
        ("tiny", 2 * (12 * 64**2 + 13 * 64) + 256 * 64 + 128 * 64 + 2 * 64),
        ("demo", 4 * (12 * 128**2 + 13 * 128) + 256 * 128 + 256 * 128 + 2 * 128),
    ],
)
def test_cpu_preset_parameter_counts(preset: str, total: int) -> None:
    model = GPT(gpt_config(preset, vocab_size=256))
    assert model.num_parameters(non_embedding=False) == total


def test_overrides_and_errors() -> None:
    cfg = gpt_config("tiny", vocab_size=10, dropout=0.1, block_size=64)
    assert cfg == GPTConfig(
        vocab_size=10, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.1, bias=True
    )
    assert GPT_PRESETS["tiny"]["block_size"] == 128  # the preset itself is untouched
    with pytest.raises(ValueError, match="demo.*post.*tiny"):
        gpt_config("huge", vocab_size=10)
    with pytest.raises(ValueError, match="n_layers"):
        gpt_config("tiny", vocab_size=10, n_layers=3)
