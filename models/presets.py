"""Named GPT sizes: keyword sets for `GPTConfig` without the vocabulary (the tokenizer sets it).

"post" is the language model of Kyutai's post "Neural audio codecs: how to get audio into LLMs"
(October 2025), taken from `schemas/post.py` (`POST_LM_SHAPE`): a nanoGPT with 12 layers, 16 heads,
1 024 wide, a 2 048-token context, dropout 0.1 and no biases (train.py's `bias = False`, which no
config of the post overrides). nanoGPT counts parameters without the position embedding and with
the tied token embedding once (`num_parameters()` here): 12 blocks of 12 C^2 + 2 C (C = 1 024: the
four matrices and two LayerNorm gains), the final LayerNorm's C and V * C for the embedding, i.e.
151 282 688 for the mu-law vocabulary of 256, the post's "151.28M"; 152 069 120 for 1 024 codes
and 153 117 696 for Mimi's 2 048 (`POST_LM_PARAMETERS`).
"tiny" (tests) and "demo" (`configs/demo.yaml`-sized) run on a CPU.
"""

from __future__ import annotations

from typing import Any

from codecflow.models.gpt import GPTConfig
from codecflow.schemas.post import POST_LM_SHAPE

__all__ = ["GPT_PRESETS", "gpt_config"]

GPT_PRESETS: dict[str, dict[str, Any]] = {
    # The post's LM (Kyutai, 2025): 12 x 16 heads x 1 024, context 2 048, dropout 0.1, no biases
    # (schemas/post.py cites each value: nanoGPTaudio config/train_librilight_*.py and train.py).
    "post": POST_LM_SHAPE.model_dump(exclude={"sources"}),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128, dropout=0.0, bias=True),
    "demo": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, dropout=0.0, bias=True),
}


def gpt_config(preset: str, vocab_size: int, **overrides: Any) -> GPTConfig:
    """The `GPTConfig` of `preset` for `vocab_size` tokens, with `overrides` (any field) applied.

    Raises:
        ValueError: an unknown preset (the message names the choices) or an override that is not
            a `GPTConfig` field.
    """
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown GPT preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    fields = set(GPTConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; fields are {sorted(fields)}")
    return GPTConfig(vocab_size=vocab_size, **{**GPT_PRESETS[preset], **overrides})
