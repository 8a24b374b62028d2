"""Pydantic configs: each flow's parameters.

Prefect renders a flow parameter typed as one of these models as a validated form in its UI, so
every field has a description, a bound or a `Literal` choice. Configs hold what a user chooses:
settings and the input/output folders of one stage. Paths inside an output folder are derived by
the flows, never stored here.

Each stage has a `*Settings` model (what the pipeline config nests) and a `*Config` model that adds
the stage's input and output paths (what the stage's own flow and CLI subcommand take).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from codecflow.schemas.forms import ConfigModel, choice_titles, inputs_first
from codecflow.schemas.resources import packaged_path
from codecflow.schemas.tokenizers import (
    TokenizerNameError,
    parse_tokenizer_name,
    tokenizer_json_schema,
)

__all__ = [
    "AcquireConfig",
    "AcquireSettings",
    "CompareCodecsConfig",
    "CompareCodecsSettings",
    "EvalCodecConfig",
    "EvalCodecSettings",
    "EvaluateConfig",
    "EvaluateSettings",
    "HELDOUT_PROMPT",
    "MODEL_SHAPE_FIELDS",
    "PipelineConfig",
    "TokenizeConfig",
    "TokenizeSettings",
    "TrainCodecConfig",
    "TrainCodecSettings",
    "TrainLMConfig",
    "TrainLMSettings",
]

Device = Literal["auto", "cpu", "cuda"]

#: Experiment trackers a run also logs to (tasks/core/tracking.py).
TrackerName = Literal["tensorboard", "wandb"]


def _log_to(what: str) -> Any:
    """The `log_to` field of a stage: the trackers that receive `what`, none by default."""
    return Field(
        [],  # a default, not a factory: the UI shows it (see `regenerate_levels`)
        description=f"Experiment trackers that also receive {what}: 'tensorboard' writes event "
        "files under the run's folder (OUT/tensorboard), 'wandb' a Weights & Biases run under "
        "OUT/wandb, offline unless you have logged in (wandb login, or WANDB_API_KEY). Both "
        "need the tracking extra. Empty: none.",
    )


def _local_path(value: str | None, why: str) -> str | None:
    """`value` as a local path (`file://` dropped), or a ValueError for any other URL: the field
    is read or written as local files, and `Path("s3://b/x")` would name `s3:/b/x`."""
    if value is None or "://" not in value:
        return value
    if value.startswith("file://"):
        return value[len("file://") :]
    scheme = value.split("://", 1)[0]
    raise ValueError(f"must be a local path, {scheme}:// is not supported here: {why}")


def _local_only(*fields: str, why: str) -> Any:
    """A field validator that keeps `fields` local (`_local_path`), saying `why` when not."""

    def check(cls: type, value: str | None) -> str | None:
        return _local_path(value, why)

    return field_validator(*fields)(check)


#: Why each local-only field is: what reads or writes it.
_CHECKPOINT_IN = "checkpoints are loaded from a local folder"
_CHECKPOINT_OUT = "checkpoints are written with local locks and renames (the inputs may be on S3)"
_REPORT_OUT = "reports are written as local folders (the inputs may be on S3)"


class SlurmSettings(ConfigModel):
    partition: str | None = Field(None, description="Slurm partition (the cluster's default).")
    account: str | None = Field(None, description="Slurm account to charge.")
    jobs: int = Field(2, ge=1, le=1024, description="Slurm jobs, one Dask worker each.")
    cores: int = Field(1, ge=1, le=256, description="CPU cores per job (one thread per core).")
    memory: str = Field("4GB", description="Memory per job, as Dask writes it: 4GB, 64GB.")
    gpus: int = Field(0, ge=0, le=16, description="GPUs per job (--gpus-per-node).")
    walltime: str = Field("01:00:00", description="Time limit per job, HH:MM:SS.")


def _slurm(what: str) -> Any:
    """The `slurm` field of a stage that fans `what` out over Dask workers."""
    return Field(
        None,
        title="slurm",
        json_schema_extra=choice_titles("Dask workers as Slurm jobs", "no Slurm"),
        description=f"Fan {what} out over Dask workers started as Slurm jobs (dask-jobqueue's "
        "SLURMCluster); dask_address wins over it, it wins over workers.",
    )


class AcquireSettings(ConfigModel):
    source: str = Field(
        "data/librilight-tiny/librilight-tiny.tar",
        validate_default=True,  # the shipped corpus, from any folder (`packaged_path`)
        description="What to acquire: a Libri-Light archive name (small, medium, large, duplicate, "
        "librispeech_finetuning), a split (unlab-600, unlab-6k, unlab-60k), the URL or path of "
        "a tar (local path, file://, http(s)://, s3://), or a folder or bucket prefix of audio "
        "(see layout).",
    )
    layout: Literal["auto", "librilight", "audio", "lhotse", "hf"] = Field(
        "auto",
        description="How the source is laid out: 'librilight' (FLAC with a JSON of voice "
        "activity beside each file), 'audio' (any folder of audio files, WAV, FLAC, OGG, Opus "
        "or MP3, at any rate: VAD is computed, speakers and transcripts found as set below), "
        "'lhotse' (source is a lhotse CutSet or RecordingSet JSONL, gzipped or not; its "
        "supervisions are the speech and the text), 'hf' (a Hugging Face dataset saved by "
        "save_to_disk, with an Audio column), 'auto': 'lhotse' for a .jsonl(.gz), 'hf' for a "
        "folder holding dataset_info.json or dataset_dict.json, 'audio' for another folder or "
        "a bucket prefix, 'librilight' for an archive.",
    )
    supervisions: str | None = Field(
        None,
        description="layout 'lhotse' with a RecordingSet: its SupervisionSet (JSONL, gzipped or "
        "not).",
    )
    speaker_from: Literal["parent", "grandparent", "regex", "table", "sidecar", "file"] = Field(
        "parent",
        description="layout 'audio': a file's speaker is the name of its folder ('parent'), of "
        "the folder above ('grandparent': LibriSpeech's SPEAKER/CHAPTER/FILE), the "
        "`speaker` group of `speaker_regex` on its path, the `metadata` table's column, the "
        "`speaker` key of its STEM.json ('sidecar': WebDataset's per-sample record), or "
        "the file itself ('file': no speaker known, each file is its own).",
    )
    speaker_regex: str | None = Field(
        None,
        description="With speaker_from 'regex': a Python regex with a named group called speaker, "
        "searched in each file's path relative to the source.",
    )
    metadata: str | None = Field(
        None,
        description="layout 'audio': a CSV or JSONL table with a `path` column (relative to the "
        "source), and `speaker` and/or `text` columns.",
    )
    vad: Literal["silero", "none"] = Field(
        "silero",
        description="layout 'audio': 'silero' computes voice activity with Silero VAD (its "
        "weights ship in the silero-vad package: offline, on the CPU), cached per file on its "
        "content; 'none' treats each file as speech and cuts it at target_len_sec on its "
        "quietest frames.",
    )
    vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Silero's speech probability threshold (its default 0.5)."
    )
    vad_min_speech_ms: int = Field(
        250, ge=0, description="Silero: speech shorter than this is dropped (its default 250)."
    )
    vad_min_silence_ms: int = Field(
        100,
        ge=0,
        description="Silero: a pause shorter than this does not split speech (its default 100).",
    )
    md5: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="Expected md5 of a tar given by URL (hex); named archives use the published "
        "digests. A mismatch fails the run.",
    )
    mirror: str | None = Field(
        None,
        description="Base URL that replaces https://dl.fbaipublicfiles.com/librilight/data/ for "
        "named archives: any fsspec URL (file://, http(s)://, s3://) or a local folder.",
    )
    keep_archive: bool = Field(
        True,
        description="Keep the downloaded tar (resumable download, then extraction). False "
        "extracts while streaming and stores no tar: for the 3 TB 'large' archive.",
    )
    target_len_sec: float = Field(
        60.0,
        gt=0,
        description="Segment length target in seconds: consecutive voice-activity chunks are "
        "joined up to this length (Libri-Light's cut_by_vad.py, default 60); a longer chunk "
        "stays whole.",
    )
    target_hours: float | None = Field(
        None,
        gt=0,
        description="Select a deterministic subset of about this many hours of speech, spread "
        "across speakers (the post uses 1 000 h and 10 000 h); empty keeps everything.",
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of audio hours held out for validation; whole speakers are held out, so "
        "no speaker is in both splits.",
    )
    seed: int = Field(0, description="Seed of the subset selection and the speaker split.")
    segments_as: Literal["references", "flac"] = Field(
        "references",
        description="'references' stores each segment as (file, VAD chunks) and reads it from "
        "the source FLAC; 'flac' also writes every segment as a FLAC file like cut_by_vad.py.",
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="0 runs tasks on Prefect's default runner; N > 0 fans probing out over a "
        "Dask LocalCluster of N worker processes.",
    )
    dask_address: str | None = Field(
        None,
        description="Address of an existing Dask scheduler (tcp://host:8786); wins over workers.",
    )
    slurm: SlurmSettings | None = _slurm("probing")

    _shipped_source = field_validator("source")(lambda cls, value: packaged_path(value))

    @model_validator(mode="after")
    def _speaker_rule_is_complete(self) -> AcquireSettings:
        if self.speaker_from == "regex":
            if not self.speaker_regex:
                raise ValueError("speaker_from 'regex' needs speaker_regex")
            try:
                pattern = re.compile(self.speaker_regex)
            except re.error as err:
                raise ValueError(f"speaker_regex is not a valid regex: {err}") from None
            if "speaker" not in pattern.groupindex:
                raise ValueError("speaker_regex needs a (?P<speaker>...) group")
        return self


class AcquireConfig(AcquireSettings):
    """acquire: Libri-Light archives, or any folder, bucket prefix or archive of speech
    (`layout: audio`), into a segment manifest under `root`."""

    model_config = ConfigDict(json_schema_extra=inputs_first("source", "md5", "root"))

    root: str = Field(
        "runs/demo/acquire",
        description="Storage root (local folder or s3:// URL) for the extracted audio, the "
        "segments and the manifest.",
    )
    download_dir: str | None = Field(
        None,
        description="Local folder for downloaded tars; empty means ROOT/download for a local "
        "root, CACHE/download for a remote one ($CODECFLOW_CACHE, else ~/.cache/codecflow).",
    )

    _local_download = _local_only("download_dir", why="a download resumes from a local .part file")


ShardFormat = Literal["arrow", "webdataset"]


class TokenizeSettings(ConfigModel):
    tokenizer: str = Field(
        "mu-law-256",
        # A drop-down of the known names, or any valid name typed (schemas/tokenizers.py).
        json_schema_extra=tokenizer_json_schema,
        description="Audio tokenizer: 'mu-law-256' (one token per 16 kHz sample, torchaudio's "
        "rounding), 'mu-law-256-post' (the post's librosa quantiser: its exact tokens), "
        "'codec:CHECKPOINT[@LEVELS]' (a codec trained by train-codec, or an untrained "
        "preset such as rvq-8, whose codes carry no information), or 'mimi_K_rvq' / "
        "'mimi_K_rvq_nosemantic' (Kyutai's Mimi at 12.5 Hz: levels 0..K-1, K <= 32, or "
        "levels 1..K without the semantic level 0, K <= 31).",
    )
    shard_hours: float = Field(
        1.0, gt=0, description="Audio duration per Arrow shard, in hours (about 1 h by default)."
    )
    # A default, not a default_factory: the UI shows only a JSON schema `default` (pydantic
    # copies a mutable default for each instance, so no instance shares this list).
    formats: list[ShardFormat] = Field(
        ["arrow"],
        min_length=1,
        description="Shard formats: 'arrow' (memory-mapped training format, always written) and "
        "'webdataset' (.tar of KEY.codes.npy + KEY.json, for streaming readers).",
    )
    max_tasks: int = Field(
        1000,
        ge=1,
        description="At most this many shard-writing tasks: consecutive shards are grouped so "
        "that 60 000 h stays in the low thousands of Prefect task runs.",
    )
    warn_reject_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        title="Warn above this fraction of rejected segments",
        description="A warning (with the count and the rejects.parquet path) when more than this "
        "fraction of the segments cannot be decoded (default 0.05: 5%). A dataset where every "
        "segment is rejected is never committed.",
    )
    workers: int = Field(
        0, ge=0, le=256, description="0: Prefect's default runner; N > 0: a Dask LocalCluster."
    )
    dask_address: str | None = Field(
        None, description="Address of an existing Dask scheduler (tcp://host:8786)."
    )
    slurm: SlurmSettings | None = _slurm("the shard groups")

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_name(cls, tokenizer: str) -> str:
        """The one grammar (schemas/tokenizers.py); the name is kept as written. A codec's
        checkpoint is loaded from a local folder."""
        parsed = parse_tokenizer_name(tokenizer)
        if parsed.kind == "codec" and parsed.checkpoint and "://" in parsed.checkpoint:
            raise ValueError(
                f"codec checkpoint {parsed.checkpoint!r} must be a local folder, not a URL: "
                f"{_CHECKPOINT_IN}"
            )
        return tokenizer


class TokenizeConfig(TokenizeSettings):
    """tokenize: a segment manifest -> Arrow token shards, a size report and dataset.json."""

    model_config = ConfigDict(json_schema_extra=inputs_first("manifest", "out", "tokenizer"))

    manifest: str = Field(
        "runs/demo/acquire/manifest/segments.parquet",
        description="Segment manifest (Parquet) written by the acquire flow: a path or an "
        "s3:// URL.",
    )
    out: str = Field(
        "runs/demo/tokens/mu-law-256",
        description="Folder of the token dataset: a local folder or an s3:// URL.",
    )


class TrainCodecSettings(ConfigModel):
    # `levels` is the name this field had: still accepted in YAML and --set overrides.
    model_config = ConfigDict(populate_by_name=True)

    num_levels: int = Field(
        8,
        ge=1,
        le=32,
        validation_alias=AliasChoices("num_levels", "levels"),
        description="RVQ levels K (the post trains 1, 2, 4, 8 and 16); 'levels' is an alias.",
    )
    codebook_size: int = Field(1024, ge=2, le=65536, description="Entries per codebook (1 024).")
    arch: Literal["post", "jukebox"] = Field(
        "post",
        description="'post': the post's codec exactly (nanoGPTaudio codec.py: 4 residual blocks "
        "per stage, dilations 3..81, no latent conv, latent_dim = channels; 397 473 parameters "
        "at the defaults); 'jukebox': a lighter Jukebox-like variant (models/codec.py says why).",
    )
    channels: int = Field(32, ge=4, description="Width of every encoder/decoder stage (32).")
    latent_dim: int = Field(
        32, ge=1, description="Dimension of the quantized latents (32; = channels for 'post')."
    )
    res_depth: int = Field(
        4, ge=1, le=8, description="Dilated residual blocks per stage (the post: 4)."
    )
    n_blocks: int = Field(
        7,
        ge=1,
        le=10,
        description="Down-sampling blocks, each halving time: 7 gives the post's 128x (125 Hz "
        "frames at 16 kHz); fewer make a small codec that trains in minutes on a CPU.",
    )
    update_speed: float = Field(
        0.01, gt=0, le=1, description="EMA update speed of the codebooks (the post: 0.01)."
    )
    quantizer_dropout: bool = Field(
        True,
        description="Train on a random number of levels per batch (as Mimi does), so that one "
        "codec serves any number of levels up to `num_levels`.",
    )
    spectral_loss: Literal["post", "l1-log"] = Field(
        "post",
        description="'post': the post's multi-scale spectral loss, sqrt(mean((|S_x| - "
        "|S_y|)^2)) of linear magnitudes per scale, averaged over 3 scales (codec.py); "
        "'l1-log': L1 of linear plus L1 of log magnitudes, codecflow's before (models/losses.py "
        "gives what each measured in bench/codec_recipe.py).",
    )
    commitment: Literal["post", "mean"] = Field(
        "post",
        description="'post': the levels' commitment losses summed, only level 0's reaching the "
        "encoder (codec.py); 'mean': averaged, every level's reaching it (encodec, moshi).",
    )
    codebooks: Literal["post", "data"] = Field(
        "post",
        description="'post': kaiming-uniform codebooks, and before each step each level "
        "restarts its least-used code from a raw latent if its usage is under 0.1 (codec.py); "
        "'data': codebooks from the first batch, every code under usage 1 teleported after each "
        "step (Jukebox, encodec): all codes used in short runs where the post's leave most "
        "idle (models/rvq.py gives the measurement).",
    )
    input_audio: Literal["mu-law", "pcm"] = Field(
        "mu-law",
        description="'mu-law': train on the audio after the post's 8-bit mu-law round trip "
        "(train_codec.py reads mu-law tokens and expands them: 34.5 dB SNR to the original); "
        "'pcm': on the decoded audio as it is.",
    )
    crop_seconds: float = Field(1.0, gt=0, description="Length of the random training crops.")
    batch_size: int = Field(8, ge=1, description="Crops per optimizer step.")
    steps: int = Field(2000, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps before cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of the peak.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between resumable checkpoints.")
    nproc_per_node: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes (GPUs) on this machine: more than 1 launches torchrun with DDP "
        "(NCCL on GPUs, gloo on the CPU); each rank trains on `batch_size` crops per step.",
    )
    loader_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="torch.utils.data worker processes per rank that read the crops from the "
        "audio files (0: read in the training process, between steps).",
    )
    prefetch_batches: int = Field(
        4, ge=1, le=64, description="Batches each loader worker reads ahead (prefetch_factor)."
    )
    seed: int = Field(0, description="Seed of initialisation and crop sampling.")
    device: Device = Field("auto", description="'auto' takes CUDA when present (bf16 autocast).")
    log_to: list[TrackerName] = _log_to(
        "the per-step losses, learning rate, gradient norm and crops/s of train_log.jsonl"
    )

    @model_validator(mode="after")
    def _post_latents_are_the_width(self) -> TrainCodecSettings:
        if self.arch == "post" and self.latent_dim != self.channels:
            raise ValueError(
                f"arch 'post' has no latent conv: latent_dim ({self.latent_dim}) must equal "
                f"channels ({self.channels}), or choose arch 'jukebox'"
            )
        return self


class TrainCodecConfig(TrainCodecSettings):
    """train-codec: the post's RVQ codec on the train split of a segment manifest."""

    model_config = ConfigDict(json_schema_extra=inputs_first("manifest", "out"))

    manifest: str = Field(
        "runs/demo/acquire/manifest/segments.parquet",
        description="Segment manifest; the codec trains on its train split.",
    )
    out: str = Field(
        "runs/demo/codec", description="Local folder of the codec run and checkpoints."
    )

    _local_out = _local_only("out", why=_CHECKPOINT_OUT)

    def settings(self) -> TrainCodecSettings:
        """The training settings of this config: the fields it sets, no default added."""
        fields = set(TrainCodecSettings.model_fields)
        return TrainCodecSettings(**self.model_dump(include=fields, exclude_unset=True))


