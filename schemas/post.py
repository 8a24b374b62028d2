"""The post's settings in one table: every number codecflow takes from Kyutai's reference code.

Kyutai's post "Neural audio codecs: how to get audio into LLMs" (October 2025) ran with the code
of kyutai-labs/nanoGPTaudio. Each record below holds one of its configurations; each value names
the file and commit it was read from in `sources` (a validator makes sure no value lacks one).
`configs/post-*.yaml`, the `post` GPT preset (`models/presets.py`), the `post` codec preset
(`models/codec.py`) and the codec losses (`models/losses.py`) are checked against these records by
tests/schemas/test_post.py and tests/flows/test_presets.py, which load the YAML files themselves.

nanoGPT's configurator overrides `train.py`'s defaults with the config file's globals, so a value a
config does not set is `train.py`'s default: `bias=False`, `weight_decay=0.1`, `beta1=0.9`,
`grad_clip=1.0` and `warmup_iters=2000`. The decay span is not a default: from 7ae6e2e (11 Sep
2025, before the mu-law and Mimi runs) `train.py` sets `lr_decay_iters = max_iters` right after
reading the config ("make sure these are always equal"), so the 1 M-step configs decay over all
1 000 000 steps. (An older `train.py`, 02520a1, kept its default 600 000: the 1 M-step runs would
then have sat at `min_lr` for their last 400 000 steps.)

The mu-law data: the post's `data/librilight/prepare.py` loads each file with `librosa.load` at
its default 22 050 Hz and resamples to 16 000 Hz before `mu_compress` (`POST_MULAW_DATA`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "REFERENCE_REPO",
    "TRAIN_PY",
    "TRAIN_PY_DECAY",
    "PREPARE_PY",
    "TOKENIZER_PY",
    "REGENERATE_NOTEBOOK",
    "PostRegeneration",
    "POST_REGENERATION",
    "PostMuLawData",
    "POST_MULAW_DATA",
    "CONFIG_1E3H",
    "CONFIG_CODEC",
    "CONFIG_1E4H",
    "TRAIN_CODEC_PY",
    "CODEC_PY",
    "PostLMShape",
    "PostLMRecipe",
    "PostCodecRecipe",
    "POST_LM_SHAPE",
    "POST_LM_RECIPES",
    "POST_CODEC",
    "POST_LM_PARAMETERS",
]

REFERENCE_REPO = "kyutai-labs/nanoGPTaudio"
# Files and the commits they were read at (read with the search tool's read_file).
TRAIN_PY = "train.py@02520a198083dea166a98e08baf6c5339dd098e2"
# `lr_decay_iters = max_iters` after the configurator, from this commit on.
TRAIN_PY_DECAY = "train.py@7ae6e2e03ccf6bf1232b12a2b82343953a388afc"
PREPARE_PY = "data/librilight/prepare.py@77ef72b9afbb58be559ad7d5f9fdc0a1fd558407"
TOKENIZER_PY = "tokenizer.py@0d6e2038c5331427f7c133c5c3ca4fd378ee79c2"
REGENERATE_NOTEBOOK = (
    "notebooks/regenerate_with_semantic.ipynb@1b59eaecf8205f0775bc75fcc2ae29c6e446ccfa"
)
# The mu-law config at the commit issue 12 names (5fe82f7): lr 1e-4. The index also holds
# 3725a90, an earlier version with lr 6e-4; the post's mu-law run is the 1e-4 one.
CONFIG_1E3H = "config/train_librilight_1e3h.py@5fe82f7"
CONFIG_CODEC = "config/train_librilight.py@ea3f0c76d3a3ac2bb1587dfdcf71f449ff7b72b1"
# The Mimi version of the 1e4h config (dataset librilight_10000h_mimi_8_rvq, "learning_rate =
# 1e-4  # 6e-4 for codecs"); the index does not give its commit. 7ae6e2e is the older codec
# version (lr 6e-4, dataset librilight_10000h_codec_0818_174908_8_rvq).
CONFIG_1E4H = "config/train_librilight_1e4h.py@(Mimi version, after 7ae6e2e)"
TRAIN_CODEC_PY = "train_codec.py@23354fdc14c6d4e007be933cc5e3421734dd156c"
CODEC_PY = "codec.py@cbd36aae94e51ec6739d0224a825b24bc08a3eed"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, str] = Field(
        description="Where each value comes from: field name -> 'file@commit' in "
        f"{REFERENCE_REPO}; every other field has an entry."
    )

    @model_validator(mode="after")
    def _every_value_cited(self) -> _Record:
        fields = set(type(self).model_fields) - {"sources"}
        missing = sorted(fields - set(self.sources))
        extra = sorted(set(self.sources) - fields)
        if missing or extra:
            raise ValueError(f"sources must cite every field: missing {missing}, unknown {extra}")
        return self


class PostLMShape(_Record):
    n_layer: int = Field(description="Transformer blocks.")
    n_head: int = Field(description="Attention heads.")
    n_embd: int = Field(description="Width.")
    block_size: int = Field(description="Context in tokens.")
    bias: bool = Field(description="Biases in Linear and LayerNorm (train.py's default False).")
    dropout: float = Field(description="Dropout probability.")


class PostLMRecipe(_Record):
    config: str = Field(description="The reference config file this recipe is.")
    learning_rate: float = Field(description="Peak AdamW learning rate.")
    min_lr: float = Field(description="Floor of the cosine decay.")
    batch_size: int = Field(description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(description="Micro-batches per optimizer step.")
    block_size: int = Field(description="Tokens per sequence.")
    beta1: float = Field(description="AdamW beta1.")
    beta2: float = Field(description="AdamW beta2.")
    dropout: float = Field(description="Dropout probability.")
    weight_decay: float = Field(description="AdamW weight decay.")
    grad_clip: float = Field(description="Gradient norm clip.")
    warmup_steps: int = Field(description="Linear warm-up steps (warmup_iters).")
    steps: int = Field(description="Optimizer steps (max_iters).")
    lr_decay_steps: int = Field(description="Step where the cosine reaches min_lr.")


class PostCodecRecipe(_Record):
    channels: int = Field(description="Width of every encoder/decoder stage (= latent dim).")
    n_blocks: int = Field(description="Stride-2 stages: 2^n_blocks down-sampling.")
    res_blocks: int = Field(description="Residual blocks per stage.")
    dilations: tuple[int, ...] = Field(description="Dilations of a stage's residual blocks.")
    second_kernel: int = Field(description="Kernel of a residual block's second conv.")
    codebook_size: int = Field(description="Codes per RVQ level.")
    num_levels: int = Field(description="RVQ levels (n_codebooks).")
    update_speed: float = Field(description="EMA speed of the codebooks.")
    restart_threshold: float = Field(description="EMA usage under which a code is restarted.")
    batch_size: int = Field(description="Crops per step.")
    crop_samples: int = Field(description="Samples per training crop (block_size).")
    sample_rate: int = Field(description="Hz.")
    learning_rate: float = Field(description="Peak AdamW learning rate.")
    min_lr: float = Field(description="Floor of the cosine decay.")
    warmup_steps: int = Field(description="Linear warm-up steps.")
    steps: int = Field(description="Optimizer steps (max_iters).")
    lr_decay_steps: int = Field(description="Step where the cosine reaches min_lr.")
    weight_decay: float = Field(description="AdamW weight decay.")
    grad_clip: float = Field(description="Gradient norm clip.")
    spectral_weight: float = Field(description="Weight of the multi-scale spectral loss.")
    commitment_weight: float = Field(description="Weight of the commitment loss.")
    spectral_loss: str = Field(description="codecflow's name of its spectral loss.")
    commitment: str = Field(description="codecflow's name of its commitment recipe.")
    codebooks: str = Field(description="codecflow's name of its codebook init and restarts.")
    input_audio: str = Field(description="codecflow's name of what the codec trains on.")
    parameters: int = Field(description="Trainable parameters with these defaults.")


POST_LM_SHAPE = PostLMShape(
    n_layer=12,  # config/train_librilight_1e3h.py (and 1e4h, train_librilight.py)
    n_head=16,  # idem
    n_embd=1024,  # idem
    block_size=2048,  # idem
    bias=False,  # train.py default, never overridden by a config
    dropout=0.1,  # the three configs
    sources={
        "n_layer": CONFIG_1E3H,
        "n_head": CONFIG_1E3H,
        "n_embd": CONFIG_1E3H,
        "block_size": CONFIG_1E3H,
        "bias": TRAIN_PY,
        "dropout": CONFIG_1E3H,
    },
)

#: nanoGPT's count (model.py `get_num_params`: all parameters, wte once, minus wpe) of the post's
#: LM by vocabulary: 12 * (12 C^2 + 2 C) + C (ln_f) + V * C, C = 1 024, no biases. The post's
#: "151.28M" is the 256 one (mu-law).
POST_LM_PARAMETERS: dict[int, int] = {256: 151_282_688, 1024: 152_069_120, 2048: 153_117_696}


def _lm_sources(config: str, **from_train_py: str) -> dict[str, str]:
    fields = set(PostLMRecipe.model_fields) - {"sources"}
    return {name: from_train_py.get(name, config) for name in fields}


POST_LM_RECIPES: dict[str, PostLMRecipe] = {
    # The mu-law LM, 1 000 h: config/train_librilight_1e3h.py.
    "mulaw": PostLMRecipe(
        config=CONFIG_1E3H,
        learning_rate=1e-4,  # 1e3h config
        min_lr=1e-5,  # 1e3h: learning_rate / 10
        batch_size=64,  # 1e3h
        grad_accum_steps=8,  # 1e3h
        block_size=2048,  # 1e3h
        beta1=0.9,  # train.py default
        beta2=0.95,  # 1e3h
        dropout=0.1,  # 1e3h
        weight_decay=0.1,  # train.py default
        grad_clip=1.0,  # train.py default
        warmup_steps=2000,  # train.py default warmup_iters
        steps=1_000_000,  # 1e3h max_iters
        lr_decay_steps=1_000_000,  # train.py: lr_decay_iters = max_iters after the config
        sources=_lm_sources(
            CONFIG_1E3H,
            beta1=TRAIN_PY,
            weight_decay=TRAIN_PY,
            grad_clip=TRAIN_PY,
            warmup_steps=TRAIN_PY,
            lr_decay_steps=TRAIN_PY_DECAY,
        ),
    ),
    # The LM on the post's own codec: config/train_librilight.py.
    "codec": PostLMRecipe(
        config=CONFIG_CODEC,
        learning_rate=6e-4,  # train_librilight.py
        min_lr=6e-5,  # train_librilight.py: learning_rate / 10
        batch_size=32,  # train_librilight.py
        grad_accum_steps=8,  # train_librilight.py
        block_size=2048,  # train_librilight.py
        beta1=0.9,  # train.py default
        beta2=0.99,  # train_librilight.py
        dropout=0.1,  # train_librilight.py
        weight_decay=0.1,  # train.py default
        grad_clip=1.0,  # train.py default
        warmup_steps=100,  # train_librilight.py warmup_iters
        steps=100_000,  # train_librilight.py max_iters
        lr_decay_steps=100_000,  # train_librilight.py lr_decay_iters = max_iters
        sources=_lm_sources(
            CONFIG_CODEC, beta1=TRAIN_PY, weight_decay=TRAIN_PY, grad_clip=TRAIN_PY
        ),
    ),
    # The Mimi LMs, 10 000 h: config/train_librilight_1e4h.py (its Mimi version).
    "mimi": PostLMRecipe(
        config=CONFIG_1E4H,
        learning_rate=1e-4,  # 1e4h ("6e-4 for codecs")
        min_lr=1e-5,  # 1e4h: learning_rate / 10
        batch_size=64,  # 1e4h
        grad_accum_steps=8,  # 1e4h
        block_size=2048,  # 1e4h
        beta1=0.9,  # train.py default
        beta2=0.95,  # 1e4h
        dropout=0.1,  # 1e4h
        weight_decay=0.1,  # train.py default
        grad_clip=1.0,  # train.py default
        warmup_steps=2000,  # train.py default warmup_iters
        steps=1_000_000,  # 1e4h max_iters
        lr_decay_steps=1_000_000,  # train.py: lr_decay_iters = max_iters after the config
        sources=_lm_sources(
            CONFIG_1E4H,
            beta1=TRAIN_PY,
            weight_decay=TRAIN_PY,
            grad_clip=TRAIN_PY,
            warmup_steps=TRAIN_PY,
            lr_decay_steps=TRAIN_PY_DECAY,
        ),
    ),
}


def _codec_sources() -> dict[str, str]:
    from_codec_py = {
        "res_blocks",
        "dilations",
        "second_kernel",
        "update_speed",
        "restart_threshold",
        "spectral_loss",
        "commitment",
        "codebooks",
        "parameters",
    }
    fields = set(PostCodecRecipe.model_fields) - {"sources"}
    return {name: CODEC_PY if name in from_codec_py else TRAIN_CODEC_PY for name in fields}


POST_CODEC = PostCodecRecipe(
    channels=32,  # train_codec.py channels
    n_blocks=7,  # train_codec.py n_blocks: 128x, 125 frames/s at 16 kHz
    res_blocks=4,  # codec.py Encoder/Decoder n_residual_blocks=4
    dilations=(3, 9, 27, 81),  # codec.py dilation=3 ** (1 + i)
    second_kernel=3,  # codec.py ResidualBlock second Conv1d kernel_size=3
    codebook_size=1024,  # train_codec.py codebook_size
    num_levels=8,  # train_codec.py n_codebooks
    update_speed=0.01,  # codec.py VectorQuantizer codebook_update_speed
    restart_threshold=0.1,  # codec.py restart_unused_codes: usage < 0.1
    batch_size=128,  # train_codec.py batch_size
    crop_samples=2**16,  # train_codec.py block_size = 2 ** (14 + 2)
    sample_rate=16_000,  # train_codec.py sample_rate
    learning_rate=3e-4,  # train_codec.py (Jukebox's)
    min_lr=3e-5,  # train_codec.py min_lr
    warmup_steps=2000,  # train_codec.py warmup_iters
    steps=100_000,  # train_codec.py max_iters
    lr_decay_steps=100_000,  # train_codec.py lr_decay_iters
    weight_decay=0.1,  # train_codec.py weight_decay = 1e-1
    grad_clip=1.0,  # train_codec.py grad_clip
    spectral_weight=1.0,  # train_codec.py spectral_loss_weight
    commitment_weight=0.02,  # train_codec.py commitment_loss_weight
    # codec.py MultiscaleSpectrogramLoss: sqrt(mean((|S_x| - |S_y|)^2)) per scale, mean of 3.
    spectral_loss="post",
    # codec.py ResidualVectorQuantizer: summed; per-level straight-through, so level 0 only.
    commitment="post",
    # codec.py VectorQuantizer: kaiming_uniform_ sums, restart_unused_codes(flat_embeddings).
    codebooks="post",
    # train_codec.py get_batch: mu_expand of the stored 8-bit mu-law tokens.
    input_audio="mu-law",
    # 7 x 4 x 2 convs of 32 x 32 x 3 (+32) = 173 824 per side, encoder down-convs 160 + 6 x 4 128,
    # decoder up-convs 6 x 4 128 + 129 (codebooks are buffers): codec.py Codec with the above.
    parameters=397_473,
    sources=_codec_sources(),
)


class PostMuLawData(_Record):
    tokenizer: str = Field(description="codecflow's name of the post's mu-law quantiser.")
    load_rate: int = Field(description="Hz librosa.load decodes every file at (its default).")
    sample_rate: int = Field(description="Hz the audio is resampled to before mu_compress.")


#: How the post's mu-law tokens were made. codecflow reads the 16 kHz FLAC directly and does not
#: take the 22.05 kHz detour, which band-limits and re-interpolates the audio: on the
#: repository's two prompts (data/prompts), 87.4 % and 96.4 % of the token ids equal those of
#: the detour, 94.6 % and 99.6 % within one step (librosa 0.11, measured for issue 24). The
#: quantiser itself is the post's: `mu-law-256-post` equals `mu_compress(quantize=True)` + 128.
POST_MULAW_DATA = PostMuLawData(
    tokenizer="mu-law-256-post",  # tokenizer.py MuLawTokenizer: mu_compress(x, mu=255) + 128
    load_rate=22_050,  # prepare.py: librosa.load(path, mono=True), no sr given
    sample_rate=16_000,  # prepare.py: librosa.resample(..., target_sr=SAMPLE_RATE = 16000)
    sources={"tokenizer": TOKENIZER_PY, "load_rate": PREPARE_PY, "sample_rate": PREPARE_PY},
)


class PostRegeneration(_Record):
    temperature: float = Field(description="Sampling temperature of the regeneration.")
    first_frame: str = Field(description="What of the source's first frame is kept.")


#: The post's semantic regeneration (its notebook): the prompt is the source's first frame and
#: the next frame's semantic token (`start_ids[: tokens_per_timestep * 1 + 1]`), then each step
#: generates a frame's acoustic levels and appends the next source semantic token.
POST_REGENERATION = PostRegeneration(
    temperature=0.8,  # the notebook: temperature = 0.8
    first_frame="kept",  # x = start_ids[: tokens_per_timestep * 1 + 1]: all of frame 0
    sources={"temperature": REGENERATE_NOTEBOOK, "first_frame": REGENERATE_NOTEBOOK},
)
