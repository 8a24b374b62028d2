"""Named GPT sizes: keyword sets for `GPTConfig` without the vocabulary (the tokenizer sets it).

"post" is the language model of Kyutai's post "Neural audio codecs: how to get audio into LLMs"
(October 2025): a nanoGPT with 12 layers, 16 heads, 1 024 wide and a 2 048-token context, about
151 M parameters. With a 1 024-entry vocabulary `GPT(...)` holds 154 302 464 parameters in all
(`num_parameters(non_embedding=False)`), 152 205 312 without the position embedding (nanoGPT's
count, `num_parameters()`); the 12 blocks alone hold 151 154 688 (12 * (12 C^2 + 13 C), C = 1 024).
"tiny" (tests) and "demo" (`configs/demo.yaml`-sized) run on a CPU.
"""

from __future__ import annotations

from typing import Any

from models.gpt import GPTConfig

__all__ = ["GPT_PRESETS", "gpt_config"]

GPT_PRESETS: dict[str, dict[str, Any]] = {
    # The post's LM (Kyutai, 2025): 12 x 16 heads x 1 024, context 2 048, no dropout, biases.
    "post": dict(n_layer=12, n_head=16, n_embd=1024, block_size=2048, dropout=0.0, bias=True),
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