class EvalCodecSettings(ConfigModel):
    levels: list[int] | None = Field(
        None,
        description="Numbers of levels to evaluate; empty means 1, 2, 4, 8, 16 up to the "
        "codec's maximum (and the maximum itself).",
    )
    max_segments: int = Field(
        32, ge=1, description="Validation segments evaluated (the first ones by id)."
    )
    max_seconds: float = Field(
        10.0, gt=0, description="Each segment is cut to at most this many seconds."
    )
    n_wavs: int = Field(3, ge=0, description="Segments whose reconstructions are written as WAV.")
    device: Device = Field("auto", description="'auto' takes CUDA when present.")


class EvalCodecConfig(EvalCodecSettings):
    """eval-codec: a codec's reconstruction losses by number of levels, on the val split."""

    model_config = ConfigDict(json_schema_extra=inputs_first("checkpoint", "manifest", "out"))

    checkpoint: str = Field(
        "runs/demo/codec/checkpoint", description="Codec checkpoint folder (local)."
    )
    manifest: str = Field(
        "runs/demo/acquire/manifest/segments.parquet",
        description="Segment manifest; the evaluation reads its val split.",
    )
    out: str = Field("runs/demo/codec-eval", description="Local folder of the evaluation report.")

    _local_checkpoint = _local_only("checkpoint", why=_CHECKPOINT_IN)
    _local_out = _local_only("out", why=_REPORT_OUT)


