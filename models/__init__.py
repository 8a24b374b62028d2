"""codecflow models: pure torch modules (no Prefect, files, hub or config parsing).

`tokenizer` defines the audio tokenizer interface, `mulaw` the sample-level mu-law tokenizer,
`gpt` the nanoGPT-style language model with a KV cache and `sampling` generation from it.
"""

from models.codec import (
    CODEC_PRESETS,
    CodecOutput,
    ConvDecoder,
    ConvEncoder,
    RVQCodec,
    build_rvq_codec,
    codec_config_dict,
)
from models.codec_tokenizer import CodecTokenizer
from models.gpt import GPT, GPTConfig, GPTOutput, KVCache
from models.layouts import LAYOUT_NAMES, DelayLayout, FlattenLayout, TokenLayout, make_layout
from models.level_loss import LevelLoss, level_weighted_loss, post_tiled_weights
from models.losses import CodecLoss, codec_loss, mel_l1, multi_scale_spectral_loss, si_sdr
from models.mimi import MimiTokenizer
from models.mulaw import (
    MuLawTokenizer,
    mulaw_decode,
    mulaw_decode_post,
    mulaw_encode,
    mulaw_encode_post,
)
from models.presets import GPT_PRESETS, gpt_config
from models.rvq import ResidualVectorQuantizer, RVQMetrics, RVQOutput
from models.sampling import GenerationResult, generate, sample_next
from models.tokenizer import AudioTokenizer

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
