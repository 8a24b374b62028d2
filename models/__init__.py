"""codecflow models: pure torch modules (no Prefect, files, hub or config parsing).

Shape symbols, one legend for every module (a line that changes a shape ends with `# [B, K, F]`):

    B batch                        C audio channels             T samples
    K levels (codebooks per frame, `num_levels`)               F frames (codec time steps)
    N token positions (a sequence, or the new tokens of one call)   P prompt positions
    S cached positions (keys and values attended to)          U layout steps (F, or F + K - 1)
    V vocabulary                   Q codes per level (codebook size)
    D width (embedding, latent)    H heads                      E head dim
    R vectors quantised at once    M mel bands                  W STFT frames, G STFT bins

Loading (checkpoints, the Hub) is `codecflow.tasks.loaders`.

- `tokenizer`: the `AudioTokenizer` interface (waveform in, integer codes out, and back);
- `mulaw`: the sample-level mu-law 256 tokenizer;
- `rvq`: residual vector quantization with EMA codebooks;
- `codec`: the post's RVQ codec (`arch="post"`) and a Jukebox-like variant, with presets;
- `codec_tokenizer`: a trained `RVQCodec` as a tokenizer of its first K levels;
- `mimi`: Kyutai's Mimi (moshi) as a tokenizer, with or without its semantic level;
- `losses`: multi-scale spectral, mel L1 and SI-SDR, the codec's training loss;
- `gpt`: the nanoGPT-style decoder with a KV cache; `presets`: its named sizes (the post's);
- `gpt_decode`: its single-token step over the cache, compiled by TorchScript (the CPU's path);
- `layouts`: codes `[B, K, F]` to the LM's 1-D sequence and back (flatten, delay);
- `level_loss`: cross-entropy weighted by the RVQ level of each target;
- `sampling`: generation with a KV cache and a frame-aligned sliding window;
- `decode_step`: a static-shape single-token step over the cache, for CUDA graphs and compile;
- `flops`: training FLOPs per token and model FLOPs utilization.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AudioTokenizer",
    "MuLawTokenizer",
    "MimiTokenizer",
    "mulaw_encode",
    "mulaw_encode_post",
    "mulaw_decode_post",
    "mulaw_decode",
    "GPTConfig",
    "GPTOutput",
    "KVCache",
    "GPT",
    "GenerationResult",
    "sample_next",
    "generate",
    "StaticDecodeStep",
    "ResidualVectorQuantizer",
    "RVQMetrics",
    "RVQOutput",
    "CodecLoss",
    "codec_loss",
    "multi_scale_spectral_loss",
    "si_sdr",
    "mel_l1",
    "ConvEncoder",
    "ConvDecoder",
    "CodecOutput",
    "RVQCodec",
    "CODEC_PRESETS",
    "build_rvq_codec",
    "codec_config_dict",
    "CodecTokenizer",
    "TokenLayout",
    "FlattenLayout",
    "DelayLayout",
    "LAYOUT_NAMES",
    "make_layout",
    "GPT_PRESETS",
    "gpt_config",
    "LevelLoss",
    "level_weighted_loss",
    "post_tiled_weights",
]

# Each name is imported from its module on first use (PEP 562): `codecflow.models.extras` or
# `codecflow.models.layouts` alone must not load every model (torch), which a mu-law tokenize
# run and the CLI never need.
_MODULES = {
    "AudioTokenizer": "tokenizer",
    "CODEC_PRESETS": "codec",
    "CodecLoss": "losses",
    "CodecOutput": "codec",
    "CodecTokenizer": "codec_tokenizer",
    "ConvDecoder": "codec",
    "ConvEncoder": "codec",
    "DelayLayout": "layouts",
    "FlattenLayout": "layouts",
    "GPT": "gpt",
    "GPTConfig": "gpt",
    "GPTOutput": "gpt",
    "GPT_PRESETS": "presets",
    "GenerationResult": "sampling",
    "KVCache": "gpt",
    "LAYOUT_NAMES": "layouts",
    "LevelLoss": "level_loss",
    "MimiTokenizer": "mimi",
    "MuLawTokenizer": "mulaw",
    "RVQCodec": "codec",
    "RVQMetrics": "rvq",
    "RVQOutput": "rvq",
    "StaticDecodeStep": "decode_step",
    "ResidualVectorQuantizer": "rvq",
    "TokenLayout": "layouts",
    "build_rvq_codec": "codec",
    "codec_config_dict": "codec",
    "codec_loss": "losses",
    "generate": "sampling",
    "gpt_config": "presets",
    "level_weighted_loss": "level_loss",
    "make_layout": "layouts",
    "mel_l1": "losses",
    "mulaw_decode": "mulaw",
    "mulaw_decode_post": "mulaw",
    "mulaw_encode": "mulaw",
    "mulaw_encode_post": "mulaw",
    "multi_scale_spectral_loss": "losses",
    "post_tiled_weights": "level_loss",
    "sample_next": "sampling",
    "si_sdr": "losses",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'codecflow.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"codecflow.models.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