def _compared_tokenizers() -> list[str]:
    return ["mu-law-256", "mimi_8_rvq", "mimi_32_rvq"]


class CompareCodecsSettings(ConfigModel):
    tokenizers: list[str] = Field(
        default_factory=_compared_tokenizers,
        min_length=1,
        description="Tokenizers compared on the same segments, one row each: 'mu-law-256', "
        "'codec:CHECKPOINT@LEVELS' (list one per number of levels: @1, @2, ... @N), "
        "'mimi_K_rvq' (Mimi's weights from the Hub cache), as `tokenize` names them.",
    )
    max_segments: int = Field(
        8, ge=1, description="Validation segments compared (the first ones by id)."
    )
    max_seconds: float = Field(
        5.0, gt=0, le=600, description="Each segment is cut to at most this many seconds."
    )
    device: Device = Field("auto", description="'auto' takes CUDA when present.")

    @field_validator("tokenizers")
    @classmethod
    def _tokenizer_names(cls, names: list[str]) -> list[str]:
        """Each name in the one grammar (schemas/tokenizers.py), a codec from a local folder;
        no name twice (a row per tokenizer)."""
        for name in names:
            TokenizeSettings._tokenizer_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"a tokenizer is listed twice: {names}")
        return names


class CompareCodecsConfig(CompareCodecsSettings):
    manifest: str = Field(
        "runs/demo/acquire/manifest/segments.parquet",
        description="Segment manifest; the comparison reads its val split (held out).",
    )
    out: str = Field(
        "runs/demo/codec-comparison", description="Local folder of the comparison report."
    )

    _local_out = _local_only("out", why=_REPORT_OUT)


