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
- `layouts`: codes `[B, K, F]` to the LM's 1-D sequence and back (flatten, delay);
- `level_loss`: cross-entropy weighted by the RVQ level of each target;
- `sampling`: generation with a KV cache and a frame-aligned sliding window;
- `flops`: training FLOPs per token and model FLOPs utilization.
"""

from codecflow.models.codec import (
    CODEC_PRESETS,
    CodecOutput,
    ConvDecoder,
    ConvEncoder,
    RVQCodec,
    build_rvq_codec,
    codec_config_dict,
)
from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.gpt import GPT, GPTConfig, GPTOutput, KVCache
from codecflow.models.layouts import (
    LAYOUT_NAMES,
    DelayLayout,
    FlattenLayout,
    TokenLayout,
    make_layout,
)
from codecflow.models.level_loss import LevelLoss, level_weighted_loss, post_tiled_weights
from codecflow.models.losses import CodecLoss, codec_loss, mel_l1, multi_scale_spectral_loss, si_sdr
from codecflow.models.mimi import MimiTokenizer
from codecflow.models.mulaw import (
    MuLawTokenizer,
    mulaw_decode,
    mulaw_decode_post,
    mulaw_encode,
    mulaw_encode_post,
)
from codecflow.models.presets import GPT_PRESETS, gpt_config
from codecflow.models.rvq import ResidualVectorQuantizer, RVQMetrics, RVQOutput
from codecflow.models.sampling import GenerationResult, generate, sample_next
from codecflow.models.tokenizer import AudioTokenizer

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