#: The fields a `preset` sets (models/presets.py).
MODEL_SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")


class TrainLMSettings(ConfigModel):
    preset: Literal["tiny", "demo", "post"] | None = Field(
        None,
        description="Model shape: 'post' is the post's LM (12 layers, 16 heads, 1 024 wide, "
        "block 2 048, about 151 M parameters), 'demo' and 'tiny' fit a CPU. It sets n_layer, "
        "n_head, n_embd and block_size, which must then be left out.",
    )
    layout: Literal["flatten", "flatten-offsets", "delay", "delay-offsets"] = Field(
        "flatten",
        description="How [levels x frames] codes become one sequence: 'flatten' interleaves the "
        "levels of each time step with one shared vocabulary (the post); 'delay' is MusicGen's "
        "delay pattern; '-offsets' gives each level its own vocabulary range.",
    )
    level_weights: list[float] | None = Field(
        None,
        description="Loss weight per RVQ level, applied by the level of the target token (the "
        "post's token_depth_weights; Moshi weighs the semantic level 100x). Empty: all 1.",
    )
    level_weights_normalized: bool = Field(
        True,
        description="Divide the level-weighted loss by the sum of the targets' weights "
        "(Moshi), so that it stays a mean cross-entropy; false: by the number of targets, the "
        "plain mean of weight x CE, as the post (x 1.3375 for its [10, 0.1 x 7]).",
    )
    window_offsets: Literal["aligned", "any"] = Field(
        "aligned",
        description="Where training windows start: 'aligned' on a frame boundary (position p "
        "holds level p % K); 'any' at any token of a frame, as nanoGPT's get_batch draws them "
        "(the post's runs named in its notebook trained so: its alignment, af49dee, read a "
        "meta key that prepare.py never wrote).",
    )
    n_layer: int = Field(4, ge=1, le=96, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=128, description="Attention heads per block.")
    n_embd: int = Field(128, ge=8, description="Model width; a multiple of n_head.")
    block_size: int = Field(
        256, ge=8, description="Context length in tokens (the post's LM uses 2 048)."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")
    batch_size: int = Field(16, ge=1, description="Windows per micro-batch, per rank.")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (gradient accumulation)."
    )
    compile: bool = Field(False, description="Compile the model with torch.compile.")
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(30, ge=0, description="Linear warm-up steps before cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of the peak.")
    lr_decay_steps: int | None = Field(
        None,
        ge=1,
        description="Step at which the cosine reaches the final LR, which then stays; empty: "
        "`steps`. The post's 1 M-step configs leave nanoGPT's 600 000 (schemas/post.py).",
    )
    beta2: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="AdamW beta2 (nanoGPT's 0.95; the post's codec LM uses 0.99).",
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    eval_batches: int = Field(8, ge=1, description="Validation batches at the end of training.")
    checkpoint_every: int = Field(
        100,
        ge=1,
        description="Steps between resumable checkpoints (training resumes from the "
        "newest complete one after a kill).",
    )
    nproc_per_node: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes (GPUs) on this machine: more than 1 launches torchrun with DDP "
        "(NCCL on GPUs, gloo on the CPU).",
    )
    seed: int = Field(0, description="Seed of initialisation and window sampling.")
    device: Device = Field("auto", description="'auto' takes CUDA when present.")
    log_to: list[TrackerName] = _log_to(
        "the per-step loss (and per level), learning rate, tokens/s, MFU and validation loss"
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_or_shape(cls, data: Any) -> Any:
        """With a preset, the shape fields stay out or at their defaults, and count as unset.

        The Prefect UI submits every field of the form, and a deployment run's parameters hold
        every field, so a preset arrives beside the default shape (n_layer 4, ...): those values
        say nothing, and are dropped. A shape value other than the default meets the preset's
        and is refused.
        """
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        defaults = {name: cls.model_fields[name].default for name in MODEL_SHAPE_FIELDS}
        clash = sorted(
            name for name in MODEL_SHAPE_FIELDS if name in data and data[name] != defaults[name]
        )
        if clash:
            raise ValueError(
                f"preset {data['preset']!r} sets the model shape; leave out {clash} (or leave "
                "them at their defaults)"
            )
        return {key: value for key, value in data.items() if key not in MODEL_SHAPE_FIELDS}


class TrainLMConfig(TrainLMSettings):
    """train-lm: the nanoGPT-style LM on a token dataset, with resumable checkpoints."""

    model_config = ConfigDict(json_schema_extra=inputs_first("dataset", "out"))

    dataset: str = Field(
        "runs/demo/tokens/mu-law-256",
        description="Token dataset: a folder, or an s3:// URL whose shards are fetched once into "
        "the local shard cache ($CODECFLOW_CACHE, else ~/.cache/codecflow).",
    )
    out: str = Field(
        "runs/demo/lm", description="Local folder of the training run and its checkpoint."
    )

    _local_out = _local_only("out", why=_CHECKPOINT_OUT)

    def settings(self) -> TrainLMSettings:
        """The training settings of this config: the fields it sets, no default added (a
        `preset` must not meet the default model shape, which would then count as set)."""
        fields = set(TrainLMSettings.model_fields)
        return TrainLMSettings(**self.model_dump(include=fields, exclude_unset=True))


#: A prompt with its true continuation: 6 s of the demo's validation speaker (data/prompts/).
HELDOUT_PROMPT = "data/prompts/heldout_3436-172162-0000_6s.flac"


class EvaluateSettings(ConfigModel):
    prompt: str = Field(
        "data/prompts/prompt_librilight_uk_4s.wav",
        validate_default=True,  # the shipped prompt, from any folder (`packaged_path`)
        description="Spoken prompt (any audio file; resampled and down-mixed to the tokenizer's "
        "rate, trimmed to whole frames). The default is the post's own: two lines of a poem from "
        "Libri-Light.",
    )
    prompt_text: str | None = Field(
        None,
        description="What the prompt says, if known: the recogniser's word error rate on the "
        "prompt is then reported, which tells how far its word counts can be trusted.",
    )
    prompt_seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        description="Cut the prompt to its first N seconds; the recording's next `seconds` (as "
        "far as the file goes) are its true continuation, played beside the generated ones. "
        f"With {HELDOUT_PROMPT} (6 s, a speaker held out of the demo's training) use 4. "
        "Empty: the whole file prompts.",
    )
    seconds: float = Field(
        0.5, gt=0, le=600, description="Length of each continuation, in seconds of audio."
    )
    num_samples: int = Field(1, ge=1, le=64, description="Continuations sampled in one batch.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    sampling_window: Literal["frames", "exact"] = Field(
        "frames",
        description="Past the model's context: 'frames' re-prefills half a context of whole "
        "frames when the KV cache fills (fast); 'exact' reads the last block_size tokens at "
        "every step, the post's sampler (one full forward per token): 3-9x slower for a held-out "
        "NLL within 0.4 % of frames' (bench/sliding_window.py).",
    )
    top_k: int | None = Field(None, ge=1, description="Keep only the k most likely tokens.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling threshold.")
    seed: int = Field(0, description="Sampling seed.")
    regenerate_levels: list[int] = Field(
        [1],  # a default, not a factory: the UI shows it (see `formats`)
        description="The post's semantic experiment: keep the first k levels of a recording's "
        "codes (k=1 is Mimi's semantic token) and let the model generate the other levels; one "
        "set of regenerations per k. Values not below the tokenizer's level count are reported "
        "as skipped (mu-law has one level); empty turns it off.",
    )
    regenerate_source: str | None = Field(
        None, description="Recording to regenerate (any audio file); empty means the prompt."
    )
    regenerate_seconds: float = Field(
        4.0, gt=0, le=120, description="The regenerated recording is cut to this many seconds."
    )
    regenerate_temperature: float | None = Field(
        None,
        ge=0,
        description="Sampling temperature of the regeneration; empty: `temperature`. The post's "
        "notebook (regenerate_with_semantic.ipynb) samples at 0.8.",
    )
    regenerate_first_frame: Literal["sampled", "kept"] = Field(
        "sampled",
        description="'kept': the recording's whole first frame is kept (all its levels), as the "
        "post's notebook starts from it; 'sampled': only the first k levels of every frame.",
    )
    speech_metrics: bool = Field(
        True,
        description="Voice similarity (resemblyzer) and recognised words (pocketsphinx + jiwer); "
        "both run offline from models inside their wheels.",
    )
    device: Device = Field("auto", description="'auto' takes CUDA when present.")
    log_to: list[TrackerName] = _log_to(
        "the report's metrics and audio, at the checkpoint's training step"
    )

    _local_audio = _local_only("prompt", "regenerate_source", why="audio is read from a local file")
    _shipped_prompt = field_validator("prompt")(lambda cls, value: packaged_path(value))


class EvaluateConfig(EvaluateSettings):
    """evaluate: continue a spoken prompt with an LM checkpoint, measure, write the report."""

    model_config = ConfigDict(
        json_schema_extra=inputs_first(
            "checkpoint", "train_run", "while_training", "dataset", "out", "index"
        )
    )

    checkpoint: str = Field("runs/demo/lm/checkpoint", description="LM checkpoint folder.")
    train_run: str | None = Field(
        None,
        description="A train-lm run folder (such as runs/demo/lm): evaluate its final "
        "checkpoint instead of `checkpoint` (nothing while it still trains, unless "
        "`while_training`); the report goes to out/step-N-hash, and a checkpoint already "
        "evaluated is skipped. For schedules.",
    )
    while_training: bool = Field(
        False,
        description="With `train_run`: evaluate the run's newest mid-training checkpoint while "
        "it still trains. Off: wait for its final checkpoint (a scheduled run then does nothing "
        "until training has ended).",
    )
    dataset: str = Field(
        "runs/demo/tokens/mu-law-256",
        description="Token dataset the LM was trained on: a folder or an s3:// URL (fetched "
        "into the local shard cache).",
    )
    out: str = Field("runs/demo/report", description="Local folder of the evaluation report.")
    index: str | None = Field(
        None,
        description="Folder whose evaluation reports are compared side by side in "
        "INDEX/index.html, rewritten after each evaluation (the pipeline uses the folder above "
        "its run folder); empty: no index.",
    )

    _local_checkpoint = _local_only("checkpoint", "train_run", why=_CHECKPOINT_IN)
    _local_out = _local_only("out", "index", why=_REPORT_OUT)


#: The checkpoint name of `codec:trained[@<levels>]`: the codec a pipeline's train_codec trains.
TRAINED_CODEC = "trained"


class PipelineConfig(ConfigModel):
    """The whole DAG: acquire -> [train-codec] -> tokenize -> train-lm -> evaluate under `out`.

    With a `train_codec` section the pipeline trains the post's codec on the acquired manifest
    (under `OUT/codec`) and the tokenizer names it `codec:trained[@LEVELS]`; the flow puts the
    checkpoint's path in its place (`codec:OUT/codec/checkpoint[@LEVELS]`), so the config holds
    no derived path.
    """

    # Each section is titled by its key (what YAML configs and `--set` name): the UI would title
    # it by its class ("AcquireSettings"), or "Field" for an optional one.
    out: str = Field("runs/demo", description="Local run folder; every stage writes below it.")
    acquire: AcquireSettings = Field(
        default_factory=AcquireSettings,
        title="acquire",
        description="Stage 1: fetch, verify, extract and segment the corpus under OUT/acquire.",
    )
    train_codec: TrainCodecSettings | None = Field(
        None,
        title="train_codec",
        json_schema_extra=choice_titles("train a codec", "no codec stage"),
        description="Optional stage 2: train the post's RVQ codec on the acquired manifest "
        "(under OUT/codec) before tokenizing; the tokenizer must then be 'codec:trained' or "
        "'codec:trained@LEVELS' (the codec this pipeline trains). Empty: no codec stage.",
    )
    tokenize: TokenizeSettings = Field(
        default_factory=TokenizeSettings,
        title="tokenize",
        description="Stage 3: the segments into token shards under OUT/tokens/TOKENIZER.",
    )
    train_lm: TrainLMSettings = Field(
        default_factory=TrainLMSettings,
        title="train_lm",
        description="Stage 4: the LM on the tokens; its checkpoint in OUT/lm/checkpoint.",
    )
    evaluate: EvaluateSettings = Field(
        default_factory=EvaluateSettings,
        title="evaluate",
        description="Stage 5: continuations of the prompt, metrics and the report in "
        "OUT/report, and the runs index beside OUT.",
    )

    _local_out = _local_only(
        "out",
        why="the run folder holds local checkpoints and reports; for data on S3 run acquire and "
        "tokenize with s3:// root and out, then train-lm with dataset=s3://...",
    )

    @staticmethod
    def names_trained_codec(tokenizer: str) -> bool:
        """True for `codec:trained` and `codec:trained@<levels>`: the codec the pipeline trains."""
        try:
            parsed = parse_tokenizer_name(tokenizer)
        except TokenizerNameError:
            return False
        return parsed.kind == "codec" and parsed.checkpoint == TRAINED_CODEC

    @model_validator(mode="after")
    def _trained_codec_reference(self) -> PipelineConfig:
        tokenizer = self.tokenize.tokenizer
        if self.names_trained_codec(tokenizer):
            if self.train_codec is None:
                raise ValueError(
                    f"tokenize.tokenizer {tokenizer!r} names the codec this pipeline trains, but "
                    "there is no train_codec section: add one, or name a checkpoint "
                    "(codec:CHECKPOINT[@LEVELS])"
                )
            levels = parse_tokenizer_name(tokenizer).num_levels
            if levels is not None and levels > self.train_codec.num_levels:
                raise ValueError(
                    f"tokenize.tokenizer {tokenizer!r} asks for {levels} levels, but "
                    f"train_codec.num_levels is {self.train_codec.num_levels}"
                )
            if "@" in self.out:
                raise ValueError(
                    f"out {self.out!r} must not contain '@' with train_codec: the tokenizer "
                    "codec:OUT/codec/checkpoint@LEVELS uses '@' for the levels"
                )
        elif self.train_codec is not None:
            raise ValueError(
                f"train_codec is set, but tokenize.tokenizer {tokenizer!r} does not use the "
                "codec it trains: set it to 'codec:trained' or 'codec:trained@LEVELS', or "
                "remove train_codec"
            )
        return self
